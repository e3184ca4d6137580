"""Fault injection: signals, interrupted and failing writes, bad input, damaged files,
divergence, and runs that must not overwrite each other. Every failure is one line on
stderr and a non-zero exit; no file a run wrote before is damaged."""
import errno
import fcntl
import gzip
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import main
from utils import checkpoint as checkpoint_module
from utils import files as files_module
from utils import training as training_module
from helpers import QUICK, ROOT, free_port, results, run_main, write_idx, write_mnist


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-epoch digits run."""
    folder = str(tmp_path_factory.mktemp("finished") / "run")
    assert main.main(["--epochs", "2", "--subset", "256", "--save_path", folder]) == 0
    return folder


# --- bad input: one line, exit 2, nothing written ---------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--batch_size", "0"], "--batch_size must be at least 1, got 0"),
    (["--batch_size", "-5"], "--batch_size must be at least 1, got -5"),
    (["--print_freq", "0"], "--print_freq must be at least 1"),
    (["--learning_rate", "-0.1"], "--learning_rate must be a positive finite number, got -0.1"),
    (["--learning_rate", "nan"], "--learning_rate must be a positive finite number, got nan"),
    (["--learning_rate", "inf"], "--learning_rate must be a positive finite number, got inf"),
    (["--momentum", "-1"], r"--momentum must lie in \[0, 1\), got -1"),
    (["--decay", "nan"], "--decay must be a finite number"),
    (["--gammas", "nan", "0.1", "0.5"], "--gammas must be positive finite numbers"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--epochs", "-3"], "--epochs must be at least 1, got -3"),
    (["--workers", "-1"], "--workers must be 0 or more"),
    (["--evaluate"], "--evaluate needs a model to evaluate"),
    (["--fine_tune"], "--fine_tune restarts from the weights of --resume"),
    (["--threshold_every", "5"], "--threshold_every only applies with --tfactors auto"),
    (["--tex", "0"], "--tex must be at least 1"),
    # issue 19 item 9 and 12: refused only after .lock and log.txt were written, or with a traceback
    (["--arch", "tern_resnet21"], "unknown --arch tern_resnet21"),
    (["--tfactors", "0"], r"threshold factors must lie in \(0, 1\]"),
    (["--tfactors", "1.5"], r"threshold factors must lie in \(0, 1\]"),
    (["--tfactors", "0.1", "0.05"], "threshold factors must be strictly ascending"),
    (["--arch", "resnet20", "--tfactors", "auto"], "--tfactors auto needs a ternarized arch"),
    (["--tex", "2", "--tfactors", "0.05"], "--tex 2 disagrees with 1 threshold factors"),
    (["--manualSeed", "-1"], r"--manualSeed must lie in 0 .. 2\^32-1, got -1"),
])
def test_bad_flags_are_refused_before_anything_is_written(tmp_path, capsys, argv, message):
    folder = tmp_path / "run"
    code, err = run_main(argv + ["--save_path", str(folder)], capsys)
    assert code == 2 and re.search(message, err), err
    assert not folder.exists()


def test_unwritable_save_path_is_one_line(capsys):
    code, err = run_main(["--save_path", "/proc/nonexistent/x"] + QUICK, capsys)
    assert code == 2 and "cannot write /proc/nonexistent/x" in err


def damage_header(folder):
    with open(f"{folder}/train-images-idx3-ubyte", "wb") as f:
        f.write(b"\0\0\x08\x03\0\0")


def damage_gzip(folder):
    data = open(f"{folder}/train-images-idx3-ubyte", "rb").read()
    os.remove(f"{folder}/train-images-idx3-ubyte")
    with open(f"{folder}/train-images-idx3-ubyte.gz", "wb") as f:
        f.write(gzip.compress(data)[:5000])


@pytest.mark.parametrize("damage, message", [
    (damage_header, "train-images-idx3-ubyte: its header is cut short"),
    (damage_gzip, "train-images-idx3-ubyte.gz: the gzip stream is cut short"),
    (lambda d: write_idx(f"{d}/train-images-idx3-ubyte", np.zeros((600, 784))), r"expected images of shape \(N, H, W\)"),
    (lambda d: write_idx(f"{d}/train-labels-idx1-ubyte", np.full(600, 200)), "label 200 is outside the 10 classes"),
    (lambda d: write_idx(f"{d}/train-labels-idx1-ubyte", np.zeros(700)), "600 images but 700 labels"),
    (lambda d: write_idx(f"{d}/train-labels-idx1-ubyte", np.zeros(500)), "600 images but 500 labels"),
    (lambda d: write_idx(f"{d}/train-images-idx3-ubyte", np.zeros((600, 28, 28)), extra=bytes(10)),
     "has 10 bytes more than its header describes"),
    (lambda d: write_idx(f"{d}/train-images-idx3-ubyte", np.zeros((600, 28, 28)), cut=10), "is truncated"),
])
def test_damaged_mnist_files_are_named(tmp_path, capsys, damage, message):
    folder = str(tmp_path / "data")
    write_mnist(folder)
    damage(folder)
    code, err = run_main(["--dataset", "mnist", "--data_path", folder, "--save_path", str(tmp_path / "run")] + QUICK,
                         capsys)
    assert code == 2 and re.search(message, err), err


# --- resume: settings are kept, damage is named ------------------------------------------

def test_resume_refuses_changed_settings_and_takes_unset_ones(finished_run, tmp_path, capsys):
    checkpoint = os.path.join(finished_run, "checkpoint.pth.tar")
    for flags, message in ((["--learning_rate", "0.01"], "--learning_rate 0.01 differs from the run being resumed"),
                           (["--tfactors", "0.3"], r"--tfactors \[0.3\] differs"),
                           (["--dataset", "fashion_mnist"], "--dataset fashion_mnist differs"),
                           (["--optimizer", "Adam"], "--optimizer Adam differs")):
        code, err = run_main(["--resume", checkpoint, "--epochs", "3"] + flags, capsys)
        assert code == 2 and re.search(message, err), err
    before = results(finished_run)
    assert before["epochs_done"] == 2
    assert main.main(["--resume", checkpoint, "--epochs", "3"]) == 0  # continues in its own folder
    after = results(finished_run)
    assert after["epochs_done"] == 3 and after["args"]["subset"] == 256 and after["status"] == "complete"


def test_adam_checkpoint_resumed_with_sgd_names_the_optimizer(tmp_path, capsys):
    folder = str(tmp_path / "adam")
    assert main.main(["--optimizer", "Adam", "--learning_rate", "0.001", "--save_path", folder] + QUICK) == 0
    state = torch.load(f"{folder}/checkpoint.pth.tar", weights_only=True)
    state["args"]["optimizer"] = "SGD"  # a file whose recorded flag and optimizer disagree
    torch.save(state, f"{folder}/checkpoint.pth.tar")
    code, err = run_main(["--resume", f"{folder}/checkpoint.pth.tar", "--epochs", "2"], capsys)
    assert code == 2 and "trained with the Adam optimizer" in err


@pytest.mark.parametrize("field, value", [("optimizer", "junk"), ("epoch", "x"), ("rng", {}), ("history", 5),
                                          ("scheduler", {"last_epoch": "?"})])
def test_damaged_training_state_is_named(finished_run, tmp_path, capsys, field, value):
    state = torch.load(os.path.join(finished_run, "checkpoint.pth.tar"), weights_only=True)
    state[field] = value
    folder = tmp_path / "damaged"
    folder.mkdir()
    torch.save(state, folder / "checkpoint.pth.tar")
    code, err = run_main(["--resume", str(folder / "checkpoint.pth.tar"), "--epochs", "3"], capsys)
    assert code == 2 and ("damaged" in err or "optimizer" in err), err


def test_a_recorded_flag_no_run_can_have_is_named(finished_run, tmp_path, capsys):
    state = torch.load(os.path.join(finished_run, "checkpoint.pth.tar"), weights_only=True)
    state["args"]["decay_on"] = "norms"
    torch.save(state, tmp_path / "edited.pth.tar")
    code, err = run_main(["--resume", str(tmp_path / "edited.pth.tar"), "--epochs", "3"], capsys)
    assert code == 2 and "records decay_on = 'norms', which no run of this project has" in err, err


def test_misleading_messages_are_fixed(tmp_path, capsys):
    code, err = run_main(["--resume", str(tmp_path), "--save_path", str(tmp_path / "r")], capsys)
    assert code == 2 and "is a folder" in err
    (tmp_path / "empty.pth.tar").write_bytes(b"")
    code, err = run_main(["--resume", str(tmp_path / "empty.pth.tar"), "--save_path", str(tmp_path / "r")], capsys)
    assert code == 2 and "the file is empty" in err


# --- divergence ----------------------------------------------------------------------------

def test_diverged_validation_never_becomes_model_best(tmp_path, capsys):
    folder = tmp_path / "diverge"
    code, err = run_main(["--epochs", "3", "--subset", "128", "--batch_size", "128", "--schedule", "1", "--gammas",
                          "1e7", "--save_path", str(folder)], capsys)
    assert code == 2 and "loss became nan in epoch 2" in err and "the run diverged" in err, err
    best = torch.load(folder / "model_best.pth.tar", weights_only=True)
    assert best["epoch"] == 1 and all(torch.isfinite(v).all() for v in best["state_dict"].values())
    assert results(folder)["status"] == "failed" and "diverged" in results(folder)["error"]


def test_nan_message_does_not_claim_a_best_model_that_does_not_exist(tmp_path, capsys):
    code, err = run_main(["--epochs", "1", "--subset", "128", "--learning_rate", "1e30", "--save_path",
                          str(tmp_path / "nan")], capsys)
    assert code == 2 and "no model was saved" in err and "intact" not in err


# --- runs that must not overwrite each other ----------------------------------------------

def test_a_new_run_never_replaces_a_finished_one(finished_run, capsys):
    best = open(os.path.join(finished_run, "model_best.pth.tar"), "rb").read()
    code, err = run_main(["--save_path", finished_run] + QUICK, capsys)
    assert code == 2 and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert open(os.path.join(finished_run, "model_best.pth.tar"), "rb").read() == best


def test_overwrite_replaces_the_old_run(tmp_path):
    folder = str(tmp_path / "run")
    assert main.main(["--save_path", folder] + QUICK) == 0
    assert main.main(["--save_path", folder, "--overwrite", "--epochs", "2", "--subset", "256"]) == 0
    assert results(folder)["epochs_done"] == 2 and len(os.listdir(os.path.join(folder, "tb_log"))) == 1


def test_a_second_live_run_in_the_same_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("4242")
        lock.flush()
        code, err = run_main(["--save_path", str(folder)] + QUICK, capsys)
    assert code == 2 and "another run (pid 4242) is writing to" in err
    assert os.listdir(folder) == [".lock"]


def test_default_folders_name_the_variant():
    plain = main.parse_args([]).save_path
    rel = main.parse_args(["--tex", "2"]).save_path
    other_seed = main.parse_args(["--manualSeed", "1"]).save_path
    auto = main.parse_args(["--tfactors", "auto"]).save_path
    assert plain == os.path.join("save", "digits_tern_resnet20_seed5000")
    assert len({plain, rel, other_seed, auto}) == 4 and "tex2" in rel and "tauto" in auto


def test_stale_temporary_files_are_removed_and_a_lagging_best_model_is_rewritten(finished_run, tmp_path):
    folder = tmp_path / "killed"
    folder.mkdir()
    state = torch.load(os.path.join(finished_run, "checkpoint.pth.tar"), weights_only=True)
    state_epoch1 = torch.load(os.path.join(finished_run, "model_best.pth.tar"), weights_only=True)
    state["best_epoch"], state_epoch1["epoch"] = state["epoch"], 1  # killed after the checkpoint, before model_best
    torch.save(state, folder / "checkpoint.pth.tar")
    torch.save(state_epoch1, folder / "model_best.pth.tar")
    (folder / ".checkpoint.pth.tar.4242.ternary-tmp").write_bytes(b"half a checkpoint")
    (folder / ".results.json.4242.ternary-tmp").write_text("{")
    users = {"notes.tmp": "mine", "backup.tmp-2024": "also mine", ".tmp-draft.txt": "mine too"}
    for name, text in users.items():
        (folder / name).write_text(text)
    assert main.main(["--resume", str(folder / "checkpoint.pth.tar"), "--epochs", str(state["epoch"])]) == 0
    assert sorted(name for name in os.listdir(folder) if "tmp" in name) == sorted(users)
    assert all((folder / name).read_text() == text for name, text in users.items())
    assert torch.load(folder / "model_best.pth.tar", weights_only=True)["epoch"] == state["epoch"]


# --- failing writes: no space, no permission -------------------------------------------------

def no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_previous_files(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "run"
    assert main.main(["--save_path", str(folder)] + QUICK) == 0
    before = {name: (folder / name).read_bytes() for name in ("checkpoint.pth.tar", "model_best.pth.tar")}
    real_write = checkpoint_module.write_bytes

    def checkpoint_on_a_full_disk(path, data):  # the checkpoint hits the full disk; results.json still fits
        if path.endswith(".pth.tar"):
            with files_module.atomic_write(path) as handle:
                handle.write(data)
                no_space()
        real_write(path, data)

    monkeypatch.setattr(checkpoint_module, "write_bytes", checkpoint_on_a_full_disk)
    code, err = run_main(["--resume", str(folder / "checkpoint.pth.tar"), "--epochs", "2"], capsys)
    assert code == 2 and "no space left on the device" in err and str(folder) in err
    assert all((folder / name).read_bytes() == data for name, data in before.items())
    assert not [name for name in os.listdir(folder) if "tmp" in name]
    assert results(folder)["status"] == "failed"


@pytest.mark.parametrize("target, cause", [("json", errno.EACCES), ("curve", errno.ENOSPC)])
def test_failing_results_and_curve_writes_keep_the_old_files(tmp_path, capsys, monkeypatch, target, cause):
    folder = tmp_path / "run"
    assert main.main(["--save_path", str(folder)] + QUICK) == 0
    old = {name: (folder / name).read_bytes() for name in ("results.json", "curve.png")}

    def fail(*_args, **_kwargs):
        raise OSError(cause, os.strerror(cause))

    if target == "json":
        def open_failing_for_results(path, *args, **kwargs):
            if "results.json" in os.path.basename(path):
                fail()
            return open(path, *args, **kwargs)
        monkeypatch.setattr(files_module, "open", open_failing_for_results, raising=False)
    else:
        import matplotlib.figure
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", fail)
    code, err = run_main(["--resume", str(folder / "checkpoint.pth.tar"), "--epochs", "2"], capsys)
    assert code == 2 and ("permission denied" if cause == errno.EACCES else "no space left") in err
    assert (folder / "curve.png").read_bytes() == old["curve.png"] or target == "json"
    assert os.path.getsize(folder / "curve.png") > 0 and os.path.getsize(folder / "results.json") > 0
    assert not [name for name in os.listdir(folder) if "tmp" in name]


# --- signals ----------------------------------------------------------------------------------

def start_run(folder, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "main.py", "--epochs", "30", "--batch_size", "16", "--save_path",
                             str(folder), *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def wait_for_line(process, pattern):
    for line in process.stdout:
        if re.search(pattern, line):
            return line
    raise AssertionError(f"the run ended before printing {pattern!r}: {process.stderr.read()}")


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_at_a_step_and_leaves_a_resumable_run(tmp_path, signum, exit_code):
    folder = tmp_path / "run"
    process = start_run(folder)
    wait_for_line(process, r"^epoch   1/30")
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == exit_code, err
    assert err.count("\n") == 1 and "interrupted by" in err and "continue with: python main.py --resume" in err
    assert results(folder)["status"] == "interrupted"
    assert not [name for name in os.listdir(folder) if "tmp" in name]
    done = torch.load(folder / "checkpoint.pth.tar", weights_only=True)["epoch"]
    assert done >= 1
    assert main.main(["--resume", str(folder / "checkpoint.pth.tar"), "--epochs", str(done + 1)]) == 0
    assert results(folder)["status"] == "complete"


def test_a_second_signal_stops_at_once(tmp_path):
    process = start_run(tmp_path / "run")
    wait_for_line(process, r"^epoch   1/30")
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err and err.count("\n") == 1


def test_signal_during_a_save_finishes_the_save_then_stops(tmp_path, monkeypatch, capsys):
    real_save = checkpoint_module.save_checkpoint
    calls = []

    def save_then_signal(state, path):
        real_save(state, path)
        calls.append(path)
        if len(calls) == 1:  # while epoch 1's files are being written
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(training_module, "save_checkpoint", save_then_signal)
    code, err = run_main(["--epochs", "5", "--subset", "256", "--save_path", str(tmp_path / "run")], capsys)
    assert code == 143 and "interrupted by SIGTERM in epoch 2" in err
    assert torch.load(tmp_path / "run" / "checkpoint.pth.tar", weights_only=True)["epoch"] == 1


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_sigterm_stops_every_rank_of_a_torchrun_run(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                "--master_port", str(free_port()), "main.py", "--device", "cpu", "--epochs", "30",
                                "--batch_size", "16", "--print_freq", "5", "--save_path", str(tmp_path / "ddp")],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    wait_for_line(process, r"^epoch   1/30")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0
    assert results(tmp_path / "ddp")["status"] == "interrupted", err
    assert err.count("interrupted by SIGTERM") == 1  # one line, from rank 0; every rank stopped
    assert "main.py" not in "".join(line for line in err.splitlines() if line.strip().startswith("File "))
