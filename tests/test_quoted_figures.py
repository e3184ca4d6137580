"""Figures README quotes in prose equal the records they come from (issue 35, item 11), and
the figures and hints that explain a number name its baseline."""
import json
import os
import re

import pytest
import torch

from helpers import ROOT
from tools import report
from utils import hardware
from utils.logging import plot_curves, run_title

RESULTS = os.path.join(ROOT, "results", "cifar10")


def readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return " ".join(f.read().split())


def record(name: str) -> dict:
    with open(os.path.join(RESULTS, name, "results.json")) as f:
        return json.load(f)


def test_readme_ternarizer_figures_are_the_records_and_the_withdrawn_ttq_model():
    best = [f"{record(f'{method}_resnet20_e40_seed5000')['best_top1']:.2f}" for method in ("tern", "twn", "brevitas", "absmean")]
    text = " ".join(readme().split())
    assert f"best epoch in training: paper {best[0]}%, TWN {best[1]}%, Brevitas {best[2]}%, absmean {best[3]}%, against" in text
    assert f"against {record('fp_resnet20_e40_seed5000')['best_top1']:.2f}% for full precision of the same seed" in text
    with open(os.path.join(ROOT, "results", "ttq_scales_at_1", "cifar10", "ttq_resnet20_e40_seed5000", "results.json")) as f:
        collapsed = json.load(f)["best_top1"]
    assert (f"code scales it collapsed here ({collapsed:.2f}%, withdrawn); with its scales in this layer's units it "
            f"trains from scratch ({record('ttq_resnet20_e40_seed5000')['best_top1']:.2f}%)") in text
    fine_tuned = record("ttq_ff_ft_resnet20_e40_seed5000")["best_top1"]
    start = record("fp_resnet20_e200_seed5000")["best_top1"]
    shared = {method: record(f"{method}_ft_resnet20_e40_seed5000") for method in ("tern", "brevitas", "twn", "absmean")}
    top1 = {method: f"{run['best_top1']:.2f}" for method, run in shared.items()}
    assert (f"fine-tuned from the shipped {start:.2f}% model (one shared recipe), paper {top1['tern']}%, "
            f"Brevitas {top1['brevitas']}% ({100 * shared['brevitas']['sparsity']:.1f}% zeros against "
            f"{100 * shared['tern']['sparsity']:.1f}%), TWN {top1['twn']}%, absmean {top1['absmean']}%") in text
    assert (f"its authors' recipe to {fine_tuned:.2f}% on CIFAR-10 ({fine_tuned - start:.2f} from the "
            f"{start:.2f}% model it starts from;") in text.replace("−", "-")
    with open(os.path.join(ROOT, "pretrained", "cifar10", "manifest.json")) as f:
        manifest = json.load(f)
    assert "ttq_resnet20_e40_seed5000" in [note["name"] for note in manifest["withdrawn"]]
    assert "ttq_resnet20_e40_seed5000" not in [entry["name"] for entry in manifest["files"]]


def test_readme_weight_compression_is_the_records():
    weights = record("tern_resnet20_e40_seed5000")["weight_compression"]
    assert f"shrink {weights:.1f}× (32 / 1.6 bits" in readme()


def test_readme_file_ratio_is_the_shipped_files():
    with open(os.path.join(ROOT, "pretrained", "cifar10", "manifest.json")) as f:
        sizes = {entry["name"]: entry["bytes"] for entry in json.load(f)["files"]}
    tern, fp = sizes["tern_resnet20_e40_seed5000"], sizes["fp_resnet20_e40_seed5000"]
    assert (f"`.tern` ({tern:,} bytes) is {fp / tern:.1f}× smaller than the shipped full-precision `.pth` of the "
            f"same recipe ({fp:,} bytes)") in readme()


def test_the_gap_a_report_gives_is_against_the_same_seeds():
    rows = report.report_rows(report.find_runs([RESULTS]))
    twn = next(row for row in rows if row["config"] == "tern_resnet20 TWN" and row["epochs"] == 40)
    fp = record("fp_resnet20_e40_seed5000")["best_top1"]
    assert twn["vs_fp"] == pytest.approx(record("twn_resnet20_e40_seed5000")["best_top1"] - fp)
    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        assert f"| {twn['vs_fp']:+.2f} (FP {fp:.2f}) |" in f.read()


