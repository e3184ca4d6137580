"""Train, fine-tune and evaluate ternarized CNNs (He, Gong & Fan, WACV 2019).

    python main.py                                   # tern_resnet20 on the embedded digits set, offline
    python main.py --dataset cifar10 --arch tern_resnet20 --data_path data/cifar10-jpeg --amp --channels_last
    python main.py --dataset folder --data_path my_images/        # train/<class>/*.png and test/<class>/*.png
    python main.py --dataset imagenet --arch resnet18b_ff_lf_tex1 --data_path /imagenet --pretrained resnet18.pth
    python main.py --dataset cifar10 --data_path data/ --evaluate --resume save/X/model_best.pth.tar
    python main.py --resume save/X/checkpoint.pth.tar                   # continue a run with its own settings
    python main.py --resume save/X/model_best.pth.tar --export model.onnx   # or model.tern

Unset optimisation flags (--epochs, --optimizer, --learning_rate, --decay, --batch_size,
--schedule, --gammas) take the paper's recipe for the data set: CIFAR from scratch with
SGD, ImageNet fine-tuning with Adam, a shortened CIFAR recipe for digits/(Fashion-)MNIST
and image folders. Failures end in one line `error: ...` and exit 2; SIGTERM/SIGINT stop
at a step boundary with a resumable checkpoint (exit 143/130).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import signal
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

import models
from utils.checkpoint import check_recorded_args, load_checkpoint
from utils.cli import OneLineParser
from utils.compression import compression_report, format_report
from utils.data import DATASETS, DatasetInfo, build_loaders, dataset_info, ensure_data, preprocessing_record
from utils.distributed import (DistributedContext, init_distributed, is_peer_failure, launched_by_torchrun,
                               peer_failure, shutdown)
from utils.errors import UserError
from utils.evaluation import evaluate, format_metrics
from utils.export import ENCODINGS
from utils.files import write_json
from utils.hardware import Precision, precision_hint, prepare_model, select_device, unwrap
from utils.logging import make_logger
from utils.model_loader import ModelChoice, build_model, export_model, file_format, load_model, recorded_preprocessing
from utils.onnx_export import is_onnx_file
from utils.resume import OptimizerSettings, TrainingState, resume_training
from utils.results import model_statistics, run_record
from utils.run_folder import claim_run_folder, holds_training_run, read_record
from utils.signals import Interrupted, StopSignals
from utils.optim import DECAY_ON, make_optimizer, make_scheduler
from utils.training import TrainConfig, fit, repair_best_model

RECIPES = {
    "cifar": dict(epochs=200, optimizer="SGD", learning_rate=0.1, decay=3e-4, batch_size=128,
                  schedule=[80, 120, 160], gammas=[0.1, 0.1, 0.5]),
    "imagenet": dict(epochs=50, optimizer="Adam", learning_rate=1e-4, decay=5e-6, batch_size=256,
                     schedule=[30, 40, 45], gammas=[0.2, 0.2, 0.5]),
    # the CIFAR recipe shortened; batch 64 at lr 0.05, as 12 steps per epoch at lr 0.1 (digits) made
    # BatchNorm's running statistics lag the weights and the test accuracy swing (96% → 47% → 96%)
    "small": dict(epochs=20, optimizer="SGD", learning_rate=0.05, decay=3e-4, batch_size=64,
                  schedule=[8, 12, 16], gammas=[0.1, 0.1, 0.5]),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help keeps the module docstring's layout and shows each flag's default (not
    None or False: those mean "unset" or "off")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """Every flag of main.py, grouped as --help shows them."""
    parser = OneLineParser(description=__doc__, formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="digits", choices=list(DATASETS), help="data set (digits is embedded: offline)")
    data.add_argument("--data_path", default="./data", help="where the data set is (or is downloaded to)")
    data.add_argument("--workers", type=int, default=4, help="data-loading processes (ImageNet only)")
    data.add_argument("--cache_dir", default=None, metavar="DIR",
                      help="where image folders (CIFAR copies, --dataset folder) cache their decoded images "
                           "(default: DATA_PATH/.decoded.pt, or ~/.cache/ternary-cnn when DATA_PATH is read-only)")
    data.add_argument("--subset", type=int, default=None, metavar="N",
                      help="train on a seeded random subset of N training images (quick experiments)")
    model = parser.add_argument_group("model")
    model.add_argument("--arch", default="tern_resnet20", metavar="ARCH",
                       help=f"architecture, one of: {', '.join(models.list_archs())}")
    model.add_argument("--tex", type=int, default=None, help="REL branches t_ex (paper factors 0.05·1..t_ex)")
    model.add_argument("--tfactors", nargs="+", default=None, metavar="T",
                       help="threshold factors Δ_k/max|W|, ascending; or 'auto': each layer's thresholds "
                            "minimise its reconstruction error, re-optimised at --threshold_every")
    model.add_argument("--threshold_every", type=int, default=0, metavar="N",
                       help="with --tfactors auto: re-optimise every N training steps (0: at every epoch start)")
    model.add_argument("--quantizer", choices=models.QUANTIZERS, default="paper",
                       help="weight ternarizer of the ternarized layers: " + "; ".join(
                           f"{name}: {models.get_quantizer(name).summary}" for name in models.QUANTIZERS)
                       + ". Only the paper's has REL (--tex) and optimised thresholds")
    model.add_argument("--first_last", choices=list(models.FIRST_LAST), default=None,
                       help="ternarize the first conv and last linear layer (tern), keep both full precision (fp), "
                            "or only the first conv (first_fp, as TTQ's own CIFAR code)")
    model.add_argument("--pretrained", default=None, metavar="PATH",
                       help="full-precision state_dict (e.g. torchvision's resnet18 file) to start from, or "
                            "'torchvision' to download torchvision's ImageNet weights of the arch (ResNets)")
    optim = parser.add_argument_group("optimisation (unset: the data set's recipe, see the top)")
    optim.add_argument("--epochs", type=int, default=None,
                       help="training length; without --schedule the recipe's lr steps are kept when they all fall "
                            "before it, else scaled to the same fractions of it")
    optim.add_argument("--optimizer", choices=["SGD", "Adam"], default=None, help="SGD or Adam")
    optim.add_argument("--batch_size", type=int, default=None, help="images per step (per process under torchrun)")
    optim.add_argument("--learning_rate", type=float, default=None, help="initial learning rate")
    optim.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    optim.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                       help="SGD with Nesterov momentum (the paper's recipe); --no-nesterov: plain momentum (TTQ's code)")
    optim.add_argument("--decay", type=float, default=None, help="weight decay")
    optim.add_argument("--decay_on", choices=list(DECAY_ON), default="all",
                       help="what weight decay applies to: " + "; ".join(f"{k}: {v}" for k, v in DECAY_ON.items()))
    optim.add_argument("--scale_lr", type=float, default=None, metavar="FACTOR",
                       help="learning-rate multiplier of the quantizer's trained scales (TTQ's W_p, W_n), which get "
                            "gradients summed over their whole layer (unset: the quantizer's, 0.001 for TTQ; TTQ's own "
                            "code uses 1)")
    optim.add_argument("--schedule", type=int, nargs="+", default=None, help="epochs at which the lr is multiplied")
    optim.add_argument("--gammas", type=float, nargs="+", default=None, help="lr factor at each --schedule epoch")
    run = parser.add_argument_group("checkpoints and logging")
    run.add_argument("--save_path", default=None,
                     help="output folder (default: save/DATASET_ARCH[_texK][_tT|_tauto][_qtwn|_qttq][_firstlastfp|tern]_seedS)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run already in --save_path (otherwise refused)")
    run.add_argument("--resume", default=None, metavar="PATH", help="checkpoint to resume training or to evaluate")
    run.add_argument("--start_epoch", type=int, default=0, help="first epoch when not resuming a full checkpoint")
    run.add_argument("--evaluate", action="store_true",
                     help="evaluate the model of --resume (checkpoint, .tern or .onnx) or --pretrained on the test/val "
                          "split and exit; without --save_path it gets a folder of its own (RUN_eval beside the run)")
    run.add_argument("--fine_tune", action="store_true", help="with --resume: load the weights only, restart training")
    run.add_argument("--model_only", action="store_true", help="save {state_dict} only in checkpoints")
    run.add_argument("--export", default=None, metavar="PATH",
                     help="write the model (after --resume/--pretrained) and exit: PATH.tern is the packed ternary "
                          "format, PATH.onnx ONNX with int4 ternary codes (run by onnxruntime)")
    run.add_argument("--export_encoding", choices=ENCODINGS, default="dense",
                     help="dense: 5 trits per byte (1.6 bits/weight); 2bit: one 2-bit code per weight")
    run.add_argument("--print_freq", type=int, default=100, help="log every N training steps")
    run.add_argument("--manualSeed", type=int, default=5000, help="random seed (the reference's recipe uses 5000)")
    hw = parser.add_argument_group("hardware")
    hw.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    hw.add_argument("--ngpu", type=int, default=1,
                    help="GPUs for single-node DataParallel (prefer torchrun, which runs DistributedDataParallel)")
    hw.add_argument("--gpu_id", default=None, help="CUDA_VISIBLE_DEVICES, e.g. '0' or '0,1'")
    hw.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                    help="mixed precision: autocast to --amp_dtype (weights stay fp32); --no-amp resumes a run in fp32")
    hw.add_argument("--amp_dtype", choices=["bfloat16", "float16"], default="bfloat16",
                    help="autocast dtype; float16 also scales the loss (GradScaler)")
    hw.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=False,
                    help="NHWC memory format for convolutions (1.1-1.3× faster in fp32 on the CPUs measured; "
                         "with --amp 1.9× fp32 on CPUs with AVX-512 BF16)")
    hw.add_argument("--compile", action="store_true", help="torch.compile the model")
    hw.add_argument("--sync_bn", action="store_true", help="with torchrun: SyncBatchNorm across processes")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The run's settings: the flags, the data set's recipe for unset ones, validated."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.explicit = sorted(explicit_flags(parser, sys.argv[1:] if argv is None else argv))
    return validate_args(apply_recipe(args))


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The dests of the options given on the command line (not left at their defaults)."""
    given = {token.split("=", 1)[0] for token in argv if token.startswith("--")}
    return {action.dest for action in parser._actions if given & set(action.option_strings)}


