"""Data sets and loaders.

Small data sets (digits, MNIST, Fashion-MNIST, CIFAR-10/100) are held as one uint8
tensor on the training device; TensorLoader draws batches from it and applies the
reference's augmentation (random crop with zero padding, horizontal flip) and
normalisation to whole batches at once. CIFAR comes from torchvision's pickled batches
or from an image-folder copy (train/ and test/ class folders, detected by layout); a
user's own image folder is the "folder" data set, whose classes, channels, size and
normalisation come from its files. ImageNet uses torchvision's ImageFolder with worker
processes.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError
from .files import missing_folders
from .image_folders import is_image_folder, load_image_folder

if TYPE_CHECKING:
    import torchvision

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN = tuple(x / 255 for x in (125.3, 123.0, 113.9))
CIFAR_STD = tuple(x / 255 for x in (63.0, 62.1, 66.7))
# Label order of the data sets: for both CIFARs it is the class names sorted alphabetically.
CLASS_NAMES = {
    "cifar10": "airplane automobile bird cat deer dog frog horse ship truck".split(),
    "cifar100": """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly
        camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur
        dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard
        lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear
        pickup_truck pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark
        shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone
        television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split(),
}


@dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # random crop of image_size after zero padding by this much (0: none)
    flip: bool  # random horizontal flip
    family: str  # which training recipe applies: "cifar", "imagenet" or "small"
    classes: tuple[str, ...] = ()  # class names in label order (empty where not known, e.g. ImageNet)


DIGIT_NAMES = tuple(str(digit) for digit in range(10))
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                 "Ankle boot")
DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(10, 1, 8, (0.3054,), (0.3760,), 1, False, "small", DIGIT_NAMES),
    "mnist": DatasetInfo(10, 1, 28, (0.1307,), (0.3081,), 2, False, "small", DIGIT_NAMES),
    "fashion_mnist": DatasetInfo(10, 1, 28, (0.2860,), (0.3530,), 2, True, "small", FASHION_NAMES),
    "cifar10": DatasetInfo(10, 3, 32, CIFAR_MEAN, CIFAR_STD, 4, True, "cifar", tuple(CLASS_NAMES["cifar10"])),
    "cifar100": DatasetInfo(100, 3, 32, CIFAR_MEAN, CIFAR_STD, 4, True, "cifar", tuple(CLASS_NAMES["cifar100"])),
    "imagenet": DatasetInfo(1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD, 0, True, "imagenet"),
    # a user's image folder: everything but the recipe family comes from its files
    "folder": DatasetInfo(0, 0, 0, (), (), 0, True, "small"),
}


