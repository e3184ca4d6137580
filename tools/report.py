"""Results of training runs next to the paper's numbers.

    python -m tools.report save/                      # every run under save/, table to save/report.md
    python -m tools.report save/cifar10 --output cifar10.md --curves cifar10.png

Scans the folders for results.json (written by main.py every epoch), groups training runs
that differ only in their seed, and prints a markdown table: top-1 (mean ± std over seeds),
the number the paper reports for the same configuration, the difference, epochs,
weight compression and sparsity. Unfinished runs and folders with a checkpoint but no
results are listed as partial. Evaluations (main.py --evaluate of a checkpoint, a .tern or
an .onnx file) get a table of their own, naming the model and the file. The paper's
configurations that have no run appear only in the paper's own table (--readme). Also
plots the validation curves of every training run into one PNG.
"""
from __future__ import annotations

import os
import re
import statistics
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from models.ternary import QUANTIZERS, get_quantizer  # noqa: E402
from utils.cli import command, command_parser, read_json  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.files import write_text  # noqa: E402
from utils.logging import plot_curves, run_title, save_figure  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Top-1 reported by the authors (WACV 2019), keyed by (dataset, arch) as the reference names them.
PAPER_TOP1 = {
    ("cifar10", "resnet20"): 91.70, ("cifar10", "tern_resnet20"): 91.65,
    ("cifar10", "resnet32"): 92.36, ("cifar10", "tern_resnet32"): 92.48,
    ("cifar10", "resnet44"): 92.47, ("cifar10", "tern_resnet44"): 92.71,
    ("cifar10", "resnet56"): 92.68, ("cifar10", "tern_resnet56"): 92.86,
    ("imagenet", "alexnet_vanilla"): 61.78, ("imagenet", "tern_alexnet_ff_lf"): 58.59,
    ("imagenet", "tern_alexnet_fq_lq"): 57.21,
    ("imagenet", "resnet18"): 69.75, ("imagenet", "resnet18b_ff_lf_tex1"): 66.01,
    ("imagenet", "resnet34"): 73.31, ("imagenet", "resnet34b_ff_lf_tex1"): 70.95,
    ("imagenet", "resnet50"): 76.13, ("imagenet", "resnet50b_ff_lf_tex1"): 74.00,
    ("imagenet", "resnet18b_fq_lq_tern_tex_2"): 68.35, ("imagenet", "resnet18b_fq_lq_tern_tex_4"): 69.44,
}


@dataclass
class Run:
    path: str
    dataset: str
    config: str  # arch plus the overrides that change the model: t_ex, thresholds, first/last
    seed: int | None
    status: str  # complete, partial
    epochs: int | None
    epochs_done: int
    best_top1: float | None
    final_top1: float | None
    precision: str  # "fp32", "bf16", "float16": the autocast dtype of the run
    weight_compression: float | None
    sparsity: float | None
    wall_time_s: float | None
    history: list = field(default_factory=list)
    mode: str = "train"  # "train" or "evaluate"
    source: str | None = None  # an evaluation's file, and its format (checkpoint, packed, onnx)
    file_format: str | None = None
    top5: float | None = None
    args: dict = field(default_factory=dict)  # main.py's recorded arguments (training runs)


def config_label(results: dict) -> str:
    """'tern_resnet20', 'tern_resnet20 t_ex=2 auto', ...: runs with equal labels differ only in the seed."""
    args = results.get("args", {})
    parts = [results.get("arch") or args.get("arch", "?")]
    if args.get("tex"):
        parts.append(f"t_ex={args['tex']}")
    if args.get("auto_thresholds"):
        parts.append("auto thresholds")
    elif args.get("tfactors"):
        parts.append("t=" + ",".join(f"{t:g}" for t in args["tfactors"]))
    if args.get("quantizer", "paper") != "paper":
        parts.append(args["quantizer"].upper())
    if args.get("first_last"):
        parts.append(f"first/last {args['first_last']}")
    if args.get("subset"):
        parts.append(f"subset {args['subset']}")
    if args.get("pretrained"):
        parts.append("fine-tuned")
    return " ".join(parts)


def run_precision(results: dict) -> str:
    """fp32 / bf16 / fp16 of a run: recorded in results.json, or (records of older versions)
    taken from its --amp flags; a run resumed in another precision shows both, e.g. bf16→fp32."""
    per_epoch = [record["precision"].split("+")[0] for record in results.get("history") or [] if record.get("precision")]
    if per_epoch:
        return "→".join(dict.fromkeys(per_epoch))
    if results.get("precision"):
        return results["precision"].split("+")[0]
    args = results.get("args", {})
    return {"bfloat16": "bf16", "float16": "fp16"}[args.get("amp_dtype", "bfloat16")] if args.get("amp") else "fp32"


