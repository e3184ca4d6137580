"""Packed ternary models: a self-contained file with the ternary codes, no latent weights.

File layout (version 2, all integers little-endian):

    magic      8 bytes  b"TERNPACK"
    version    uint16   2 (files of version 1 load too)
    header_len uint32   length of the header in bytes
    header     zlib-compressed JSON: build config (arch, num_classes, in_channels, tfactors, first_last,
                        quantizer), input_shape [C, H, W] (absent in files written before it was added)
                        and one entry per tensor: name, kind, shape, offset, nbytes
                        (+ for kind "ternary": alphas, base, group, group_bits, and from version 2
                        negative_alphas where the negative levels have scales of their own)
    payload    bytes    the tensors, back to back, at the offsets the header gives
    sha256     32 bytes SHA-256 of everything before it

Kind "fp32": raw little-endian float32 (BatchNorm, biases, full-precision layers).
Kind "int64": raw little-endian int64 (BatchNorm's num_batches_tracked).
Kind "ternary": the effective weight Σ_k T_k(W) of a layer with t_ex branches. Each weight
is one digit c = m·sign(W) + t_ex in base 2·t_ex+1, where m = how many branches keep it
(the branches are nested, so m says which ones); its value is sign · (α_1 + … + α_m).
`group` digits form one number below base^group, stored in `group_bits` bits of a
little-endian bit stream: 5 digits in 8 bits (1.6 bits/weight) for t_ex = 1, 3 in 7 bits
(2.33) for t_ex = 2, 5 in 16 bits (3.2) for t_ex = 4. The "2bit" encoding instead stores
one digit per power-of-two-wide field (2 bits for t_ex = 1, 4 for t_ex = 2..7).
Version 2 adds TTQ's layers, whose positive and negative weights have different scales:
their entry's alphas = [W_p] and negative_alphas = [W_n], so a digit decodes to +W_p, 0 or
−W_n. Version 1 files have no quantizer (the paper's) and no negative_alphas.

Loading never unpickles anything: it parses JSON and raw numbers after checking the
magic, version, checksum and every size.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from models import ARCHS
from models.ternary import QUANTIZERS, SCALE_NAMES, ternary_layers

from .data import check_preprocessing_record
from .errors import UserError
from .files import write_bytes

MAGIC = b"TERNPACK"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_PREFIX = struct.Struct("<8sHI")
_DIGEST_BYTES = 32
ENCODINGS = ("dense", "2bit")
MAX_HEADER_BYTES = 16 << 20  # a header decompresses to at most this: ResNet-101's is about 40 KiB


def is_packed_file(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def packing_layout(base: int, encoding: str = "dense") -> tuple[int, int]:
    """(digits per group, bits per group) for base-`base` digits.

    dense: the group of at most 16 bits with the fewest bits per digit (base^g ≤ 2^B).
    2bit: one digit per field of 2, 4, 8 ... bits (byte-aligned, simplest to decode).
    """
    if encoding == "2bit":
        return 1, 2 ** math.ceil(math.log2(math.ceil(math.log2(base))))
    if encoding != "dense":
        raise ValueError(f"unknown encoding '{encoding}', expected one of {ENCODINGS}")
    best = None
    for bits in range(1, 17):
        digits = int(math.floor(bits / math.log2(base) + 1e-9))
        while base ** (digits + 1) <= 2 ** bits:
            digits += 1
        while digits and base ** digits > 2 ** bits:
            digits -= 1
        if digits and (best is None or bits / digits < best[1] / best[0]):
            best = (digits, bits)
    return best


def pack_digits(digits: np.ndarray, base: int, group: int, group_bits: int) -> bytes:
    """Pack base-`base` digits (uint8 array), `group` per `group_bits`-bit field."""
    count = digits.size
    padded = np.zeros(-(-count // group) * group, dtype=np.int64)
    padded[:count] = digits
    values = (padded.reshape(-1, group) * base ** np.arange(group, dtype=np.int64)).sum(axis=1)
    bits = (values[:, None] >> np.arange(group_bits, dtype=np.int64)) & 1
    return np.packbits(bits.astype(np.uint8).ravel(), bitorder="little").tobytes()


def unpack_digits(data: bytes, count: int, base: int, group: int, group_bits: int) -> np.ndarray:
    """Inverse of pack_digits: `count` digits as int64."""
    groups = -(-count // group)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[: groups * group_bits]
    values = (bits.reshape(groups, group_bits).astype(np.int64) << np.arange(group_bits, dtype=np.int64)).sum(axis=1)
    digits = (values[:, None] // base ** np.arange(group, dtype=np.int64)) % base
    if np.any(values >= base ** group):
        raise UserError("packed codes are out of range (the file is corrupt)")
    return digits.ravel()[:count]


def packed_size(count: int, base: int, encoding: str = "dense") -> int:
    group, group_bits = packing_layout(base, encoding)
    return -(-(-(-count // group) * group_bits) // 8)


@torch.no_grad()
def ternary_codes(layer: nn.Module) -> tuple[np.ndarray, list[float], list[float] | None]:
    """Digits m·sign(W) + t_ex (0 .. 2·t_ex) of a ternary layer's effective weight, the
    α_k of its branches and, for TTQ, the negative scale [W_n] (its α is [W_p]); None else."""
    terms = layer.ternary_terms()
    signed = sum(code.to(torch.int64) for code, _ in terms)
    if layer.strategy.signed_scales:  # (+codes, positive scale), (−codes, negative scale)
        (_, positive_scale), (_, negative_scale) = terms
        alphas, negative_alphas = [positive_scale], [negative_scale]
    else:
        alphas, negative_alphas = [alpha for _, alpha in terms], None
    alphas = torch.stack(alphas).tolist()
    negative_alphas = torch.stack(negative_alphas).tolist() if negative_alphas else None
    if not all(math.isfinite(a) for a in alphas + (negative_alphas or [])):
        raise UserError("cannot export a layer whose weight holds NaN or Inf")
    digits = signed.to(torch.int64) + layer.tex
    return digits.flatten().cpu().numpy().astype(np.uint8), alphas, negative_alphas


def digit_terms(digits: np.ndarray, alphas: list[float], shape: list[int],
                negative_alphas: list[float] | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A packed layer's weight as Σ_j s_j · c_j, the terms TernaryLayerMixin.ternary_terms
    gives for the layer it was exported from: (sign·[m ≥ k], α_k) per REL branch k, or
    TTQ's ([digit > 0], W_p) and (−[digit < 0], W_n)."""
    signed = torch.from_numpy(digits.astype(np.int64)).view(shape) - len(alphas)
    if negative_alphas is not None:
        return [((signed > 0).to(torch.int8), torch.tensor(alphas[0], dtype=torch.float32)),
                (-(signed < 0).to(torch.int8), torch.tensor(negative_alphas[0], dtype=torch.float32))]
    sign = signed.sign()
    return [((sign * (signed.abs() >= k)).to(torch.int8), torch.tensor(alpha, dtype=torch.float32))
            for k, alpha in enumerate(alphas, 1)]