def dataset_info(name: str, data_path: str | None = None, log: Callable[[str], None] = print,
                 cache_dir: str | None = None) -> DatasetInfo:
    """The data set's shape and preprocessing. For "folder" it is read from the folder
    at data_path (decoded once, then cached): its classes, channels, square image size,
    per-channel mean/std of the training split, and a crop padding of size/8. A run asks
    once and passes the result down."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'; valid datasets: {', '.join(DATASETS)}")
    if name != "folder" or data_path is None:
        return DATASETS[name]
    return _folder_info(data_path, log, cache_dir)


def _folder_info(data_path: str, log: Callable[[str], None], cache_dir: str | None) -> DatasetInfo:
    data = load_image_folder(data_path, None, log, cache_dir)
    channels, height, width = data.x_train.shape[1:]
    if height != width:
        raise UserError(f"{data_path}: images are {width}×{height}; the models take square images")
    shown = ", ".join(data.classes[:8]) + (", ..." if len(data.classes) > 8 else "")
    log(f"=> {data_path}: {len(data.classes)} classes ({shown}), {width}×{height} images with {channels} "
        f"channel{'s' if channels > 1 else ''}, {len(data.y_train)} train and {len(data.y_test)} test images")
    return replace(DATASETS["folder"], num_classes=len(data.classes), in_channels=channels, image_size=height,
                   mean=data.mean, std=data.std, crop_padding=max(1, height // 8), classes=tuple(data.classes))


def preprocessing_record(info: DatasetInfo, dataset: str) -> dict:
    """What a model file records so it can be used outside this repository: the data set,
    the input it takes (C, H, W), the normalisation it was trained with and its class names."""
    return {"dataset": dataset, "input_shape": [info.in_channels, info.image_size, info.image_size],
            "mean": list(info.mean), "std": list(info.std), "classes": list(info.classes)}


def check_preprocessing_record(record, source: str) -> dict | None:
    """A preprocessing record read from a file (None when the file predates it), checked."""
    if record is None:
        return None
    shape = record.get("input_shape") if isinstance(record, dict) else None
    valid = (isinstance(shape, list) and len(shape) == 3 and all(type(d) is int and d >= 1 for d in shape)
             and all(isinstance(record.get(key), list) and len(record[key]) == shape[0]
                     and all(type(v) in (int, float) and math.isfinite(v) for v in record[key]) for key in ("mean", "std"))
             and all(v > 0 for v in record["std"]) and isinstance(record.get("classes"), list)
             and all(isinstance(name, str) for name in record["classes"]) and isinstance(record.get("dataset"), str))
    if not valid:
        raise UserError(f"{source} has an invalid preprocessing record (input_shape, mean, std, classes, dataset)")
    return record


class TensorLoader:
    """Batches of (normalised float images, int64 labels) from uint8 images (N, C, H, W).

    With train=True each epoch is a fresh permutation and every batch gets a random
    crop (uniform offset in [0, 2·padding] on each axis of the zero-padded image) and a
    random horizontal flip with p = 0.5, the distribution of torchvision's
    RandomCrop(size, padding) + RandomHorizontalFlip. The randomness comes from a
    generator seeded with seed + epoch, so a resumed run sees the same batches.

    In a distributed run (world_size > 1) every process draws the same permutation and
    takes every world_size-th index from its rank on, padded by wrapping so all ranks
    have as many batches (DistributedSampler's rule); crops and flips then come from a
    generator of the rank's own. The test split is sharded without padding, so the
    metrics summed over ranks are exact.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, info: DatasetInfo, batch_size: int,
                 train: bool, device: torch.device | str = "cpu", seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.train = train
        self.padding = info.crop_padding if train else 0
        self.flip = info.flip and train
        self.mean = torch.tensor(info.mean, device=self.device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(info.std, device=self.device).view(1, -1, 1, 1) * 255
        self.seed = seed
        self.epoch = 0
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard_length(self) -> int:
        n = len(self.labels)
        return -(-n // self.world_size) if self.train else len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        return -(-self._shard_length() // self.batch_size)

    @property
    def dataset_size(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator(device=self.device).manual_seed(self.seed + self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, device=self.device, generator=generator) if self.train else None
        if self.world_size > 1:
            if self.train:
                order = torch.cat([order, order[:(-n) % self.world_size]])[self.rank::self.world_size]
                generator.manual_seed(self.seed + self.epoch + 10_007 * self.rank)
            else:
                order = torch.arange(self.rank, n, self.world_size, device=self.device)
            n = len(order)
        for start in range(0, n, self.batch_size):
            index = order[start:start + self.batch_size] if order is not None else slice(start, start + self.batch_size)
            images = self.images[index]
            if self.padding:
                images = random_crop(images, self.padding, generator)
            if self.flip:
                images = random_flip(images, generator)
            yield (images.float() - self.mean) / self.std, self.labels[index]


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image random crop of the original size from the zero-padded batch, by gather."""
    n, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, n), device=images.device, generator=generator)
    rows = (offsets[0, :, None] + torch.arange(h, device=images.device)).view(n, 1, h, 1)
    cols = (offsets[1, :, None] + torch.arange(w, device=images.device)).view(n, 1, 1, w)
    batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
    channel = torch.arange(c, device=images.device).view(1, c, 1, 1)
    return padded[batch, channel, rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def load_digits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 8×8 digits (values 0..16) as uint8 0..255, stratified 80/20 split."""
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    digits = sklearn_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=seed, stratify=digits.target)
    return tuple(torch.from_numpy(a) for a in (x_train, y_train, x_test, y_test))


def read_idx(path: str) -> torch.Tensor:
    """An IDX (MNIST-format) uint8 file, gzip-compressed or not, as a tensor. A damaged
    file (cut-short header or gzip stream, payload shorter or longer than the header
    says) is a UserError naming it."""
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as exc:
        raise UserError(f"cannot read {path}: {'the gzip stream is cut short or damaged' if path.endswith('.gz') else exc}") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise UserError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise UserError(f"{path}: its header is cut short ({len(data)} bytes for a {ndim}-dimensional header)")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = int(np.prod(shape))
    if payload.size < expected:
        raise UserError(f"{path} is truncated: expected {expected} values, found {payload.size}")
    if payload.size > expected:
        raise UserError(f"{path} has {payload.size - expected} bytes more than its header describes (shape {shape})")
    return torch.from_numpy(payload.copy()).view(*shape)


def check_split(images: torch.Tensor, labels: torch.Tensor, num_classes: int, source: str) -> None:
    """Images (N, C, H, W), at least one, with one label in [0, num_classes) each, or a
    UserError naming `source`."""
    if images.dim() != 4:
        raise UserError(f"{source}: expected images of shape (N, H, W) or (N, C, H, W), found {tuple(images.shape)}")
    if len(images) == 0:
        raise UserError(f"{source}: no images")
    if labels.dim() != 1 or len(labels) != len(images):
        raise UserError(f"{source}: {len(images)} images but {labels.numel()} labels")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)][0]
        raise UserError(f"{source}: label {int(bad)} is outside the {num_classes} classes 0..{num_classes - 1}")


_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _find_idx(directory: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    return None


def load_mnist_like(name: str, data_path: str) -> tuple[torch.Tensor, ...]:
    """MNIST or Fashion-MNIST: files under data_path (flat or torchvision's layout), then
    Debian's dataset-fashion-mnist, then torchvision's download."""
    folder = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name]
    candidates = [data_path, os.path.join(data_path, folder, "raw")]
    if name == "fashion_mnist":
        candidates.append(DEBIAN_FASHION_MNIST)
    for directory in candidates:
        paths = [_find_idx(directory, stem) for split in ("train", "test") for stem in _MNIST_FILES[split]]
        if all(paths):
            x_train, y_train, x_test, y_test = map(read_idx, paths)
            for images, path in ((x_train, paths[0]), (x_test, paths[2])):
                if images.dim() != 3:
                    raise UserError(f"{path}: expected images of shape (N, H, W), found {tuple(images.shape)}")
                if tuple(images.shape[1:]) != (28, 28):
                    raise UserError(f"{path}: {name} images are 28×28, these are "
                                    f"{images.shape[2]}×{images.shape[1]}")
            for labels, path in ((y_train, paths[1]), (y_test, paths[3])):
                if labels.dim() != 1:
                    raise UserError(f"{path}: expected one label per image, found shape {tuple(labels.shape)}")
            check_split(x_train[:, None], y_train.long(), 10, f"{paths[0]} with {paths[1]}")
            check_split(x_test[:, None], y_test.long(), 10, f"{paths[2]} with {paths[3]}")
            return x_train[:, None], y_train.long(), x_test[:, None], y_test.long()
    import torchvision  # here, not at the top: importing it costs a CLI start about 2 s

    dataset_class = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST}[name]
    train = _torchvision_dataset(dataset_class, data_path, train=True, label=name)
    test = _torchvision_dataset(dataset_class, data_path, train=False, label=name)
    return train.data[:, None], train.targets.long(), test.data[:, None], test.targets.long()