def read_run(folder: str) -> Run | None:
    """The run in `folder`, or None when it holds neither results.json nor a checkpoint."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(folder, "checkpoint.pth.tar")):
            return Run(folder, "?", os.path.basename(folder), None, "partial", None, 0, None, None, "?", None, None,
                       None)
        return None
    results = read_json(path, "run record")
    if not isinstance(results, dict) or not isinstance(results.get("args", {}), dict):
        raise UserError(f"{path} is not a run record of main.py (a JSON object with its args)")
    args = results.get("args", {})
    label, seed = config_label(results), args.get("manualSeed")
    precision = run_precision(results)
    if results.get("mode") == "evaluate":
        source = results.get("source")
        model = results.get("arch") or (os.path.basename(source) if source else label)  # an ONNX file names no arch
        return Run(folder, results.get("dataset", "?"), model, seed, "complete", 0, 0, results.get("top1"),
                   results.get("top1"), precision, results.get("weight_compression"), results.get("sparsity"),
                   results.get("wall_time_s"), mode="evaluate", source=source, file_format=results.get("format"),
                   top5=results.get("top5"), args=args)
    history = results.get("history", [])
    epochs = results.get("epochs")
    status = results.get("status") or ("complete" if len(history) >= (epochs or 0) else "running")
    return Run(folder, results.get("dataset", "?"), label, seed, "complete" if status == "complete" else "partial",
               epochs, len(history), results.get("best_top1"), results.get("final_top1"), precision,
               results.get("weight_compression"),
               results.get("sparsity"), results.get("wall_time_s"), history, args=args)


def find_runs(roots: list[str]) -> list[Run]:
    runs = []
    for root in roots:
        for folder, _, files in sorted(os.walk(root)):
            if "results.json" in files or "checkpoint.pth.tar" in files:
                run = read_run(folder)
                if run is not None:
                    runs.append(run)
    return runs


def _mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def full_precision_twin(config: str) -> str | None:
    """The full-precision arch a ternarized config is compared with: tern_resnet20 (any
    options) → resnet20, resnet18b_ff_lf_tex1 → resnet18, tern_alexnet_* → alexnet_vanilla."""
    arch = config.split()[0]
    if "alexnet" in arch:
        return None if arch == "alexnet_vanilla" else "alexnet_vanilla"
    depth = re.search(r"resnet(\d+)", arch)
    twin = f"resnet{depth.group(1)}" if depth else None
    return None if twin == config else twin


def report_rows(runs: list[Run]) -> list[dict]:
    """One row per (dataset, data folder, config, epochs, precision) of the training runs:
    complete seeds aggregated, partial runs counted. A ternarized row also gets its gap to the
    full-precision twin trained for as many epochs: the mean of the per-seed differences
    over the seeds both have (one baseline per comparison: the same seeds)."""
    groups: dict[tuple[str, str, str, int, str], list[Run]] = {}
    for run in (run for run in runs if run.mode == "train"):  # runs differing only in their seed
        groups.setdefault((run.dataset, _data_kind(run.args), run.config, run.epochs or 0, run.precision),
                          []).append(run)
    folders: dict[str, set[str]] = {}
    for dataset, folder, *_ in groups:
        folders.setdefault(dataset, set()).add(folder)
    rows = []
    for (dataset, folder, config, _, _), group in sorted(groups.items()):
        complete = [r for r in group if r.status == "complete"]
        partial = [r for r in group if r.status != "complete"]
        top1 = [r.best_top1 for r in complete if r.best_top1 is not None]
        paper = PAPER_TOP1.get((dataset, config))
        progress = ", ".join(f"{r.epochs_done}/{r.epochs or '?'}" for r in partial)
        status = f"{len(complete)} complete" + (f", {len(partial)} partial ({progress} epochs)" if partial else "")
        reference = complete or partial
        rows.append({
            "dataset": dataset, "data": folder, "config": config,
            "data_set": f"{dataset} ({folder})" if len(folders[dataset]) > 1 else dataset,
            "seeds": sorted(r.seed for r in complete if r.seed is not None),
            "by_seed": {r.seed: r.best_top1 for r in complete if r.best_top1 is not None},
            "top1": _mean_std(top1), "top1_mean": statistics.mean(top1) if top1 else None,
            "paper": paper, "diff": statistics.mean(top1) - paper if top1 and paper is not None else None,
            "final": _mean_std([r.final_top1 for r in complete if r.final_top1 is not None]),
            "precision": "/".join(sorted({r.precision for r in reference})),
            "epochs": reference[0].epochs, "status": status,
            "compression": reference[0].weight_compression, "sparsity": reference[0].sparsity,
            "wall_time_s": statistics.mean([r.wall_time_s for r in complete]) if complete else None,
        })
    by_seed = {(row["dataset"], row["data"], row["config"], row["epochs"], row["precision"]): row["by_seed"]
               for row in rows}
    for row in rows:
        twin = by_seed.get((row["dataset"], row["data"], full_precision_twin(row["config"]), row["epochs"],
                            row["precision"]), {})
        gaps = [top1 - twin[seed] for seed, top1 in row["by_seed"].items() if seed in twin]
        row["vs_fp"] = statistics.mean(gaps) if gaps else None
    return rows


def format_rows(rows: list[dict]) -> str:
    def number(value, fmt):
        return "—" if value is None else format(value, fmt)

    lines = ["| data set | model | best top-1 % (mean ± std) | final top-1 % | vs full precision (same seeds) | paper top-1 % | "
             "difference to paper | seeds | epochs | precision | weight compression (weights only) | zeros | wall time / run | "
             "runs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        sparsity = None if row["sparsity"] is None else 100 * row["sparsity"]
        lines.append(
            f"| {row['data_set']} | {row['config']} | {row['top1']} | {row['final']} | {number(row['vs_fp'], '+.2f')} | "
            f"{number(row['paper'], '.2f')} | {number(row['diff'], '+.2f')} | {len(row['seeds']) or '—'} | "
            f"{row['epochs'] or '—'} | {row['precision']} | "
            f"{number(row['compression'], '.1f')}{'×' if row['compression'] else ''} | "
            f"{number(sparsity, '.1f')}{'%' if sparsity is not None else ''} | "
            f"{number(row['wall_time_s'], '.0f')}{' s' if row['wall_time_s'] is not None else ''} | {row['status']} |")
    return "\n".join(lines)


def format_evaluations(runs: list[Run]) -> str:
    """The evaluations (main.py --evaluate), one row each, or "" when there are none."""
    evaluations = [run for run in runs if run.mode == "evaluate"]
    if not evaluations:
        return ""
    lines = ["| data set | model | file | format | top-1 % | top-5 % | precision | folder |",
             "|---|---|---|---|---|---|---|---|"]
    for run in evaluations:
        top5 = "—" if run.top5 is None else f"{run.top5:.2f}"
        top1 = "—" if run.best_top1 is None else f"{run.best_top1:.2f}"
        lines.append(f"| {run.dataset} | {run.config} | {run.source or '—'} | {run.file_format or '—'} | {top1} | "
                     f"{top5} | {run.precision} | {run.path} |")
    return "\n".join(lines)


def _paired_gaps(fp: list[Run], tern: list[Run]) -> list[float]:
    """Ternarized minus full-precision best top-1, one value per seed both have."""
    fp_by_seed = {run.seed: run.best_top1 for run in fp}
    return [run.best_top1 - fp_by_seed[run.seed] for run in tern if run.seed in fp_by_seed]


def _seed_counts(fp: list[Run], tern: list[Run]) -> str:
    """How many seeds each column averages: '3', or '3 / 1' (FP / ternarized) when they differ."""
    counts = len({run.seed for run in fp}), len({run.seed for run in tern})
    if not any(counts):
        return "not run"
    return str(counts[0]) if counts[0] == counts[1] else f"{counts[0]} / {counts[1]}"


def _train_minutes(runs: list[Run]) -> str:
    minutes = [sum(record.get("time_s", 0.0) for record in run.history) / 60 for run in runs if run.history]
    return f"{statistics.mean(minutes):.0f}" if minutes else "—"


def paper_table(runs: list[Run], dataset: str = "cifar10", depths: tuple[int, ...] = (20, 32, 44, 56),
                default_epochs: int = 40) -> str:
    """The paper's CIFAR table from finished runs: per depth and schedule length, best top-1
    of the full-precision and the ternarized ResNet (mean ± std over seeds), their gap
    (mean ± std of the per-seed differences) and the authors' numbers. A depth with no
    finished run gets one row at `default_epochs` saying so."""
    complete = [run for run in runs if run.status == "complete" and run.dataset == dataset and run.best_top1 is not None]
    lines = ["| model | epochs | seeds (FP / tern if unequal) | full precision top-1 % | ternarized top-1 % | gap (points) | "
             "paper FP / ternarized / gap (200 epochs) | precision | training minutes / run (FP, tern) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for depth in depths:
        fp_config, tern_config = f"resnet{depth}", f"tern_resnet{depth}"
        paper_fp, paper_tern = PAPER_TOP1[(dataset, fp_config)], PAPER_TOP1[(dataset, tern_config)]
        paper = f"{paper_fp:.2f} / {paper_tern:.2f} / {paper_tern - paper_fp:+.2f}"
        pair = [run for run in complete if run.config in (fp_config, tern_config)]
        for epochs in sorted({run.epochs for run in pair}) or [default_epochs]:
            fp = [run for run in pair if run.config == fp_config and run.epochs == epochs]
            tern = [run for run in pair if run.config == tern_config and run.epochs == epochs]
            gaps = _paired_gaps(fp, tern)
            seeds = _seed_counts(fp, tern)
            precision = "/".join(sorted({run.precision for run in fp + tern})) or "—"
            gap = "—" if not gaps else (f"{gaps[0]:+.2f}" if len(gaps) == 1 else
                                        f"{statistics.mean(gaps):+.2f} ± {statistics.stdev(gaps):.2f}")
            lines.append(f"| ResNet-{depth} | {epochs} | {seeds} | "
                         f"{_mean_std([r.best_top1 for r in fp])} | {_mean_std([r.best_top1 for r in tern])} | {gap} | "
                         f"{paper} | {precision} | {_train_minutes(fp)}, {_train_minutes(tern)} |")
    return "\n".join(lines)


def shipped_files(dataset: str, manifest: str | None = None) -> dict[str, str]:
    """{run folder name: path of its shipped model} from pretrained/DATASET/manifest.json."""
    manifest = manifest or os.path.join(ROOT, "pretrained", dataset, "manifest.json")
    if not os.path.isfile(manifest):
        return {}
    entries = read_json(manifest, "manifest")
    entries = entries.get("files") if isinstance(entries, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and {"name", "file"} <= e.keys() for e in entries):
        raise UserError(f"{manifest} is not a manifest of shipped models (a 'files' list of name/file entries)")
    return {entry["name"]: os.path.join(os.path.dirname(manifest), entry["file"]) for entry in entries}


def layer_zero_range(path: str) -> tuple[float, float]:
    """(min, max) over the ternary layers of a packed file of the fraction of zero weights."""
    from utils.export import load_packed

    model = load_packed(path)
    state = model.state_dict()
    zeros = [float((state[f"{name}.weight"] == 0).float().mean()) for name in model.packed_codes]
    return min(zeros), max(zeros)


def quantizer_table(runs: list[Run], dataset: str = "cifar10", arch: str = "resnet20",
                    manifest: str | None = None) -> str:
    """The ternarizers side by side (--quantizer paper / twn / ttq, one branch, thresholds as
    given): per schedule length and seed, best and final top-1, the gap to the
    full-precision run of the same seed, zeros over all ternary weights and per layer
    (min–max, from the shipped .tern file) and that file's size, beside what each
    ternarizer's paper reports."""
    shipped = shipped_files(dataset, manifest)
    complete = [run for run in runs if run.status == "complete" and run.dataset == dataset and run.mode == "train"
                and run.args.get("arch") in (arch, f"tern_{arch}") and not run.args.get("tex")
                and not run.args.get("auto_thresholds") and not run.args.get("tfactors")
                and not run.args.get("pretrained")]  # fine-tuned runs are the bench's (bench_table)
    full_precision = {(run.epochs, run.seed): run for run in complete if run.args["arch"] == arch}
    lines = ["| ternarizer | first / last layer | epochs | seed | best top-1 % | final top-1 % | vs full precision "
             "(same seed) | zeros, all ternary weights | zeros per layer (min–max) | shipped .tern (bytes) | "
             "reported by its paper, FP → ternary top-1 % |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    ternarized = [run for run in complete if run.args["arch"] != arch]
    for run in sorted(ternarized, key=lambda r: (r.epochs, r.seed, QUANTIZERS.index(r.args.get("quantizer", "paper")),
                                                  r.args.get("first_last") or "")):
        quantizer = run.args.get("quantizer", "paper")
        twin = full_precision.get((run.epochs, run.seed))
        gap = "—" if twin is None else f"{run.best_top1 - twin.best_top1:+.2f} (FP {twin.best_top1:.2f})"
        file = shipped.get(os.path.basename(os.path.normpath(run.path)))
        per_layer = size = "—"
        if file and os.path.isfile(file):
            low, high = layer_zero_range(file)
            per_layer, size = f"{100 * low:.1f}–{100 * high:.1f}%", f"{os.path.getsize(file):,}"
        zeros = "—" if run.sparsity is None else f"{100 * run.sparsity:.1f}%"
        layers = "full precision" if run.args.get("first_last") == "fp" else "ternarized"
        method = get_quantizer(quantizer)
        lines.append(f"| {method.label} | {layers} | {run.epochs} | {run.seed} | {run.best_top1:.2f} | "
                     f"{run.final_top1:.2f} | {gap} | {zeros} | {per_layer} | {size} | "
                     f"{method.reported_resnet20 if arch == 'resnet20' else '—'} |")
    return "\n".join(lines)


BENCH_RECIPES = ("from scratch", "fine-tuned", "own recipe")


def bench_recipe(args: dict) -> str:
    """Which of the bench's recipes a run used: from scratch (the paper's), fine-tuned from
    --pretrained with the shared recipe (SGD-Nesterov, every layer ternarized), or the
    method's own published recipe (fine-tuned otherwise: TTQ's code keeps the first conv
    full precision, uses plain momentum and decays only conv and linear weights)."""
    if not args.get("pretrained"):
        return "from scratch"
    shared = (args.get("first_last") in (None, "tern") and args.get("nesterov", True)
              and args.get("decay_on", "all") == "all")
    return "fine-tuned" if shared else "own recipe"


def bench_table(runs: list[Run], dataset: str = "cifar10", arch: str = "resnet20", epochs: int = 40,
                seed: int = 5000, manifest: str | None = None) -> str:
    """The ternarizers on one bench (issue 37): one row per method, one column per recipe
    (bench_recipe), each cell the best top-1 and the zeros of the finished run of `arch`,
    `epochs` and `seed`, or "not run"; then bits per weight and the shipped .tern's size."""
    shipped = shipped_files(dataset, manifest)
    cells: dict[tuple[str, str], Run] = {}
    full_precision = None
    by_folder = {os.path.basename(os.path.normpath(run.path)): run for run in runs
                 if run.status == "complete" and run.mode == "train" and run.args.get("arch") == arch}
    for run in runs:
        if (run.status, run.mode, run.dataset, run.epochs, run.seed) != ("complete", "train", dataset, epochs, seed):
            continue
        if run.args.get("arch") == arch and not run.args.get("pretrained"):
            full_precision = run
        elif run.args.get("arch") == f"tern_{arch}" and not (run.args.get("tex") or 1) > 1 and not run.args.get(
                "auto_thresholds") and run.args.get("first_last") != "fp":
            cells[(run.args.get("quantizer", "paper"), bench_recipe(run.args))] = run
    reference = "—" if full_precision is None else f"{full_precision.best_top1:.2f}"
    sources = {os.path.splitext(os.path.basename(run.args["pretrained"]))[0] for (_, recipe), run in cells.items()
               if recipe != "from scratch"}
    starts = [f"{by_folder[name].best_top1:.2f} ({by_folder[name].epochs} epochs, the fine-tunes' start)"
              for name in sorted(sources) if name in by_folder]
    lines = ["| method | from scratch, the paper's recipe: top-1 % (zeros) | fine-tuned from full precision, one "
             "shared recipe: top-1 % (zeros) | its own published recipe: top-1 % (zeros) | bits / weight | "
             "shipped .tern (bytes) | its paper reports, FP → ternary top-1 % |",
             "|---|---|---|---|---|---|---|",
             f"| full precision ({arch}, same seed) | {reference} | {'; '.join(starts) or '—'} | — | 32 | — | — |"]
    for quantizer in QUANTIZERS:
        method = get_quantizer(quantizer)
        row, bits, size = [], "—", "—"
        for recipe in BENCH_RECIPES:
            run = cells.get((quantizer, recipe))
            if run is None:
                own = method.own_recipe
                row.append(f"= {own}" if recipe == "own recipe" and own == "from scratch" else
                           own if recipe == "own recipe" and own.startswith("none") else "not run")
                continue
            zeros = "" if run.sparsity is None else f" ({100 * run.sparsity:.1f}%)"
            row.append(f"{run.best_top1:.2f}{zeros}")
            if run.weight_compression:
                bits = f"{32 / run.weight_compression:.2f}"
            file = shipped.get(os.path.basename(os.path.normpath(run.path)))
            if file and os.path.isfile(file):
                size = f"{os.path.getsize(file):,}"
        lines.append(f"| {method.label} | {' | '.join(row)} | {bits} | {size} | {method.reported_resnet20} |")
    return "\n".join(lines)


def _data_kind(args: dict) -> str:
    """The last folder of a run's --data_path: 'lossless' or 'jpeg' for the paired subset.
    The report never averages runs of two such folders (the same folder may be recorded
    relative by one run and absolute by another)."""
    return os.path.basename(os.path.normpath(args.get("data_path") or "?"))


def paired_evaluations(runs: list[Run]) -> dict[tuple[str, str, str], dict[int, float]]:
    """{(variant, train data, test data): {seed: top-1}} of the evaluations named
    RUN_test_KIND beside their training run RUN (as the JPEG A/B queue writes them): the
    final checkpoint of each run evaluated on each test set."""
    by_path = {os.path.normpath(run.path): run for run in runs if run.mode == "train"}
    cells: dict[tuple[str, str, str], dict[int, float]] = {}
    for run in runs:
        match = re.match(r"(.*)_test_[^/]+$", os.path.normpath(run.path))
        trained = by_path.get(match.group(1)) if match and run.mode == "evaluate" else None
        if trained is None or trained.status != "complete" or run.best_top1 is None:
            continue
        variant = "ternarized" if trained.config.startswith("tern_") else "full precision"
        key = (variant, _data_kind(trained.args), _data_kind(run.args))
        cells.setdefault(key, {})[trained.seed] = run.best_top1
    return cells


def _paired(a: dict[int, float], b: dict[int, float]) -> str:
    """mean ± standard error (n) of a − b over the seeds both have."""
    diffs = [a[seed] - b[seed] for seed in sorted(a.keys() & b.keys())]
    if len(diffs) < 2:
        return f"{round(diffs[0], 2) + 0.0:+.2f} (n=1)" if diffs else "—"  # + 0.0: no "-0.00"
    mean = round(statistics.mean(diffs), 2) + 0.0
    return f"{mean:+.2f} ± {statistics.stdev(diffs) / len(diffs) ** 0.5:.2f} (n={len(diffs)})"


def jpeg_ab_table(runs: list[Run], kinds: tuple[str, str] = ("lossless", "jpeg")) -> str:
    """The JPEG A/B on the paired subset: per variant, top-1 (mean ± sd over seeds) for each
    training data × test data; then paired differences, mean ± standard error over seeds:
    what JPEG training costs on each test set, the ternary gap (ternarized − full precision,
    same seed) in each cell, and whether JPEG costs the ternarized net more (the gap under
    JPEG/JPEG minus the gap under lossless/lossless)."""
    cells = paired_evaluations(runs)
    clean, lossy = kinds
    lines = ["| variant | trained on | tested on " + " | tested on ".join(kinds) + " | seeds |", "|---|---|---|---|---|"]
    for variant in ("full precision", "ternarized"):
        for train in kinds:
            row = [cells.get((variant, train, test), {}) for test in kinds]
            values = [_mean_std(list(cell.values())) for cell in row]
            lines.append(f"| {variant} | {train} | {' | '.join(values)} | {len(set().union(*row))} |")
    lines += ["", "| paired difference (same seeds), mean ± standard error | tested on " + " | tested on ".join(kinds)
              + " |", "|---|---|---|"]
    for variant in ("full precision", "ternarized"):
        diffs = [_paired(cells.get((variant, lossy, test), {}), cells.get((variant, clean, test), {})) for test in kinds]
        lines.append(f"| {variant}: trained on {lossy} − trained on {clean} | {' | '.join(diffs)} |")
    for train in kinds:
        gaps = [_paired(cells.get(("ternarized", train, test), {}), cells.get(("full precision", train, test), {}))
                for test in kinds]
        lines.append(f"| ternary gap (ternarized − full precision), trained on {train} | {' | '.join(gaps)} |")

    def gap(train: str, test: str) -> dict[int, float]:
        tern, fp = cells.get(("ternarized", train, test), {}), cells.get(("full precision", train, test), {})
        return {seed: tern[seed] - fp[seed] for seed in tern.keys() & fp.keys()}

    lines.append(f"| does {lossy} cost the ternarized net more? gap({lossy}/{lossy}) − gap({clean}/{clean}) | "
                 f"{_paired(gap(lossy, lossy), gap(clean, clean))} | |")
    shipped = shipped_test_side(runs, kinds)
    if shipped:
        lines += ["", f"| shipped model (trained on the whole JPEG copy) | tested on {clean} | tested on {lossy} | "
                  f"{lossy} − {clean} |", "|---|---|---|---|"]
        lines += [f"| {name} | {top1[clean]:.2f} | {top1[lossy]:.2f} | {top1[lossy] - top1[clean]:+.2f} |"
                  for name, top1 in shipped.items()]
        groups: dict[str, dict[int, float]] = {}
        for name, top1 in shipped.items():
            family, _, seed = name.rpartition("_seed")
            groups.setdefault(family, {})[int(seed)] = top1[lossy] - top1[clean]
        for family, diffs in groups.items():
            if len(diffs) > 1:
                lines.append(f"| {family}, mean over seeds ± standard error | | | "
                             f"{_paired(diffs, dict.fromkeys(diffs, 0.0))} |")
    return "\n".join(lines)


def shipped_test_side(runs: list[Run], kinds: tuple[str, str]) -> dict[str, dict[str, float]]:
    """{shipped model: {test data: top-1}} of the evaluations of files from pretrained/ on both
    test sets: what the JPEG test images cost a model trained on the whole data."""
    found: dict[str, dict[str, float]] = {}
    for run in runs:
        if run.mode == "evaluate" and run.source and run.best_top1 is not None and (
                os.path.normpath(run.source).split(os.sep)[0] == "pretrained"):
            name = os.path.splitext(os.path.basename(run.source))[0]
            found.setdefault(name, {})[_data_kind(run.args)] = run.best_top1
    return {name: top1 for name, top1 in sorted(found.items()) if set(kinds) <= top1.keys()}


def readme_block(text: str, name: str) -> tuple[int, int]:
    """Where the generated table `name` lies in a document: between the lines
    `<!-- table:NAME ... -->` and `<!-- /table:NAME -->` (start and end offsets of its body)."""
    begin = re.search(rf"<!-- table:{re.escape(name)}\b[^>]*-->\n", text)
    end = text.find(f"<!-- /table:{name} -->")
    if begin is None or end < begin.end():
        raise ValueError(f"no <!-- table:{name} --> ... <!-- /table:{name} --> block")
    return begin.end(), end


def update_document(path: str, name: str, table: str) -> bool:
    """Replace the body of the block `name` in the document at `path`; True if it changed."""
    try:
        with open(path) as f:
            text = f.read()
        start, end = readme_block(text, name)
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    updated = text[:start] + table + "\n" + text[end:]
    if updated != text:
        write_text(path, updated)
    return updated != text


def _panel_key(run: Run) -> tuple[str, str, int]:
    """Runs drawn in one panel: the same data set, network depth and length."""
    depth = re.search(r"resnet(\d+)|alexnet", run.config.split()[0])
    return run.dataset, depth.group(0) if depth else run.config.split()[0], run.epochs or 0


def comparison_panels(runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """(title, runs) of each comparison worth a panel: full precision against the paper's
    ternarizer per data set, depth and length; then, where other ternarizers or options
    ran, those against the paper's and full precision of the same seeds."""
    runs = [run for run in runs if run.history and run.mode == "train"]
    groups: dict[tuple[str, str, int], list[Run]] = {}
    for run in runs:
        groups.setdefault(_panel_key(run), []).append(run)
    panels = []
    for (dataset, network, epochs), group in sorted(groups.items(), key=lambda item: (item[0][0], item[0][2],
                                                                                      item[0][1])):
        plain = [run for run in group if run.config == full_precision_twin(run.config) or
                 run.config in (network, f"tern_{network}")]
        others = [run for run in group if run not in plain]
        if plain:
            panels.append((f"{dataset} {network}, {epochs} epochs: full precision vs ternarized", plain))
        if others:
            seeds = {run.seed for run in others}
            panels.append((f"{dataset} {network}, {epochs} epochs: ternarizers and options",
                           others + [run for run in plain if run.seed in seeds]))
    return panels


def _draw_panel(axis, title: str, runs: list[Run]) -> None:
    """Validation top-1 per epoch: one colour per configuration, thin lines per seed and a
    thick mean when there are several; the axis spans the late epochs of the runs that
    train (a run far below is named in the legend), so gaps of a point stay visible."""
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    configs = sorted({run.config for run in runs}, key=lambda c: (c != full_precision_twin(c) and "tern" in c, c))
    late = []
    for run in runs:
        values = [record["val_top1"] for record in run.history]
        late.append((run, values[len(values) * 3 // 5:] or values))
    best = max(max(values) for _, values in late)
    shown = [values for _, values in late if max(values) > best - 15]
    low = min(min(values) for values in shown)
    for index, config in enumerate(configs):
        members = [run for run in runs if run.config == config]
        colour = colours[index % len(colours)]
        seeds = sorted(str(run.seed) for run in members)
        tops = [run.best_top1 for run in members if run.best_top1 is not None]
        label = (f"{config}: best {_mean_std(tops)} (seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)})"
                 + ("" if all(run.status == "complete" for run in members) else ", partial")
                 + (" — below the axis" if tops and max(tops) < low else ""))
        for number, run in enumerate(members):
            epochs = [record["epoch"] for record in run.history]
            axis.plot(epochs, [record["val_top1"] for record in run.history], color=colour,
                      lw=0.8 if len(members) > 1 else 1.6, alpha=0.6 if len(members) > 1 else 1.0,
                      label=label if number == 0 and len(members) == 1 else None)
        if len(members) > 1:
            length = min(len(run.history) for run in members)
            mean = [statistics.mean(run.history[i]["val_top1"] for run in members) for i in range(length)]
            axis.plot(range(1, length + 1), mean, color=colour, lw=2.2, label=label + ", mean")
    axis.set_ylim(low - 1, best + 0.8)
    last = max(run.history[-1]["epoch"] for run in runs)
    axis.set_xlim(max(0.5, 0.35 * last), last + 0.5)  # the early epochs lie below the axis anyway
    axis.set(xlabel="epoch", ylabel="validation top-1 (%)", title=title)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="lower right")


def plot_runs(runs: list[Run], path: str) -> None:
    """One panel per comparison (comparison_panels), two per row."""
    panels = comparison_panels(runs) or [("(no training runs with a history)", [])]
    rows = -(-len(panels) // 2)
    fig, axes = plt.subplots(rows, 2, figsize=(13, 4.2 * rows), squeeze=False)
    for axis, (title, group) in zip(axes.flat, panels):
        if group:
            _draw_panel(axis, title, group)
        else:
            axis.set_title(title)
    for axis in list(axes.flat)[len(panels):]:
        axis.set_visible(False)
    save_figure(fig, path, dpi=100)


def redraw_run_curves(runs: list[Run]) -> int:
    """Draw each training run's curve.png again from its results.json (as training draws
    it now); returns how many were drawn."""
    drawn = 0
    for run in runs:
        if run.mode == "train" and run.history:
            record = read_json(os.path.join(run.path, "results.json"), "run record")
            plot_curves(run.history, os.path.join(run.path, "curve.png"),
                        run_title(record.get("arch") or "?", run.dataset, run.args, run.epochs))
            drawn += 1
    return drawn


@command
def main(argv: list[str] | None = None) -> int:
    parser = command_parser(__doc__)
    parser.add_argument("roots", nargs="+", help="save folders to scan (recursively)")
    parser.add_argument("--output", default=None, help="markdown file (default: ROOT/report.md of the first root)")
    parser.add_argument("--curves", default=None, help="curves PNG (default: ROOT/curves.png of the first root)")
    parser.add_argument("--readme", default=None, metavar="DOC",
                        help="also write the paper's CIFAR-10 table (full precision vs ternarized per ResNet depth) "
                             "into DOC's <!-- table:cifar10 --> block, e.g. README.md")
    parser.add_argument("--quantizers", default=None, metavar="DOC",
                        help="also write the ternarizers' comparison (paper / TWN / TTQ on CIFAR-10 ResNet-20, per "
                             "seed, with zeros per layer from the shipped files) into DOC's <!-- table:quantizers --> "
                             "block, e.g. docs/results.md")
    parser.add_argument("--bench", default=None, metavar="DOC",
                        help="also write the ternarizers' bench (every method × from scratch / fine-tuned / its own "
                             "recipe, CIFAR-10 ResNet-20, 40 epochs, seed 5000) into DOC's <!-- table:bench --> block")
    parser.add_argument("--jpeg_ab", default=None, metavar="DOC",
                        help="also write the JPEG A/B of the paired subset (runs trained on lossless/ and jpeg/, each "
                             "evaluated on both test sets as RUN_test_KIND) into DOC's <!-- table:jpeg_ab --> block")
    parser.add_argument("--run_curves", action="store_true",
                        help="also draw every training run's curve.png again from its results.json")
    args = parser.parse_args(argv)
    missing = [root for root in args.roots if not os.path.isdir(root)]
    if missing:
        parser.error(f"no such folder: {', '.join(missing)}")
    for document in (args.readme, args.quantizers, args.bench, args.jpeg_ab):
        if document and not os.path.isfile(document):
            raise UserError(f"{document} not found: --readme and --quantizers name an existing document whose "
                            "<!-- table:... --> block is rewritten")
    runs = find_runs(args.roots)
    if not runs:
        print(f"no training runs (results.json or checkpoint.pth.tar) under {', '.join(args.roots)}")
        return 1
    table = format_rows(report_rows(runs))
    evaluations = format_evaluations(runs)
    if evaluations:
        table += "\n\nEvaluations (main.py --evaluate):\n\n" + evaluations
    print(table)
    output = args.output or os.path.join(args.roots[0], "report.md")
    curves = args.curves or os.path.join(args.roots[0], "curves.png")
    write_text(output, table + "\n")
    plot_runs(runs, curves)
    print(f"\nwrote {output} and {curves} ({len(runs)} runs)")
    if args.run_curves:
        print(f"drew the curve.png of {redraw_run_curves(runs)} training runs again")
    blocks = [(args.readme, "cifar10", paper_table, "the CIFAR-10 table"),
              (args.quantizers, "quantizers", quantizer_table, "the ternarizers' table"),
              (args.bench, "bench", bench_table, "the ternarizers' bench"),
              (args.jpeg_ab, "jpeg_ab", jpeg_ab_table, "the JPEG A/B tables")]
    for document, block, make_table, what in blocks:
        if not document:
            continue
        body = make_table(runs)
        print(f"\n{body}")
        changed = update_document(document, block, body)
        print(f"{'updated' if changed else 'unchanged'}: {what} in {document}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