def decode_ternary(digits: np.ndarray, alphas: list[float], shape: list[int],
                   negative_alphas: list[float] | None = None) -> torch.Tensor:
    """sign · (α_1 + … + α_m), or TTQ's +W_p / 0 / −W_n: the digit_terms added in fp32 in
    branch order, exactly like the layer adds them."""
    weight = torch.zeros(shape, dtype=torch.float32)
    for code, scale in digit_terms(digits, alphas, shape, negative_alphas):
        weight = weight + scale * code
    return weight


def _layer_entries(model: nn.Module, encoding: str) -> tuple[list[dict], list[bytes]]:
    entries, blobs = [], []
    ternary = {f"{name}.weight" if name else "weight": layer for name, layer in ternary_layers(model)}
    # a reference REL layer adds its bias once per branch: the file holds the bias it applies
    applied_biases = {f"{name}.bias" if name else "bias": layer.applied_bias()
                      for name, layer in ternary_layers(model) if layer.bias_copies != 1}
    for key, tensor in model.state_dict().items():
        if key.rpartition(".")[2] in SCALE_NAMES:  # trained scales are stored in their layer's ternary entry
            continue
        tensor = applied_biases.get(key, tensor)
        entry = {"name": key, "shape": list(tensor.shape)}
        if key in ternary:
            layer = ternary[key]
            digits, alphas, negative_alphas = ternary_codes(layer)
            base = 2 * layer.tex + 1
            group, group_bits = packing_layout(base, encoding)
            blob = pack_digits(digits, base, group, group_bits)
            entry.update(kind="ternary", alphas=alphas, tfactors=list(layer.tfactors), base=base, group=group,
                         group_bits=group_bits)
            if negative_alphas is not None:
                entry["negative_alphas"] = negative_alphas
        elif tensor.is_floating_point():
            blob = tensor.detach().cpu().float().numpy().astype("<f4").tobytes()
            entry["kind"] = "fp32"
        else:
            blob = tensor.detach().cpu().numpy().astype("<i8").tobytes()
            entry["kind"] = "int64"
        entries.append(entry)
        blobs.append(blob)
    return entries, blobs