# Where a data set that torchvision downloads can come from when there is no network.
_OFFLINE_HINTS = {
    "cifar10": "; without a network, give --data_path an image-folder copy (train/<class>/*.png|jpg and "
               "test/<class>/...), e.g. after `tar xzf cifar10-jpeg.tar.gz -C data`: --data_path data/cifar10-jpeg",
    "cifar100": "; without a network, give --data_path an image-folder copy (train/<class>/ and test/<class>/)",
    "mnist": "; without a network, put the four IDX files (train-images-idx3-ubyte[.gz], ...) in --data_path",
    "fashion_mnist": f"; without a network, install Debian's dataset-fashion-mnist ({DEBIAN_FASHION_MNIST}) or put "
                     "the four IDX files in --data_path",
}


def _torchvision_dataset(dataset_class, root: str, train: bool, label: str):
    """torchvision's data set from `root`, downloading it when it is missing and the network
    allows; a failed download removes the folders it created and names the offline way."""
    try:
        return dataset_class(root, train=train, download=False)
    except RuntimeError:
        pass
    created = missing_folders(root)
    try:
        return dataset_class(root, train=train, download=True)
    except Exception as exc:  # network errors come in many types
        for folder in reversed(created):
            try:
                os.rmdir(folder)
            except OSError:  # not empty: part of the download arrived, keep it for the next try
                break
        raise UserError(f"{label} not found under {root} and could not be downloaded "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
                        f"{_OFFLINE_HINTS.get(label, '')}") from None


