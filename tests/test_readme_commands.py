"""README's commands, run as a user runs them after the quick start (`source .venv/bin/activate`):
each line of its bash blocks, in order, in a copy of the repository whose data/ holds tiny
data sets in the layouts the commands name. Only the length changes: training commands
get --epochs 2 (the resume --epochs 3), the CIFAR matrix EPOCHS=2 (its run folders, named
by the length, follow), and the two commands that would train for days (the whole table,
ImageNet) run as DRY_RUN=1. The quick-start lines themselves are what CI runs."""
import os
import re
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, write_mnist
from utils.data import CLASS_NAMES

COPIED = ("main.py", "models", "utils", "tools", "train_CIFAR10.sh", "train_ImageNet.sh", "README.md", "pretrained",
          "results")
LONG_MATRICES = ("bash train_CIFAR10.sh", "DATA_PATH=/data/imagenet bash train_ImageNet.sh")
QUICK_START = ("python3 -m venv",)


def readme_commands() -> list[str]:
    """The command lines of README's bash blocks (continuations joined, comments dropped)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```bash\n(.*?)```", f.read(), flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith(QUICK_START):
                commands.append(command)
    return commands


def shortened(command: str) -> str:
    """The command at the test's length (see the module docstring)."""
    if command in LONG_MATRICES:
        return f"DRY_RUN=1 {command}"
    command = command.replace("EPOCHS=40", "EPOCHS=2").replace("_e40_", "_e2_")
    if command.startswith("python main.py") and "--evaluate" not in command and "--export" not in command:
        command = command.replace("--epochs 30", "--epochs 3") if "--epochs" in command else f"{command} --epochs 2"
    return command


def write_tiny_data(root):
    write_mnist(str(root / "data"), n_train=64, n_test=16)  # Fashion-MNIST's IDX files, flat in ./data
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        for name in CLASS_NAMES["cifar10"]:
            os.makedirs(root / "data" / "cifar10-jpeg" / split / name)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / "data" / "cifar10-jpeg" / split / name / f"{i}.jpg")
        for name in ("cats", "dogs"):
            os.makedirs(root / "my_images" / split / name)
            for i in range(count * 2):
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
                    root / "my_images" / split / name / f"{i}.png")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A copy of the repository with tiny data, and `python` on PATH being this interpreter."""
    root = tmp_path_factory.mktemp("user")
    for name in COPIED:
        source = os.path.join(ROOT, name)
        (shutil.copytree if os.path.isdir(source) else shutil.copy)(source, root / name)
    write_tiny_data(root)
    archive = root.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"  # README's offline CIFAR-10 step unpacks it
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "data" / "cifar10-jpeg", arcname="cifar10-jpeg")
    (root / "bin").mkdir()
    (root / "bin" / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (root / "bin" / "python").chmod(0o755)
    env = {**os.environ, "PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHON", None)
    return root, env


def test_readme_names_the_commands_this_test_runs():
    commands = readme_commands()
    assert len(commands) >= 12 and all(any(c.startswith(m) for c in commands) for m in LONG_MATRICES)


def test_every_readme_command_works_as_written(workspace):
    root, env = workspace
    for command in readme_commands():
        done = subprocess.run(["bash", "-c", shortened(command)], cwd=root, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