def _positive_finite(value: float) -> bool:
    return math.isfinite(value) and value > 0


def validate_args(args: argparse.Namespace) -> argparse.Namespace:
    """Every value a run cannot use is refused here, before anything is read or written."""
    problems = [
        (args.batch_size >= 1, f"--batch_size must be at least 1, got {args.batch_size}"),
        (args.epochs >= 1, f"--epochs must be at least 1, got {args.epochs}"),
        (args.print_freq >= 1, f"--print_freq must be at least 1, got {args.print_freq}"),
        (args.workers >= 0, f"--workers must be 0 or more, got {args.workers}"),
        (args.start_epoch >= 0, f"--start_epoch must be 0 or more, got {args.start_epoch}"),
        (args.ngpu >= 1, f"--ngpu must be at least 1, got {args.ngpu}"),
        (args.subset is None or args.subset >= 1, f"--subset must be at least 1, got {args.subset}"),
        (args.tex is None or args.tex >= 1, f"--tex must be at least 1, got {args.tex}"),
        (_positive_finite(args.learning_rate), f"--learning_rate must be a positive finite number, got {args.learning_rate}"),
        (math.isfinite(args.momentum) and 0 <= args.momentum < 1, f"--momentum must lie in [0, 1), got {args.momentum}"),
        (math.isfinite(args.decay) and args.decay >= 0, f"--decay must be a finite number ≥ 0, got {args.decay}"),
        (_positive_finite(args.scale_lr), f"--scale_lr must be a positive finite number, got {args.scale_lr}"),
        (args.nesterov or args.optimizer == "SGD", "--no-nesterov changes SGD's momentum; drop it with --optimizer Adam"),
        (all(_positive_finite(g) for g in args.gammas),
         f"--gammas must be positive finite numbers, got {' '.join(map(str, args.gammas))}"),
        (all(m >= 1 for m in args.schedule), f"--schedule epochs must be at least 1, got {' '.join(map(str, args.schedule))}"),
        (not args.evaluate or args.resume or args.pretrained,
         "--evaluate needs a model to evaluate: --resume CHECKPOINT or --pretrained WEIGHTS"),
        (not args.fine_tune or args.resume, "--fine_tune restarts from the weights of --resume CHECKPOINT; give it"),
        (not args.threshold_every or args.auto_thresholds, "--threshold_every only applies with --tfactors auto"),
        (not (args.evaluate and args.export), "--evaluate and --export are separate steps; run them one at a time"),
        (not args.export or args.export.lower().endswith((".tern", ".onnx")),
         f"--export {args.export}: unknown format; name the file .tern (packed) or .onnx"),
        (not args.export or args.overwrite or not os.path.exists(args.export),
         f"--export {args.export} exists; choose another name or pass --overwrite"),
        (not (args.resume and is_onnx_file(args.resume)) or args.evaluate,
         f"{args.resume} is an ONNX inference file: use it with --evaluate"),
        (not args.export or args.resume or args.pretrained,
         "--export needs a trained model: --resume CHECKPOINT or --pretrained WEIGHTS"),
        (0 <= args.manualSeed < 2 ** 32, f"--manualSeed must lie in 0 .. 2^32-1, got {args.manualSeed}"),
        (args.resume or args.start_epoch < args.epochs,
         f"--start_epoch {args.start_epoch} is not before --epochs {args.epochs}: nothing would be trained"),
    ]
    for ok, message in problems:
        if not ok:
            raise UserError(message)
    validate_model_flags(args)
    return args