def ensure_data(name: str, data_path: str, include_train: bool = True) -> None:
    """Check (downloading where torchvision can) that the data set is at data_path before a
    run writes anything, so that missing data is one error line and no run folder."""
    if name in ("cifar10", "cifar100"):
        if not is_image_folder(data_path):
            import torchvision

            dataset_class = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
            for train in (True, False):
                _torchvision_dataset(dataset_class, data_path, train=train, label=name)
    elif name in ("mnist", "fashion_mnist"):
        load_mnist_like(name, data_path)
    elif name == "imagenet":
        for split in ("train", "val") if include_train else ("val",):
            if not os.path.isdir(os.path.join(data_path, split)):
                raise UserError(f"imagenet expects an ImageFolder at {os.path.join(data_path, split)} (one sub-folder "
                                "of images per class)")


def load_cifar(name: str, data_path: str, log: Callable[[str], None] = print,
               cache_dir: str | None = None) -> tuple[torch.Tensor, ...]:
    """CIFAR from an image-folder copy at data_path (class folders named as the data
    set's classes) or from torchvision's pickled batches (downloaded when missing)."""
    if is_image_folder(data_path):
        data = load_image_folder(data_path, CLASS_NAMES[name], log, cache_dir)
        x_train, x_test = (x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x for x in (data.x_train, data.x_test))
        if x_train.shape[2:] != (32, 32):
            raise UserError(f"{data_path}: {name} images are 32×32, these are {x_train.shape[3]}×{x_train.shape[2]}")
        return x_train, data.y_train, x_test, data.y_test
    import torchvision

    dataset_class = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    train = _torchvision_dataset(dataset_class, data_path, train=True, label=name)
    test = _torchvision_dataset(dataset_class, data_path, train=False, label=name)
    return _nchw(train.data), torch.tensor(train.targets), _nchw(test.data), torch.tensor(test.targets)


def _nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


class ImageFolderLoader(torch.utils.data.DataLoader):
    """DataLoader with worker processes, pinned memory and persistent workers, whose
    shuffling and worker seeds follow seed + epoch (set_epoch). In a distributed run the
    training split goes through a DistributedSampler and the validation split is sharded
    without padding (every image evaluated exactly once over all ranks)."""

    def __init__(self, dataset, batch_size: int, train: bool, workers: int, pin_memory: bool, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.seed = seed
        sampler = None
        if world_size > 1:
            sampler = (torch.utils.data.DistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed)
                       if train else list(range(rank, len(dataset), world_size)))
        super().__init__(dataset, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                         num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
                         generator=torch.Generator().manual_seed(seed))

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)
        if isinstance(self.sampler, torch.utils.data.DistributedSampler):
            self.sampler.set_epoch(epoch)

    @property
    def dataset_size(self) -> int:
        return len(self.dataset)


