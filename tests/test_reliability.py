"""The second fault probe (issue 19): each test is one of its defects, numbered as there.
Rules under test: a refusal is one line naming a way out that exists; a record never
says what the files on disk contradict; nothing this project did not write is deleted."""
import errno
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import main
from helpers import QUICK, ROOT, free_port, results, run_main, write_folder, write_idx, write_mnist
from utils import run_folder as run_folder_module
from utils import training as training_module
from utils.errors import UserError


class Killed(BaseException):
    """A kill -9 at a chosen moment: nothing of the run's own error handling runs."""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch digits run (copy it before changing anything in it)."""
    folder = str(tmp_path_factory.mktemp("finished") / "run")
    assert main.main(["--epochs", "2", "--subset", "256", "--save_path", folder]) == 0
    return folder


def copy_run(finished_run, tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(finished_run, target, ignore=shutil.ignore_patterns(".lock"))
    return target


def saved_epoch(path):
    return torch.load(path, weights_only=True).get("epoch")


def fail_at_checkpoint(monkeypatch, epoch, error):
    """Make the write of `epoch`'s checkpoint.pth.tar raise `error` (model_best before it is written)."""
    real_save = training_module.save_checkpoint

    def save(state, path):
        if path.endswith("checkpoint.pth.tar") and state.get("epoch") == epoch:
            raise error
        real_save(state, path)

    monkeypatch.setattr(training_module, "save_checkpoint", save)


# --- 1-7: losing data or contradicting the files ------------------------------------------------