def validate_model_flags(args: argparse.Namespace) -> None:
    """The arch and its ternarization flags (--tex, --tfactors, --first_last). With
    --resume they come from the checkpoint, so only an explicit --arch is checked."""
    if args.arch not in models.ARCHS:
        raise UserError(f"unknown --arch {args.arch}; valid archs: {', '.join(models.list_archs())}")
    if args.resume:
        return
    try:
        factors, _ = models.resolve_tfactors(args.arch, args.tex, args.tfactors, args.first_last)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if args.auto_thresholds and factors is None:
        raise UserError(f"--tfactors auto needs a ternarized arch; {args.arch} is full precision "
                        f"(use tern_{args.arch} if it exists, or add --tex)")
    validate_quantizer(args, factors)


def validate_quantizer(args: argparse.Namespace, factors: tuple[float, ...] | None) -> None:
    """--quantizer other than the paper's: a ternarized arch; what the method refuses
    (models.quantizers: REL, a threshold factor it has no use for, optimised thresholds) and
    a --scale_lr without trained scales."""
    strategy = models.get_quantizer(args.quantizer)
    if "scale_lr" in args.explicit and not (factors and strategy.scale_names):
        raise UserError(f"--scale_lr sets the learning rate of trained quantizer scales; {args.arch} with --quantizer "
                        f"{args.quantizer} has none (TTQ's W_p, W_n are); drop it")
    if args.quantizer == "paper":
        return
    if factors is None:
        raise UserError(f"--quantizer {args.quantizer} needs a ternarized arch; {args.arch} is full precision "
                        f"(use tern_{args.arch} if it exists)")
    if args.auto_thresholds and not strategy.auto_thresholds:
        raise UserError(f"--tfactors auto optimises the paper's quantizer; drop it for --quantizer {args.quantizer}")
    if args.tfactors is not None and not strategy.tfactor:
        raise UserError(f"--quantizer {args.quantizer} sets its threshold itself ({strategy.summary}); drop --tfactors")
    try:
        strategy.check(len(factors))
    except ValueError as exc:
        raise UserError(f"{exc}; drop --tex" + (" / give one --tfactors value" if strategy.tfactor else "")) from None
    try:
        strategy.layer_classes()  # a method from an optional extra: installed?
    except ValueError as exc:
        raise UserError(str(exc)) from None


