"""Checkpoints: atomic saving and loading that never executes code from the file.

Every file is read with torch.load(weights_only=True): only tensors and plain Python
containers are rebuilt. Checkpoints of the reference implementation also pickle its
`utils.RecorderMeter` (numpy arrays of the training curves); that one class is mapped to
an inert stub. Any other object, or a pickle that tries to call a function, is refused.
"""
from __future__ import annotations

import _compat_pickle
import io
import math
import os
import pickle
import pickletools
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn

from models import ARCHS, FIRST_LAST, QUANTIZERS, set_layer_bias_copies, set_layer_tfactors, use_reference_rel_bias

from .data import DATASETS
from .errors import UserError
from .files import write_bytes
from .optim import DECAY_ON


class ReferenceRecorderStub:
    """Inert stand-in for the reference's RecorderMeter: its attributes only, no methods run."""


def _numpy_array_globals() -> list:
    multiarray = getattr(np, "_core", None) or np.core
    reconstruct = multiarray.multiarray._reconstruct
    dtypes = [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "bool", "uint8")]
    return [(reconstruct, "numpy.core.multiarray._reconstruct"), (reconstruct, "numpy._core.multiarray._reconstruct"),
            np.ndarray, np.dtype, *dtypes]


def _safe_globals() -> list:
    return [(ReferenceRecorderStub, "utils.RecorderMeter"), *_numpy_array_globals()]


def _global_name(entry) -> str:
    return entry[1] if isinstance(entry, tuple) else f"{entry.__module__}.{entry.__qualname__}"


# Exactly the names tensors, plain containers and the numpy arrays of a reference recorder
# need: anything else a refused file imports is named in the error (numpy.testing.runstring too).
_BENIGN_GLOBALS = {"collections.OrderedDict", "torch.device", "torch.Size", "torch.dtype", "builtins.set",
                   "builtins.frozenset", "builtins.slice", "builtins.bytearray", "_codecs.encode",
                   *map(_global_name, _safe_globals())}
_BENIGN_PREFIXES = ("torch._utils._rebuild", "torch._tensor._rebuild")


def _is_benign(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    return (name in _BENIGN_GLOBALS or name.startswith(_BENIGN_PREFIXES)
            or (module == "torch" and (attr.endswith("Storage") or isinstance(getattr(torch, attr, None), torch.dtype))))


def _pickle_streams(path: str) -> list[bytes]:
    """The pickled parts of a checkpoint: data.pkl of the zip format, or the whole legacy file."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [archive.read(name) for name in archive.namelist() if name.endswith(".pkl")]
    with open(path, "rb") as f:
        return [f.read()]


def _python3_name(module: str, name: str) -> str:
    """A protocol-2 pickle names some globals by their Python 2 module (subprocess.check_call
    is written as commands.check_call); report the name Python 3 resolves it to."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _globals_in(data: bytes) -> list[str]:
    """'module.name' of every global the pickles in `data` import, read from the opcodes
    without unpickling (legacy files hold several pickles back to back, then raw bytes)."""
    found, stream = [], io.BytesIO(data)
    for _ in range(8):
        recent: list = []
        memo: dict = {}
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if opcode.name in ("GLOBAL", "INST"):
                    found.append(_python3_name(*arg.split(" ", 1)))
                elif opcode.name == "STACK_GLOBAL" and len(recent) >= 2:
                    found.append(_python3_name(str(recent[-2]), str(recent[-1])))
                elif opcode.name == "MEMOIZE" and recent:
                    memo[len(memo)] = recent[-1]
                elif opcode.name in ("BINPUT", "LONG_BINPUT", "PUT") and recent:
                    memo[arg] = recent[-1]
                elif opcode.name in ("BINGET", "LONG_BINGET", "GET"):
                    recent.append(memo.get(arg))
                elif isinstance(arg, str):
                    recent.append(arg)
                if opcode.name == "STOP":
                    break
            else:
                break
        except Exception:  # the raw tensor bytes after the last pickle, or a damaged file
            break
    return found


def unsafe_globals(path: str) -> list[str]:
    """Globals imported by the checkpoint's pickles that are not tensors, containers or
    the reference's recorder: what a safe loader must refuse (os.system, builtins.exec ...)."""
    try:
        streams = _pickle_streams(path)
    except (OSError, zipfile.BadZipFile):
        return []
    return list(dict.fromkeys(name for data in streams for name in _globals_in(data) if not _is_benign(name)))


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint file safely: torch.load(weights_only=True) rebuilds tensors and
    plain containers only. A file it refuses is reported by the globals its pickle
    imports (found by reading the opcodes, never by running them); a missing or damaged
    file is a UserError too."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; give the checkpoint file inside it (e.g. {path}/checkpoint.pth.tar)")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"cannot read checkpoint {path}: the file is empty")
    try:
        with torch.serialization.safe_globals(_safe_globals()), warnings.catch_warnings():
            # torch warns about any pickle protocol but 2 before refusing or loading it; the outcome is what counts
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        offending = unsafe_globals(path)
        if offending:
            names = ", ".join(offending[:3]) + (", ..." if len(offending) > 3 else "")
            raise UserError(f"refusing to load {path}: it contains code or objects other than tensors and plain data "
                            f"({names}); nothing in it was run") from exc
        raise UserError(f"cannot read checkpoint {path}: the file is damaged or not a PyTorch checkpoint") from exc
    except Exception as exc:  # truncated zip, bad magic number, ...
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"cannot read checkpoint {path}: {type(exc).__name__}: {first_line}") from exc
    if not isinstance(checkpoint, Mapping):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict or state_dict")
    return dict(checkpoint)


