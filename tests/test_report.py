"""The experiment-matrix scripts (dry run) and the results report (issue 6)."""
import json
import os
import subprocess

import pytest

from tools import report
from tools.precision import fastest_precision
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_run(folder, arch, seed, best, epochs=200, done=None, dataset="cifar10", status="complete", **args):
    done = epochs if done is None else done
    os.makedirs(folder, exist_ok=True)
    history = [{"epoch": e + 1, "val_top1": best * (e + 1) / done, "train_loss": 2.0 / (e + 1)} for e in range(done)]
    results = {"mode": "train", "status": status, "arch": arch, "dataset": dataset, "epochs": epochs,
               "epochs_done": done, "best_top1": best, "final_top1": best - 0.25, "weight_compression": 20.0 if arch.startswith("tern") else 1.0,
               "sparsity": 0.3, "wall_time_s": 100.0, "history": history,
               "args": {"arch": arch, "manualSeed": seed, "tex": None, "tfactors": None, "first_last": None, **args}}
    with open(os.path.join(folder, "results.json"), "w") as f:
        json.dump(results, f)


def rows_by_config(rows):
    return {(row["dataset"], row["config"]): row for row in rows}


def test_report_aggregates_seeds_and_compares_with_the_paper(tmp_path):
    write_run(tmp_path / "cifar10/tern_resnet20_seed5000", "tern_resnet20", 5000, 91.0)
    write_run(tmp_path / "cifar10/tern_resnet20_seed5001", "tern_resnet20", 5001, 92.0)
    write_run(tmp_path / "cifar10/rel2_resnet20_seed5000", "tern_resnet20", 5000, 92.5, tex=2)
    rows = rows_by_config(report.report_rows(report.find_runs([str(tmp_path)])))
    tern = rows[("cifar10", "tern_resnet20")]
    assert tern["top1"] == "91.50 ± 0.71" and tern["paper"] == 91.65 and tern["diff"] == pytest.approx(-0.15)
    assert tern["seeds"] == [5000, 5001] and tern["status"] == "2 complete"
    rel = rows[("cifar10", "tern_resnet20 t_ex=2")]
    assert rel["paper"] is None and rel["top1"] == "92.50"  # not a configuration of the paper's table
    assert ("cifar10", "resnet56") not in rows  # paper rows without runs stay in the paper's own table


def test_ternarized_rows_are_compared_with_full_precision_at_equal_epochs(tmp_path):
    write_run(tmp_path / "fp40", "resnet20", 5000, 90.0, epochs=40, amp=True, amp_dtype="bfloat16")
    write_run(tmp_path / "tern40", "tern_resnet20", 5000, 89.4, epochs=40, amp=True, amp_dtype="bfloat16")
    write_run(tmp_path / "tern200", "tern_resnet20", 5001, 91.0, epochs=200)
    rows = report.report_rows(report.find_runs([str(tmp_path)]))
    by_epochs = {(row["config"], row["epochs"]): row for row in rows}
    assert by_epochs[("tern_resnet20", 40)]["vs_fp"] == pytest.approx(-0.6)
    assert by_epochs[("tern_resnet20", 40)]["precision"] == "bf16" and by_epochs[("tern_resnet20", 40)]["final"] == "89.15"
    assert by_epochs[("resnet20", 40)]["vs_fp"] is None
    assert report.full_precision_twin("resnet18b_ff_lf_tex1") == "resnet18"
    assert report.full_precision_twin("tern_alexnet_fq_lq") == "alexnet_vanilla"


