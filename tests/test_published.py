"""The committed reproduction records and the trained models the project ships (issue 17):
python -m tools.publish, the manifest, README's CIFAR-10 table built from the records."""
import hashlib
import json
import os
import shutil
import subprocess

import pytest
import torch

import main
from conftest import ROOT
from models import QUANTIZERS, get_quantizer
from tools import publish, report
from utils.data import dataset_info
from utils.model_loader import load_model

PRETRAINED = os.path.join(ROOT, "pretrained")
MANIFESTS = sorted(os.path.join(PRETRAINED, d, "manifest.json") for d in os.listdir(PRETRAINED)) \
    if os.path.isdir(PRETRAINED) else []
SHIPPED = [(os.path.dirname(path), entry) for path in MANIFESTS for entry in json.load(open(path))["files"]]


def evaluated_top1(tmp_path, dataset, data_path, model_path):
    """What README's evaluation command reports for a file."""
    save = tmp_path / "eval"
    assert main.main(["--dataset", dataset, "--data_path", str(data_path), "--evaluate", "--resume", model_path,
                      "--save_path", str(save)]) == 0
    return json.loads((save / "results.json").read_text())["top1"]


def train_digits(save, arch, epochs=1):
    assert main.main(["--arch", arch, "--epochs", str(epochs), "--save_path", str(save)]) == 0


