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

import contextlib
import ctypes
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys

from utils.checkpoint import save_checkpoint
from utils.cli import command, command_parser, read_json
from utils.data import dataset_info
from utils.errors import UserError, write_error
from utils.export import export_model
from utils.files import is_temporary, write_json
from utils.model_loader import load_model

from .report import update_document

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDS = ("results.json", "log.txt", "curve.png")
# The flags of main.py that define a training run, in the order the training command gives them.
TRAINING_FLAGS = ("dataset", "arch", "tex", "tfactors", "threshold_every", "quantizer", "first_last", "epochs", "optimizer",
                  "learning_rate", "momentum", "decay", "batch_size", "schedule", "gammas", "manualSeed", "subset")
# What a default flag value looks like in older records, which may lack the flag: left out of the command.
DEFAULT_VALUES = {"quantizer": "paper", "threshold_every": 0, "subset": None}
_STAGING_PREFIX = ".publish-"
_PR_SET_PDEATHSIG = 1


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
        if key in DEFAULT_VALUES and value == DEFAULT_VALUES[key]:
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


def read_finished_run(run_dir: str, allow_subset: bool = False) -> dict:
    """The record of a finished training run in `run_dir`: anything else (an evaluation, an
    unfinished run, a --subset run unless allowed, missing records) is a UserError."""
    if not os.path.isdir(run_dir):
        raise UserError(f"no such run folder: {run_dir}")
    record = read_json(os.path.join(run_dir, "results.json"), "run record")
    if not isinstance(record, dict) or not isinstance(record.get("args"), dict):
        raise UserError(f"{run_dir}/results.json is not a run record of main.py")
    if record.get("mode") == "evaluate":
        raise UserError(f"{run_dir} holds an evaluation (main.py --evaluate), not a training run; publish the "
                        "folder of the run that trained the model")
    if record.get("mode") != "train" or record.get("status") != "complete":
        raise UserError(f"{run_dir} holds no finished training run (status {record.get('status')!r}, "
                        f"{record.get('epochs_done')}/{record.get('epochs')} epochs); publish it when it is complete")
    if record["args"].get("subset") and not allow_subset:
        raise UserError(f"{run_dir} trained on --subset {record['args']['subset']} images, not the whole training "
                        "set; pass --allow_subset to publish it anyway")
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


