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

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from tqdm import tqdm

import models
from utils.checkpoint import extract_state_dict, load_checkpoint, load_weights, save_checkpoint
from utils.compression import compression_report, format_report
from utils.data import DATASETS, build_loaders, dataset_info
from utils.distributed import DistributedContext, all_reduce_max, all_reduce_sum, init_distributed, shutdown
from utils.errors import UserError, write_error
from utils.hardware import fast_bf16
from utils.export import ENCODINGS, export_packed, is_packed_file, load_packed
from utils.onnx_export import OnnxModel, export_onnx, is_onnx_file
from utils.logging import TensorBoardLog, make_logger, plot_curves, write_json
from utils.resume import TrainingState, adopt_checkpoint_args, resume, rng_state
from utils.run_folder import claim_run_folder
from utils.signals import Interrupted, StopSignals

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="digits", choices=list(DATASETS), help="data set (default: digits, offline)")
    data.add_argument("--data_path", default="./data", help="where the data set is (or is downloaded to)")
    data.add_argument("--workers", type=int, default=4, help="data-loading processes (ImageNet only)")
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
    model.add_argument("--first_last", choices=["tern", "fp"], default=None,
                       help="ternarize the first conv and last linear layer (tern) or keep them full precision (fp)")
    model.add_argument("--pretrained", default=None, metavar="PATH",
                       help="full-precision state_dict (e.g. torchvision's resnet18 file) to start from, or "
                            "'torchvision' to download torchvision's ImageNet weights of the arch (ResNets)")
    optim = parser.add_argument_group("optimisation (unset: the data set's recipe)")
    optim.add_argument("--epochs", type=int, default=None)
    optim.add_argument("--optimizer", choices=["SGD", "Adam"], default=None, help="SGD uses Nesterov momentum")
    optim.add_argument("--batch_size", type=int, default=None)
    optim.add_argument("--learning_rate", type=float, default=None)
    optim.add_argument("--momentum", type=float, default=0.9)
    optim.add_argument("--decay", type=float, default=None, help="weight decay")
    optim.add_argument("--schedule", type=int, nargs="+", default=None, help="epochs at which the lr is multiplied")
    optim.add_argument("--gammas", type=float, nargs="+", default=None, help="lr factor at each --schedule epoch")
    run = parser.add_argument_group("checkpoints and logging")
    run.add_argument("--save_path", default=None,
                     help="output folder (default: save/DATASET_ARCH[_texK][_tT|_tauto][_firstlastfp|tern]_seedS)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace the run already in --save_path (otherwise refused)")
    run.add_argument("--resume", default=None, metavar="PATH", help="checkpoint to resume training or to evaluate")
    run.add_argument("--start_epoch", type=int, default=0, help="first epoch when not resuming a full checkpoint")
    run.add_argument("--evaluate", action="store_true", help="evaluate on the test/val split and exit")
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
    hw.add_argument("--amp", action="store_true", help="mixed precision: autocast to --amp_dtype (weights stay fp32)")
    hw.add_argument("--amp_dtype", choices=["bfloat16", "float16"], default="bfloat16",
                    help="autocast dtype; float16 also scales the loss (GradScaler)")
    hw.add_argument("--channels_last", action="store_true",
                    help="NHWC memory format for convolutions (with --amp about 2× faster on CPUs with AVX-512 BF16)")
    hw.add_argument("--compile", action="store_true", help="torch.compile the model")
    hw.add_argument("--sync_bn", action="store_true", help="with torchrun: SyncBatchNorm across processes")
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
    ]
    for ok, message in problems:
        if not ok:
            raise UserError(message)
    return args


def recorded_args(args: argparse.Namespace) -> dict:
    """The arguments as results.json and checkpoints record them."""
    return {key: value for key, value in vars(args).items() if key != "explicit"}


def apply_recipe(args: argparse.Namespace) -> argparse.Namespace:
    recipe = RECIPES[dataset_info(args.dataset).family]  # the family needs no data
    for key, value in recipe.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
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
    if args.save_path is None:
        args.save_path = default_save_path(args)
    return args