def export_packed(model: nn.Module, path: str, encoding: str = "dense",
                  input_shape: tuple[int, int, int] | None = None, preprocessing: dict | None = None) -> int:
    """Write `model` (built by models.get_model) as a packed file; returns its size in bytes.
    `input_shape` (C, H, W): the images it was trained on, which evaluation checks;
    `preprocessing`: utils.data.preprocessing_record of its data (normalisation, class names)."""
    config = getattr(model, "build_config", None)
    if config is None:
        raise UserError("export needs a model built by models.get_model (it records how to rebuild it)")
    entries, blobs = _layer_entries(model, encoding)
    offset = 0
    for entry, blob in zip(entries, blobs):
        entry.update(offset=offset, nbytes=len(blob))
        offset += len(blob)
    fields = {"config": config, "encoding": encoding, "tensors": entries}
    if input_shape is not None:
        fields["input_shape"] = list(input_shape)
    if preprocessing is not None:
        fields["preprocessing"] = preprocessing
    header = zlib.compress(json.dumps(fields, separators=(",", ":")).encode(), level=9)
    body = _PREFIX.pack(MAGIC, VERSION, len(header)) + header + b"".join(blobs)
    data = body + hashlib.sha256(body).digest()
    write_bytes(path, data)
    return len(data)


def _read_verified(path: str) -> tuple[dict, memoryview]:
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _PREFIX.size + _DIGEST_BYTES or data[: len(MAGIC)] != MAGIC:
        raise UserError(f"{path} is not a packed ternary model (bad magic or too short)")
    _, version, header_len = _PREFIX.unpack_from(data)
    if version not in READABLE_VERSIONS:
        raise UserError(f"{path} has packed-format version {version}; this code reads versions "
                        f"{', '.join(map(str, READABLE_VERSIONS))} (a newer version of this project wrote it?)")
    body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise UserError(f"{path} is corrupt or truncated (checksum mismatch)")
    if _PREFIX.size + header_len > len(body):
        raise UserError(f"{path} has a header longer than the file")
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(body[_PREFIX.size:_PREFIX.size + header_len], MAX_HEADER_BYTES)
        if inflater.unconsumed_tail:
            raise UserError(f"{path} has a header of more than {MAX_HEADER_BYTES >> 20} MiB uncompressed; "
                            "no model this project writes comes near that, so the file is refused")
        header = json.loads(text)
    except (zlib.error, ValueError) as exc:
        raise UserError(f"{path} has an unreadable header ({exc})") from exc
    check_header(header, path)
    return header, memoryview(body)[_PREFIX.size + header_len:]


def _is_int(value, low: int = 0, high: int | None = None) -> bool:
    return type(value) is int and value >= low and (high is None or value <= high)


def _finite_numbers(value) -> bool:
    return isinstance(value, list) and bool(value) and all(
        type(v) in (int, float) and math.isfinite(v) for v in value)