def test_01_resume_keeps_a_model_best_newer_than_the_checkpoint(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "run"
    fail_at_checkpoint(monkeypatch, 2, Killed())
    with pytest.raises(Killed):
        main.main(["--epochs", "3", "--subset", "1024", "--schedule", "2", "--gammas", "0.5", "--save_path",
                   str(folder)])  # epoch 2 is the best so far (12.50 → 71.67)
    monkeypatch.undo()
    assert saved_epoch(folder / "model_best.pth.tar") == 2 and saved_epoch(folder / "checkpoint.pth.tar") == 1
    newer = (folder / "model_best.pth.tar").read_bytes()
    logged = []
    checkpoint = torch.load(folder / "checkpoint.pth.tar", weights_only=True)
    training_module.repair_best_model(str(folder), checkpoint, logged.append)
    assert (folder / "model_best.pth.tar").read_bytes() == newer and not logged
    assert main.main(["--resume", str(folder / "checkpoint.pth.tar")]) == 0
    assert "rewrote" not in (folder / "log.txt").read_text()
    assert results(folder)["epochs_done"] == 3


def test_02_overwrite_never_deletes_an_input(finished_run, tmp_path, capsys):
    folder = copy_run(finished_run, tmp_path)
    best = (folder / "model_best.pth.tar").read_bytes()
    for flag in ("--pretrained", "--resume"):
        argv = [flag, str(folder / "model_best.pth.tar"), "--save_path", str(folder), "--overwrite", *QUICK]
        if flag == "--resume":
            argv.append("--fine_tune")
        code, err = run_main(argv, capsys)
        assert code == 2 and "--overwrite would delete" in err and "model_best.pth.tar" in err, err
        assert (folder / "model_best.pth.tar").read_bytes() == best


def test_03_only_this_projects_temporary_files_are_cleaned(finished_run, tmp_path):
    folder = copy_run(finished_run, tmp_path)
    users = {"notes.tmp": "mine", "backup.tmp-2024": "also mine", ".draft.tmp": "mine too"}
    for name, text in users.items():
        (folder / name).write_text(text)
    (folder / ".results.json.4242.ternary-tmp").write_text("{")
    assert main.main(["--save_path", str(folder), "--overwrite", *QUICK]) == 0
    assert all((folder / name).read_text() == text for name, text in users.items())
    assert not (folder / ".results.json.4242.ternary-tmp").exists()


@pytest.mark.parametrize("error", [UserError("cannot write checkpoint.pth.tar: no space left on the device"),
                                   KeyboardInterrupt()], ids=["full disk", "second signal"])
def test_04_the_record_counts_only_saved_epochs(tmp_path, monkeypatch, capsys, error):
    folder = tmp_path / "run"
    fail_at_checkpoint(monkeypatch, 2, error)
    code = main.main(["--epochs", "3", "--subset", "256", "--save_path", str(folder)])
    capsys.readouterr()
    assert code in (2, 130)
    record, checkpoint = results(folder), torch.load(folder / "checkpoint.pth.tar", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert record["epochs_done"] == 1 and len(record["history"]) == 1
    assert record["best_epoch"] == checkpoint["best_epoch"] and record["best_top1"] == checkpoint["best_acc"]


def test_05_resume_hint_names_torchrun_and_a_world_size_change_is_said(tmp_path):
    """The torchrun half is in test_15 (one torchrun start); here the single-process side."""
    hint = training_module.resume_hint(training_module.TrainConfig("save/x", 3, "a", "digits", (1, 8, 8)),
                                       [{"epoch": 1}], world_size=2)
    assert "torchrun --nproc_per_node 2 main.py --resume save/x/checkpoint.pth.tar" in hint


def test_06_an_evaluation_never_replaces_a_training_record(finished_run, tmp_path, capsys):
    folder = copy_run(finished_run, tmp_path)
    before = (folder / "results.json").read_bytes()
    code, err = run_main(["--evaluate", "--resume", str(folder / "model_best.pth.tar"), "--save_path", str(folder),
                          "--overwrite"], capsys)
    assert code == 2 and "holds a training run" in err and "--save_path" in err, err
    assert (folder / "results.json").read_bytes() == before


def test_07_wall_time_adds_up_over_processes_and_epochs_never_shrink(finished_run, tmp_path, capsys):
    folder = tmp_path / "run"
    assert main.main(["--epochs", "2", "--subset", "1024", "--save_path", str(folder)]) == 0
    assert main.main(["--resume", str(folder / "checkpoint.pth.tar"), "--epochs", "3"]) == 0
    record = results(folder)
    assert record["wall_time_s"] >= sum(epoch["time_s"] for epoch in record["history"])
    done = copy_run(finished_run, tmp_path, "done")
    before = (done / "results.json").read_bytes()
    code, err = run_main(["--resume", str(done / "checkpoint.pth.tar"), "--epochs", "1"], capsys)
    assert code == 2 and "already has 2 epochs" in err, err
    assert (done / "results.json").read_bytes() == before


# --- 8-10: a failed start blocks its retry ------------------------------------------------------

def start_refused_after_the_folder_is_claimed(folder):
    """A start that fails once its log is open (pretrained weights that do not fit), before any epoch."""
    torch.save({"x": torch.zeros(1)}, folder.parent / "unfit.pth")
    assert main.main(["--save_path", str(folder), "--pretrained", str(folder.parent / "unfit.pth")]) == 2


def leftovers_of_a_kill_in_epoch_1(folder):
    start_refused_after_the_folder_is_claimed(folder)
    (folder / "tb_log").mkdir(exist_ok=True)
    (folder / "tb_log" / "events.out.tfevents.1").write_bytes(b"x")
    (folder / "results.json").write_text('{"mode": "train", "status": "running", "epochs_done": 0}')


@pytest.mark.parametrize("failed_start", [start_refused_after_the_folder_is_claimed, leftovers_of_a_kill_in_epoch_1],
                         ids=["refused start", "killed in epoch 1"])
def test_08_a_folder_without_a_checkpoint_is_reused(tmp_path, capsys, failed_start):
    folder = tmp_path / "run"
    failed_start(folder)
    capsys.readouterr()
    assert (folder / "log.txt").exists() and not (folder / "checkpoint.pth.tar").exists()
    first_log = (folder / "log.txt").read_text()
    code, _ = run_main(["--save_path", str(folder), *QUICK], capsys)
    assert code == 0 and results(folder)["status"] == "complete"
    assert (folder / "log.1.txt").read_text() == first_log
    assert len(os.listdir(folder / "tb_log")) == 1


def test_08_a_refusal_never_names_a_missing_checkpoint(finished_run, tmp_path, capsys):
    folder = copy_run(finished_run, tmp_path)
    os.remove(folder / "checkpoint.pth.tar")
    code, err = run_main(["--save_path", str(folder), *QUICK], capsys)
    assert code == 2 and "already holds" in err and "checkpoint.pth.tar" not in err, err


def test_10_a_weights_only_run_says_what_its_file_is_good_for(tmp_path, monkeypatch, capsys):
    real_save = training_module.save_checkpoint

    def save_then_signal(state, path):
        real_save(state, path)
        if path.endswith("checkpoint.pth.tar"):  # once, after epoch 1's last file
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(training_module, "save_checkpoint", save_then_signal)
    folder = tmp_path / "run"
    code, err = run_main(["--epochs", "3", "--subset", "256", "--model_only", "--save_path", str(folder)], capsys)
    monkeypatch.undo()
    assert code == 143 and "nothing to resume" not in err and "--fine_tune" in err and "--evaluate" in err, err
    code, err = run_main(["--resume", str(folder / "checkpoint.pth.tar")], capsys)
    assert code == 2 and "weights only" in err and "--fine_tune" in err, err


# --- 11-15: tracebacks that become one line ---------------------------------------------------------

class FullDiskFile:
    def __init__(self, handle):
        self._handle = handle

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def flush(self):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_11_a_full_disk_at_the_lock_file_is_one_line(tmp_path, monkeypatch, capsys):
    def open_on_a_full_disk(path, *args, **kwargs):
        return FullDiskFile(open(path, *args, **kwargs))

    monkeypatch.setattr(run_folder_module, "open", open_on_a_full_disk, raising=False)
    code, err = run_main(["--save_path", str(tmp_path / "run"), *QUICK], capsys)
    assert code == 2 and "no space left on the device" in err, err


def test_13_tiny_idx_images_are_refused(tmp_path, capsys):
    data = str(tmp_path / "data")
    write_mnist(data)
    write_idx(f"{data}/train-images-idx3-ubyte", np.zeros((1, 2, 2)))
    write_idx(f"{data}/train-labels-idx1-ubyte", np.zeros(1))
    write_idx(f"{data}/t10k-images-idx3-ubyte", np.zeros((1, 2, 2)))
    write_idx(f"{data}/t10k-labels-idx1-ubyte", np.zeros(1))
    code, err = run_main(["--dataset", "mnist", "--data_path", data, "--save_path", str(tmp_path / "run"), *QUICK],
                         capsys)
    assert code == 2 and "28×28" in err, err


@pytest.mark.parametrize("loop", ["train/loop", "train/a/loop.png"])
def test_14_a_symlink_loop_in_an_image_folder_is_one_line(tmp_path, capsys, loop):
    root = tmp_path / "images"
    write_folder(root, ["a", "b"])
    os.symlink(root / loop, root / loop)
    code, err = run_main(["--dataset", "folder", "--data_path", str(root), "--save_path", str(tmp_path / "run"),
                          *QUICK], capsys)
    assert code == 2 and "loop" in err and "symbolic links" in err, err


def torchrun(folder, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(free_port()), "main.py", "--device", "cpu", "--epochs", "30",
                             "--batch_size", "16", "--print_freq", "5", "--save_path", str(folder), *extra],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def worker_pid(launcher_pid, rank):
    """The pid of the torchrun worker with RANK=rank (a child of the launcher)."""
    for _ in range(100):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
            except OSError:
                continue
            if parent == launcher_pid and f"RANK={rank}".encode() in environ:
                return int(entry)
        time.sleep(0.1)
    raise AssertionError(f"no worker of rank {rank}")


def main_py_frames(err):
    return [line for line in err.splitlines() if line.strip().startswith("File ") and "main.py" in line]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_15_when_a_rank_dies_the_survivor_says_one_line_and_marks_the_run(tmp_path):
    folder = tmp_path / "ddp"
    process = torchrun(folder)
    for line in process.stdout:
        if line.startswith("epoch   1/30"):
            break
    os.kill(worker_pid(process.pid, 1), signal.SIGKILL)
    _, err = process.communicate(timeout=180)
    assert process.returncode != 0
    assert results(folder)["status"] in ("failed", "interrupted"), err
    assert not main_py_frames(err), err
    checkpoint = torch.load(folder / "checkpoint.pth.tar", weights_only=True)
    assert checkpoint["world_size"] == 2
    # item 5: the world size a resume changes is said
    code = main.main(["--resume", str(folder / "checkpoint.pth.tar"), "--epochs", str(checkpoint["epoch"] + 1)])
    assert code == 0 and "was trained with 2 processes" in (folder / "log.txt").read_text()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_15_a_rank_that_cannot_start_leaves_no_traceback(tmp_path):
    process = torchrun("/proc/nonexistent/x")
    _, err = process.communicate(timeout=180)
    assert process.returncode != 0 and "cannot write /proc/nonexistent/x" in err
    assert not main_py_frames(err), err


# --- 16-21: accepted without complaint -------------------------------------------------------------

@pytest.mark.parametrize("train_shape, test_shape, message", [
    ((60, 32, 32), (10, 28, 28), "28×28"),
    ((60, 28, 14), (10, 28, 28), "28×28"),
    ((60, 28, 28), (10, 20, 20), "28×28"),
    ((0, 28, 28), (10, 28, 28), "no images"),
    ((60, 28, 28), (0, 28, 28), "no images"),
], ids=["32x32", "28x14", "test 20x20", "empty train", "empty test"])
def test_16_17_idx_images_of_the_wrong_size_or_none_are_refused(tmp_path, capsys, train_shape, test_shape, message):
    data = str(tmp_path / "data")
    write_mnist(data)
    for prefix, shape in (("train", train_shape), ("t10k", test_shape)):
        write_idx(f"{data}/{prefix}-images-idx3-ubyte", np.zeros(shape))
        write_idx(f"{data}/{prefix}-labels-idx1-ubyte", np.zeros(shape[0]))
    code, err = run_main(["--dataset", "mnist", "--data_path", data, "--save_path", str(tmp_path / "run"), *QUICK],
                         capsys)
    assert code == 2 and message in err, err


def test_18_19_flags_that_leave_nothing_to_do_are_refused(tmp_path, capsys):
    code, err = run_main(["--start_epoch", "5", "--epochs", "2", "--save_path", str(tmp_path / "run")], capsys)
    assert code == 2 and "--start_epoch 5" in err and not (tmp_path / "run").exists(), err
    code, err = run_main(["--export", str(tmp_path / "fresh.tern")], capsys)
    assert code == 2 and "--export needs a trained model" in err and not (tmp_path / "fresh.tern").exists(), err


def test_20_a_one_class_folder_is_refused(tmp_path, capsys):
    root = tmp_path / "images"
    write_folder(root, ["only"])
    code, err = run_main(["--dataset", "folder", "--data_path", str(root), "--save_path", str(tmp_path / "run"),
                          *QUICK], capsys)
    assert code == 2 and "one class" in err, err


def test_21_a_packed_model_for_other_images_is_refused(finished_run, tmp_path, capsys):
    packed = tmp_path / "digits.tern"
    assert main.main(["--resume", os.path.join(finished_run, "model_best.pth.tar"), "--export", str(packed)]) == 0
    data = str(tmp_path / "data")
    write_mnist(data)
    code, err = run_main(["--dataset", "mnist", "--data_path", data, "--evaluate", "--resume", str(packed),
                          "--save_path", str(tmp_path / "eval")], capsys)
    assert code == 2 and "(1, 8, 8)" in err and "(1, 28, 28)" in err, err


# --- 22: security ---------------------------------------------------------------------------------

def test_22_a_numpy_named_payload_is_named(tmp_path, capsys):
    payload = (b"\x80\x02" + b"cnumpy.testing\nrunstring\n" + pickle.dumps(("print(1)", {}), protocol=2)[2:-1]
               + b"R.")
    path = tmp_path / "evil.pth.tar"
    path.write_bytes(payload)
    code, err = run_main(["--evaluate", "--resume", str(path), "--save_path", str(tmp_path / "eval")], capsys)
    assert code == 2 and "numpy.testing.runstring" in err and "nothing in it was run" in err, err
