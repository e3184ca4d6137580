import os
import sys
import tarfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# README's test command runs one pytest-xdist worker per core: each computes with one
# thread (torch's default, a thread per core in every worker, would oversubscribe the
# cores), and so do the processes its tests start.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# The JPEG copy of CIFAR-10 (../shared/data/README.md): beside this checkout, or where CIFAR10_JPEG_TAR says.
CIFAR_JPEG_TAR = os.environ.get("CIFAR10_JPEG_TAR") or os.path.join(ROOT, "..", "shared", "data",
                                                                      "cifar10-jpeg.tar.gz")
needs_cifar_jpeg = pytest.mark.skipif(not os.path.isfile(CIFAR_JPEG_TAR),
                                      reason=f"the JPEG CIFAR-10 archive is not at {CIFAR_JPEG_TAR} "
                                             "(set CIFAR10_JPEG_TAR to its path)")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def extract_cifar_slice(root, train_per_class: int, test_per_class: int) -> None:
    """The first N images of every class of each split from the JPEG CIFAR-10 archive."""
    wanted = {"train": train_per_class, "test": test_per_class}
    counts = {}
    with tarfile.open(CIFAR_JPEG_TAR) as archive:
        for member in archive:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4:
                continue
            key = (parts[1], parts[2])
            if counts.get(key, 0) < wanted.get(parts[1], 0):
                counts[key] = counts.get(key, 0) + 1
                target = os.path.join(root, parts[1], parts[2], parts[3])
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as f:
                    f.write(archive.extractfile(member).read())


@pytest.fixture(scope="session")
def cifar10_jpeg_test_split(tmp_path_factory) -> str:
    """All 10,000 test images of the JPEG CIFAR-10 (and one training image per class, as
    an image-folder data set needs both splits), extracted once per test session."""
    if not os.path.isfile(CIFAR_JPEG_TAR):
        pytest.skip(f"the JPEG CIFAR-10 archive is not at {CIFAR_JPEG_TAR} (set CIFAR10_JPEG_TAR to its path)")
    root = tmp_path_factory.mktemp("cifar10-jpeg")
    extract_cifar_slice(root, train_per_class=1, test_per_class=1000)
    return str(root)
