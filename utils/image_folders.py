"""Image-folder data sets, decoded once into a uint8 cache.

Layout: ROOT/train/<class>/*.png|jpg|jpeg and ROOT/test/<class>/* (or ROOT/val/...).
Classes are the sub-folder names in sorted order, so label i is the i-th name. All
images must share one size; a folder of grayscale images gives one channel, any colour
image makes the whole set RGB.

Decoding tens of thousands of small files is slow, so the decoded tensors are cached in
ROOT/.decoded.pt (or, when ROOT is read-only, under ~/.cache/ternary-cnn/; main.py's
--cache_dir DIR puts it in DIR instead, e.g. for data on a slow or shared disk). CIFAR-10's
cache is about 185 MB. The cache
holds a fingerprint of every file's relative path, size and modification time; a run
whose folder fingerprint differs decodes again and replaces the cache. Within one
process the decoded tensors of the last folder are kept in memory.
"""
from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .errors import UserError
from .files import write_bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CACHE_NAME = ".decoded.pt"
CACHE_FORMAT = 2
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass
class FolderData:
    classes: list[str]
    x_train: torch.Tensor  # uint8 (N, C, H, W)
    y_train: torch.Tensor  # int64 (N,)
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: tuple[float, ...]  # per channel, of the training split, in [0, 1]
    std: tuple[float, ...]


def is_image_folder(root: str) -> bool:
    """Whether `root` has the train/ + test/ (or val/) layout."""
    return os.path.isdir(os.path.join(root, "train")) and _test_split(root) is not None


def _test_split(root: str) -> str | None:
    for name in ("test", "val"):
        if os.path.isdir(os.path.join(root, name)):
            return name
    return None


def _list_split(root: str, split: str) -> dict[str, list[os.DirEntry]]:
    """{class name: image files, sorted by name} of one split; an entry that cannot be
    read (a symlink loop, no permission) is a UserError naming it."""
    try:
        return _scan_split(os.path.join(root, split))
    except OSError as exc:
        raise UserError(f"cannot read {exc.filename or os.path.join(root, split)}: "
                        f"{(exc.strerror or str(exc)).lower()}") from None


def _scan_split(split_dir: str) -> dict[str, list[os.DirEntry]]:
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise UserError(f"{split_dir} has no class folders (expected {split_dir}/<class>/<image files>)")
    listing = {}
    for name in classes:
        files = sorted((entry for entry in os.scandir(os.path.join(split_dir, name))
                        if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)), key=lambda e: e.name)
        if not files:
            raise UserError(f"class folder {os.path.join(split_dir, name)} holds no .png/.jpg/.jpeg images")
        listing[name] = files
    return listing


def _fingerprint(listings: dict[str, dict[str, list[os.DirEntry]]]) -> str:
    """Hash of every file's split/class/name, size and mtime: changes when any file does."""
    digest = hashlib.sha256()
    for split, listing in listings.items():
        for name, files in listing.items():
            for entry in files:
                stat = entry.stat()
                digest.update(f"{split}/{name}/{entry.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decode(path: str) -> torch.Tensor:
    """One image as uint8 (C, H, W): grayscale modes give C = 1, everything else RGB."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if image.mode in GRAYSCALE_MODES else "RGB")
    except Image.DecompressionBombError:
        raise UserError(f"image {path} has more pixels than Pillow decodes safely ({2 * Image.MAX_IMAGE_PIXELS:,}: "
                        "its decompression-bomb limit); it is refused, not decoded") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UserError(f"cannot decode image {path} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    pixels = torch.from_numpy(np.asarray(image).copy())
    return pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1)


def _decode_split(root: str, split: str, listing: dict[str, list[os.DirEntry]],
                  pool: ThreadPoolExecutor) -> tuple[list[torch.Tensor], torch.Tensor, list[str]]:
    paths = [os.path.join(root, split, name, entry.name) for name, files in listing.items() for entry in files]
    labels = torch.tensor([label for label, files in enumerate(listing.values()) for _ in files], dtype=torch.int64)
    decoded = tqdm(pool.map(_decode, paths, chunksize=256), total=len(paths), desc=f"decoding {split}/",
                   unit=" images", disable=None, leave=False)  # a bar on a terminal only
    return list(decoded), labels, paths


def _stack(images: list[torch.Tensor], paths: list[str], size: tuple[int, int], channels: int) -> torch.Tensor:
    out = torch.empty(len(images), channels, *size, dtype=torch.uint8)
    for i, (image, path) in enumerate(zip(images, paths)):
        if tuple(image.shape[1:]) != size:
            raise UserError(f"image {path} is {image.shape[2]}×{image.shape[1]} but the data set's images are "
                            f"{size[1]}×{size[0]}: all images must have one size")
        out[i] = image.expand(channels, -1, -1)
    return out


def decode_folder(root: str, listings: dict[str, dict[str, list[os.DirEntry]]]) -> dict:
    """Decode every image of both splits (in parallel threads) into uint8 tensors."""
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        decoded = {split: _decode_split(root, split, listing, pool) for split, listing in listings.items()}
    first_split = next(iter(decoded.values()))
    size = tuple(first_split[0][0].shape[1:])
    channels = 3 if any(image.shape[0] == 3 for images, _, _ in decoded.values() for image in images) else 1
    result = {}
    for role, (images, labels, paths) in zip(("train", "test"), decoded.values()):
        result[f"x_{role}"] = _stack(images, paths, size, channels)
        result[f"y_{role}"] = labels
    pixels = result["x_train"].transpose(0, 1).reshape(channels, -1)
    result["mean"] = tuple((pixels.double().mean(1) / 255).tolist())
    result["std"] = tuple((pixels.double().std(1) / 255).tolist())
    return result


def _cache_paths(root: str, cache_dir: str | None = None) -> list[str]:
    """Where the cache of `root` may be, in order: `cache_dir` when given, else beside the
    data and then the user's cache folder."""
    key = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:16]
    if cache_dir:
        return [os.path.join(cache_dir, f"{key}.pt")]
    user_cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "ternary-cnn")
    return [os.path.join(root, CACHE_NAME), os.path.join(user_cache, f"{key}.pt")]


