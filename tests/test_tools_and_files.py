"""The tools and the file formats under main.py's rules (issue 35): every command in tools/
ends a user's mistake in one line `error: ...` with exit code 2; a .tern file edited
with a recomputed checksum, a checkpoint whose record is impossible, a bad ONNX file or
an oversized image is refused in one line; a resume never writes into another run's
folder; publishing is a transaction; a refused evaluation leaves nothing behind."""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib

import pytest
import torch
from PIL import Image

import main
from helpers import QUICK, ROOT, results, rewrite_tern, run_main, write_folder
from tools import benchmark, compression, deploy_benchmark, gap_report, publish, report, thresholds
from tools import precision as precision_tool
from utils.export import load_packed

TOOLS = {"benchmark": benchmark, "compression": compression, "deploy_benchmark": deploy_benchmark,
         "gap_report": gap_report, "publish": publish, "report": report, "thresholds": thresholds,
         "precision": precision_tool}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished 1-epoch digits run of each variant and the ternarized one's .tern and .onnx."""
    root = tmp_path_factory.mktemp("runs")
    for arch in ("resnet20", "tern_resnet20"):
        assert main.main(["--arch", arch, "--epochs", "1", "--print_freq", "1000", "--save_path", str(root / arch)]) == 0
    best = str(root / "tern_resnet20" / "model_best.pth.tar")
    for suffix in ("tern", "onnx"):
        assert main.main(["--resume", best, "--export", str(root / f"model.{suffix}")]) == 0
    return root


def one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_every_tool_is_a_command_under_the_error_rule():
    tools_dir = os.path.join(ROOT, "tools")
    names = sorted(name[:-3] for name in os.listdir(tools_dir) if name.endswith(".py") and name != "__init__.py")
    assert names == sorted(TOOLS)
    for name, module in TOOLS.items():
        assert getattr(module.main, "__wrapped__", None) is not None, f"tools/{name}.py's main is not @command"