def default_save_path(args: argparse.Namespace) -> str:
    """save/DATASET_ARCH plus what makes the variant: t_ex, thresholds, first/last, seed
    (and _eval for an evaluation), so variants never share a folder."""
    parts = [args.dataset, args.arch]
    if args.tex:
        parts.append(f"tex{args.tex}")
    if args.auto_thresholds:
        parts.append("tauto")
    elif args.tfactors:
        parts.append("t" + "-".join(f"{t:g}" for t in args.tfactors))
    if args.first_last:
        parts.append(f"firstlast{args.first_last}")
    parts.append(f"seed{args.manualSeed}")
    if args.evaluate:
        parts.append("eval")
    return os.path.join("save", "_".join(parts))


def select_device(args: argparse.Namespace) -> torch.device:
    if args.gpu_id is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu_id
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if use_cuda else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def log_precision_hint(args: argparse.Namespace, device: torch.device, logger) -> None:
    """Point CPU users at the fast path (bf16 autocast + NHWC is about 2× faster on CPUs
    with AVX-512 BF16, see python -m utils.benchmark --modes_only), or warn that bf16 is
    emulated here."""
    if device.type != "cpu" or args.evaluate or args.export:
        return
    if not args.amp and fast_bf16(device):
        logger.info("hint: this CPU computes bf16 natively; --amp --channels_last trains about 2× faster")
    elif args.amp and args.amp_dtype == "bfloat16" and not fast_bf16(device):
        logger.warning("warning: this CPU has no native bf16 (AVX-512 BF16 or AMX); --amp is likely slower than fp32")


def prepare_model(args: argparse.Namespace, model: nn.Module, device: torch.device,
                  context: DistributedContext) -> nn.Module:
    """Memory format, SyncBatchNorm, DistributedDataParallel (torchrun) or DataParallel
    (--ngpu), then torch.compile, in that order."""
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if context.enabled:
        if args.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    elif args.ngpu > 1 and device.type == "cuda":
        model = nn.DataParallel(model, device_ids=list(range(args.ngpu)))
    if args.compile:
        model = torch.compile(model)
    return model