def _entry_problem(entry) -> str | None:
    """What is wrong with one tensor entry of the header, or None."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        return "a tensor entry without a name"
    name, kind, shape = entry["name"], entry.get("kind"), entry.get("shape")
    if kind not in ("fp32", "int64", "ternary"):
        return f"tensor {name} has an unknown kind {kind!r}"
    if not isinstance(shape, list) or not all(_is_int(d, 0, 1 << 31) for d in shape):
        return f"tensor {name} has no valid shape"
    if not _is_int(entry.get("offset")) or not _is_int(entry.get("nbytes")):
        return f"tensor {name} has no valid offset/nbytes"
    if kind != "ternary":
        return None
    base, group, group_bits = entry.get("base"), entry.get("group"), entry.get("group_bits")
    if not (_is_int(base, 3, 255) and base % 2 == 1):
        return f"ternary tensor {name} has base {base!r} (an odd number from 3: 2·t_ex + 1)"
    if not (_is_int(group, 1, 64) and _is_int(group_bits, 1, 63) and base ** group <= 2 ** group_bits):
        return f"ternary tensor {name} packs {group!r} digits of base {base} into {group_bits!r} bits"
    alphas, negative = entry.get("alphas"), entry.get("negative_alphas")
    if not _finite_numbers(alphas) or len(alphas) != base // 2:
        return f"ternary tensor {name} needs {base // 2} finite scales (alphas), has {alphas!r}"
    if negative is not None and not (_finite_numbers(negative) and len(negative) == 1 and len(alphas) == 1):
        return f"ternary tensor {name} has invalid negative scales {negative!r}"
    return None


def check_header(header, path: str) -> None:
    """The decoded header against the format's schema (module docstring): a file edited
    with a recomputed checksum is refused here, in one line, before anything is built."""
    if not isinstance(header, dict) or not isinstance(header.get("config"), dict) or not isinstance(
            header.get("tensors"), list):
        raise UserError(f"{path}: the header lacks its config or tensor list")
    config = header["config"]
    problems = [
        (config.get("arch") in ARCHS, f"names an unknown arch {config.get('arch')!r}"),
        (_is_int(config.get("num_classes"), 1, 1 << 20), f"has num_classes {config.get('num_classes')!r}"),
        (_is_int(config.get("in_channels"), 1, 1 << 12), f"has in_channels {config.get('in_channels')!r}"),
        (config.get("quantizer", "paper") in QUANTIZERS, f"names an unknown quantizer {config.get('quantizer')!r}"),
        (header.get("encoding") in ENCODINGS, f"has an unknown encoding {header.get('encoding')!r}"),
        ("input_shape" not in header or (isinstance(header["input_shape"], list) and len(header["input_shape"]) == 3
                                         and all(_is_int(d, 1, 1 << 16) for d in header["input_shape"])),
         f"has input_shape {header.get('input_shape')!r}"),
    ]
    for ok, problem in problems:
        if not ok:
            raise UserError(f"{path} {problem}; the file was edited or is not a packed model of this project")
    check_preprocessing_record(header.get("preprocessing"), path)
    for entry in header["tensors"]:
        problem = _entry_problem(entry)
        if problem:
            raise UserError(f"{path}: {problem}; the file was edited or is not a packed model of this project")


def _check_tensors_fit(header: dict, path: str) -> None:
    """The header's tensors are exactly the arch's state_dict (names, shapes, kinds),
    checked on a model without storage (meta device), so a huge edited shape allocates nothing."""
    config = header["config"]
    with torch.device("meta"):
        expected = ARCHS[config["arch"]].builder(num_classes=config["num_classes"],
                                                 in_channels=config["in_channels"]).state_dict()
    given = {entry["name"]: entry for entry in header["tensors"]}
    if len(given) != len(header["tensors"]) or given.keys() != expected.keys():
        missing, extra = sorted(expected.keys() - given.keys()), sorted(given.keys() - expected.keys())
        raise UserError(f"{path}: its tensors do not match {config['arch']} (missing: {', '.join(missing[:3]) or '-'}; "
                        f"unexpected or repeated: {', '.join(extra[:3]) or '-'})")
    for name, tensor in expected.items():
        entry = given[name]
        kind_ok = (entry["kind"] == "int64") != tensor.is_floating_point()
        if list(tensor.shape) != entry["shape"] or not kind_ok:
            raise UserError(f"{path}: tensor {name} is {entry['kind']} {entry['shape']}, but {config['arch']} has "
                            f"{tensor.dtype} {list(tensor.shape)}")


def read_packed_header(path: str) -> dict:
    """The checked header of a packed file (no tensors decoded)."""
    return _read_verified(path)[0]


def _expected_nbytes(entry: dict, encoding: str) -> int:
    count = math.prod(entry["shape"])
    if entry["kind"] == "ternary":
        return packed_size(count, entry["base"], encoding)
    return count * (4 if entry["kind"] == "fp32" else 8)


def _decode_entry(entry: dict, blob: bytes) -> torch.Tensor:
    dtype = "<f4" if entry["kind"] == "fp32" else "<i8"
    return torch.from_numpy(np.frombuffer(blob, dtype=dtype).copy()).view(entry["shape"])


class PackedCodes(NamedTuple):
    """A ternary layer as a packed file stores it (see the module docstring)."""
    digits: np.ndarray
    alphas: list[float]
    shape: list[int]
    negative_alphas: list[float] | None

    @property
    def tex(self) -> int:
        return len(self.alphas)

    @property
    def scale_count(self) -> int:
        """Scales its output multiplies by: t_ex, or TTQ's two."""
        return len(self.alphas) + len(self.negative_alphas or [])