def imagenet_transforms(train: bool) -> torchvision.transforms.Compose:
    import torchvision.transforms as T

    if train:
        steps = [T.RandomResizedCrop(224), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(256), T.CenterCrop(224)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def load_imagenet(data_path: str, batch_size: int, workers: int, pin_memory: bool, seed: int,
                  include_train: bool = True, subset: int | None = None, rank: int = 0,
                  world_size: int = 1) -> list[ImageFolderLoader | None]:
    loaders: list[ImageFolderLoader | None] = []
    for split, train in (("train", True), ("val", False)):
        if train and not include_train:
            loaders.append(None)
            continue
        root = os.path.join(data_path, split)
        if not os.path.isdir(root):
            raise UserError(f"imagenet expects an ImageFolder at {root} (one sub-folder of images per class)")
        from torchvision.datasets import ImageFolder

        dataset = ImageFolder(root, transform=imagenet_transforms(train))
        index = random_subset(len(dataset), subset, seed) if train else None
        if index is not None:
            dataset = torch.utils.data.Subset(dataset, index.tolist())
        loaders.append(ImageFolderLoader(dataset, batch_size, train, workers, pin_memory, seed, rank, world_size))
    return loaders


def random_subset(size: int, subset: int | None, seed: int) -> torch.Tensor | None:
    """Indices of a seeded random subset of `subset` items (None: use everything)."""
    if subset is None or subset >= size:
        return None
    if subset < 1:
        raise UserError(f"--subset must be positive, got {subset}")
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:subset]


def build_loaders(name: str, data_path: str, info: DatasetInfo, batch_size: int, device: torch.device, seed: int = 0,
                  workers: int = 4, subset: int | None = None, include_train: bool = True, rank: int = 0,
                  world_size: int = 1, log: Callable[[str], None] = print, cache_dir: str | None = None
                  ) -> tuple[TensorLoader | ImageFolderLoader | None, TensorLoader | ImageFolderLoader]:
    """(train loader, test loader) for a data set; both have set_epoch and dataset_size.
    `subset` trains on a seeded random subset of the training split; with
    include_train=False (evaluation) the train loader is None and ImageNet's train
    folder is not scanned. `info` is dataset_info's for the data set. `batch_size` is per
    process; rank/world_size shard both splits."""
    shard = dict(rank=rank, world_size=world_size)
    if name == "imagenet":
        train, test = load_imagenet(data_path, batch_size, workers, device.type == "cuda", seed, include_train, subset,
                                    **shard)
        return train, test
    if name == "digits":
        arrays = load_digits()
    elif name in ("mnist", "fashion_mnist"):
        arrays = load_mnist_like(name, data_path)
    elif name == "folder":
        data = load_image_folder(data_path, None, log, cache_dir)
        arrays = data.x_train, data.y_train, data.x_test, data.y_test
    else:
        arrays = load_cifar(name, data_path, log, cache_dir)
    x_train, y_train, x_test, y_test = arrays
    check_split(x_test, y_test, info.num_classes, f"{name} test split")
    if include_train:
        check_split(x_train, y_train, info.num_classes, f"{name} training split")
        if len(y_train) < 2:
            raise UserError(f"{name} training split: 1 image; BatchNorm needs batches of at least 2")
    test = TensorLoader(x_test, y_test, info, batch_size, train=False, device=device, seed=seed, **shard)
    if not include_train:
        return None, test
    index = random_subset(len(y_train), subset, seed)
    if index is not None:
        x_train, y_train = x_train[index], y_train[index]
    return TensorLoader(x_train, y_train, info, batch_size, train=True, device=device, seed=seed, **shard), test