@pytest.mark.parametrize("arch,suffix", [("tern_resnet20", ".tern"), ("resnet20", ".pth")])
def test_publish_copies_the_records_and_ships_a_model_that_evaluates_to_its_manifest_top1(tmp_path, arch, suffix):
    run = tmp_path / "save" / "run"
    train_digits(run, arch)
    assert publish.main([str(run), "--data_path", "unused", "--results", str(tmp_path / "results"),
                         "--pretrained", str(tmp_path / "pretrained")]) == 0
    name = f"{'tern' if suffix == '.tern' else 'fp'}_resnet20_e1_seed5000"
    records = tmp_path / "results" / "digits" / name
    for record in publish.RECORDS:
        assert (records / record).read_bytes() == (run / record).read_bytes()
    manifest = json.loads((tmp_path / "pretrained" / "digits" / "manifest.json").read_text())
    (entry,) = manifest["files"]
    shipped = tmp_path / "pretrained" / "digits" / entry["file"]
    assert entry["file"] == name + suffix and entry["bytes"] == shipped.stat().st_size
    assert entry["sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert (entry["arch"], entry["epochs"], entry["seed"]) == (arch, 1, 5000)
    assert entry["top1"] == round(evaluated_top1(tmp_path, "digits", "unused", str(shipped)), 2)
    assert entry["trained_with"].startswith(f"python main.py --dataset digits --data_path DATA --arch {arch} --epochs 1")
    best = json.loads((run / "results.json").read_text())["best_top1"]
    assert entry["top1"] == round(best, 2)  # digits trains and evaluates in fp32: the same number


def test_publish_refuses_unfinished_runs_and_republishing(tmp_path, capsys):
    run = tmp_path / "run"
    train_digits(run, "tern_resnet20")
    roots = ["--data_path", "unused", "--results", str(tmp_path / "r"), "--pretrained", str(tmp_path / "p")]
    assert publish.main([str(run), *roots]) == 0
    capsys.readouterr()
    assert publish.main([str(run), *roots]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--overwrite" in err and err.count("\n") == 1
    assert publish.main([str(run), *roots, "--overwrite"]) == 0
    record = json.loads((run / "results.json").read_text())
    record["status"] = "running"
    (run / "results.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert publish.main([str(run), *roots, "--overwrite"]) == 2
    assert "no finished training run" in capsys.readouterr().err


def test_training_command_rebuilds_the_scripts_main_py_call():
    args = {"dataset": "cifar10", "arch": "tern_resnet20", "tex": None, "tfactors": None, "first_last": None,
            "epochs": 40, "optimizer": "SGD", "learning_rate": 0.1, "momentum": 0.9, "decay": 3e-4,
            "batch_size": 128, "schedule": [16, 24, 32], "gammas": [0.1, 0.1, 0.5], "manualSeed": 5000,
            "amp": True, "amp_dtype": "bfloat16", "channels_last": True}
    assert publish.training_command(args, "DATA") == (
        "python main.py --dataset cifar10 --data_path DATA --arch tern_resnet20 --epochs 40 --optimizer SGD "
        "--learning_rate 0.1 --momentum 0.9 --decay 0.0003 --batch_size 128 --schedule 16 24 32 "
        "--gammas 0.1 0.1 0.5 --manualSeed 5000 --amp --channels_last")
    assert "--tfactors auto" in publish.training_command({**args, "auto_thresholds": True}, "DATA")
    assert "--arch tern_resnet20 --quantizer ttq --epochs 40" in publish.training_command({**args, "quantizer": "ttq"},
                                                                                          "DATA")
    assert "--quantizer" not in publish.training_command({**args, "quantizer": "paper"}, "DATA")
    ttq_code = publish.training_command({**args, "quantizer": "ttq", "first_last": "first_fp", "nesterov": False,
                                         "decay_on": "weights"}, "D")
    assert "--quantizer ttq --first_last first_fp --epochs 40" in ttq_code
    assert "--momentum 0.9 --no-nesterov --decay 0.0003 --decay_on weights --scale_lr" in ttq_code
    assert "nesterov" not in publish.training_command({**args, "nesterov": True}, "DATA")
    assert "decay_on" not in publish.training_command({**args, "decay_on": "all"}, "DATA")
    assert publish.variant_of({"args": {"quantizer": "ttq", "first_last": "first_fp"}, "ternary_layers": 19}) == "ttq_ff"
    fine_tuned = {"args": {**args, "pretrained": "pretrained/cifar10/fp.pth"}, "ternary_layers": 20}
    assert publish.variant_of(fine_tuned) == "tern_ft"
    assert "--first_last first_fp --pretrained pretrained/cifar10/fp.pth --epochs 40" in publish.training_command(
        {**fine_tuned["args"], "first_last": "first_fp"}, "D")


@pytest.mark.parametrize("document,block,make_table", [
    ("README.md", "cifar10", "paper_table"),
    (os.path.join("docs", "results.md"), "quantizers", "quantizer_table"),
    (os.path.join("docs", "results.md"), "bench", "bench_table"),
])
def test_committed_tables_are_the_ones_the_committed_records_give(document, block, make_table):
    with open(os.path.join(ROOT, document)) as f:
        text = f.read()
    start, end = report.readme_block(text, block)
    runs = report.find_runs([os.path.join(ROOT, "results", "cifar10")])
    assert text[start:end].rstrip("\n") == getattr(report, make_table)(runs)


def test_every_shipped_model_is_listed_with_its_records():
    assert SHIPPED, "pretrained/ ships no model"
    for folder, entry in SHIPPED:
        assert os.path.isfile(os.path.join(folder, entry["file"])), entry["file"]
        assert os.path.isfile(os.path.join(ROOT, entry["records"], "results.json")), entry["records"]
    listed = {entry["file"] for _, entry in SHIPPED} | {"manifest.json", "README.md"}
    on_disk = {name for folder in {f for f, _ in SHIPPED} for name in os.listdir(folder)}
    assert on_disk == listed, "pretrained/ holds files the manifest does not list"


@pytest.mark.parametrize("folder,entry", SHIPPED, ids=[entry["file"] for _, entry in SHIPPED])
def test_shipped_model_matches_its_manifest_and_runs(folder, entry):
    path = os.path.join(folder, entry["file"])
    with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == entry["sha256"]
    assert os.path.getsize(path) == entry["bytes"]
    info = dataset_info(entry["dataset"])
    model = load_model(path, info, entry["dataset"]).model.eval()
    with torch.no_grad():
        logits = model(torch.randn(4, info.in_channels, info.image_size, info.image_size))
    assert logits.shape == (4, info.num_classes) and torch.isfinite(logits).all()


@pytest.mark.parametrize("folder,entry", [(f, e) for f, e in SHIPPED if e["variant"] == "tern"][:1],
                         ids=lambda value: value["file"] if isinstance(value, dict) else "")
def test_shipped_ternarized_model_gives_its_manifest_top1_on_the_full_test_set(tmp_path, cifar10_jpeg_test_split,
                                                                               folder, entry):
    top1 = evaluated_top1(tmp_path, entry["dataset"], cifar10_jpeg_test_split, os.path.join(folder, entry["file"]))
    assert round(top1, 2) == entry["top1"]


def test_repository_stays_under_30_mb():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if files.returncode != 0:
        pytest.skip("not a git checkout")
    paths = [p for p in files.stdout.split("\0") if p and os.path.isfile(os.path.join(ROOT, p))]
    assert sum(os.path.getsize(os.path.join(ROOT, p)) for p in paths) < 30 * 2**20


def test_withdraw_takes_a_shipped_model_back_and_the_card_says_why(tmp_path, capsys):
    shipped = tmp_path / "pretrained" / "cifar10"
    shutil.copytree(os.path.join(ROOT, "pretrained", "cifar10"), shipped)
    name = "tern_resnet20_e40_seed5001"
    entry = next(e for e in json.loads((shipped / "manifest.json").read_text())["files"] if e["name"] == name)
    root = ["--pretrained", str(tmp_path / "pretrained")]
    assert publish.main(["--withdraw", f"cifar10/{name}", *root]) == 2
    assert "--reason must say why" in capsys.readouterr().err
    assert publish.main(["--withdraw", "cifar10/nosuch", "--reason", "x", *root]) == 2
    assert "nosuch is not shipped" in capsys.readouterr().err
    assert publish.main(["--withdraw", f"cifar10/{name}", "--reason", "a test of withdrawal", *root]) == 0
    manifest = json.loads((shipped / "manifest.json").read_text())
    assert name not in [e["name"] for e in manifest["files"]] and not (shipped / entry["file"]).exists()
    before = json.loads(open(os.path.join(ROOT, "pretrained", "cifar10", "manifest.json")).read()).get("withdrawn", [])
    assert manifest["withdrawn"] == before + [{"name": name, "sha256": entry["sha256"], "top1": entry["top1"],
                                               "records": entry["records"], "reason": "a test of withdrawal"}]
    card = (shipped / "README.md").read_text()
    assert f"| {name} | {entry['top1']:.2f} | `{entry['sha256'][:12]}` | a test of withdrawal |" in card
    assert card == publish.model_card(manifest, publish.shown_path(str(shipped)))
    assert publish.main(["--withdraw", f"cifar10/{name}", "--reason", "again", *root]) == 2


def test_model_card_names_the_fine_tuned_models():
    with open(os.path.join(ROOT, "pretrained", "cifar10", "manifest.json")) as f:
        manifest = json.load(f)
    from_scratch = [e for e in manifest["files"] if "--pretrained" not in e["trained_with"]]
    assert "fine-tuned" not in publish.model_card({**manifest, "files": from_scratch}, "pretrained/cifar10")
    entry = dict(from_scratch[-1], name="ttq_ff_ft_resnet20_e40_seed5000",
                 trained_with="python main.py --quantizer ttq --first_last first_fp --pretrained fp.pth")
    card = " ".join(publish.model_card({**manifest, "files": [entry] + from_scratch}, "pretrained/cifar10").split())
    assert "except ttq_ff_ft_resnet20_e40_seed5000: fine-tuned from the full-precision weights" in card
    example = next(e for e in from_scratch if e["quantizer"] != "none")  # the example is trained from scratch
    assert f"(e.g. `{example['trained_with']}`)" in card


def test_records_only_commits_a_runs_records_without_shipping_it(tmp_path, capsys):
    run = tmp_path / "save" / "tern_resnet20_e1_seed5000"
    assert main.main(["--epochs", "1", "--subset", "128", "--print_freq", "1000", "--save_path", str(run)]) == 0
    roots = ["--results", str(tmp_path / "results"), "--pretrained", str(tmp_path / "pretrained")]
    assert publish.main([str(run), "--records_only", *roots]) == 2  # a --subset run, as for publishing
    assert "--subset" in capsys.readouterr().err
    assert publish.main([str(run), "--records_only", "--allow_subset", *roots]) == 0
    records = tmp_path / "results" / "digits" / "tern_resnet20_e1_seed5000"
    assert sorted(os.listdir(records)) == ["curve.png", "log.txt", "results.json"]
    assert not (tmp_path / "pretrained").exists() and sorted(os.listdir(records.parent)) == [records.name]
    assert publish.main([str(run), "--records_only", "--allow_subset", *roots]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert publish.main([str(run), "--records_only", "--allow_subset", "--overwrite", *roots]) == 0


def test_a_run_committed_records_only_can_ship_its_model_later(tmp_path, capsys):
    """A bench cell that wins its row after its records were committed alone: publishing it
    keeps those records and ships the model; records of another run of that name need --overwrite."""
    run = tmp_path / "save" / "tern_resnet20_e1_seed5000"
    assert main.main(["--epochs", "1", "--subset", "128", "--print_freq", "1000", "--save_path", str(run)]) == 0
    roots = ["--results", str(tmp_path / "results"), "--pretrained", str(tmp_path / "pretrained"), "--allow_subset"]
    assert publish.main([str(run), "--records_only", *roots]) == 0
    records = tmp_path / "results" / "digits" / "tern_resnet20_e1_seed5000"
    assert publish.main([str(run), "--data_path", "unused", *roots]) == 0
    assert "already holds this run's records" in capsys.readouterr().out
    (entry,) = json.loads((tmp_path / "pretrained" / "digits" / "manifest.json").read_text())["files"]
    assert entry["records"].endswith("tern_resnet20_e1_seed5000")

    other = tmp_path / "save2" / "tern_resnet20_e1_seed5000"
    assert main.main(["--epochs", "1", "--subset", "100", "--print_freq", "1000", "--save_path", str(other)]) == 0
    shutil.rmtree(tmp_path / "pretrained")
    assert publish.main([str(other), "--data_path", "unused", *roots]) == 2
    assert "holds other records of tern_resnet20_e1_seed5000; pass --overwrite" in capsys.readouterr().err
    assert publish.main([str(other), "--data_path", "unused", "--overwrite", *roots]) == 0
    assert json.loads((records / "results.json").read_text())["args"]["subset"] == 100


def test_the_model_card_names_the_rule_of_each_shipped_quantizer():
    with open(os.path.join(ROOT, "pretrained", "cifar10", "manifest.json")) as f:
        manifest = json.load(f)
    card = publish.model_card(manifest, "pretrained/cifar10")
    shipped = {entry["quantizer"] for entry in manifest["files"]} - {"none"}
    assert shipped and all(f"- `{name}`: {get_quantizer(name).label}\n" in card for name in shipped)
    assert not any(f"- `{name}`:" in card for name in set(QUANTIZERS) - shipped)