def test_the_bf16_hint_names_the_speed_up_over_what_the_run_already_uses(monkeypatch):
    monkeypatch.setattr(hardware, "fast_bf16", lambda device: True)
    cpu = torch.device("cpu")
    assert "--amp --channels_last trains about 1.9× faster" in hardware.precision_hint(cpu, hardware.Precision())
    assert "--amp trains about 1.5× faster than fp32 + channels_last" in hardware.precision_hint(
        cpu, hardware.Precision(channels_last=True))
    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        found = re.findall(r"^\| (fp32 \+ channels_last|bf16 \+ channels_last) \| ([\d.]+) \|", f.read(), flags=re.M)
    rows = {}
    for mode, milliseconds in found:  # the first table: the CPU with native bf16
        rows.setdefault(mode, float(milliseconds))
    assert round(rows["fp32 + channels_last"] / rows["bf16 + channels_last"], 1) == 1.5


def test_a_run_curve_names_the_run_and_draws_two_panels(tmp_path):
    args = {"arch": "tern_resnet20", "quantizer": "twn", "manualSeed": 5001, "amp": True,
            "data_path": "data/cifar10-jpeg"}
    title = run_title("tern_resnet20", "cifar10", args, 40)
    assert title == "tern_resnet20 · twn quantizer\ncifar10 (cifar10-jpeg) · 40 epochs · seed 5001 · bf16"
    assert run_title("resnet20", "digits", {"manualSeed": 5000}, 20) == "resnet20\ndigits · 20 epochs · seed 5000 · fp32"
    history = [{"epoch": e, "train_top1": 10.0 * e, "val_top1": 9.0 * e, "train_loss": 2.0 / e, "val_loss": 2.1 / e}
               for e in range(1, 4)]
    plot_curves(history, str(tmp_path / "curve.png"), title)
    from PIL import Image

    width, height = Image.open(tmp_path / "curve.png").size
    assert width > 2 * height * 0.9  # two panels side by side


def test_the_summary_figure_has_a_panel_per_comparison():
    panels = report.comparison_panels(report.find_runs([RESULTS]))
    titles = [title for title, _ in panels]
    assert "cifar10 resnet20, 40 epochs: full precision vs ternarized" in titles
    assert "cifar10 resnet20, 40 epochs: ternarizers and options" in titles
    plain = dict(panels)["cifar10 resnet20, 40 epochs: full precision vs ternarized"]
    assert {run.config for run in plain} == {"resnet20", "tern_resnet20"}


def test_readme_cifar10_prose_is_the_records():
    def best(name):
        return record(name)["best_top1"]

    seeds = (5000, 5001, 5002)
    gaps = [best(f"tern_resnet20_e40_seed{s}") - best(f"fp_resnet20_e40_seed{s}") for s in seeds]
    mean = sum(gaps) / 3
    std = (sum((g - mean) ** 2 for g in gaps) / 2) ** 0.5
    text = readme()
    assert f"ResNet-20 is {-mean:.2f} ± {std:.2f} points behind full precision (every seed behind)" in text
    assert all(gap < 0 for gap in gaps)
    fp200, tern200 = best("fp_resnet20_e200_seed5000"), best("tern_resnet20_e200_seed5000")
    assert f"{tern200 - fp200:+.2f} ({fp200:.2f} vs {tern200:.2f}%)".replace("-", "−") in text
    gap32, gap44, gap56 = (best(f"tern_resnet{depth}_e40_seed5000") - best(f"fp_resnet{depth}_e40_seed5000")
                           for depth in (32, 44, 56))
    assert (f"At 40 epochs ResNet-32 trails by {gap32:+.2f} (paper +0.12), ResNet-44 by {gap44:+.2f} (paper +0.24); "
            f"ResNet-56 is ahead, {gap56:+.2f} (paper +0.18)") in text.replace("−", "-")
    assert f"REL t_ex = 2 ({best('rel2_resnet20_e40_seed5000'):.2f}%) explains ResNet-20's gap" in text


def results_page() -> str:
    """docs/results.md on one line, with ASCII minus signs."""
    with open(os.path.join(ROOT, "docs", "results.md")) as f:
        return " ".join(f.read().split()).replace("−", "-")


def pair_sentences(fp: dict, tern: dict) -> tuple[str, str]:
    """The opening of the "Full precision: best …" and "Ternarized: best …" sentences of a pair."""
    return tuple(f"{label}: best {run['best_top1']:.2f}% at epoch {run['best_epoch']}, final {run['final_top1']:.2f}%"
                 for label, run in (("Full precision", fp), ("Ternarized", tern)))


