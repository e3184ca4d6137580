"""Data sets and the batched uint8 augmentation pipeline."""
import os
import pickle

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from utils.data import DATASETS, DEBIAN_FASHION_MNIST, TensorLoader, build_loaders, random_crop, random_flip, read_idx
from utils.errors import UserError


def test_random_crop_covers_every_offset_with_exact_values():
    images = torch.randint(0, 256, (4000, 1, 6, 6), dtype=torch.uint8)
    padding = 2
    out = random_crop(images, padding, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    seen = set()
    for i in range(len(images)):
        matches = [(dy, dx) for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)
                   if torch.equal(out[i], padded[i, :, dy:dy + 6, dx:dx + 6])]
        assert matches, "crop is not a window of the padded image"
        seen.update(matches)
    assert seen == {(dy, dx) for dy in range(5) for dx in range(5)}


def test_random_flip_is_a_fair_coin_and_exact():
    images = torch.randint(0, 256, (2000, 3, 4, 4), dtype=torch.uint8)
    out = random_flip(images, torch.Generator().manual_seed(0))
    flipped = (out == images.flip(3)).flatten(1).all(1) & ~(out == images).flatten(1).all(1)
    kept = (out == images).flatten(1).all(1)
    assert bool((flipped | kept).all())
    assert 0.45 < flipped.float().mean() < 0.55


def test_tensor_loader_normalises_and_seeds_per_epoch():
    info = DATASETS["cifar10"]
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    test_loader = TensorLoader(images, torch.arange(10), info, batch_size=4, train=False)
    x, y = next(iter(test_loader))
    expected = (images[:4].float() / 255 - torch.tensor(info.mean).view(1, 3, 1, 1)) / torch.tensor(info.std).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)
    assert len(test_loader) == 3 and torch.equal(y, torch.arange(4))
    train_loader = TensorLoader(images, torch.arange(10), info, batch_size=4, train=True, seed=3)
    first = torch.cat([y for _, y in train_loader])
    assert sorted(first.tolist()) == list(range(10))
    assert torch.equal(torch.cat([y for _, y in train_loader]), first)
    train_loader.set_epoch(1)
    assert not torch.equal(torch.cat([y for _, y in train_loader]), first)


def _write_cifar10(root, n_train=10, n_test=6):
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    arrays = {}
    for name, n in [(f"data_batch_{i}", n_train) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": data, "labels": labels, "batch_label": name}, f)
        arrays[name] = (data, labels)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return arrays


def test_cifar10_loader_reads_the_python_pickle_format(tmp_path, monkeypatch):
    arrays = _write_cifar10(str(tmp_path))
    # The generated files cannot match torchvision's md5 sums of the real ones.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)
    train, test = build_loaders("cifar10", str(tmp_path), DATASETS["cifar10"], batch_size=50, device=torch.device("cpu"))
    assert train.dataset_size == 50 and test.dataset_size == 6
    expected = torch.from_numpy(arrays["test_batch"][0]).view(6, 3, 32, 32)
    assert torch.equal(test.images, expected)
    assert test.labels.tolist() == arrays["test_batch"][1]
    x, y = next(iter(train))
    assert x.shape == (50, 3, 32, 32) and x.dtype == torch.float32


def write_image_folders(root):
    """train/ and val/ ImageFolders: 2 classes × 3 random JPEGs of different heights."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            os.makedirs(root / split / cls)
            for i in range(3):
                pixels = rng.integers(0, 256, (40 + 10 * i, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.JPEG")


def test_imagenet_loader_reads_an_image_folder_of_jpegs(tmp_path):
    write_image_folders(tmp_path)
    train, val = build_loaders("imagenet", str(tmp_path), DATASETS["imagenet"], batch_size=4, device=torch.device("cpu"), workers=0)
    x, y = next(iter(val))
    assert x.shape == (4, 3, 224, 224) and y.tolist() == [0, 0, 0, 1]
    assert train.dataset_size == 6 and next(iter(train))[0].shape == (4, 3, 224, 224)


def test_imagenet_loaders_shard_across_processes(tmp_path):
    write_image_folders(tmp_path)
    val_labels, train_sizes = [], []
    for rank in range(2):
        train, val = build_loaders("imagenet", str(tmp_path), DATASETS["imagenet"], batch_size=2, device=torch.device("cpu"), workers=0,
                                   rank=rank, world_size=2)
        assert isinstance(train.sampler, torch.utils.data.DistributedSampler) and train.sampler.rank == rank
        train.set_epoch(3)
        assert train.sampler.epoch == 3
        train_sizes.append(sum(len(y) for _, y in train))
        val_labels += [label for _, y in val for label in y.tolist()]
    assert train_sizes == [3, 3] and sorted(val_labels) == [0, 0, 0, 1, 1, 1]  # every val image exactly once


def test_imagenet_evaluation_does_not_need_the_train_folder(tmp_path):
    os.makedirs(tmp_path / "val" / "n01")
    Image.fromarray(np.zeros((30, 30, 3), dtype=np.uint8)).save(tmp_path / "val" / "n01" / "a.JPEG")
    train, val = build_loaders("imagenet", str(tmp_path), DATASETS["imagenet"], 2, torch.device("cpu"), workers=0, include_train=False)
    assert train is None and val.dataset_size == 1


def test_imagenet_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="ImageFolder"):
        build_loaders("imagenet", str(tmp_path), DATASETS["imagenet"], 4, torch.device("cpu"))


def test_read_idx_roundtrip_and_truncation(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = b"\0\0\x08\x03" + np.array([2, 3, 4], dtype=">u4").tobytes()
    (tmp_path / "ok").write_bytes(header + images.tobytes())
    assert torch.equal(read_idx(str(tmp_path / "ok")), torch.from_numpy(images))
    (tmp_path / "short").write_bytes(header + images.tobytes()[:-1])
    with pytest.raises(UserError, match="truncated"):
        read_idx(str(tmp_path / "short"))


def test_digits_split_is_fixed_and_stratified():
    train, test = build_loaders("digits", "unused", DATASETS["digits"], 64, torch.device("cpu"))
    assert (train.dataset_size, test.dataset_size) == (1437, 360)
    assert torch.bincount(test.labels).min() >= 35
    assert torch.equal(test.images, build_loaders("digits", "unused", DATASETS["digits"], 64, torch.device("cpu"))[1].images)


@pytest.mark.skipif(not os.path.isdir(DEBIAN_FASHION_MNIST), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian_package(tmp_path):
    train, test = build_loaders("fashion_mnist", str(tmp_path), DATASETS["fashion_mnist"], 128, torch.device("cpu"), subset=1000)
    assert (train.dataset_size, test.dataset_size) == (1000, 10000)
    assert test.images.shape == (10000, 1, 28, 28) and test.labels.max() == 9
