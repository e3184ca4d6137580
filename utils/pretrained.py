"""The trained models this repository ships, as PyTorch users load them.

    from utils.pretrained import list_pretrained, load_pretrained     # also models.load_pretrained
    model = load_pretrained("tern_resnet20_e200_seed5000")           # eval mode, the file's sha256 checked
    label = model.classes[model(model.transforms(image)[None]).argmax()]

Each shipped file is listed in pretrained/DATASET/manifest.json (tools.publish writes it)
with its sha256; a file that does not match is refused. The returned module carries what a
user needs around it, like torchvision's weights: `transforms` (PIL image → normalised
tensor, as in training), `classes` (class names in label order) and `meta` (the manifest
entry: metrics, recipe, source file). hubconf.py builds torch.hub's entry points on
`hub_entry_points`: one per shipped family (`tern_resnet20`, `resnet20`, ...).
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Callable

import torch.nn as nn

import models

from .cli import read_json
from .data import DATASETS, preprocessing_record
from .errors import UserError
from .model_loader import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINED_ROOT = os.path.join(ROOT, "pretrained")
# VARIANT_ARCH_eEPOCHS_seedSEED; the variant is the method (fp, tern, rel2, ttq, ...) with the train
# scripts' suffixes: _auto thresholds, _fflf / _ff (first and last / first layer full precision), _ft fine-tuned
_NAME = re.compile(r"^(?P<variant>[a-z0-9]+(?:_(?:auto|fflf|ff|ft))*)_(?P<arch>.+)_e(?P<epochs>\d+)_seed(?P<seed>\d+)$")
_FIRST_LAST_SUFFIXES = {"fflf": "fp", "ff": "first_fp"}
_SUFFIX_WORDS = {"auto": "optimised thresholds", "fflf": "first and last layer full precision",
                 "ff": "first conv full precision", "ft": "fine-tuned from full precision"}


def read_manifest(path: str) -> dict:
    """pretrained/DATASET/manifest.json ({"files": []} when there is none yet), checked."""
    if not os.path.exists(path):
        return {"files": []}
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list) or not all(
            isinstance(e, dict) and {"name", "file"} <= e.keys() for e in manifest["files"]):
        raise UserError(f"{path} is not a manifest of shipped models (a 'files' list of name/file entries)")
    return manifest


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifests(root: str) -> list[tuple[str, dict]]:
    """(folder, manifest) of every data set under `root` that ships models."""
    if not os.path.isdir(root):
        return []
    folders = sorted(os.path.join(root, name) for name in os.listdir(root))
    return [(folder, read_manifest(os.path.join(folder, "manifest.json"))) for folder in folders
            if os.path.isfile(os.path.join(folder, "manifest.json"))]


def list_pretrained(root: str = PRETRAINED_ROOT) -> list[str]:
    """Names of the shipped models, e.g. 'tern_resnet20_e200_seed5000'."""
    return [entry["name"] for _, manifest in _manifests(root) for entry in manifest["files"]]


def _find(name: str, root: str) -> tuple[dict, str]:
    for folder, manifest in _manifests(root):
        for entry in manifest["files"]:
            if entry["name"] == name:
                return entry, folder
    raise UserError(f"no shipped model named {name!r}; shipped: {', '.join(list_pretrained(root)) or 'none'}")


def verified_file(entry: dict, folder: str) -> str:
    """The entry's file, after checking it against the manifest's sha256."""
    path = os.path.join(folder, entry["file"])
    if not os.path.isfile(path):
        raise UserError(f"{path} is listed in the manifest but missing (a git checkout restores it)")
    actual = sha256(path)
    if actual != entry.get("sha256"):
        raise UserError(f"{path} does not match its manifest (sha256 {actual[:12]}… instead of "
                        f"{str(entry.get('sha256'))[:12]}…): the file was changed or damaged; restore it with "
                        f"git checkout -- {os.path.relpath(path, ROOT) if path.startswith(ROOT) else path}")
    return path


def image_transform(record: dict) -> Callable:
    """PIL image → float tensor (C, H, W) as the model was trained on: converted to its
    channels, resized (shorter side) and centre-cropped to its input size, scaled to
    [0, 1] and normalised with its mean and std."""
    import torchvision.transforms as T

    channels, size, _ = record["input_shape"]
    mode = "L" if channels == 1 else "RGB"
    return T.Compose([T.Lambda(functools.partial(_convert, mode=mode)), T.Resize(size), T.CenterCrop(size),
                      T.ToTensor(), T.Normalize(record["mean"], record["std"])])


def _convert(image, mode: str):
    return image if image.mode == mode else image.convert(mode)


def load_pretrained(name: str, root: str = PRETRAINED_ROOT) -> nn.Module:
    """The shipped model `name` (see list_pretrained) in eval mode, rebuilt by the one model
    loader (utils.model_loader), with .transforms, .classes and .meta."""
    entry, folder = _find(name, root)
    path = verified_file(entry, folder)
    dataset = entry.get("dataset", os.path.basename(folder))
    if dataset not in DATASETS or dataset == "folder":
        raise UserError(f"{path}: shipped models of data set {dataset!r} are not supported (a known data set's "
                        "shape and classes are needed to rebuild them)")
    info = DATASETS[dataset]
    model = load_model(path, info, dataset, log=lambda _: None).model.eval()
    record = getattr(model, "preprocessing", None) or preprocessing_record(info, dataset)
    model.transforms = image_transform(record)
    model.classes = list(record["classes"])
    model.meta = {**entry, "source": path, "preprocessing": record}
    return model


def family_of(name: str) -> str:
    """A shipped model's hub entry point: tern_resnet20_e40_seed5000 → tern_resnet20, fp_resnet20_… → resnet20."""
    match = _NAME.match(name)
    if match is None:
        raise UserError(f"shipped model name {name!r} is not VARIANT_ARCH_eEPOCHS_seedSEED")
    variant, arch = match["variant"], match["arch"]
    return arch if variant == "fp" else f"{variant}_{arch}"


