"""Publish a finished training run: its small records into results/, its best model into pretrained/.

    python -m tools.publish save/cifar10/tern_resnet20_e40_seed5000 --data_path data/cifar10-jpeg

writes
    results/DATASET/NAME/        results.json, log.txt and curve.png of the run (committed; README's
                                 tables are built from them by python -m tools.report)
    pretrained/DATASET/NAME.tern the best epoch of a ternarized run, in the packed format, or
    pretrained/DATASET/NAME.pth  the best epoch of a full-precision run: {state_dict, arch, args}
    pretrained/DATASET/manifest.json
                                 per shipped file: arch, variant, epochs, seed, top-1, bytes, sha256,
                                 the command that trained it and the one that evaluates it

NAME is VARIANT_ARCH_eEPOCHS_seedSEED (e.g. tern_resnet20_e40_seed5000). The top-1 in the
manifest is what `python main.py --dataset DATASET --data_path DATA --evaluate --resume FILE`
prints for the shipped file: the tool runs exactly that command. Only complete runs are
published; an existing publication of the same name is replaced only with --overwrite.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

from utils.checkpoint import save_checkpoint
from utils.data import dataset_info
from utils.errors import UserError
from utils.export import export_model
from utils.files import write_bytes, write_json
from utils.model_loader import load_model

from .report import update_document

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDS = ("results.json", "log.txt", "curve.png")
# The flags of main.py that define a training run, in the order the training command gives them.
TRAINING_FLAGS = ("dataset", "arch", "tex", "tfactors", "quantizer", "first_last", "epochs", "optimizer", "learning_rate",
                  "momentum", "decay", "batch_size", "schedule", "gammas", "manualSeed")


def variant_of(record: dict) -> str:
    """The train scripts' variant name of a run: fp, tern, rel2, twn, ttq, ..., with _auto and _fflf."""
    args = record["args"]
    if not record.get("ternary_layers"):
        return "fp"
    name = f"rel{args['tex']}" if (args.get("tex") or 1) > 1 else "tern"
    if args.get("quantizer", "paper") != "paper":
        name = args["quantizer"]
    if args.get("auto_thresholds"):
        name += "_auto"
    if args.get("first_last") == "fp":
        name += "_fflf"
    return name


def run_name(record: dict) -> str:
    base_arch = record["arch"].removeprefix("tern_")
    return f"{variant_of(record)}_{base_arch}_e{record['epochs']}_seed{record['args']['manualSeed']}"