def torchvision_state_dict(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's pretrained ImageNet weights of `arch`'s full-precision twin (downloaded
    into torch's hub cache, or read from it)."""
    name = models.ARCHS[arch].torchvision_weights if arch in models.ARCHS else None
    if name is None:
        raise UserError(f"torchvision has no pretrained weights for {arch}; give --pretrained a state_dict file")
    try:
        return torchvision.models.get_weight(name).get_state_dict(progress=False)
    except Exception as exc:  # network errors come in many types
        raise UserError(f"could not download {name} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                        "download the file elsewhere and pass it as --pretrained PATH") from exc


def build_model(args: argparse.Namespace, device: torch.device, logger) -> nn.Module:
    info = dataset_info(args.dataset, args.data_path, logger.info)
    first_last = None if args.first_last is None else args.first_last == "tern"
    try:
        model = models.get_model(args.arch, num_classes=info.num_classes, in_channels=info.in_channels,
                                 tex=args.tex, tfactors=args.tfactors, first_last=first_last)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if args.pretrained == "torchvision":
        load_weights(model, torchvision_state_dict(args.arch), source=models.ARCHS[args.arch].torchvision_weights)
    elif args.pretrained:
        load_weights(model, extract_state_dict(load_checkpoint(args.pretrained)), source=args.pretrained)
    if args.auto_thresholds:
        if not any(True for _ in models.ternary_layers(model)):
            raise UserError(f"--tfactors auto needs a ternarized arch; {args.arch} has no ternary layers")
        models.optimize_model_thresholds(model)
    return model.to(device)


def load_packed_model(args: argparse.Namespace, device: torch.device, logger) -> nn.Module:
    """The network of a packed .tern file, checked against the data set."""
    model = load_packed(args.resume)
    info, config = dataset_info(args.dataset, args.data_path, logger.info), model.build_config
    if (config["num_classes"], config["in_channels"]) != (info.num_classes, info.in_channels):
        raise UserError(f"{args.resume} was built for {config['num_classes']} classes and {config['in_channels']} "
                        f"input channels, {args.dataset} has {info.num_classes} and {info.in_channels}")
    args.arch = config["arch"]
    return model.to(device)


def model_report(args: argparse.Namespace, model: nn.Module, packed_bytes: int | None = None) -> dict:
    info = dataset_info(args.dataset, args.data_path)
    return compression_report(model, (info.in_channels, info.image_size, info.image_size), packed_bytes)


def report_compression(args: argparse.Namespace, model: nn.Module, packed_bytes: int | None, logger) -> dict:
    report = model_report(args, model, packed_bytes)
    logger.info(format_report(report))
    write_json(report, os.path.join(args.save_path, "compression.json"))
    return report


def make_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    if args.optimizer == "SGD":
        return torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=args.momentum,
                               weight_decay=args.decay, nesterov=True)
    return torch.optim.Adam(model.parameters(), lr=args.learning_rate, weight_decay=args.decay)


def make_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """lr(epoch) = learning_rate · Π gamma_i over the schedule epochs already reached."""
    def factor(epoch: int) -> float:
        return math.prod(g for g, milestone in zip(args.gammas, args.schedule) if epoch >= milestone)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Metrics:
    """Loss, top-1/top-5 and image-count sums kept on the device; read (one host sync and,
    in a distributed run, one all-reduce over the processes) only on summary()."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, device=device)
        self.count = 0

    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(target[:, None])
        batch = target.shape[0]
        self.sums += torch.stack([loss.float() * batch, hits[:, 0].sum().float(), hits.sum().float()])
        self.count += batch

    def summary(self) -> dict[str, float]:
        count = torch.tensor([self.count], dtype=torch.float32, device=self.sums.device)
        loss, top1, top5, count = all_reduce_sum(torch.cat([self.sums, count])).tolist()
        loss, top1, top5 = (value / max(count, 1) for value in (loss, top1, top5))
        return {"loss": loss, "top1": 100 * top1, "top5": 100 * top5}


def autocast(args: argparse.Namespace, device: torch.device):
    return torch.autocast(device.type, dtype=getattr(torch, args.amp_dtype), enabled=args.amp)


def to_device(images: torch.Tensor, target: torch.Tensor, device: torch.device,
              args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    return (images.to(device, non_blocking=True, memory_format=memory_format),
            target.to(device, non_blocking=True))


def check_finite(loss: float, what: str, epoch: int, args: argparse.Namespace) -> None:
    """Stop a diverged run before anything of it is saved."""
    if math.isfinite(loss):
        return
    best = os.path.join(args.save_path, "model_best.pth.tar")
    kept = f"{best} is intact" if os.path.isfile(best) else "no model was saved"
    raise UserError(f"{what} loss became {loss} in epoch {epoch + 1}: the run diverged and stopped without saving "
                    f"this epoch ({kept}). Try a lower --learning_rate.")


def stop_requested(stop: StopSignals, context: DistributedContext, device: torch.device) -> int | None:
    """The signal that asked this run to stop, agreed on by every process (one all-reduce
    in a distributed run, so all ranks stop at the same step)."""
    if not context.enabled:
        return stop.requested
    return int(all_reduce_max(torch.tensor([stop.requested or 0], device=device)).item()) or None


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    device: torch.device, epoch: int, args: argparse.Namespace, logger, stop: StopSignals,
                    context: DistributedContext) -> dict[str, float]:
    """One epoch. The step never waits for the device: metrics stay on it and are read
    (and checked for NaN) every --print_freq steps and at the end. A stop signal ends
    the epoch after the current step (checked every step in a single process, every
    --print_freq steps across a distributed run) by raising Interrupted."""
    model.train()
    if args.auto_thresholds and not args.threshold_every:
        models.optimize_model_thresholds(unwrap(model))
    metrics = Metrics(device)
    progress = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
                    disable=None if context.is_main else True, dynamic_ncols=True)
    for step, (images, target) in enumerate(progress, 1):
        images, target = to_device(images, target, device, args)
        with autocast(args, device):
            logits = model(images)
            loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        metrics.update(loss.detach(), logits.detach(), target)
        if args.auto_thresholds and args.threshold_every and step % args.threshold_every == 0:
            models.optimize_model_thresholds(unwrap(model))
        if not context.enabled and stop.requested:
            raise Interrupted(stop.requested, epoch + 1)
        if step % args.print_freq == 0:
            summary = metrics.summary()
            check_finite(summary["loss"], "training", epoch, args)
            signum = stop_requested(stop, context, device)
            if signum:
                raise Interrupted(signum, epoch + 1)
            progress.set_postfix(loss=f"{summary['loss']:.3f}", top1=f"{summary['top1']:.1f}")
            logger.info(f"  epoch {epoch + 1} step {step}/{len(loader)}  loss {summary['loss']:.4f}  "
                        f"top1 {summary['top1']:.2f}")
    summary = metrics.summary()
    check_finite(summary["loss"], "training", epoch, args)
    return summary


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, args: argparse.Namespace,
             show_progress: bool = True) -> dict[str, float]:
    """Top-1/top-5 and loss on `loader` (summed over all processes in a distributed run)."""
    model.eval()
    metrics = Metrics(device)
    for images, target in tqdm(loader, desc="eval", leave=False, disable=None if show_progress else True,
                               dynamic_ncols=True):
        images, target = to_device(images, target, device, args)
        with autocast(args, device):
            logits = model(images)
        metrics.update(F.cross_entropy(logits.float(), target), logits, target)
    return metrics.summary()


def unwrap(model: nn.Module) -> nn.Module:
    """The model itself, inside any torch.compile, DataParallel or DDP wrapper."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
            model = model._orig_mod
        else:
            return model


def run_summary(args: argparse.Namespace, model: nn.Module, report: dict, extra: dict) -> dict:
    """results.json: the model's statistics come from the compression report, which sees
    live ternary layers and ones loaded from a packed file alike."""
    return {"arch": args.arch, "dataset": args.dataset, "params": sum(p.numel() for p in model.parameters()),
            "ternary_layers": report["ternary_layers"], "sparsity": report["ternary_sparsity"],
            "weight_compression": report["weight_compression"],
            "threshold_factors": getattr(model, "packed_tfactors", None) or models.layer_tfactors(model), **extra,
            "args": recorded_args(args)}


def training_summary(args: argparse.Namespace, model: nn.Module, report: dict, history: list[dict], started: float,
                     status: str) -> dict:
    """results.json of a training run, rewritten every epoch: status "running" until the
    last epoch is done, then "complete" (a crashed run stays "running")."""
    best = max(history, key=lambda r: r["val_top1"]) if history else {}
    final = history[-1] if history else {}
    return run_summary(args, model, report, {
        "mode": "train", "status": status, "epochs": args.epochs, "epochs_done": len(history),
        "best_top1": best.get("val_top1"), "best_top5": best.get("val_top5"), "best_epoch": best.get("epoch"),
        "final_top1": final.get("val_top1"), "final_top5": final.get("val_top5"),
        "wall_time_s": time.time() - started, "history": history})


def select_rank_device(args: argparse.Namespace) -> tuple[torch.device, DistributedContext]:
    """The device and the distributed context: under torchrun, GPU LOCAL_RANK (or the CPU)."""
    device = select_device(args)
    context = init_distributed(device.type == "cuda")
    if context.enabled and device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
    if context.enabled and args.ngpu > 1:
        raise UserError("--ngpu is DataParallel for single-process runs; under torchrun use --nproc_per_node")
    if args.sync_bn and not (context.enabled and device.type == "cuda"):
        raise UserError("--sync_bn synchronises BatchNorm across the GPU processes of a torchrun run "
                        "(PyTorch's SyncBatchNorm runs on CUDA only)")
    return device, context


def run_evaluation(args: argparse.Namespace, model: nn.Module, test_loader, device: torch.device,
                   context: DistributedContext, packed: bool, logger, started: float) -> None:
    result = evaluate(model, test_loader, device, args, context.is_main)
    if not context.is_main:
        return
    report = report_compression(args, unwrap(model), os.path.getsize(args.resume) if packed else None, logger)
    logger.info(f"Prec@1 {result['top1']:.2f}  Prec@5 {result['top5']:.2f}  loss {result['loss']:.4f}  "
                f"sparsity {100 * report['ternary_sparsity']:.2f}%")
    write_json(run_summary(args, unwrap(model), report, {
        "mode": "evaluate", "status": "complete", "top1": result["top1"], "top5": result["top5"], "loss": result["loss"],
        "world_size": context.world_size, "wall_time_s": time.time() - started}),
        os.path.join(args.save_path, "results.json"))


def run_onnx_evaluation(args: argparse.Namespace, model: OnnxModel, test_loader, logger, started: float) -> None:
    """--evaluate of an ONNX file: the same test pipeline and metrics, run by onnxruntime."""
    result = evaluate(model, test_loader, torch.device("cpu"), args, True)
    logger.info(f"Prec@1 {result['top1']:.2f}  Prec@5 {result['top5']:.2f}  loss {result['loss']:.4f}  "
                f"({os.path.getsize(args.resume):,} bytes of ONNX, onnxruntime)")
    write_json({"arch": "onnx", "dataset": args.dataset, "mode": "evaluate", "status": "complete", "runtime": "onnxruntime",
                "onnx_bytes": os.path.getsize(args.resume), "top1": result["top1"], "top5": result["top5"],
                "loss": result["loss"], "wall_time_s": time.time() - started, "args": recorded_args(args)},
               os.path.join(args.save_path, "results.json"))


def save_epoch(args: argparse.Namespace, model: nn.Module, optimizer, scheduler, history: list[dict],
               best: tuple[float, int | None], is_best: bool, started: float) -> None:
    """Best model, checkpoint, curve and results.json after an epoch (main process only).
    The best model is written first: a kill between the two files leaves a checkpoint
    one epoch older, whose resumed run recomputes the same epoch."""
    epoch = history[-1]["epoch"]
    state = {"state_dict": model.state_dict(), "tfactors": models.layer_tfactors(model),
             "bias_copies": models.layer_bias_copies(model)}
    if not args.model_only:
        state.update(epoch=epoch, arch=args.arch, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                     best_acc=best[0], best_epoch=best[1], history=history, args=recorded_args(args),
                     rng=rng_state())
    if is_best:
        save_checkpoint(state, os.path.join(args.save_path, "model_best.pth.tar"))
    save_checkpoint(state, os.path.join(args.save_path, "checkpoint.pth.tar"))
    plot_curves(history, os.path.join(args.save_path, "curve.png"), title=f"{args.arch} on {args.dataset}")
    if epoch < args.epochs:
        write_json(training_summary(args, model, model_report(args, model), history, started, "running"),
                   os.path.join(args.save_path, "results.json"))


def repair_best_model(args: argparse.Namespace, checkpoint: dict, logger) -> None:
    """A run killed between its checkpoint and model_best (as older versions wrote them)
    has a model_best older than the checkpoint's best epoch: when the checkpoint itself is
    the best epoch, write model_best from it again."""
    best_epoch, epoch = checkpoint.get("best_epoch"), checkpoint.get("epoch")
    path = os.path.join(args.save_path, "model_best.pth.tar")
    if best_epoch is None or best_epoch != epoch:
        return
    saved_epoch = load_checkpoint(path).get("epoch") if os.path.isfile(path) else None
    if saved_epoch != best_epoch:
        save_checkpoint(checkpoint, path)
        held = "it was missing" if saved_epoch is None else f"it held epoch {saved_epoch}"
        logger.info(f"=> rewrote {path} from epoch {best_epoch} ({held})")


def export(args: argparse.Namespace, model: nn.Module, logger) -> None:
    """--export: the packed .tern file or ONNX, by the file's suffix."""
    if is_onnx_file(args.export):
        info = dataset_info(args.dataset, args.data_path, logger.info)
        written = export_onnx(model, args.export, (info.in_channels, info.image_size, info.image_size))
        kind = (f"{written['ternary_layers']} ternary layers as int4 codes" if written["ternary_layers"]
                else "no ternary layers: a plain float32 model")
        logger.info(f"=> wrote {args.export} ({written['bytes']:,} bytes, {kind}; the float32 ONNX of the same "
                    f"graph: {written['fp32_bytes']:,} bytes, {written['fp32_bytes'] / written['bytes']:.2f}× larger)")
        return
    try:
        size = export_packed(model, args.export, args.export_encoding)
    except OSError as exc:
        raise write_error(args.export, exc) from None
    logger.info(f"=> wrote {args.export} ({size:,} bytes, {args.export_encoding} encoding)")
    report_compression(args, model, size, logger)


def load_onnx_model(args: argparse.Namespace, logger) -> OnnxModel:
    """An ONNX file to evaluate, checked against the data set's input and classes."""
    model = OnnxModel(args.resume)
    info = dataset_info(args.dataset, args.data_path, logger.info)
    expected = (info.in_channels, info.image_size, info.image_size)
    shape_ok = all(got == want for got, want in zip(model.input_shape, expected) if isinstance(got, int))
    classes_ok = not isinstance(model.num_classes, int) or model.num_classes == info.num_classes
    if not (shape_ok and classes_ok):
        raise UserError(f"{args.resume} takes {model.input_shape} images and gives {model.num_classes} classes; "
                        f"{args.dataset} has {expected} and {info.num_classes}")
    logger.info(f"=> evaluating {args.resume} with onnxruntime")
    return model


def claim_folder(args: argparse.Namespace, context: DistributedContext):
    """The run folder, locked by the main process (see utils/run_folder.py)."""
    if not context.is_main:
        return contextlib.nullcontext()
    resuming = bool(args.resume) and not args.fine_tune and (
        os.path.dirname(os.path.abspath(args.resume)) == os.path.abspath(args.save_path))
    mode = "evaluate" if args.evaluate or args.export else "train"
    return claim_run_folder(args.save_path, mode, resuming=resuming, overwrite=args.overwrite)


def read_resume_checkpoint(args: argparse.Namespace, inference_file: bool, log) -> dict | None:
    """The --resume checkpoint (not a packed or ONNX file); for a continued run, its
    settings become the run's and, without --save_path, its folder the output folder."""
    if not args.resume or inference_file:
        return None
    checkpoint = load_checkpoint(args.resume)
    if not (args.evaluate or args.fine_tune or args.export):
        adopt_checkpoint_args(args, checkpoint, log)
        if "save_path" not in args.explicit:
            args.save_path = os.path.dirname(args.resume) or "."
    return checkpoint


def resume_kind(args: argparse.Namespace) -> str | None:
    """What --resume names: "onnx", "packed" (.tern), "checkpoint", or None."""
    if not args.resume:
        return None
    if is_onnx_file(args.resume):
        if not os.path.isfile(args.resume):
            raise UserError(f"ONNX file not found: {args.resume}")
        return "onnx"
    if os.path.isfile(args.resume) and is_packed_file(args.resume):
        if not args.evaluate:
            raise UserError(f"{args.resume} is a packed inference file: use it with --evaluate")
        return "packed"
    return "checkpoint"


def start_logging(args: argparse.Namespace, device: torch.device, context: DistributedContext, notes: list[str]):
    logger = make_logger(args.save_path if context.is_main else None, quiet=not context.is_main)
    for note in notes:
        logger.info(note)
    logger.info(f"{args.arch} on {args.dataset}, device {device}"
                + (f", {context.world_size} processes" if context.enabled else "") + f", saving to {args.save_path}")
    log_precision_hint(args, device, logger)
    return logger


def evaluate_onnx_file(args: argparse.Namespace, logger, started: float) -> None:
    model = load_onnx_model(args, logger)
    _, test_loader = build_loaders(args.dataset, args.data_path, args.batch_size, torch.device("cpu"),
                                   seed=args.manualSeed, workers=args.workers, include_train=False, log=logger.info)
    run_onnx_evaluation(args, model, test_loader, logger, started)


def run(args: argparse.Namespace, stop: StopSignals) -> None:
    """parse → data → model → optimizer → loop → save, for training, evaluation and export."""
    started = time.time()
    device, context = select_rank_device(args)
    kind = resume_kind(args)
    notes: list[str] = []
    checkpoint = read_resume_checkpoint(args, kind != "checkpoint", notes.append)
    with claim_folder(args, context):
        logger = start_logging(args, device, context, notes)
        seed_everything(args.manualSeed)
        if kind == "onnx":
            evaluate_onnx_file(args, logger, started)
            return
        model = load_packed_model(args, device, logger) if kind == "packed" else build_model(args, device, logger)
        optimizer = make_optimizer(args, model)
        scheduler = make_scheduler(args, optimizer)
        state = TrainingState(args.start_epoch)
        if checkpoint is not None:
            state = resume(args, checkpoint, unwrap(model), optimizer, scheduler, logger.info)
            if context.is_main and not (args.evaluate or args.fine_tune or args.export):
                repair_best_model(args, checkpoint, logger)
        if args.export:
            if context.is_main:
                export(args, model, logger)
            return
        model = prepare_model(args, model, device, context)
        train_loader, test_loader = build_loaders(args.dataset, args.data_path, args.batch_size, device,
                                                  seed=args.manualSeed, workers=args.workers, subset=args.subset,
                                                  include_train=not args.evaluate, rank=context.rank,
                                                  world_size=context.world_size, log=logger.info)
        logger.info(f"{sum(p.numel() for p in model.parameters()):,} parameters; {test_loader.dataset_size} test "
                    "images" + (f", {train_loader.dataset_size} train images" if train_loader else ""))
        if args.evaluate:
            run_evaluation(args, model, test_loader, device, context, kind == "packed", logger, started)
            return
        train(args, model, optimizer, scheduler, state, train_loader, test_loader, device, context, logger, stop,
              started)


def train(args: argparse.Namespace, model: nn.Module, optimizer, scheduler, state: TrainingState, train_loader,
          test_loader, device: torch.device, context: DistributedContext, logger, stop: StopSignals,
          started: float) -> None:
    """The epochs from state.start_epoch on. A stop signal or a failure marks results.json
    ("interrupted" / "failed") before it propagates; only complete epochs are ever saved."""
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and args.amp_dtype == "float16")
    tensorboard = TensorBoardLog(args.save_path) if context.is_main else None
    history, best = state.history, (state.best_acc, state.best_epoch)
    try:
        for epoch in range(state.start_epoch, args.epochs):
            signum = stop_requested(stop, context, device)
            if signum:  # a signal during the last save, or before the first epoch
                raise Interrupted(signum, epoch + 1)
            epoch_start = time.time()
            train_loader.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            train_metrics = train_one_epoch(model, train_loader, optimizer, scaler, device, epoch, args, logger, stop,
                                            context)
            val = evaluate(model, test_loader, device, args, context.is_main)
            check_finite(val["loss"], "validation", epoch, args)
            scheduler.step()
            is_best = val["top1"] > best[0]
            best = (val["top1"], epoch + 1) if is_best else best
            record = {"epoch": epoch + 1, "lr": lr, "time_s": time.time() - epoch_start,
                      **{f"train_{k}": v for k, v in train_metrics.items()}, **{f"val_{k}": v for k, v in val.items()}}
            history.append(record)
            logger.info(f"epoch {epoch + 1:3d}/{args.epochs}  lr {lr:.2e}  train loss {train_metrics['loss']:.4f} "
                        f"top1 {train_metrics['top1']:6.2f} | val loss {val['loss']:.4f} top1 {val['top1']:6.2f} "
                        f"top5 {val['top5']:6.2f} | best {best[0]:6.2f} | {record['time_s']:.1f}s")
            if context.is_main:
                save_epoch(args, unwrap(model), optimizer, scheduler, history, best, is_best, started)
                tensorboard.epoch(epoch, record, unwrap(model))
    except (Interrupted, UserError, KeyboardInterrupt) as exc:
        if context.is_main:
            tensorboard.close()
            status = "interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "failed"
            summary = training_summary(args, unwrap(model), model_report(args, unwrap(model)), history, started, status)
            summary["error"] = str(exc) or type(exc).__name__
            with contextlib.suppress(UserError):
                write_json(summary, os.path.join(args.save_path, "results.json"))
        if isinstance(exc, Interrupted):
            exc.resume_hint = resume_hint(args, history)
            exc.quiet = not context.is_main  # one line per run, from the main process
        raise
    if not context.is_main:
        return
    tensorboard.close()
    report = report_compression(args, unwrap(model), None, logger)
    summary = training_summary(args, unwrap(model), report, history, started, "complete")
    summary["world_size"] = context.world_size
    write_json(summary, os.path.join(args.save_path, "results.json"))
    final = history[-1] if history else {}
    logger.info(f"done: best top1 {best[0]:.2f}, final top1 {final.get('val_top1', float('nan')):.2f}, "
                f"sparsity {100 * summary['sparsity']:.2f}%, {summary['wall_time_s']:.0f}s")


def resume_hint(args: argparse.Namespace, history: list[dict]) -> str:
    checkpoint = os.path.join(args.save_path, "checkpoint.pth.tar")
    if not history or args.model_only:
        return "no epoch finished, nothing to resume; start the run again"
    return f"epoch {history[-1]['epoch']} is saved; continue with: python main.py --resume {checkpoint}"


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
        except KeyboardInterrupt:
            print("interrupted: stopped at once on a second signal; the last saved epoch is the resume point",
                  file=sys.stderr)
            return 130
        finally:
            shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