def test_the_resnet44_pair_figures_are_its_records():
    fp, tern = record("fp_resnet44_e40_seed5000"), record("tern_resnet44_e40_seed5000")
    text = results_page()
    assert all(sentence in text for sentence in pair_sentences(fp, tern))
    assert f"{100 * tern['sparsity']:.1f}% of the ternary weights zero). **The gap is " \
           f"{tern['best_top1'] - fp['best_top1']:+.2f} points** (paper +0.24)" in text


def final_losses(run: dict, baseline: dict) -> str:
    """The "final training loss A against B" phrase comparing a run's last epoch with a baseline's."""
    return (f"final training loss {run['history'][-1]['train_loss']:.3f} against "
            f"{baseline['history'][-1]['train_loss']:.3f}")


def test_the_rel_figures_are_its_records():
    rel, tern, fp = (record(f"{variant}_resnet20_e40_seed5000") for variant in ("rel2", "tern", "fp"))
    assert rel["args"]["tex"] == 2 and rel["status"] == "complete"
    text = results_page()
    assert (f"Best {rel['best_top1']:.2f}% at epoch {rel['best_epoch']}, final {rel['final_top1']:.2f}%, "
            f"{100 * rel['sparsity']:.1f}% of the summed weights zero, {rel['weight_compression']:.1f}× weight") in text
    assert (f"**{tern['best_top1'] - rel['best_top1']:.2f} points under the single-branch ternarized net of the same "
            f"seed ({tern['best_top1']:.2f}%) and {fp['best_top1'] - rel['best_top1']:.2f} under full precision "
            f"({fp['best_top1']:.2f}%)**") in text
    assert final_losses(rel, tern) in text
    assert f"it widens the gap to {rel['best_top1'] - fp['best_top1']:+.2f}" in text


def from_scratch_beside_the_pair(quantizer: str) -> tuple[dict, dict, dict]:
    """The 40-epoch seed-5000 ResNet-20 records of a peer trained from scratch, the paper's quantizer and full
    precision."""
    peer, tern, fp = (record(f"{variant}_resnet20_e40_seed5000") for variant in (quantizer, "tern", "fp"))
    assert peer["args"]["quantizer"] == quantizer and not peer["args"].get("pretrained")
    return peer, tern, fp


def test_the_ttq_from_scratch_figures_are_its_records():
    ttq, tern, fp = from_scratch_beside_the_pair("ttq")
    text = results_page()
    assert (f"**TTQ from scratch, with its scales fixed: {ttq['best_top1']:.2f}%** (the paper's recipe, whole network "
            f"ternarized; best at the last epoch, final {ttq['final_top1']:.2f}%, {100 * ttq['sparsity']:.1f}% zeros") in text
    assert ttq["best_epoch"] == ttq["epochs"]
    assert (f"{fp['best_top1'] - ttq['best_top1']:.2f} points under full precision and "
            f"{tern['best_top1'] - ttq['best_top1']:.2f} under the paper's quantizer") in text
    assert final_losses(ttq, tern) in text


def assert_from_scratch_sentence(peer: dict, tern: dict, fp: dict, text: str) -> None:
    """The "**From scratch** with the paper's recipe: …" sentence of a peer's paragraph is its records."""
    assert (f"**From scratch** with the paper's recipe: {peer['best_top1']:.2f}% (best at epoch "
            f"{peer['best_epoch']}, final {peer['final_top1']:.2f}%, {100 * peer['sparsity']:.1f}% zeros") in text
    assert (f"{tern['best_top1'] - peer['best_top1']:.2f} points under the paper's quantizer of the same seed and "
            f"{fp['best_top1'] - peer['best_top1']:.2f} under full precision") in text


def test_the_absmean_from_scratch_figures_are_its_records():
    absmean, tern, fp = from_scratch_beside_the_pair("absmean")
    text = results_page()
    assert_from_scratch_sentence(absmean, tern, fp, text)
    fine_tuned = record("absmean_ft_resnet20_e40_seed5000")["best_top1"]
    assert f"absmean {fine_tuned - absmean['best_top1']:.2f}, Brevitas" in text


def final_layer_report(name: str) -> tuple[dict[str, float], int, int]:
    """({layer: zeros %}, full-precision MACs, non-zero MACs) of the report a finished run's log.txt ends with."""
    with open(os.path.join(RESULTS, name, "log.txt")) as f:
        log = f.read()
    zeros = {layer: float(share) for layer, share in re.findall(r"^\| (\S+) \| [\d,]+ \| ([\d.]+)% \|", log, re.M)}
    dense, non_zero = re.findall(r"MACs per image: full precision ([\d,]+); non-zero ([\d,]+)", log)[-1]
    return zeros, int(dense.replace(",", "")), int(non_zero.replace(",", ""))