def recorded_args(args: argparse.Namespace) -> dict:
    """The arguments as results.json and checkpoints record them."""
    return {key: value for key, value in vars(args).items() if key not in ("explicit", "notes")}


def apply_recipe(args: argparse.Namespace) -> argparse.Namespace:
    recipe = RECIPES[dataset_info(args.dataset).family]  # the family needs no data
    for key, value in recipe.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.scale_lr is None:
        args.scale_lr = models.get_quantizer(args.quantizer).default_scale_lr
    args.auto_thresholds = args.tfactors == ["auto"]
    if args.auto_thresholds:
        args.tfactors = None
    elif args.tfactors is not None:
        try:
            args.tfactors = [float(t) for t in args.tfactors]
        except ValueError:
            raise UserError(f"--tfactors takes numbers or 'auto', got {' '.join(args.tfactors)}") from None
    if args.threshold_every < 0:
        raise UserError("--threshold_every must be 0 (every epoch) or a positive number of steps")
    if len(args.schedule) != len(args.gammas):
        raise UserError(f"--schedule has {len(args.schedule)} epochs but --gammas has {len(args.gammas)} factors")
    args.notes = []
    if args.resume is None:
        fit_schedule_to_epochs(args, recipe)
    if args.save_path is None:
        args.save_path = default_evaluation_path(args) if args.evaluate else default_save_path(args)
    return args