def _die_with_parent() -> None:
    """In the evaluation subprocess: be killed when the publishing process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def measure_top1(dataset: str, data_path: str, model_path: str, scratch: str) -> tuple[float, str]:
    """Top-1 of the shipped file and the precision of the evaluation, as main.py's
    --evaluate reports them (run as a subprocess that dies with this process, writing
    into `scratch`)."""
    command = evaluation_command(dataset, data_path, model_path)
    command = [sys.executable, *command[1:], "--save_path", os.path.join(scratch, "eval")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, preexec_fn=_die_with_parent)
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"evaluating {model_path} failed: {last_line}")
    record = read_json(os.path.join(scratch, "eval", "results.json"), "evaluation record")
    return record["top1"], record["precision"]


def read_manifest(path: str) -> dict:
    """pretrained/DATASET/manifest.json ({"files": []} when there is none yet)."""
    if not os.path.exists(path):
        return {"files": []}
    manifest = read_json(path, "manifest")
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list) or not all(
            isinstance(e, dict) and "name" in e for e in manifest["files"]):
        raise UserError(f"{path} is not a manifest of shipped models (a 'files' list of named entries)")
    return manifest


@contextlib.contextmanager
def publishing_lock(pretrained_dir: str):
    """One publish at a time per data set; yields after removing what a killed publish left:
    its staging folders and unfinished atomic writes."""
    try:
        os.makedirs(pretrained_dir, exist_ok=True)
        handle = open(os.path.join(pretrained_dir, ".publish.lock"), "a")
    except OSError as exc:
        raise write_error(pretrained_dir, exc) from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another tools.publish is writing to {pretrained_dir}; wait for it to finish") from None
        for name in os.listdir(pretrained_dir):
            if is_temporary(name) or name.startswith(_STAGING_PREFIX):
                target = os.path.join(pretrained_dir, name)
                shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        yield
    finally:
        handle.close()


def _half_published(name: str, results_dir: str, pretrained_dir: str, manifest: dict) -> list[str]:
    """Files of `name` that a killed publish left without a manifest entry listing them."""
    if any(entry["name"] == name for entry in manifest["files"]):
        return []
    leftovers = [results_dir] if os.path.isdir(results_dir) else []
    return leftovers + [os.path.join(pretrained_dir, name + suffix) for suffix in (".tern", ".pth")
                        if os.path.isfile(os.path.join(pretrained_dir, name + suffix))]


def _remove_paths(paths: list[str]) -> None:
    for path in paths:
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def publish(run_dir: str, data_path: str, results_root: str, pretrained_root: str, overwrite: bool,
            allow_subset: bool = False, log=print) -> dict:
    """Copy the records, ship the model, measure it and enter it in the manifest; returns the entry.

    A transaction: everything is staged in a folder beside the manifest, moved into place,
    and the manifest, written last, commits it. A publish killed at any point leaves files
    no manifest entry lists; the next publish of the same run removes them and starts over."""
    record = read_finished_run(run_dir, allow_subset)
    name, dataset = run_name(record), record["dataset"]
    results_dir = os.path.join(results_root, dataset, name)
    pretrained_dir = os.path.join(pretrained_root, dataset)
    manifest_path = os.path.join(pretrained_dir, "manifest.json")
    with publishing_lock(pretrained_dir):
        manifest = read_manifest(manifest_path)
        leftovers = _half_published(name, results_dir, pretrained_dir, manifest)
        if leftovers:
            _remove_paths(leftovers)
            log(f"=> removed what an interrupted publish of {name} left: {', '.join(map(shown_path, leftovers))}")
        listed = [entry for entry in manifest["files"] if entry["name"] == name]
        if listed and not overwrite:
            raise UserError(f"{name} is already published ({results_dir}); pass --overwrite to replace it")
        staging = os.path.join(pretrained_dir, f"{_STAGING_PREFIX}{name}.{os.getpid()}")
        try:
            os.makedirs(os.path.join(staging, "records"))
            for record_name in RECORDS:
                shutil.copyfile(os.path.join(run_dir, record_name), os.path.join(staging, "records", record_name))
            staged_model = ship_model(run_dir, record, os.path.join(staging, name), data_path)
            top1, precision = measure_top1(dataset, data_path, staged_model, staging)
            model_path = os.path.join(pretrained_dir, os.path.basename(staged_model))
            entry = {
                "name": name, "file": os.path.basename(model_path), "arch": record["arch"],
                "variant": variant_of(record), "dataset": dataset, "epochs": record["epochs"],
                "seed": record["args"]["manualSeed"], "top1": round(top1, 2), "evaluation_precision": precision,
                "training_best_top1": round(record["best_top1"], 2), "training_precision": record["precision"],
                "bytes": os.path.getsize(staged_model), "sha256": sha256(staged_model),
                "trained_with": training_command(record["args"], "DATA"),
                "evaluate_with": " ".join(evaluation_command(dataset, "DATA", shown_path(model_path))),
                "records": shown_path(results_dir),
            }
            _remove_paths([path for path in (results_dir, *(os.path.join(pretrained_dir, e["file"]) for e in listed))
                           if os.path.exists(path)])
            os.makedirs(os.path.dirname(results_dir), exist_ok=True)
            os.replace(os.path.join(staging, "records"), results_dir)
            os.replace(staged_model, model_path)
            manifest["files"] = sorted([e for e in manifest["files"] if e["name"] != name] + [entry],
                                       key=lambda e: e["name"])
            manifest["data"] = f"DATA is the data set folder; top-1 measured on {shown_path(data_path)}"
            write_json(manifest_path, manifest)
        except OSError as exc:
            raise write_error(getattr(exc, "filename", None) or pretrained_dir, exc) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return entry


def manifest_table(manifest: dict, folder: str) -> str:
    """The shipped models as README lists them (one row per file of the manifest)."""
    lines = ["| file | arch | epochs | seed | top-1 % (JPEG test set) | bytes |", "|---|---|---|---|---|---|"]
    for entry in manifest["files"]:
        lines.append(f"| [{entry['file']}]({folder}/{entry['file']}) | {entry['arch']} | {entry['epochs']} | "
                     f"{entry['seed']} | {entry['top1']:.2f} | {entry['bytes']:,} |")
    return "\n".join(lines)


@command
def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("runs", nargs="+", help="finished run folders (holding results.json and model_best.pth.tar)")
    parser.add_argument("--data_path", required=True, help="the data set the runs were trained on (for the top-1)")
    parser.add_argument("--results", default=os.path.join(ROOT, "results"), help="records root (default: results/)")
    parser.add_argument("--pretrained", default=os.path.join(ROOT, "pretrained"),
                        help="shipped models root (default: pretrained/)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier publication of the same run")
    parser.add_argument("--allow_subset", action="store_true",
                        help="publish a run trained with --subset (refused otherwise: it did not see the whole data)")
    parser.add_argument("--readme", default=None, metavar="DOC",
                        help="also list the shipped models of the runs' data set in DOC's <!-- table:pretrained --> "
                             "block, e.g. README.md")
    args = parser.parse_args(argv)
    if args.readme and not os.path.isfile(args.readme):
        raise UserError(f"{args.readme} not found: --readme names an existing document with a "
                        "<!-- table:pretrained --> block")
    for run_dir in args.runs:
        read_finished_run(run_dir, args.allow_subset)  # every run checked before the first is published
    for run_dir in args.runs:
        entry = publish(run_dir, args.data_path, args.results, args.pretrained, args.overwrite, args.allow_subset)
        print(f"{entry['name']}: {entry['file']} {entry['bytes']:,} bytes, top-1 {entry['top1']:.2f} "
              f"({entry['evaluation_precision']}), records in {entry['records']}")
    if args.readme:
        folder = os.path.join(args.pretrained, entry["dataset"])
        table = manifest_table(read_manifest(os.path.join(folder, "manifest.json")), shown_path(folder))
        update_document(args.readme, "pretrained", table)
        print(f"listed the shipped models in {args.readme}")


if __name__ == "__main__":
    raise SystemExit(main())