def _flag_value(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def training_command(args: dict, data_path: str) -> str:
    """The main.py command that trains the run again, from its recorded arguments."""
    parts = ["python main.py"]
    for key in TRAINING_FLAGS:
        value = "auto" if key == "tfactors" and args.get("auto_thresholds") else args.get(key)
        if key == "quantizer" and value == "paper":  # the default, and absent from older records
            continue
        if value is not None and value != []:  # no lr steps (a run too short for one): no --schedule
            parts.append(f"--{key} {_flag_value(value)}")
        if key == "dataset":
            parts.append(f"--data_path {data_path}")
    if args.get("amp"):
        parts.append("--amp" + ("" if args.get("amp_dtype", "bfloat16") == "bfloat16" else f" --amp_dtype {args['amp_dtype']}"))
    if args.get("channels_last"):
        parts.append("--channels_last")
    return " ".join(parts)


def shown_path(path: str) -> str:
    """`path` relative to the repository when it lies inside it, as the documentation gives paths."""
    absolute = os.path.abspath(path)
    return os.path.relpath(absolute, ROOT) if absolute.startswith(ROOT + os.sep) else path


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_finished_run(run_dir: str) -> dict:
    path = os.path.join(run_dir, "results.json")
    try:
        with open(path) as handle:
            record = json.load(handle)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the run's record ({exc})") from None
    if record.get("mode") != "train" or record.get("status") != "complete":
        raise UserError(f"{run_dir} holds no finished training run (status {record.get('status')!r}, "
                        f"{record.get('epochs_done')}/{record.get('epochs')} epochs); publish it when it is complete")
    missing = [name for name in (*RECORDS, "model_best.pth.tar") if not os.path.isfile(os.path.join(run_dir, name))]
    if missing:
        raise UserError(f"{run_dir} lacks {', '.join(missing)}")
    return record


def ship_model(run_dir: str, record: dict, target_stem: str, data_path: str) -> str:
    """The run's best epoch as the file users download: packed .tern when ternarized,
    else a weights-only checkpoint (.pth) that names its arch."""
    info = dataset_info(record["dataset"], data_path)
    loaded = load_model(os.path.join(run_dir, "model_best.pth.tar"), info, record["dataset"])
    if record.get("ternary_layers"):
        path = target_stem + ".tern"
        export_model(loaded.model, path, (info.in_channels, info.image_size, info.image_size))
    else:
        path = target_stem + ".pth"
        model_args = {key: record["args"].get(key) for key in ("arch", "tex", "tfactors", "first_last", "quantizer")}
        save_checkpoint({"state_dict": loaded.model.state_dict(), "arch": record["arch"], "args": model_args,
                         "tfactors": {}, "bias_copies": {}}, path)
    return path


def evaluation_command(dataset: str, data_path: str, model_path: str) -> list[str]:
    return ["python", "main.py", "--dataset", dataset, "--data_path", data_path, "--evaluate", "--resume", model_path]


def measure_top1(dataset: str, data_path: str, model_path: str) -> tuple[float, str]:
    """Top-1 of the shipped file and the precision of the evaluation, as main.py's
    --evaluate reports them (run as a subprocess, in a scratch folder)."""
    with tempfile.TemporaryDirectory() as scratch:
        command = evaluation_command(dataset, data_path, model_path)
        command = [sys.executable, *command[1:], "--save_path", os.path.join(scratch, "eval")]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            last_line = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise UserError(f"evaluating {model_path} failed: {last_line}")
        with open(os.path.join(scratch, "eval", "results.json")) as handle:
            record = json.load(handle)
    return record["top1"], record["precision"]


def publish(run_dir: str, data_path: str, results_root: str, pretrained_root: str, overwrite: bool) -> dict:
    """Copy the records, ship the model, measure it and enter it in the manifest; returns the entry."""
    record = read_finished_run(run_dir)
    name, dataset = run_name(record), record["dataset"]
    results_dir = os.path.join(results_root, dataset, name)
    pretrained_dir = os.path.join(pretrained_root, dataset)
    manifest_path = os.path.join(pretrained_dir, "manifest.json")
    manifest = {"files": []}
    if os.path.isfile(manifest_path):
        with open(manifest_path) as handle:
            manifest = json.load(handle)
    published = os.path.isdir(results_dir) or any(entry["name"] == name for entry in manifest["files"])
    if published and not overwrite:
        raise UserError(f"{name} is already published ({results_dir}); pass --overwrite to replace it")
    os.makedirs(results_dir, exist_ok=True)
    os.makedirs(pretrained_dir, exist_ok=True)
    for record_name in RECORDS:
        with open(os.path.join(run_dir, record_name), "rb") as handle:
            write_bytes(os.path.join(results_dir, record_name), handle.read())
    model_path = ship_model(run_dir, record, os.path.join(pretrained_dir, name), data_path)
    shown_model, shown_data = shown_path(model_path), shown_path(data_path)
    top1, precision = measure_top1(dataset, data_path, model_path)
    entry = {
        "name": name, "file": os.path.basename(model_path), "arch": record["arch"], "variant": variant_of(record),
        "dataset": dataset, "epochs": record["epochs"], "seed": record["args"]["manualSeed"],
        "top1": round(top1, 2), "evaluation_precision": precision,
        "training_best_top1": round(record["best_top1"], 2), "training_precision": record["precision"],
        "bytes": os.path.getsize(model_path), "sha256": sha256(model_path),
        "trained_with": training_command(record["args"], "DATA"),
        "evaluate_with": " ".join(evaluation_command(dataset, "DATA", shown_model)),
        "records": shown_path(results_dir),
    }
    manifest["files"] = sorted([e for e in manifest["files"] if e["name"] != name] + [entry],
                               key=lambda e: e["name"])
    manifest["data"] = f"DATA is the data set folder; top-1 measured on {shown_data}"
    write_json(manifest_path, manifest)
    return entry


def manifest_table(manifest: dict, folder: str) -> str:
    """The shipped models as README lists them (one row per file of the manifest)."""
    lines = ["| file | arch | epochs | seed | top-1 % (JPEG test set) | bytes |", "|---|---|---|---|---|---|"]
    for entry in manifest["files"]:
        lines.append(f"| [{entry['file']}]({folder}/{entry['file']}) | {entry['arch']} | {entry['epochs']} | "
                     f"{entry['seed']} | {entry['top1']:.2f} | {entry['bytes']:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="finished run folders (holding results.json and model_best.pth.tar)")
    parser.add_argument("--data_path", required=True, help="the data set the runs were trained on (for the top-1)")
    parser.add_argument("--results", default=os.path.join(ROOT, "results"), help="records root (default: results/)")
    parser.add_argument("--pretrained", default=os.path.join(ROOT, "pretrained"),
                        help="shipped models root (default: pretrained/)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier publication of the same run")
    parser.add_argument("--readme", default=None, metavar="DOC",
                        help="also list the shipped models of the runs' data set in DOC's <!-- table:pretrained --> "
                             "block, e.g. README.md")
    args = parser.parse_args(argv)
    try:
        for run_dir in args.runs:
            entry = publish(run_dir, args.data_path, args.results, args.pretrained, args.overwrite)
            print(f"{entry['name']}: {entry['file']} {entry['bytes']:,} bytes, top-1 {entry['top1']:.2f} "
                  f"({entry['evaluation_precision']}), records in {entry['records']}")
        if args.readme:
            folder = os.path.join(args.pretrained, entry["dataset"])
            with open(os.path.join(folder, "manifest.json")) as handle:
                table = manifest_table(json.load(handle), shown_path(folder))
            update_document(args.readme, "pretrained", table)
            print(f"listed the shipped models in {args.readme}")
    except (UserError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