def fit_schedule_to_epochs(args: argparse.Namespace, recipe: dict) -> None:
    """lr steps must fall inside the run. With --epochs but the recipe's schedule, the
    steps are scaled to the same fractions of the run (step·epochs // recipe epochs, as
    train_CIFAR10.sh's EPOCHS places them) and steps before epoch 1 dropped, saying so;
    an explicit --schedule step at or past --epochs is refused."""
    late = [m for m in args.schedule if m >= args.epochs]
    if not late:
        return
    if {"schedule", "gammas"} & set(args.explicit):
        fix = f"give steps from 1 to {args.epochs - 1}, or " if args.epochs > 1 else ""
        raise UserError(f"--schedule step {' '.join(map(str, late))} is at or past --epochs {args.epochs}, so the lr "
                        f"would never change there; {fix}leave out --schedule and --gammas to scale the recipe's "
                        "steps to the run")
    scaled = [(m * args.epochs // recipe["epochs"], g) for m, g in zip(recipe["schedule"], recipe["gammas"])]
    kept = [(m, g) for m, g in scaled if 1 <= m < args.epochs]
    args.schedule, args.gammas = [m for m, _ in kept], [g for _, g in kept]
    args.notes.append(f"=> --epochs {args.epochs}: the recipe's lr steps {' '.join(map(str, recipe['schedule']))} "
                      f"(of {recipe['epochs']} epochs) scaled to "
                      + (' '.join(map(str, args.schedule)) or "none (the run is too short for one)")
                      + f", factors {' '.join(map(str, args.gammas)) or '-'}")


def default_save_path(args: argparse.Namespace) -> str:
    """save/DATASET_ARCH plus what makes the variant: t_ex, thresholds, first/last, seed,
    so variants never share a folder."""
    parts = [args.dataset, args.arch]
    if args.tex:
        parts.append(f"tex{args.tex}")
    if args.auto_thresholds:
        parts.append("tauto")
    elif args.tfactors:
        parts.append("t" + "-".join(f"{t:g}" for t in args.tfactors))
    if args.quantizer != "paper":
        parts.append(f"q{args.quantizer}")
    if args.first_last:
        parts.append(f"firstlast{args.first_last}")
    parts.append(f"seed{args.manualSeed}")
    return os.path.join("save", "_".join(parts))


def default_evaluation_path(args: argparse.Namespace) -> str:
    """An evaluation's own folder: RUN_eval beside the run folder the evaluated file is in,
    else save/eval/DATASET_FILE; numbered (RUN_eval2, ...) past earlier evaluations, so
    none is ever overwritten. start_logging says which one."""
    source = args.resume or args.pretrained or "model"
    run_dir = os.path.dirname(os.path.normpath(source))
    if run_dir and holds_training_run(run_dir):
        base = f"{run_dir}_eval"
    else:
        stem = os.path.basename(source)
        for suffix in (".pth.tar", ".tern", ".onnx", ".pth", ".pt"):
            stem = stem.removesuffix(suffix)
        base = os.path.join("save", "eval", f"{args.dataset}_{stem}")
    candidate, number = base, 2
    while os.path.exists(os.path.join(candidate, "results.json")):
        candidate, number = f"{base}{number}", number + 1
    return candidate


# Resume rules: which settings a continued run takes from its checkpoint.
# Flags that define the experiment; the dest of `auto_thresholds` is set by --tfactors.
RUN_DEFINING = ("dataset", "arch", "tex", "tfactors", "auto_thresholds", "threshold_every", "quantizer", "first_last",
                "optimizer", "learning_rate", "momentum", "nesterov", "decay", "decay_on", "scale_lr", "batch_size", "schedule", "gammas",
                "manualSeed",
                "subset")
_FLAG_OF = {"auto_thresholds": "tfactors"}
# Flags a resumed run takes from the checkpoint when not given, and may change.
CARRIED_OVER = ("data_path", "cache_dir", "amp", "amp_dtype", "channels_last", "model_only", "print_freq", "workers")
# Flags that define the network: what an evaluation, export or fine-tuning of a checkpoint takes from it.
MODEL_DEFINING = ("arch", "tex", "tfactors", "auto_thresholds", "quantizer", "first_last")
# What a checkpoint written before a flag existed ran with.
PRE_FLAG_DEFAULTS = {"quantizer": "paper", "scale_lr": 1.0, "nesterov": True, "decay_on": "all"}


def adopt_checkpoint_args(args: argparse.Namespace, checkpoint: dict, log: Callable[[str], None]) -> None:
    """A resumed run keeps the settings it was started with: flags left unset take the
    checkpoint's values, a flag set to a different value is refused (--epochs may change),
    so results.json never records one thing while the run does another. Where the data is
    and how fast it runs (CARRIED_OVER) are taken from the checkpoint when not given."""
    saved = checkpoint.get("args")
    if not isinstance(saved, dict):
        return
    saved = {**PRE_FLAG_DEFAULTS, **saved}
    explicit = set(args.explicit)
    for key in RUN_DEFINING:
        if key not in saved:
            continue
        flag = _FLAG_OF.get(key, key)
        if flag in explicit and getattr(args, key) != saved[key]:
            shown = "auto" if key == "auto_thresholds" else getattr(args, key)
            raise UserError(f"--{flag} {shown} differs from the run being resumed ({saved[key]}); a resumed run keeps "
                            "its settings: drop the flag, or use --fine_tune to start a new schedule from its weights")
        setattr(args, key, saved[key])
    for key in CARRIED_OVER:
        if key in saved and key not in explicit:
            setattr(args, key, saved[key])
    saved_precision = Precision(saved.get("amp", False), saved.get("amp_dtype", "bfloat16"),
                                saved.get("channels_last", False)).name
    if saved_precision != precision(args).name:
        log(f"=> precision switched from {saved_precision} to {precision(args).name} at epoch "
            f"{checkpoint.get('epoch', '?')}; results.json records each epoch's precision")
    done = checkpoint.get("epoch")
    if "epochs" in explicit and isinstance(done, int) and args.epochs < done:
        raise UserError(f"--epochs {args.epochs}: the run already has {done} epochs; give --epochs {done} or more "
                        "to continue it, or evaluate it with --evaluate")
    if "epochs" in explicit and saved.get("epochs") not in (None, args.epochs):
        log(f"=> --epochs {args.epochs}: the run was started for {saved['epochs']} epochs")
    elif "epochs" in saved:
        args.epochs = saved["epochs"]


def adopt_model_args(args: argparse.Namespace, checkpoint: dict) -> None:
    """Evaluating, exporting or fine-tuning a checkpoint: without --arch, the network is
    the one the checkpoint records (its arch and model flags)."""
    if "arch" in args.explicit:
        return
    saved = checkpoint.get("args") if isinstance(checkpoint.get("args"), dict) else {}
    arch = checkpoint.get("arch") or saved.get("arch")
    if isinstance(arch, str) and arch in models.ARCHS:
        saved = {**PRE_FLAG_DEFAULTS, **saved}
        args.arch = arch
        for key in MODEL_DEFINING[1:]:
            if key in saved and _FLAG_OF.get(key, key) not in args.explicit:
                setattr(args, key, saved[key])


def adopt_recorded_dataset(args: argparse.Namespace, saved: dict, log: Callable[[str], None]) -> None:
    """--evaluate without --dataset: the data set the file records it was trained on (a
    checkpoint's args, a .tern's or ONNX file's preprocessing record) and, without
    --data_path, the folder a checkpoint records; with a --dataset that differs, the log
    says so."""
    trained_on = saved.get("dataset")
    if trained_on not in DATASETS or trained_on == args.dataset:
        return
    if "dataset" in args.explicit:
        log(f"=> {args.resume} was trained on {trained_on}; evaluating it on --dataset {args.dataset}")
        return
    args.dataset = trained_on
    if "data_path" not in args.explicit and isinstance(saved.get("data_path"), str):
        args.data_path = saved["data_path"]
    if "save_path" not in args.explicit:
        args.save_path = default_evaluation_path(args)
    log(f"=> evaluating on {trained_on}, the data set {args.resume} was trained on (--dataset chooses another)")


def read_resume_checkpoint(args: argparse.Namespace, kind: str | None, log: Callable[[str], None]) -> dict | None:
    """The --resume checkpoint (not a packed or ONNX file). A continued run takes its
    settings and, without --save_path, its folder; anything else takes its network."""
    if kind != "checkpoint":
        return None
    checkpoint = load_checkpoint(args.resume)
    check_recorded_args(checkpoint, args.resume)
    if args.evaluate or args.fine_tune or args.export:
        adopt_model_args(args, checkpoint)
        if args.evaluate:
            adopt_recorded_dataset(args, checkpoint.get("args") if isinstance(checkpoint.get("args"), dict) else {},
                                   log)
    else:
        adopt_checkpoint_args(args, checkpoint, log)
        if "save_path" not in args.explicit:
            args.save_path = os.path.dirname(args.resume) or "."
    return checkpoint


def resume_kind(args: argparse.Namespace) -> str | None:
    """What --resume names: "onnx", "packed" (.tern), "checkpoint", or None."""
    if not args.resume:
        return None
    kind = file_format(args.resume)
    if kind == "onnx" and not os.path.isfile(args.resume):
        raise UserError(f"ONNX file not found: {args.resume}")
    if kind == "packed" and not (args.evaluate or (args.export and is_onnx_file(args.export))):
        raise UserError(f"{args.resume} is a packed inference file: use it with --evaluate or --export MODEL.onnx")
    return kind


def continues_run_in_folder(args: argparse.Namespace, checkpoint: dict | None) -> bool:
    """Whether this run continues the run in --save_path: --resume names a file in that
    folder, written by the same run (a first epoch recorded alike). A checkpoint of another
    run copied into the folder is refused: resuming it would replace that run's files."""
    if not args.resume or args.fine_tune or args.evaluate or (
            os.path.dirname(os.path.abspath(args.resume)) != os.path.abspath(args.save_path)):
        return False
    recorded = (read_record(args.save_path) or {}).get("history")
    own = (checkpoint or {}).get("history")
    if recorded and own and recorded[0] != own[0]:
        raise UserError(f"{args.resume} belongs to another run than the one in {args.save_path} (their first epochs "
                        "differ); resuming it there would replace that run's checkpoints and results.json: give it "
                        "a folder of its own with --save_path NEW_FOLDER")
    return True


def claim_folder(args: argparse.Namespace, context: DistributedContext, checkpoint: dict | None):
    """The run folder, locked by the main process (see utils/run_folder.py)."""
    if not context.is_main:
        return contextlib.nullcontext()
    resuming = continues_run_in_folder(args, checkpoint)
    return claim_run_folder(args.save_path, "evaluate" if args.evaluate else "train", resuming=resuming,
                            overwrite=args.overwrite, inputs=(args.resume, args.pretrained))


def select_rank_device(args: argparse.Namespace) -> tuple[torch.device, DistributedContext]:
    """The device and the distributed context: under torchrun, GPU LOCAL_RANK (or the CPU)."""
    device = select_device(args.device, args.gpu_id)
    context = init_distributed(device.type == "cuda")
    if context.enabled and device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
    if context.enabled and args.ngpu > 1:
        raise UserError("--ngpu is DataParallel for single-process runs; under torchrun use --nproc_per_node")
    if args.sync_bn and not (context.enabled and device.type == "cuda"):
        raise UserError("--sync_bn synchronises BatchNorm across the GPU processes of a torchrun run "
                        "(PyTorch's SyncBatchNorm runs on CUDA only)")
    return device, context


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start_logging(args: argparse.Namespace, device: torch.device, context: DistributedContext, notes: list[str]):
    """log.txt and the console, opened with what the run is and, for training, a precision hint."""
    logger = make_logger(args.save_path if context.is_main else None, quiet=not context.is_main)
    for note in notes:
        logger.info(note)
    logger.info(f"{args.arch} on {args.dataset}, device {device}"
                + (f", {context.world_size} processes" if context.enabled else "") + f", saving to {args.save_path}")
    hint = None if args.evaluate else precision_hint(device, precision(args))
    if hint:
        (logger.warning if hint.startswith("warning") else logger.info)(hint)
    return logger


def model_choice(args: argparse.Namespace) -> ModelChoice:
    return ModelChoice(args.arch, args.tex, tuple(args.tfactors) if args.tfactors else None, args.first_last,
                       args.auto_thresholds, args.quantizer)


def precision(args: argparse.Namespace) -> Precision:
    return Precision(args.amp, args.amp_dtype, args.channels_last)


def input_shape(info: DatasetInfo) -> tuple[int, int, int]:
    return info.in_channels, info.image_size, info.image_size


def report_compression(args: argparse.Namespace, model: nn.Module, info: DatasetInfo, packed_bytes: int | None,
                       logger) -> dict:
    report = compression_report(model, input_shape(info), packed_bytes)
    logger.info(format_report(report))
    write_json(os.path.join(args.save_path, "compression.json"), report)
    return report


def run_evaluation(args: argparse.Namespace, model: nn.Module, kind: str | None, info: DatasetInfo, test_loader,
                   device: torch.device, context: DistributedContext, logger, started: float) -> None:
    """--evaluate of a checkpoint, a packed file, an ONNX file or --pretrained weights."""
    non_finite = [name for name, tensor in unwrap(model).state_dict().items()
                  if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if non_finite and context.is_main:
        logger.warning(f"warning: {args.resume or args.pretrained} holds NaN or Inf values in {len(non_finite)} "
                       f"tensors ({', '.join(non_finite[:3])}{', ...' if len(non_finite) > 3 else ''}); its "
                       "predictions are not meaningful")
    result = evaluate(model, test_loader, device, precision(args), context.is_main)
    if not context.is_main:
        return
    source = args.resume or args.pretrained
    report = None
    if kind == "onnx":
        logger.info(f"{format_metrics(result)}  loss {result['loss']:.4f}  "
                    f"({os.path.getsize(source):,} bytes of ONNX, onnxruntime)")
    else:
        report = report_compression(args, unwrap(model), info, os.path.getsize(source) if kind == "packed" else None,
                                    logger)
        logger.info(f"{format_metrics(result)}  loss {result['loss']:.4f}  "
                    f"sparsity {100 * report['ternary_sparsity']:.2f}%")
    write_json(os.path.join(args.save_path, "results.json"), run_record(
        mode="evaluate", status="complete", arch=None if kind == "onnx" else args.arch, dataset=args.dataset,
        args=recorded_args(args), started=started, statistics=model_statistics(unwrap(model), report),
        precision=precision(args).name, world_size=context.world_size, test=result, source=source,
        file_format=kind or "checkpoint"))


def load_run_model(args: argparse.Namespace, kind: str | None, checkpoint: dict | None, info: DatasetInfo,
                   device: torch.device, logger) -> nn.Module:
    """The run's model: from --resume (any file kind), else built, from --pretrained weights if given."""
    if kind is None:
        return build_model(model_choice(args), info, args.pretrained).to(device)
    loaded = load_model(args.resume, info, args.dataset, None if kind != "checkpoint" else model_choice(args),
                        checkpoint, logger.info)
    if kind == "packed":
        args.arch = loaded.model.build_config["arch"]
    elif kind == "checkpoint" and (args.evaluate or args.fine_tune or args.export):
        logger.info(f"=> loaded {args.resume} (weights only)")
    return loaded.model.to(device)


def run_export(args: argparse.Namespace, kind: str | None, checkpoint: dict | None, device: torch.device,
               context: DistributedContext) -> None:
    """--export: one file written, no run folder (the console is the log)."""
    if not context.is_main:
        return
    logger = make_logger(None)
    info = dataset_info(args.dataset, args.data_path, logger.info, args.cache_dir)
    model = load_run_model(args, kind, checkpoint, info, device, logger)
    record = getattr(model, "preprocessing", None) or preprocessing_record(info, args.dataset)
    logger.info(export_model(model, args.export, input_shape(info), args.export_encoding, record))
    if not is_onnx_file(args.export):
        logger.info(format_report(compression_report(model, input_shape(info), os.path.getsize(args.export))))


def warn_on_world_size_change(checkpoint: dict | None, args: argparse.Namespace, context: DistributedContext,
                              logger) -> None:
    saved = checkpoint.get("world_size", 1) if checkpoint and not args.fine_tune else context.world_size
    if saved != context.world_size:
        logger.warning(f"warning: the run was trained with {saved} processes and continues with "
                       f"{context.world_size}: the global batch changes from {saved * args.batch_size} to "
                       f"{context.world_size * args.batch_size}, so it will not match an uninterrupted run")


def run(args: argparse.Namespace, stop: StopSignals) -> None:
    """flags → data set → model → optimizer → loop → save, for training, evaluation and export."""
    started = time.time()
    device, context = select_rank_device(args)
    kind = resume_kind(args)
    notes: list[str] = list(args.notes)
    checkpoint = read_resume_checkpoint(args, kind, notes.append)
    if args.evaluate and kind in ("packed", "onnx"):
        adopt_recorded_dataset(args, recorded_preprocessing(args.resume, kind) or {}, notes.append)
    if args.export:
        run_export(args, kind, checkpoint, device, context)
        return
    info = dataset_info(args.dataset, args.data_path, notes.append, args.cache_dir)
    ensure_data(args.dataset, args.data_path, include_train=not args.evaluate)
    with claim_folder(args, context, checkpoint) as folder_notes:
        logger = start_logging(args, device, context, notes + (folder_notes or []))
        seed_everything(args.manualSeed)
        model = load_run_model(args, kind, checkpoint, info, device, logger)
        state = TrainingState(args.start_epoch)
        if not args.evaluate:
            optimizer = make_optimizer(model, args.optimizer, args.learning_rate, args.momentum, args.decay,
                                       args.scale_lr, args.nesterov, args.decay_on)
            scheduler = make_scheduler(optimizer, args.schedule, args.gammas)
            if checkpoint is not None and not args.fine_tune:
                settings = OptimizerSettings(args.optimizer, args.learning_rate, args.momentum, args.decay, args.nesterov)
                state = resume_training(args.resume, checkpoint, settings, optimizer, scheduler, args.start_epoch,
                                        logger.info)
                warn_on_world_size_change(checkpoint, args, context, logger)
                if context.is_main:
                    repair_best_model(args.save_path, checkpoint, logger.info)
        if kind != "onnx":
            model = prepare_model(model, device, context, args.channels_last, args.sync_bn, args.ngpu, args.compile)
        loader_device = torch.device("cpu") if kind == "onnx" else device
        train_loader, test_loader = build_loaders(args.dataset, args.data_path, info, args.batch_size, loader_device,
                                                  seed=args.manualSeed, workers=args.workers, subset=args.subset,
                                                  include_train=not args.evaluate, rank=context.rank,
                                                  world_size=context.world_size, log=logger.info,
                                                  cache_dir=args.cache_dir)
        if kind != "onnx":
            logger.info(f"{sum(p.numel() for p in model.parameters()):,} parameters; {test_loader.dataset_size} test "
                        "images" + (f", {train_loader.dataset_size} train images" if train_loader else ""))
        if args.evaluate:
            run_evaluation(args, model, kind, info, test_loader, loader_device, context, logger, started)
            return
        logger.info(f"=> {args.optimizer} lr {args.learning_rate:g}, " + (", ".join(
            f"×{gamma:g} at epoch {step}" for step, gamma in zip(args.schedule, args.gammas)) or "no lr steps")
            + f", weight decay {args.decay:g}" + (" (conv and linear weights only)" if args.decay_on == "weights" else "")
            + f", batch {args.batch_size}, {args.epochs} epochs")
        config = TrainConfig(save_path=args.save_path, epochs=args.epochs, arch=args.arch, dataset=args.dataset,
                             input_shape=input_shape(info), args=recorded_args(args), precision=precision(args),
                             print_freq=args.print_freq, auto_thresholds=args.auto_thresholds,
                             threshold_every=args.threshold_every, model_only=args.model_only,
                             preprocessing=preprocessing_record(info, args.dataset))
        fit(model, optimizer, scheduler, state, train_loader, test_loader, device, context, config, logger, stop,
            started)


def main(argv: list[str] | None = None) -> int:
    with StopSignals() as stop:
        try:
            run(parse_args(argv), stop)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except Interrupted as exc:
            if not getattr(exc, "quiet", False):
                print(f"interrupted by {signal.Signals(exc.signum).name} in epoch {exc.epoch}: "
                      f"{getattr(exc, 'resume_hint', 'nothing was saved')}", file=sys.stderr)
            return exc.exit_code
        except RuntimeError as exc:
            if not (launched_by_torchrun() and is_peer_failure(exc)):
                raise
            print(f"error: {peer_failure(exc)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("interrupted: stopped at once on a second signal; the last saved epoch is the resume point",
                  file=sys.stderr)
            return 130
        finally:
            shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