def test_the_brevitas_figures_are_its_records():
    brevitas, tern, fp = from_scratch_beside_the_pair("brevitas")
    text = results_page()
    assert_from_scratch_sentence(brevitas, tern, fp, text)
    zeros, _, _ = final_layer_report("brevitas_resnet20_e40_seed5000")
    assert (f"{zeros['conv_1_3x3']:.1f}% in the first conv, rising with depth to {zeros['stage_3.2.conv_b']:.1f}% "
            f"in the last, and none in the classifier") in text and zeros["classifier"] == 0
    assert final_losses(brevitas, tern) + ")" in text

    tuned, tern_tuned = record("brevitas_ft_resnet20_e40_seed5000"), record("tern_ft_resnet20_e40_seed5000")
    assert f"{tuned['best_top1']:.2f}" == f"{tern_tuned['best_top1']:.2f}"
    assert (f"**Fine-tuned** with the shared recipe: {tuned['best_top1']:.2f}%, the paper's quantizer's figure to the "
            f"hundredth (best at epoch {tuned['best_epoch']}, final {tuned['final_top1']:.2f}%, "
            f"{100 * tuned['sparsity']:.1f}% zeros;") in text
    with open(os.path.join(ROOT, "pretrained", "cifar10", "manifest.json")) as f:
        shipped = {entry["name"]: entry for entry in json.load(f)["files"]}["brevitas_ft_resnet20_e40_seed5000"]
    assert f"{shipped['top1']:.2f}% for the shipped file `brevitas_ft_resnet20_e40_seed5000` in fp32, {shipped['bytes']:,} bytes" in text
    _, dense, non_zero = final_layer_report("brevitas_ft_resnet20_e40_seed5000")
    _, _, tern_non_zero = final_layer_report("tern_ft_resnet20_e40_seed5000")
    assert (f"with {100 * (1 - non_zero / tern_non_zero):.0f}% fewer non-zero multiply-accumulates per image: "
            f"{non_zero / 1e6:.1f} million against {tern_non_zero / 1e6:.1f} million (full precision: "
            f"{dense / 1e6:.1f} million)") in text
    assert f"(final {tuned['final_top1']:.2f} against {tern_tuned['final_top1']:.2f}%, {final_losses(tuned, tern_tuned)})" in text
    assert f", Brevitas {tuned['best_top1'] - brevitas['best_top1']:.2f}, TTQ" in text
    assert (f"Brevitas {100 * tuned['sparsity']:.1f}%, TWN {100 * record('twn_ft_resnet20_e40_seed5000')['sparsity']:.1f}%, "
            f"the paper's {100 * tern_tuned['sparsity']:.1f}%") in text
    ranked = ", ".join(f"{label} {record(f'{variant}_resnet20_e40_seed5000')['best_top1']:.2f}%" for label, variant in
                       (("the paper's", "tern"), ("TWN", "twn"), ("Brevitas", "brevitas"), ("absmean", "absmean")))
    assert f"From scratch they rank {ranked}," in text


def test_the_fp32_pair_figures_are_its_records():
    def fp32(name):
        with open(os.path.join(ROOT, "results", "fp32", "cifar10", name, "results.json")) as f:
            return json.load(f)

    fp, tern = fp32("fp_resnet20_e40_seed5000"), fp32("tern_resnet20_e40_seed5000")
    assert {fp["precision"], tern["precision"]} == {"fp32+channels_last"}
    bf16_gap = record("tern_resnet20_e40_seed5000")["best_top1"] - record("fp_resnet20_e40_seed5000")["best_top1"]
    text = results_page()
    fp_sentence, tern_sentence = pair_sentences(fp, tern)
    assert fp_sentence in text
    assert f"{tern_sentence}, {100 * tern['sparsity']:.1f}% zeros" in text
    assert (f"The gap is {tern['best_top1'] - fp['best_top1']:+.2f} points in fp32 against {bf16_gap:+.2f} in bf16 at "
            "the same seed") in text


def test_a_truncated_manifest_is_named_by_the_report(tmp_path):
    from utils.errors import UserError

    (tmp_path / "manifest.json").write_text('{"files": [{"name": "a", "fi')
    with pytest.raises(UserError, match=f"{tmp_path / 'manifest.json'} is not valid JSON"):
        report.shipped_files("cifar10", str(tmp_path / "manifest.json"))