def test_runs_on_two_copies_of_a_data_set_are_never_averaged_together(tmp_path):
    for kind, fp, tern in (("lossless", 70.0, 69.0), ("jpeg", 68.0, 68.5)):
        write_run(tmp_path / f"{kind}/fp", "resnet20", 5000, fp, epochs=60, data_path=f"data/paired/{kind}")
        write_run(tmp_path / f"{kind}/tern", "tern_resnet20", 5000, tern, epochs=60, data_path=f"/abs/paired/{kind}/")
    rows = {(row["data_set"], row["config"]): row for row in report.report_rows(report.find_runs([str(tmp_path)]))}
    assert len(rows) == 4
    assert rows[("cifar10 (lossless)", "tern_resnet20")]["vs_fp"] == pytest.approx(-1.0)
    assert rows[("cifar10 (jpeg)", "tern_resnet20")]["vs_fp"] == pytest.approx(0.5)
    assert rows[("cifar10 (jpeg)", "resnet20")]["top1"] == "68.00"
    assert "| cifar10 (jpeg) | tern_resnet20 | 68.50 |" in report.format_rows(list(rows.values()))


def test_partial_and_broken_runs_are_shown_not_dropped(tmp_path):
    write_run(tmp_path / "a", "resnet20", 5000, 90.0)
    write_run(tmp_path / "b", "resnet20", 5001, 50.0, done=3, status="running")
    os.makedirs(tmp_path / "c")
    open(tmp_path / "c/checkpoint.pth.tar", "wb").close()  # crashed before its first results.json
    runs = report.find_runs([str(tmp_path)])
    assert sorted(r.status for r in runs) == ["complete", "partial", "partial"]
    rows = rows_by_config(report.report_rows(runs))
    row = rows[("cifar10", "resnet20")]
    assert row["top1"] == "90.00" and row["status"] == "1 complete, 1 partial (3/200 epochs)"
    assert any(r["status"].startswith("0 complete, 1 partial") for r in rows.values())