def _finite_list(value, positive: bool = False) -> bool:
    return isinstance(value, list) and all(
        type(v) in (int, float) and math.isfinite(v) and (v > 0 or not positive) for v in value)


# What a value main.py records in a checkpoint's args must be, for the settings that build
# the network or define the run (an absent key is fine: older files lack newer flags).
_RECORDED_ARGS = {
    "arch": lambda v: v in ARCHS,
    "dataset": lambda v: v in DATASETS,
    "tex": lambda v: v is None or (type(v) is int and 1 <= v <= 64),
    "tfactors": lambda v: v is None or (_finite_list(v, positive=True) and bool(v)),
    "auto_thresholds": lambda v: isinstance(v, bool),
    "quantizer": lambda v: v in QUANTIZERS,
    "first_last": lambda v: v in (None, *FIRST_LAST),
    "epochs": lambda v: type(v) is int and v >= 1,
    "batch_size": lambda v: type(v) is int and v >= 1,
    "learning_rate": lambda v: type(v) in (int, float) and math.isfinite(v) and v > 0,
    "momentum": lambda v: type(v) in (int, float) and 0 <= v < 1,
    "nesterov": lambda v: isinstance(v, bool),
    "decay": lambda v: type(v) in (int, float) and math.isfinite(v) and v >= 0,
    "decay_on": lambda v: v in DECAY_ON,
    "scale_lr": lambda v: type(v) in (int, float) and math.isfinite(v) and v > 0,
    "schedule": lambda v: isinstance(v, list) and all(type(m) is int and m >= 1 for m in v),
    "gammas": lambda v: _finite_list(v, positive=True),
    "manualSeed": lambda v: type(v) is int and 0 <= v < 2 ** 32,
    "subset": lambda v: v is None or (type(v) is int and v >= 1),
}


