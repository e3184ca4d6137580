"""What several test files share: running main.py in-process, reading a run's record,
writing IDX (MNIST-format) files and image folders."""
import gzip
import hashlib
import json
import os
import signal
import socket
import struct
import zlib

import numpy as np
from PIL import Image

import main
from tools.precision import fastest_precision
from utils.export import MAGIC

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ["--epochs", "1", "--subset", "256", "--print_freq", "1000"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that no process listens on now (the OS picks it), for torchrun's
    rendezvous: a fixed port collides with other test runs on a shared machine."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fastest_precision_flags() -> list[str]:
    """main.py's flags for what PRECISION=auto picks here: bf16 autocast where this CPU has
    it natively (emulated bf16 is several times slower than fp32), channels_last always."""
    return ["--amp", "--channels_last"] if fastest_precision() == "bf16" else ["--channels_last"]


def run_main(argv, capsys):
    """(exit code, stderr) of main.main(argv), checking the one-line rule on failure."""
    code = main.main(argv)
    err = capsys.readouterr().err
    if code != 0:
        lines = [line for line in err.splitlines() if not line.startswith("warning:")]
        assert len(lines) == 1 and "Traceback" not in err, err
    return code, err


def results(folder):
    with open(os.path.join(folder, "results.json")) as f:
        return json.load(f)


def write_idx(path, array, extra=b"", cut=0):
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    data = (header + array.astype(np.uint8).tobytes() + extra)[:len(header) + array.size + len(extra) - cut]
    if path.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def write_mnist(folder, n_train=600, n_test=100, labels_train=None, images_train=None):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    write_idx(f"{folder}/train-images-idx3-ubyte",
              rng.integers(0, 256, (n_train, 28, 28)) if images_train is None else images_train)
    write_idx(f"{folder}/train-labels-idx1-ubyte", rng.integers(0, 10, n_train) if labels_train is None else labels_train)
    write_idx(f"{folder}/t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(f"{folder}/t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test))


def write_folder(root, classes, per_class=(3, 2), size=(8, 8), mode="RGB", ext="png", seed=0, split_names=("train", "test")):
    """Random images in root/<split>/<class>/NNNN.ext; returns {split: [(pixels HWC or HW, label)]} in file order."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, count in zip(split_names, per_class):
        written[split] = []
        for label, name in enumerate(sorted(classes)):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(count):
                shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(pixels, mode).save(os.path.join(root, split, name, f"{i:04d}.{ext}"))
                written[split].append((pixels, label))
    return written


def stop_after_first_checkpoint(monkeypatch, training_module):
    """Make the next run SIGTERM itself once it has written its first checkpoint.pth.tar."""
    real_save = training_module.save_checkpoint

    def save_then_stop(state, path):
        real_save(state, path)
        if path.endswith("checkpoint.pth.tar"):
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(training_module, "save_checkpoint", save_then_stop)


def rewrite_tern(source, target, edit_header=None, header_bytes=None):
    """Copy a .tern with its header changed by `edit_header(header)` (or replaced by raw
    `header_bytes`), the payload kept, the checksum recomputed: what an edit looks like."""
    data = open(source, "rb").read()[:-32]
    _, version, header_len = struct.unpack_from("<8sHI", data)
    header = json.loads(zlib.decompress(data[14:14 + header_len]))
    payload = data[14 + header_len:]
    if header_bytes is None:
        edit_header(header)
        header_bytes = zlib.compress(json.dumps(header).encode())
    body = struct.pack("<8sHI", MAGIC, version, len(header_bytes)) + header_bytes + payload
    with open(target, "wb") as f:
        f.write(body + hashlib.sha256(body).digest())
    return str(target)


def train_resume_export_evaluate(tmp_path, quantizer: str) -> tuple[dict, dict]:
    """A quantizer end to end: 2 epochs, resumed to 3, exported to .tern and ONNX, and the
    checkpoint and both files evaluated. Returns (results.json of the run, {file: top-1})."""
    run = tmp_path / "run"
    assert main.main([*QUICK, "--epochs", "2", "--quantizer", quantizer, "--save_path", str(run)]) == 0
    assert main.main(["--resume", str(run / "checkpoint.pth.tar"), "--epochs", "3"]) == 0
    for suffix in ("tern", "onnx"):
        assert main.main(["--resume", str(run / "model_best.pth.tar"), "--export", str(tmp_path / f"m.{suffix}")]) == 0
    top1 = {}
    for name in ("model_best.pth.tar", "m.tern", "m.onnx"):
        source = run / name if name.endswith(".tar") else tmp_path / name
        out = tmp_path / f"eval_{name}"
        assert main.main(["--evaluate", "--resume", str(source), "--save_path", str(out)]) == 0
        top1[name] = json.loads((out / "results.json").read_text())["top1"]
    return json.loads((run / "results.json").read_text()), top1