def test_report_command_writes_markdown_and_curves(tmp_path, capsys):
    write_run(tmp_path / "fashion/fp", "resnet20", 5000, 91.2, epochs=5, dataset="fashion_mnist")
    write_run(tmp_path / "fashion/tern", "tern_resnet20", 5000, 90.9, epochs=5, dataset="fashion_mnist",
              auto_thresholds=True)
    assert report.main([str(tmp_path)]) == 0
    table = open(tmp_path / "report.md").read()
    assert "| fashion_mnist | tern_resnet20 auto thresholds | 90.90 | 90.65 | −0.30 |".replace("−", "-") in table
    assert "| fashion_mnist | resnet20 | 91.20 |" in table and table == capsys.readouterr().out.split("\n\nwrote")[0] + "\n"
    with open(tmp_path / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_report_of_an_empty_folder_says_so(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 1
    assert "no training runs" in capsys.readouterr().out


def script(name, env, *args):
    done = subprocess.run(["bash", name, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "DRY_RUN": "1", **env}, timeout=60)
    return done.returncode, done.stdout, done.stderr


def test_cifar_script_dry_run_builds_the_matrix(tmp_path):
    code, out, _ = script("train_CIFAR10.sh", {"ARCHS": "resnet20 resnet56", "VARIANTS": "fp rel2_auto", "SEEDS": "2",
                                               "SAVE_ROOT": str(tmp_path)}, "--print_freq", "3")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 8
    assert f"--save_path {tmp_path}/cifar10/fp_resnet20_e200_seed5000 " in lines[0] and "--arch resnet20 " in lines[0]
    assert f"{tmp_path}/cifar10/rel2_auto_resnet56_e200_seed5001" in lines[7]
    assert "--arch tern_resnet56 --tex 2 --tfactors auto" in lines[7] and "--manualSeed 5001" in lines[7]
    assert all(line.rstrip().endswith("--print_freq 3") and "--epochs 200 " in line for line in lines)
    automatic = "--amp --channels_last" if fastest_precision() == "bf16" else "--no-amp --channels_last"
    assert all("--schedule 80 120 160" in line and automatic in line for line in lines)  # PRECISION=auto
    assert not os.listdir(tmp_path)  # a dry run runs nothing
    code, out, _ = script("train_CIFAR10.sh", {"ARCHS": "resnet20", "VARIANTS": "twn ttq_fflf", "SAVE_ROOT": str(tmp_path)})
    twn, ttq = out.strip().splitlines()
    assert "twn_resnet20_e200_seed5000 " in twn and "--arch tern_resnet20 --quantizer twn " in twn
    assert "--arch tern_resnet20 --quantizer ttq --first_last fp " in ttq
    code, out, _ = script("train_CIFAR10.sh", {"ARCHS": "resnet20", "VARIANTS": "ttq_ff brevitas", "EPOCHS": "40",
                                               "SAVE_ROOT": str(tmp_path), "PRETRAINED": "fp.pth"}, "--no-nesterov")
    ttq, brevitas = out.strip().splitlines()
    assert f"{tmp_path}/cifar10/ttq_ff_ft_resnet20_e40_seed5000 " in ttq and "--pretrained fp.pth " in ttq
    assert "--quantizer ttq --first_last first_fp " in ttq and ttq.rstrip().endswith("--no-nesterov")
    assert "brevitas_ft_resnet20_e40_seed5000 " in brevitas and "--quantizer brevitas " in brevitas


def test_cifar_script_takes_the_length_from_epochs_only(tmp_path):
    code, out, err = script("train_CIFAR10.sh", {"ARCHS": "resnet20", "SAVE_ROOT": str(tmp_path)}, "--epochs", "10")
    assert code == 2 and out == "" and err.startswith("error: ") and "EPOCHS=N" in err


def test_cifar_script_uses_the_repository_venv_unless_python_is_given(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    venv = os.path.isfile(os.path.join(ROOT, ".venv", "bin", "python"))
    done = subprocess.run(["bash", "train_CIFAR10.sh"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**env, "DRY_RUN": "1", "ARCHS": "resnet20", "VARIANTS": "fp", "SAVE_ROOT": str(tmp_path)})
    assert done.stdout.startswith(".venv/bin/python main.py " if venv else "python main.py ")
    _, out, _ = script("train_CIFAR10.sh", {"ARCHS": "resnet20", "VARIANTS": "fp", "SAVE_ROOT": str(tmp_path),
                                            "PYTHON": "/opt/py/bin/python3", "PRECISION": "bf16"})
    assert out.startswith("/opt/py/bin/python3 main.py ")


def test_cifar_script_compresses_the_schedule_and_sets_precision(tmp_path):
    code, out, _ = script("train_CIFAR10.sh", {"ARCHS": "resnet20", "VARIANTS": "tern", "EPOCHS": "40",
                                               "PRECISION": "fp32", "SAVE_ROOT": str(tmp_path)})
    assert code == 0 and "--epochs 40 " in out and "--schedule 16 24 32 --gammas 0.1 0.1 0.5" in out
    assert "--no-amp --channels_last" in out and " --amp " not in out and "--no-channels_last" not in out
    code, _, err = script("train_CIFAR10.sh", {"PRECISION": "fp8"})
    assert code == 2 and "unknown PRECISION 'fp8'" in err


def test_cifar_script_skips_finished_and_resumes_partial_runs(tmp_path):
    write_run(tmp_path / "cifar10/fp_resnet20_e40_seed5000", "resnet20", 5000, 91.0, epochs=40)
    os.makedirs(tmp_path / "cifar10/tern_resnet20_e40_seed5000")
    open(tmp_path / "cifar10/tern_resnet20_e40_seed5000/checkpoint.pth.tar", "wb").close()
    code, out, _ = script("train_CIFAR10.sh", {"ARCHS": "resnet20", "SAVE_ROOT": str(tmp_path), "EPOCHS": "40"})
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].startswith("== skip (finished)")
    assert lines[1].rstrip().endswith(f"--resume {tmp_path}/cifar10/tern_resnet20_e40_seed5000/checkpoint.pth.tar")
    _, out, _ = script("train_CIFAR10.sh", {"ARCHS": "resnet20", "SAVE_ROOT": str(tmp_path)})
    assert "== skip" not in out and "--resume" not in out  # the 200-epoch runs are other folders


@pytest.mark.parametrize("env,message", [({"ARCHS": "resnet99"}, "unknown arch 'resnet99'"),
                                         ({"VARIANTS": "nope"}, "unknown variant 'nope'")])
def test_cifar_script_rejects_unknown_names(env, message):
    code, _, err = script("train_CIFAR10.sh", env)
    assert code == 2 and message in err


def test_imagenet_script_dry_run(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "resnet18.pth").write_bytes(b"")
    env = {"ARCHS": "resnet18b_fq_lq_tern_tex_2 resnet34b_ff_lf_tex1 tern_alexnet_ff_lf", "FP_ARCHS": "resnet18",
           "PRETRAINED_DIR": str(weights), "SAVE_ROOT": str(tmp_path), "LAUNCH": "torchrun --nproc_per_node 8"}
    code, out, err = script("train_ImageNet.sh", env)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 4 and all(line.startswith("torchrun --nproc_per_node 8 main.py") for line in lines)
    assert f"--pretrained {weights}/resnet18.pth --evaluate" in lines[0] and "resnet18_pretrained" in lines[0]
    assert f"--pretrained {weights}/resnet18.pth" in lines[1] and "--optimizer Adam" in lines[1]
    assert "--pretrained torchvision" in lines[2]  # no local resnet34.pth: torchvision's download
    assert "--pretrained" not in lines[3] and "trains from scratch" in err
    automatic = "--amp --channels_last" if fastest_precision() == "bf16" else "--no-amp --channels_last"
    assert automatic not in lines[0] and all(automatic in line for line in lines[1:])  # PRECISION=auto trains fast
    code, out, _ = script("train_ImageNet.sh", {**env, "PRECISION": "fp32"})
    assert code == 0 and all("--no-amp --channels_last" in line for line in out.strip().splitlines()[1:])
    code, _, err = script("train_ImageNet.sh", {**env, "PRECISION": "fp8"})
    assert code == 2 and "error: unknown PRECISION 'fp8' (auto bf16 fp32)" in err


def test_gap_report_compares_two_runs(tmp_path, capsys):
    import main
    from tools import gap_report

    for arch in ("resnet20", "tern_resnet20"):
        assert main.main(["--arch", arch, "--epochs", "2", "--subset", "256", "--save_path", str(tmp_path / arch)]) == 0
    capsys.readouterr()
    gap_report.main([str(tmp_path / "resnet20"), str(tmp_path / "tern_resnet20"), "--dataset", "digits",
                     "--calibration", "256"])
    out = capsys.readouterr().out
    assert "full precision: model_best from epoch" in out and "ternarized: model_best from epoch" in out
    assert "latent weights with |W| >= 1" in out and "after recomputing BatchNorm statistics on 256" in out
    rows = [line for line in out.splitlines() if line.startswith("| 2 |")]
    assert len(rows) == 1  # the last epoch's row of the side-by-side history


def test_paper_table_pairs_seeds_and_lists_depths_without_runs(tmp_path):
    for seed, fp, tern in ((5000, 86.0, 85.0), (5001, 87.0, 85.5), (5002, 86.5, 86.5)):
        write_run(tmp_path / f"fp{seed}", "resnet20", seed, fp, epochs=40)
        write_run(tmp_path / f"tern{seed}", "tern_resnet20", seed, tern, epochs=40)
    write_run(tmp_path / "fp200", "resnet20", 5000, 91.0, epochs=200)
    write_run(tmp_path / "partial", "tern_resnet20", 5000, 50.0, epochs=200, done=3, status="running")
    write_run(tmp_path / "fp32", "resnet32", 5000, 90.0, epochs=40)
    write_run(tmp_path / "fp32b", "resnet32", 5001, 90.4, epochs=40)
    write_run(tmp_path / "tern32", "tern_resnet32", 5000, 89.0, epochs=40)
    table = report.paper_table(report.find_runs([str(tmp_path)])).splitlines()
    assert len(table) == 2 + 2 + 3  # header, ResNet-20 at 40 and 200 epochs, one row per other depth
    r20_40, r20_200 = table[2].split(" | "), table[3].split(" | ")
    assert r20_40[1:6] == ["40", "3", "86.50 ± 0.50", "85.67 ± 0.76", "-0.83 ± 0.76"]  # gaps -1.0, -1.5, 0.0
    assert r20_40[6] == "91.70 / 91.65 / -0.05"
    assert r20_200[1:6] == ["200", "1 / 0", "91.00", "—", "—"]  # the partial ternarized run is not a result
    assert table[4].split(" | ")[1:6] == ["40", "2 / 1", "90.20 ± 0.28", "89.00", "-1.00"]  # seeds per column
    assert table[5].startswith("| ResNet-44 | 40 | not run | — | — | — | 92.47 / 92.71 / +0.24")


def test_quantizer_table_pairs_each_ternarizer_with_its_seeds_full_precision_run(tmp_path):
    write_run(tmp_path / "fp", "resnet20", 5000, 86.0, epochs=40)
    write_run(tmp_path / "tern", "tern_resnet20", 5000, 85.5, epochs=40)
    write_run(tmp_path / "ttq", "tern_resnet20", 5000, 84.0, epochs=40, quantizer="ttq", first_last="fp")
    write_run(tmp_path / "twn", "tern_resnet20", 5000, 85.0, epochs=40, quantizer="twn")
    write_run(tmp_path / "twn_seed", "tern_resnet20", 5001, 83.0, epochs=40, quantizer="twn")  # no FP twin
    write_run(tmp_path / "rel2", "tern_resnet20", 5000, 87.0, epochs=40, tex=2)  # not a one-branch ternarizer
    runs = report.find_runs([str(tmp_path)])
    assert {run.config for run in runs} >= {"tern_resnet20 TWN", "tern_resnet20 TTQ first/last fp"}
    table = report.quantizer_table(runs, manifest=str(tmp_path / "absent.json")).splitlines()
    assert len(table) == 2 + 4
    rows = [line.split(" | ") for line in table[2:]]
    assert [row[0].lstrip("| ").split(" ")[0] for row in rows] == ["the", "TWN", "TTQ", "TWN"]
    assert rows[0][6] == "-0.50 (FP 86.00)" and rows[1][6] == "-1.00 (FP 86.00)" and rows[3][6] == "—"
    assert rows[2][1] == "full precision" and rows[2][-1] == "91.77 → 91.13 (Zhu et al.) |"
    assert rows[0][7] == "30.0%" and rows[0][8] == "—"  # no shipped file: no per-layer zeros


def test_readme_block_is_replaced_in_place(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- table:cifar10 (how) -->\nold\n<!-- /table:cifar10 -->\nend\n")
    assert report.update_document(str(doc), "cifar10", "| new |")
    assert doc.read_text() == "intro\n<!-- table:cifar10 (how) -->\n| new |\n<!-- /table:cifar10 -->\nend\n"
    assert not report.update_document(str(doc), "cifar10", "| new |")
    with pytest.raises(UserError, match="no <!-- table:other"):
        report.update_document(str(doc), "other", "x")


def test_a_run_resumed_in_another_precision_shows_both():
    history = [{"precision": "bf16+channels_last"}, {"precision": "bf16+channels_last"}, {"precision": "fp32"}]
    assert report.run_precision({"history": history, "precision": "fp32"}) == "bf16→fp32"
    assert report.run_precision({"args": {"amp": True}}) == "bf16"


def test_evaluations_are_listed_apart_and_name_their_model(tmp_path, capsys):
    write_run(tmp_path / "run", "tern_resnet20", 5000, 85.0, epochs=40)
    for folder, arch, source, kind in (("run_eval", "tern_resnet20", "run/model_best.pth.tar", "checkpoint"),
                                       ("onnx_eval", None, "exports/model.onnx", "onnx")):
        os.makedirs(tmp_path / folder)
        with open(tmp_path / folder / "results.json", "w") as f:
            json.dump({"mode": "evaluate", "status": "complete", "arch": arch, "dataset": "cifar10", "source": source,
                       "format": kind, "precision": "fp32", "top1": 84.5, "top5": 99.1, "args": {"manualSeed": 5000}},
                      f)
    runs = report.find_runs([str(tmp_path)])
    rows = report.report_rows(runs)
    assert [(row["config"], row["status"]) for row in rows] == [("tern_resnet20", "1 complete")]
    evaluations = report.format_evaluations(runs).splitlines()
    assert len(evaluations) == 4
    assert "| cifar10 | model.onnx | exports/model.onnx | onnx | 84.50 | 99.10 | fp32 |" in evaluations[2]
    assert "| cifar10 | tern_resnet20 | run/model_best.pth.tar | checkpoint | 84.50 |" in evaluations[3]
    assert report.main([str(tmp_path)]) == 0
    assert "Evaluations (main.py --evaluate):" in capsys.readouterr().out


def write_paired_run(root, kind, variant, seed, top1_by_test):
    """A finished paired-subset run trained on `kind` and its evaluations RUN_test_KIND."""
    arch = "tern_resnet20" if variant == "tern" else "resnet20"
    run = root / f"train_{kind}" / "cifar10" / f"{variant}_resnet20_e60_seed{seed}"
    run.mkdir(parents=True)
    history = [{"epoch": 1, "val_top1": 50.0, "train_loss": 1.0, "train_top1": 40.0}]
    (run / "results.json").write_text(json.dumps({
        "mode": "train", "status": "complete", "arch": arch, "dataset": "cifar10", "epochs": 1, "history": history,
        "best_top1": 50.0, "final_top1": 50.0, "args": {"arch": arch, "manualSeed": seed,
                                                         "data_path": f"data/paired/{kind}"}}))
    for test, top1 in top1_by_test.items():
        folder = root / f"train_{kind}" / "cifar10" / f"{run.name}_test_{test}"
        folder.mkdir()
        (folder / "results.json").write_text(json.dumps({
            "mode": "evaluate", "status": "complete", "arch": arch, "dataset": "cifar10", "top1": top1,
            "source": str(run / "checkpoint.pth.tar"), "args": {"data_path": f"data/paired/{test}"}}))


def test_jpeg_ab_table_pairs_seeds_and_gives_standard_errors(tmp_path):
    # seed 1 and 2; full precision loses 1 and 3 points to JPEG training, the ternarized net 2 and 4
    values = {("fp", 1): (70, 69, 69, 68), ("fp", 2): (72, 71, 69, 68), ("tern", 1): (69, 68, 67, 66),
              ("tern", 2): (70, 70, 66, 65)}
    for (variant, seed), (ll, lj, jl, jj) in values.items():
        write_paired_run(tmp_path, "lossless", variant, seed, {"lossless": ll, "jpeg": lj})
        write_paired_run(tmp_path, "jpeg", variant, seed, {"lossless": jl, "jpeg": jj})
    lines = report.jpeg_ab_table(report.find_runs([str(tmp_path)])).splitlines()
    assert "| full precision | lossless | 71.00 ± 1.41 | 70.00 ± 1.41 | 2 |" in lines
    assert "| ternarized | jpeg | 66.50 ± 0.71 | 65.50 ± 0.71 | 2 |" in lines
    # FP, tested on lossless: 69 − 70 = −1, 69 − 72 = −3: mean −2, standard error 1
    assert "| full precision: trained on jpeg − trained on lossless | -2.00 ± 1.00 (n=2) | -2.00 ± 1.00 (n=2) |" in lines
    # gap(jpeg/jpeg) = 66 − 68, 65 − 68 = −2, −3; gap(lossless/lossless) = −1, −2: differences −1, −1
    assert "| does jpeg cost the ternarized net more? gap(jpeg/jpeg) − gap(lossless/lossless) | -1.00 ± 0.00 (n=2) | |" \
        in lines


def test_the_jpeg_ab_lists_the_shipped_models_test_side_cost(tmp_path):
    for name, seed, tops in (("tern_resnet20_e40", 1, (87.1, 86.8)), ("tern_resnet20_e40", 2, (85.9, 85.3))):
        for kind, top1 in zip(("lossless", "jpeg"), tops):
            folder = tmp_path / "shipped" / f"{name}_seed{seed}_test_{kind}"
            folder.mkdir(parents=True)
            (folder / "results.json").write_text(json.dumps({
                "mode": "evaluate", "status": "complete", "arch": "tern_resnet20", "dataset": "cifar10", "top1": top1,
                "source": f"pretrained/cifar10/{name}_seed{seed}.tern", "args": {"data_path": f"data/paired/{kind}"}}))
    lines = report.jpeg_ab_table(report.find_runs([str(tmp_path)])).splitlines()
    assert "| tern_resnet20_e40_seed1 | 87.10 | 86.80 | -0.30 |" in lines
    assert "| tern_resnet20_e40, mean over seeds ± standard error | | | -0.45 ± 0.15 (n=2) |" in lines


def test_bench_table_puts_each_method_and_recipe_in_its_cell(tmp_path):
    common = {"epochs": 40}
    write_run(tmp_path / "fp40", "resnet20", 5000, 86.0, **common)
    write_run(tmp_path / "fp_ft", "resnet20", 5000, 99.0, pretrained="x.pth", **common)  # not the reference
    write_run(tmp_path / "fp", "resnet20", 5000, 88.5, epochs=200)  # the fine-tunes' start, fp.pth
    write_run(tmp_path / "tern", "tern_resnet20", 5000, 85.5, **common)
    write_run(tmp_path / "tern_ft", "tern_resnet20", 5000, 87.0, pretrained="fp.pth", **common)
    write_run(tmp_path / "ttq_ft", "tern_resnet20", 5000, 86.5, quantizer="ttq", pretrained="fp.pth", **common)
    write_run(tmp_path / "ttq_own", "tern_resnet20", 5000, 86.9, quantizer="ttq", pretrained="fp.pth",
              first_last="first_fp", nesterov=False, **common)
    write_run(tmp_path / "twn_fflf", "tern_resnet20", 5000, 80.0, quantizer="twn", first_last="fp", **common)
    write_run(tmp_path / "rel2", "tern_resnet20", 5000, 88.0, tex=2, **common)
    write_run(tmp_path / "other_seed", "tern_resnet20", 5001, 70.0, quantizer="absmean", **common)
    table = report.bench_table(report.find_runs([str(tmp_path)]), manifest=str(tmp_path / "absent.json"))
    rows = [line.split(" | ") for line in table.splitlines()[2:]]
    assert rows[0][:3] == ["| full precision (resnet20, same seed)", "86.00", "88.50 (200 epochs, the fine-tunes' start)"]
    cells = {row[0].lstrip("| ").split(" ")[0]: row[1:4] for row in rows[1:]}
    assert cells["the"] == ["85.50 (30.0%)", "87.00 (30.0%)", "= from scratch"]
    assert cells["TTQ"] == ["not run", "86.50 (30.0%)", "86.90 (30.0%)"]
    assert cells["TWN"] == ["not run", "not run", "= from scratch"]  # first/last fp is not the bench's network
    assert cells["BitNet"] == ["not run", "not run", "= from scratch"]  # seed 5001 is not the bench's seed
    assert cells["Brevitas"] == ["not run", "not run", "none (a library)"]
    assert report.bench_recipe({"pretrained": "fp.pth", "decay_on": "weights"}) == "own recipe"  # TTQ's decay
    assert report.bench_recipe({"pretrained": "fp.pth", "decay_on": "all"}) == "fine-tuned"
    assert rows[1][4] == "1.60" and rows[2][4] == "—"


def test_fine_tuned_runs_stay_out_of_the_papers_and_the_ternarizers_tables(tmp_path):
    write_run(tmp_path / "fp", "resnet20", 5000, 86.0, epochs=40)
    write_run(tmp_path / "tern", "tern_resnet20", 5000, 85.5, epochs=40)
    write_run(tmp_path / "tern_ft", "tern_resnet20", 5000, 88.0, epochs=40, pretrained="fp.pth")
    runs = report.find_runs([str(tmp_path)])
    assert {run.config for run in runs} == {"resnet20", "tern_resnet20", "tern_resnet20 fine-tuned"}
    assert "| ResNet-20 | 40 | 1 | 86.00 | 85.50 | -0.50 |" in report.paper_table(runs)
    assert len(report.quantizer_table(runs, manifest=str(tmp_path / "absent.json")).splitlines()) == 3