def check_recorded_args(checkpoint: Mapping, path: str) -> None:
    """A checkpoint of this project records what it was trained with; a value no run of
    this project can have (an unknown arch, NaN threshold factors, an epoch past the run's
    length) means the file was damaged or edited: a UserError naming the key."""
    saved = checkpoint.get("args")
    if saved is None:
        return
    if not isinstance(saved, Mapping):
        raise UserError(f"{path} records its settings as a {type(saved).__name__}, not a dict; the file is damaged")
    for key, valid in _RECORDED_ARGS.items():
        if key in saved and not valid(saved[key]):
            raise UserError(f"{path} records {key} = {saved[key]!r}, which no run of this project has; the checkpoint "
                            "is damaged or was edited")
    arch = checkpoint.get("arch")
    if arch is not None and arch not in ARCHS:
        raise UserError(f"{path} records arch {arch!r}, which no run of this project has; the checkpoint is damaged "
                        "or was edited")
    epoch, epochs = checkpoint.get("epoch"), saved.get("epochs")
    if epoch is not None and not (type(epoch) is int and 0 <= epoch <= (epochs if type(epochs) is int else epoch)):
        raise UserError(f"{path} records epoch {epoch!r} of a {epochs}-epoch run; the checkpoint is damaged or was "
                        "edited")


def save_checkpoint(state: dict, path: str) -> None:
    """Serialise in memory, then write atomically (utils.files): a crash or a full disk
    mid-save leaves the previous file intact, and a failed write is a UserError naming
    the file and the cause (no space, permission)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getbuffer())


def is_reference_checkpoint(checkpoint: Mapping) -> bool:
    """Whether a checkpoint was written by the authors' reference code (their full
    {epoch, arch, state_dict, recorder, optimizer} dict or a bare state_dict) rather than
    by this project, whose checkpoints always record the threshold factors."""
    return "tfactors" not in checkpoint


def _strip_module(key: str) -> str:
    if key == "module":
        return ""
    return key[len("module."):] if key.startswith("module.") else key


def extract_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint: {'state_dict': ...} or a bare state_dict, with
    the "module." prefix of DataParallel / DistributedDataParallel stripped. The
    state_dict's version metadata is kept: it tells PyTorch how old the file is (e.g.
    BatchNorm's num_batches_tracked did not exist before PyTorch 0.4.1)."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError("the checkpoint holds no state_dict of tensors")
    stripped = OrderedDict((_strip_module(k), v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if isinstance(metadata, Mapping):
        stripped._metadata = OrderedDict((_strip_module(k), v) for k, v in metadata.items())
    return stripped


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load weights as strictly as PyTorch's own strict loading: a key PyTorch accepts as
    absent (num_batches_tracked of a pre-0.4.1 file, TTQ's scales in full-precision weights:
    see TernaryLayerMixin) is fine; a missing, unexpected or wrongly shaped key is a
    UserError naming them, and the model is left unchanged."""
    own = model.state_dict()
    wrong_shape = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
                   for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if not wrong_shape:
        backup = {k: v.clone() for k, v in own.items()}
        result = model.load_state_dict(state_dict, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        if not missing and not unexpected:
            return
        model.load_state_dict(backup, strict=True)
    else:
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
    parts = [f"{label} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
             for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                 ("shape mismatches", wrong_shape)) if keys]
    raise UserError(f"{source} does not fit the model: {'; '.join(parts)}")


def restore_model(model: nn.Module, checkpoint: Mapping, source: str) -> list[str]:
    """Weights, per-layer threshold factors and REL bias rule of a checkpoint, into
    `model`. A checkpoint of the authors' code keeps their REL rule (each branch adds
    the bias); the names of the layers that rule applies to are returned."""
    load_weights(model, extract_state_dict(checkpoint), source=source)
    if is_reference_checkpoint(checkpoint):
        return use_reference_rel_bias(model)
    try:
        if checkpoint["tfactors"]:
            set_layer_tfactors(model, checkpoint["tfactors"])
        set_layer_bias_copies(model, checkpoint.get("bias_copies") or {})
    except (ValueError, TypeError, AttributeError) as exc:
        raise UserError(f"{source}: {exc}") from exc
    return []