BAD_INPUTS = [
    ("thresholds", ["--checkpoint", "{missing}"], "not found"),
    ("thresholds", ["--checkpoint", "{tern}"], "packed .tern inference file"),
    ("thresholds", ["--checkpoint", "{onnx}"], "ONNX inference file"),
    ("thresholds", ["--checkpoint", "{pickle}"], "refusing to load"),
    ("thresholds", ["--arch", "nosuch"], "unknown --arch"),
    ("thresholds", ["--arch", "tern_resnet20", "--json", "/proc/nonexistent/x.json"], "cannot write"),
    ("gap_report", ["{missing}", "{missing}", "--dataset", "digits"], "no such run folder"),
    ("gap_report", ["{runs}", "{runs}"], "holds no trained model"),
    ("gap_report", ["{fp}", "{eval}", "--dataset", "digits"], "holds no trained model"),
    ("report", ["{bad_record}"], "not valid JSON"),
    ("report", ["{runs}", "--readme", "{missing}"], "not found"),
    ("report", ["{runs}", "--quantizers", "{missing}"], "not found"),
    ("report", ["{runs}", "--output", "/proc/nonexistent/report.md"], "cannot write"),
    ("report", ["{runs}", "--readme", "{no_block}"], "no <!-- table:cifar10 -->"),
    ("compression", ["nosuch"], "unknown arch 'nosuch'"),
    ("compression", [""], "unknown arch ''"),
    ("benchmark", ["--threads", "-3"], "must be at least 1"),
    ("benchmark", ["--models", "resnet20:x:32"], "expected a whole number"),
    ("deploy_benchmark", ["--calibration", "0"], "must be at least 1"),
    ("deploy_benchmark", ["--repeats", "0"], "must be at least 1"),
    ("deploy_benchmark", ["--checkpoint", "{missing}"], "not found"),
    ("publish", ["{eval}", "--data_path", "x"], "holds an evaluation"),
    ("publish", ["{missing}", "--data_path", "x"], "no such run folder"),
    ("publish", ["{bad_record}", "--data_path", "x"], "not valid JSON"),
    ("publish", ["{fp}", "--data_path", "x", "--refresh", "cifar10"], "one of them"),
    ("publish", ["{fp}"], "--data_path is needed"),
    ("publish", ["--data_path", "x", "--refresh", "cifar10", "--pretrained", "{missing}"], "nothing of cifar10"),
    ("precision", ["--nosuch"], "unrecognized arguments"),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append(("benchmark", ["--device", "cuda"], "no CUDA device"))


@pytest.fixture(scope="module")
def bad_files(runs, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "pickle.pth").write_bytes(b"\x80\x04cos\nsystem\n(S'true'\ntR.")
    (root / "bad_record").mkdir()
    (root / "bad_record" / "results.json").write_text('{"mode": "train", "hist')
    (root / "doc.md").write_text("# no table block here\n")
    evaluation = root / "eval"
    assert main.main(["--evaluate", "--resume", str(runs / "resnet20" / "model_best.pth.tar"),
                      "--save_path", str(evaluation)]) == 0
    return {"missing": str(root / "missing"), "tern": str(runs / "model.tern"), "onnx": str(runs / "model.onnx"),
            "pickle": str(root / "pickle.pth"), "runs": str(runs), "fp": str(runs / "resnet20"),
            "eval": str(evaluation), "bad_record": str(root / "bad_record"), "no_block": str(root / "doc.md")}


@pytest.mark.parametrize("tool,argv,expected", BAD_INPUTS, ids=[f"{t}-{i}" for i, (t, _, _) in enumerate(BAD_INPUTS)])
def test_tools_end_bad_input_in_one_line(tool, argv, expected, bad_files, capsys):
    try:
        code = TOOLS[tool].main([arg.format(**bad_files) for arg in argv])
    except SystemExit as stopped:  # argparse's own refusal, one line too
        code = stopped.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and expected in err, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err


def test_argparse_errors_are_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as stopped:
        compression.main(["--nosuch"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unrecognized arguments: --nosuch (see ") and err.count("\n") == 1
    with pytest.raises(SystemExit) as stopped:
        main.main(["--first_last", "last_fp"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith("error: argument --first_last: invalid choice: 'last_fp'")


def test_a_tool_run_as_a_program_exits_2_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tools.thresholds", "--checkpoint", str(tmp_path / "none.pth")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: checkpoint not found: {tmp_path / 'none.pth'}"]


def test_gap_report_checks_the_folders_before_reading_any_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gap_report, "dataset_info", lambda *a, **k: pytest.fail("data read before the folders"))
    line = one_line_error(capsys, gap_report.main([str(tmp_path), str(tmp_path)]))
    assert "holds no trained model" in line


# --- .tern files edited with a recomputed checksum ------------------------------------------------

def first_ternary(header):
    return next(entry for entry in header["tensors"] if entry["kind"] == "ternary")


TERN_EDITS = {
    "no config": (lambda h: h.pop("config"), "lacks its config"),
    "no tensors": (lambda h: h.pop("tensors"), "lacks its config or tensor list"),
    "config a list": (lambda h: h.update(config=[1]), "lacks its config"),
    "unknown encoding": (lambda h: h.update(encoding="foo"), "unknown encoding 'foo'"),
    "unknown arch": (lambda h: h["config"].update(arch="nosuch"), "unknown arch 'nosuch'"),
    "unknown quantizer": (lambda h: h["config"].update(quantizer="nosuch"), "unknown quantizer"),
    "huge num_classes": (lambda h: h["config"].update(num_classes=10 ** 9), "num_classes"),
    "num_classes a string": (lambda h: h["config"].update(num_classes="10"), "num_classes"),
    "base 1": (lambda h: first_ternary(h).update(base=1), "has base 1"),
    "base 0": (lambda h: first_ternary(h).update(base=0), "has base 0"),
    "group 0": (lambda h: first_ternary(h).update(group=0), "packs 0 digits"),
    "group_bits 0": (lambda h: first_ternary(h).update(group_bits=0), "into 0 bits"),
    "negative offset": (lambda h: first_ternary(h).update(offset=-5), "offset/nbytes"),
    "empty alphas": (lambda h: first_ternary(h).update(alphas=[]), "finite scales"),
    "NaN alpha": (lambda h: first_ternary(h).update(alphas=[float("nan")]), "finite scales"),
    "Inf alpha": (lambda h: first_ternary(h).update(alphas=[float("inf")]), "finite scales"),
    "shape a string": (lambda h: first_ternary(h).update(shape="16"), "no valid shape"),
    "tensor dropped": (lambda h: h["tensors"].pop(), "do not match"),
    "tensors permuted": (lambda h: [h["tensors"][0].update(name=h["tensors"][1]["name"]),
                                    h["tensors"][1].update(name="conv_1_3x3.weight")], "is fp32"),
    "kind unknown": (lambda h: h["tensors"][0].update(kind="int8"), "unknown kind"),
    "input_shape bad": (lambda h: h.update(input_shape=[3, -1, 8]), "input_shape"),
}


@pytest.mark.parametrize("edit", list(TERN_EDITS))
def test_an_edited_tern_is_refused_in_one_line(edit, runs, tmp_path, capsys):
    change, expected = TERN_EDITS[edit]
    path = rewrite_tern(runs / "model.tern", tmp_path / "edited.tern", change)
    line = one_line_error(capsys, main.main(["--evaluate", "--resume", path, "--save_path", str(tmp_path / "e")]))
    assert expected in line
    assert not (tmp_path / "e").exists()


def test_a_tern_header_that_inflates_past_the_bound_is_refused_unread(runs, tmp_path, capsys):
    bomb = zlib.compress(b" " * (300 << 20), 9)  # 300 MB of JSON whitespace in about 300 kB
    path = rewrite_tern(runs / "model.tern", tmp_path / "bomb.tern", header_bytes=bomb)
    line = one_line_error(capsys, main.main(["--evaluate", "--resume", path]))
    assert "16 MiB uncompressed" in line


def test_an_unedited_tern_rewritten_still_loads(runs, tmp_path):
    path = rewrite_tern(runs / "model.tern", tmp_path / "same.tern", lambda h: None)
    reference = load_packed(str(runs / "model.tern"))
    assert all(torch.equal(a, b) for a, b in zip(load_packed(path).state_dict().values(),
                                                 reference.state_dict().values()))


def test_nan_weights_are_evaluated_with_a_warning(runs, tmp_path, capsys):
    checkpoint = torch.load(runs / "resnet20" / "model_best.pth.tar", weights_only=True)
    checkpoint["state_dict"]["conv_1_3x3.weight"][0, 0, 0, 0] = float("nan")
    torch.save(checkpoint, tmp_path / "nan.pth.tar")
    assert main.main(["--evaluate", "--resume", str(tmp_path / "nan.pth.tar"), "--save_path", str(tmp_path / "e")]) == 0
    assert "warning:" in capsys.readouterr().err + open(tmp_path / "e" / "log.txt").read()


@pytest.mark.parametrize("key,value,expected", [
    ("arch", "nosuch", "arch = 'nosuch'"), ("tfactors", [float("nan")], "tfactors = [nan]"),
    ("tfactors", ["a"], "tfactors = ['a']"), ("tex", 0, "tex = 0"), ("quantizer", "foo", "quantizer = 'foo'"),
    ("epoch", 10 ** 12, "epoch 1000000000000 of a 1-epoch run"),
])
def test_a_checkpoint_with_an_impossible_record_is_refused(key, value, expected, runs, tmp_path, capsys):
    checkpoint = torch.load(runs / "tern_resnet20" / "checkpoint.pth.tar", weights_only=True)
    if key == "epoch":
        checkpoint["epoch"] = value
    else:
        checkpoint["args"][key] = value
        checkpoint["arch"] = checkpoint["args"]["arch"]
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(checkpoint, folder / "checkpoint.pth.tar")
    for argv in (["--resume", str(folder / "checkpoint.pth.tar"), "--epochs", "2"],
                 ["--evaluate", "--resume", str(folder / "checkpoint.pth.tar")]):
        assert expected in one_line_error(capsys, main.main(argv))
    assert sorted(os.listdir(folder)) == ["checkpoint.pth.tar"]


def test_onnxruntime_failing_on_a_batch_is_a_user_error(runs):
    from utils.errors import UserError
    from utils.onnx_export import OnnxModel

    with pytest.raises(UserError, match="onnxruntime cannot run .* on a batch of shape \\(2, 3, 8, 8\\)"):
        OnnxModel(str(runs / "model.onnx"))(torch.zeros(2, 3, 8, 8))  # the model takes one channel


def test_an_oversized_image_in_a_folder_data_set_is_one_line(tmp_path, capsys, monkeypatch):
    write_folder(tmp_path / "data", ["a", "b"], per_class=(2, 1))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16)  # 8×8 images: over twice the limit, as 14000² is
    line = one_line_error(capsys, main.main(["--dataset", "folder", "--data_path", str(tmp_path / "data"),
                                             "--save_path", str(tmp_path / "run")]))
    assert "decompression-bomb limit" in line and not (tmp_path / "run").exists()


# --- 1: a resume writes only into the folder of the run it continues ---------------------------------

def test_a_checkpoint_of_another_run_is_not_resumed_into_its_folder(tmp_path, capsys):
    for name, seed in (("a", "0"), ("b", "1")):
        assert main.main([*QUICK, "--manualSeed", seed, "--save_path", str(tmp_path / name)]) == 0
    b = tmp_path / "b"
    before = {name: (b / name).read_bytes() for name in ("checkpoint.pth.tar", "model_best.pth.tar", "results.json")}
    shutil.copy(tmp_path / "a" / "checkpoint.pth.tar", b / "fromA.pth.tar")
    line = one_line_error(capsys, main.main(["--resume", str(b / "fromA.pth.tar"), "--epochs", "2"]))
    assert "--save_path" in line and "another run" in line
    assert {name: (b / name).read_bytes() for name in before} == before
    assert main.main(["--resume", str(b / "fromA.pth.tar"), "--epochs", "2", "--save_path", str(tmp_path / "c")]) == 0
    assert main.main(["--resume", str(b / "checkpoint.pth.tar"), "--epochs", "2"]) == 0  # its own run continues
    assert results(b)["epochs_done"] == 2


# --- 4: publishing is a transaction --------------------------------------------------------------------

class Killed(BaseException):
    """A kill -9 at a chosen moment: no cleanup of the process itself runs."""


def publish_roots(tmp_path):
    return ["--data_path", "unused", "--results", str(tmp_path / "results"), "--pretrained", str(tmp_path / "p")]


def evaluation_children(marker):
    """pids of processes whose command line contains `marker` (the publish's evaluation)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def test_kill_9_of_publish_takes_its_evaluation_along_and_the_rerun_completes(runs, tmp_path):
    folder = tmp_path / "p" / "digits"
    process = subprocess.Popen([sys.executable, "-m", "tools.publish", str(runs / "tern_resnet20"),
                                *publish_roots(tmp_path)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not evaluation_children(str(folder / ".publish-")) and time.time() < deadline:
        time.sleep(0.05)
    assert evaluation_children(str(folder / ".publish-")), "the publish never started its evaluation"
    process.send_signal(signal.SIGKILL)
    process.wait()
    deadline = time.time() + 10
    while evaluation_children(str(folder / ".publish-")) and time.time() < deadline:
        time.sleep(0.05)
    assert not evaluation_children(str(folder / ".publish-")), "the evaluation outlived the publish"
    assert not (folder / "manifest.json").exists() and not (tmp_path / "results" / "digits").exists()
    assert [name for name in os.listdir(folder) if name.startswith(".publish-")]  # what kill -9 left
    assert publish.main([str(runs / "tern_resnet20"), *publish_roots(tmp_path)]) == 0
    (entry,) = json.loads((folder / "manifest.json").read_text())["files"]
    assert sorted(os.listdir(folder)) == sorted(["README.md", entry["file"], "manifest.json"])
    assert entry["sha256"] == hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest()


def test_files_a_killed_publish_moved_in_without_a_manifest_entry_are_cleaned(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "write_json", lambda *a: (_ for _ in ()).throw(Killed()))
    with pytest.raises(Killed):
        publish.main([str(runs / "resnet20"), *publish_roots(tmp_path)])
    name = "fp_resnet20_e1_seed5000"
    assert (tmp_path / "results" / "digits" / name).is_dir() and (tmp_path / "p" / "digits" / f"{name}.pth").exists()
    monkeypatch.undo()
    assert publish.main([str(runs / "resnet20"), *publish_roots(tmp_path)]) == 0  # not "already published"
    assert [e["name"] for e in json.loads((tmp_path / "p" / "digits" / "manifest.json").read_text())["files"]] == [name]


def test_publish_refuses_subset_runs_and_records_the_full_command(tmp_path, capsys):
    run = tmp_path / "run"
    assert main.main(["--arch", "resnet20", "--epochs", "1", "--subset", "300", "--save_path", str(run)]) == 0
    assert "--allow_subset" in one_line_error(capsys, publish.main([str(run), *publish_roots(tmp_path)]))
    assert not (tmp_path / "p" / "digits" / "manifest.json").exists()
    assert publish.main([str(run), *publish_roots(tmp_path), "--allow_subset"]) == 0
    (entry,) = json.loads((tmp_path / "p" / "digits" / "manifest.json").read_text())["files"]
    assert entry["trained_with"].endswith("--manualSeed 5000 --subset 300")


def test_training_command_covers_every_run_defining_flag():
    assert set(main.RUN_DEFINING) - {"auto_thresholds"} <= set(publish.TRAINING_FLAGS)


def test_a_truncated_manifest_is_named(runs, tmp_path, capsys):
    folder = tmp_path / "p" / "digits"
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text('{"files": [')
    line = one_line_error(capsys, publish.main([str(runs / "resnet20"), *publish_roots(tmp_path)]))
    assert str(folder / "manifest.json") in line


# --- 5-7: leftovers, data errors, the recorded data set --------------------------------------------------

def test_a_refused_evaluation_leaves_no_folder(runs, tmp_path, capsys):
    target = tmp_path / "eval" / "deep"
    write_folder(tmp_path / "rgb", ["a", "b"], per_class=(2, 1))
    line = one_line_error(capsys, main.main(["--evaluate", "--resume", str(runs / "tern_resnet20" / "model_best.pth.tar"),
                                             "--dataset", "folder", "--data_path", str(tmp_path / "rgb"),
                                             "--save_path", str(target)]))
    assert "does not fit the model" in line  # refused after the folder was claimed
    assert not (tmp_path / "eval").exists()


def test_missing_cifar10_is_one_line_naming_the_image_folder_copy_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import torchvision

    def offline(*args, download=False, **kwargs):
        if download:
            os.makedirs(args[0], exist_ok=True)  # torchvision creates the folder before it downloads
            raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")
        raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    monkeypatch.chdir(tmp_path)
    line = one_line_error(capsys, main.main(["--dataset", "cifar10", "--data_path", "data/cifar10-jpeg",
                                             "--arch", "tern_resnet20"]))
    assert "could not be downloaded" in line and "image-folder copy" in line and "cifar10-jpeg" in line
    assert os.listdir(tmp_path) == []


def test_the_matrix_stops_at_the_first_refused_run_and_writes_nothing(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, PRECISION="fp32", EPOCHS="1", SAVE_ROOT=str(tmp_path / "save"),
               DATASET="digits", ARCHS="resnet20 resnet32")
    done = subprocess.run(["bash", "train_CIFAR10.sh", "--momentum", "2"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.count("== run:") == 1 and "no later run was started" in done.stderr
    assert "error: --momentum must lie in [0, 1)" in done.stderr
    assert not (tmp_path / "save").exists()


def test_evaluate_uses_the_data_set_the_checkpoint_records(tmp_path, capsys):
    data = tmp_path / "rgb"
    write_folder(data, ["a", "b", "c"], per_class=(4, 2))
    run = tmp_path / "run"
    assert main.main(["--dataset", "folder", "--data_path", str(data), "--arch", "tern_resnet20", "--epochs", "1",
                      "--save_path", str(run)]) == 0
    capsys.readouterr()
    assert main.main(["--evaluate", "--resume", str(run / "model_best.pth.tar"), "--save_path",
                      str(tmp_path / "e")]) == 0
    record = results(tmp_path / "e")
    assert record["dataset"] == "folder" and record["top1"] == pytest.approx(results(run)["final_top1"])
    assert "evaluating on folder, the data set" in open(tmp_path / "e" / "log.txt").read()


def test_a_run_logs_the_lr_schedule_it_uses(tmp_path):
    assert main.main([*QUICK, "--epochs", "5", "--save_path", str(tmp_path / "run")]) == 0
    assert "=> SGD lr 0.05, ×0.1 at epoch 2, ×0.1 at epoch 3, ×0.5 at epoch 4, weight decay 0.0003, batch 64, " \
           "5 epochs" in open(tmp_path / "run" / "log.txt").read()


def test_a_protocol_5_pickle_is_refused_without_torchs_warning(tmp_path, capsys):
    import pickle

    with open(tmp_path / "p5.pth", "wb") as f:
        pickle.dump({"state_dict": {}, "run": os.system}, f, protocol=5)
    code, err = run_main(["--evaluate", "--resume", str(tmp_path / "p5.pth")], capsys)
    assert code == 2 and err.count("\n") == 1 and "nothing in it was run" in err


def test_refresh_writes_the_preprocessing_into_shipped_files_and_keeps_their_top1(runs, tmp_path, capsys):
    assert publish.main([str(runs / "tern_resnet20"), *publish_roots(tmp_path)]) == 0
    folder = tmp_path / "p" / "digits"
    manifest = json.loads((folder / "manifest.json").read_text())
    (entry,) = manifest["files"]
    shipped = folder / entry["file"]
    model = load_packed(str(shipped))
    old = rewrite_tern(shipped, tmp_path / "old.tern", lambda h: (h.pop("preprocessing"), h.pop("input_shape")))
    shutil.copy(old, shipped)  # a file written before the record existed
    entry["sha256"] = hashlib.sha256(shipped.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert load_packed(str(shipped)).preprocessing is None
    assert publish.main(["--refresh", "digits", *publish_roots(tmp_path)]) == 0
    (refreshed,) = json.loads((folder / "manifest.json").read_text())["files"]
    assert refreshed["top1"] == entry["top1"] and refreshed["sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert load_packed(str(shipped)).preprocessing["classes"] == [str(d) for d in range(10)]
    assert all(torch.equal(a, b) for a, b in zip(load_packed(str(shipped)).state_dict().values(),
                                                 model.state_dict().values()))
    refreshed["top1"] += 1  # a manifest that disagrees with the file's evaluation: nothing changes
    (folder / "manifest.json").write_text(json.dumps({"files": [refreshed]}))
    before = shipped.read_bytes()
    assert "nothing was changed" in one_line_error(capsys, publish.main(["--refresh", "digits",
                                                                         *publish_roots(tmp_path)]))
    assert shipped.read_bytes() == before and not [n for n in os.listdir(folder) if n.startswith(".publish-")]


@pytest.mark.parametrize("signal_status", [130, 143])
def test_the_matrix_stops_when_a_run_is_interrupted(tmp_path, signal_status):
    """A run stopped by SIGINT / SIGTERM alone (kill of main.py) ends the matrix with its status
    instead of starting the next run; the same command resumes it."""
    launcher = tmp_path / "interrupted.sh"
    launcher.write_text(f"echo interrupted by a signal >&2; exit {signal_status}\n")
    env = dict(os.environ, PYTHON=f"bash {launcher}", PRECISION="fp32", EPOCHS="1",
               SAVE_ROOT=str(tmp_path / "save"), DATASET="digits", ARCHS="resnet20 resnet32")
    done = subprocess.run(["bash", "train_CIFAR10.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == signal_status, done.stdout + done.stderr
    assert done.stdout.count("== run:") == 1
    assert "was interrupted; the same command resumes it, no later run was started" in done.stderr