def _variant_parts(name: str) -> tuple[str, str, list[str]]:
    """(method, quantizer, suffixes) of a shipped model's name: ttq_ff_ft_… → ("ttq", "ttq", ["ff", "ft"]);
    "tern" and "rel2" are the paper's quantizer."""
    method, *suffixes = _NAME.match(name)["variant"].split("_")
    return method, method if method in models.QUANTIZERS else "paper", suffixes


def _untrained(entry: dict, **kwargs) -> nn.Module:
    """The architecture of a shipped family with fresh weights (models.get_model)."""
    _, quantizer, suffixes = _variant_parts(entry["name"])
    first_last = next((_FIRST_LAST_SUFFIXES[s] for s in suffixes if s in _FIRST_LAST_SUFFIXES), None)
    options = {"num_classes": len((entry.get("preprocessing") or {}).get("classes") or []) or 10,
               "first_last": first_last, **kwargs}
    try:
        return models.get_model(entry["arch"], quantizer=quantizer, **options)
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None


def _hub_entry(family: str, entries: list[dict], root: str) -> Callable[..., nn.Module]:
    runs = sorted((entry["epochs"], entry["seed"]) for entry in entries)
    longest = max(epochs for epochs, _ in runs)
    seed = min(seed for epochs, seed in runs if epochs == longest)

    def entry_point(pretrained: bool = False, epochs: int = longest, seed: int = seed, **kwargs) -> nn.Module:
        if not pretrained:
            return _untrained(entries[0], **kwargs)
        if kwargs:
            raise UserError(f"{family}(pretrained=True) takes epochs= and seed= only, not {', '.join(kwargs)}")
        chosen = [e for e in entries if (e["epochs"], e["seed"]) == (epochs, seed)]
        if not chosen:
            shipped = ", ".join(f"epochs={e} seed={s}" for e, s in runs)
            raise UserError(f"no shipped {family} with epochs={epochs} seed={seed}; shipped: {shipped}")
        return load_pretrained(chosen[0]["name"], root)

    first = entries[0]
    method, quantizer, suffixes = _variant_parts(first["name"])
    kind = ", ".join(["full precision" if method == "fp" else f"ternarized, {quantizer} quantizer",
                      *([f"REL t_ex = {method[3:]}"] if method.startswith("rel") else []),
                      *(_SUFFIX_WORDS[suffix] for suffix in suffixes)])
    shipped = "; ".join(f"epochs={e}, seed={s}" for e, s in runs)
    entry_point.__name__ = entry_point.__qualname__ = family
    entry_point.__doc__ = (
        f"{family}: {first['arch']} ({kind}) on {first.get('dataset', '?')}.\n\n"
        f"pretrained=False: the untrained architecture (keyword arguments go to models.get_model).\n"
        f"pretrained=True: a shipped model in eval mode, its file checked against the manifest's sha256,\n"
        f"with .transforms, .classes and .meta. Shipped: {shipped}; default epochs={longest}, seed={seed}.")
    return entry_point


def hub_entry_points(root: str = PRETRAINED_ROOT) -> dict[str, Callable[..., nn.Module]]:
    """{family: entry point} of every shipped family, for hubconf.py."""
    families: dict[str, list[dict]] = {}
    for _, manifest in _manifests(root):
        for entry in manifest["files"]:
            families.setdefault(family_of(entry["name"]), []).append(entry)
    return {family: _hub_entry(family, entries, root) for family, entries in sorted(families.items())}