def packed_terms(model: nn.Module) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
    """digit_terms of every ternary weight of a model built by load_packed, by state_dict key
    (empty for any other model): what the ONNX export stores as int4 codes."""
    return {f"{name}.weight" if name else "weight": digit_terms(*codes)
            for name, codes in getattr(model, "packed_codes", {}).items()}


def load_packed(path: str) -> nn.Module:
    """Rebuild the network of a packed file for inference (eval mode).

    The network is the arch's full-precision definition whose ternarized layers hold
    their ternary-valued effective weights as ordinary nn.Conv2d / nn.Linear weights: the
    latent weights are not in the file, and inference needs nothing else."""
    header, payload = _read_verified(path)
    config, encoding = header["config"], header["encoding"]
    _check_tensors_fit(header, path)
    model = ARCHS[config["arch"]].builder(num_classes=config["num_classes"], in_channels=config["in_channels"])
    state, codes = {}, {}
    for entry in header["tensors"]:
        expected = _expected_nbytes(entry, encoding)
        if entry["nbytes"] != expected or entry["offset"] + expected > len(payload):
            raise UserError(f"{path}: tensor {entry['name']} has an inconsistent size")
        blob = payload[entry["offset"]:entry["offset"] + expected]
        if entry["kind"] != "ternary":
            state[entry["name"]] = _decode_entry(entry, blob)
            continue
        layer = PackedCodes(unpack_digits(blob, math.prod(entry["shape"]), entry["base"], entry["group"],
                                          entry["group_bits"]), entry["alphas"], entry["shape"],
                            entry.get("negative_alphas"))
        codes[entry["name"].rpartition(".")[0]] = layer
        state[entry["name"]] = decode_ternary(*layer)
    model.load_state_dict(state, strict=True)
    model.packed_codes = codes  # by layer name
    model.build_config = config
    model.input_shape = tuple(header.get("input_shape") or (config["in_channels"], None, None))
    model.preprocessing = header.get("preprocessing")
    model.packed_tfactors = {entry["name"].rpartition(".")[0]: entry.get("tfactors")
                             for entry in header["tensors"] if entry["kind"] == "ternary"}
    return model.eval()


def add_preprocessing(path: str, target: str, preprocessing: dict, input_shape: tuple[int, int, int]) -> int:
    """Write the packed file `path` again as `target` with a preprocessing record and input
    shape in its header: the same tensors, byte for byte (a file written before the record
    existed gets it without being rebuilt from a model). Returns the new size."""
    header, payload = _read_verified(path)
    with open(path, "rb") as f:
        version = _PREFIX.unpack_from(f.read(_PREFIX.size))[1]
    header.update(preprocessing=preprocessing, input_shape=list(input_shape))
    check_header(header, target)
    packed_header = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), level=9)
    body = _PREFIX.pack(MAGIC, version, len(packed_header)) + packed_header + bytes(payload)
    data = body + hashlib.sha256(body).digest()
    write_bytes(target, data)
    return len(data)