def _read_cache(path: str, fingerprint: str) -> dict | None:
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an unreadable or foreign cache file is simply rebuilt
        return None
    if not isinstance(cache, dict) or cache.get("format") != CACHE_FORMAT or cache.get("fingerprint") != fingerprint:
        return None
    return cache


def _write_cache(cache: dict, cache_dir: str | None) -> str | None:
    """Write the cache atomically to the first writable location; None if none is."""
    buffer = io.BytesIO()
    torch.save(cache, buffer)
    for path in _cache_paths(cache["root"], cache_dir):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_bytes(path, buffer.getbuffer())
            return path
        except (OSError, UserError):
            continue
    return None


def load_image_folder(root: str, expected_classes: list[str] | None = None, log=print,
                      cache_dir: str | None = None) -> FolderData:
    """Both splits of an image-folder data set as uint8 tensors, from the cache when the
    folder is unchanged. `expected_classes`: the data set's class names in label order;
    a folder whose classes differ is refused. `cache_dir`: where the cache goes (default:
    beside the data, else the user's cache folder)."""
    test_split = _test_split(root)
    if not os.path.isdir(os.path.join(root, "train")) or test_split is None:
        raise UserError(f"{root} is not an image folder: expected {root}/train/<class>/ and {root}/test/<class>/ "
                        "(or val/)")
    listings = {"train": _list_split(root, "train"), test_split: _list_split(root, test_split)}
    classes = list(listings["train"])
    if len(classes) < 2:
        raise UserError(f"{root}: one class ({classes[0]}); a classifier needs at least two class folders")
    if list(listings[test_split]) != classes:
        difference = sorted(set(classes) ^ set(listings[test_split]))
        raise UserError(f"{root}: train/ and {test_split}/ have different class folders "
                        f"(only in one of them: {', '.join(difference)})")
    if expected_classes is not None and classes != list(expected_classes):
        missing = [c for c in expected_classes if c not in classes]
        extra = [c for c in classes if c not in expected_classes]
        raise UserError(f"{root}: class folders do not match the data set's classes "
                        f"(missing: {', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'})")
    fingerprint = _fingerprint(listings)
    if (os.path.abspath(root), fingerprint) in _LOADED:
        return _LOADED[os.path.abspath(root), fingerprint]
    for path in _cache_paths(root, cache_dir):
        cache = _read_cache(path, fingerprint) if os.path.isfile(path) else None
        if cache is not None:
            log(f"=> decoded images from cache {path}")
            break
    else:
        count = sum(len(files) for listing in listings.values() for files in listing.values())
        log(f"=> decoding {count} images under {root} (once; cached for later runs)")
        cache = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "root": root, "classes": classes,
                 **decode_folder(root, listings)}
        written = _write_cache(cache, cache_dir)
        log(f"=> cached decoded images in {written}" if written else "=> no writable cache location; not cached")
    data = FolderData(cache["classes"], cache["x_train"], cache["y_train"], cache["x_test"], cache["y_test"],
                      tuple(cache["mean"]), tuple(cache["std"]))
    _LOADED.clear()  # one folder in memory at a time
    _LOADED[os.path.abspath(root), fingerprint] = data
    return data


_LOADED: dict[tuple[str, str], FolderData] = {}
