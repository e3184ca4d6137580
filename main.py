"""Train, fine-tune and evaluate ternarized CNNs (He, Gong & Fan, WACV 2019).

    python main.py                                   # tern_resnet20 on the embedded digits set, offline
    python main.py --dataset cifar10 --arch tern_resnet20 --data_path data/
    python main.py --dataset imagenet --arch resnet18b_ff_lf_tex1 --data_path /imagenet --pretrained resnet18.pth
    python main.py --dataset cifar10 --arch tern_resnet20 --evaluate --resume save/cifar10_tern_resnet20/model_best.pth.tar

Unset optimisation flags (--epochs, --optimizer, --learning_rate, --decay, --batch_size,
--schedule, --gammas) take the paper's recipe for the data set: CIFAR from scratch with
SGD, ImageNet fine-tuning with Adam, a shortened CIFAR recipe for digits/(Fashion-)MNIST.
"""
from __future__ import annotations

import argparse
import math
import os
import random
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
from utils.distributed import DistributedContext, all_reduce_sum, init_distributed, shutdown
from utils.errors import UserError
from utils.export import ENCODINGS, export_packed, is_packed_file, load_packed
from utils.logging import TensorBoardLog, make_logger, plot_curves, write_json

RECIPES = {
    "cifar": dict(epochs=200, optimizer="SGD", learning_rate=0.1, decay=3e-4, batch_size=128,
                  schedule=[80, 120, 160], gammas=[0.1, 0.1, 0.5]),
    "imagenet": dict(epochs=50, optimizer="Adam", learning_rate=1e-4, decay=5e-6, batch_size=256,
                     schedule=[30, 40, 45], gammas=[0.2, 0.2, 0.5]),
    "small": dict(epochs=20, optimizer="SGD", learning_rate=0.1, decay=3e-4, batch_size=128,
                  schedule=[8, 12, 16], gammas=[0.1, 0.1, 0.5]),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    run.add_argument("--save_path", default=None, help="output folder (default: save/DATASET_ARCH)")
    run.add_argument("--resume", default=None, metavar="PATH", help="checkpoint to resume training or to evaluate")
    run.add_argument("--start_epoch", type=int, default=0, help="first epoch when not resuming a full checkpoint")
    run.add_argument("--evaluate", action="store_true", help="evaluate on the test/val split and exit")
    run.add_argument("--fine_tune", action="store_true", help="with --resume: load the weights only, restart training")
    run.add_argument("--model_only", action="store_true", help="save {state_dict} only in checkpoints")
    run.add_argument("--export", default=None, metavar="PATH",
                     help="write the model (after --resume/--pretrained) as a packed ternary file and exit")
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
    hw.add_argument("--channels_last", action="store_true", help="NHWC memory format for convolutions (GPUs)")
    hw.add_argument("--compile", action="store_true", help="torch.compile the model")
    hw.add_argument("--sync_bn", action="store_true", help="with torchrun: SyncBatchNorm across processes")
    args = parser.parse_args(argv)
    return apply_recipe(args)


def apply_recipe(args: argparse.Namespace) -> argparse.Namespace:
    recipe = RECIPES[dataset_info(args.dataset).family]
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
        args.save_path = os.path.join("save", f"{args.dataset}_{args.arch}{'_eval' if args.evaluate else ''}")
    return args


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


def build_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    info = dataset_info(args.dataset)
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


def load_packed_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """The network of a packed .tern file, checked against the data set."""
    model = load_packed(args.resume)
    info, config = dataset_info(args.dataset), model.build_config
    if (config["num_classes"], config["in_channels"]) != (info.num_classes, info.in_channels):
        raise UserError(f"{args.resume} was built for {config['num_classes']} classes and {config['in_channels']} "
                        f"input channels, {args.dataset} has {info.num_classes} and {info.in_channels}")
    args.arch = config["arch"]
    return model.to(device)


def model_report(args: argparse.Namespace, model: nn.Module, packed_bytes: int | None = None) -> dict:
    info = dataset_info(args.dataset)
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


def check_finite(loss: float, epoch: int) -> None:
    if not math.isfinite(loss):
        raise UserError(f"training loss became {loss} in epoch {epoch + 1}; stopped without saving "
                        "(model_best.pth.tar is intact). Try a lower --learning_rate.")


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    device: torch.device, epoch: int, args: argparse.Namespace, logger,
                    show_progress: bool = True) -> dict[str, float]:
    """One epoch. The step never waits for the device: metrics stay on it and are read
    (and checked for NaN) every --print_freq steps and at the end."""
    model.train()
    if args.auto_thresholds and not args.threshold_every:
        models.optimize_model_thresholds(unwrap(model))
    metrics = Metrics(device)
    progress = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False,
                    disable=None if show_progress else True, dynamic_ncols=True)
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
        if step % args.print_freq == 0:
            summary = metrics.summary()
            check_finite(summary["loss"], epoch)
            progress.set_postfix(loss=f"{summary['loss']:.3f}", top1=f"{summary['top1']:.1f}")
            logger.info(f"  epoch {epoch + 1} step {step}/{len(loader)}  loss {summary['loss']:.4f}  "
                        f"top1 {summary['top1']:.2f}")
    summary = metrics.summary()
    check_finite(summary["loss"], epoch)
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


def rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]], "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))


def resume(args: argparse.Namespace, model: nn.Module, optimizer, scheduler, logger) -> tuple[int, float, list]:
    """Load --resume. Returns (start epoch, best top-1, history)."""
    checkpoint = load_checkpoint(args.resume)
    load_weights(unwrap(model), extract_state_dict(checkpoint), source=args.resume)
    if checkpoint.get("tfactors"):
        try:
            models.set_layer_tfactors(unwrap(model), checkpoint["tfactors"])
        except ValueError as exc:
            raise UserError(f"{args.resume}: {exc}") from exc
    full = all(k in checkpoint for k in ("epoch", "optimizer", "scheduler", "history"))
    if args.evaluate or args.fine_tune or not full:
        reason = "weights only" if full else "weights only: the file holds no training state"
        logger.info(f"=> loaded {args.resume} ({reason})")
        return args.start_epoch, 0.0, []
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if "rng" in checkpoint:
        set_rng_state(checkpoint["rng"])
    logger.info(f"=> resumed {args.resume} at epoch {checkpoint['epoch']}")
    return checkpoint["epoch"], checkpoint.get("best_acc", 0.0), list(checkpoint["history"])


def run_summary(args: argparse.Namespace, model: nn.Module, report: dict, extra: dict) -> dict:
    """results.json: the model's statistics come from the compression report, which sees
    live ternary layers and ones loaded from a packed file alike."""
    return {"arch": args.arch, "dataset": args.dataset, "params": sum(p.numel() for p in model.parameters()),
            "ternary_layers": report["ternary_layers"], "sparsity": report["ternary_sparsity"],
            "weight_compression": report["weight_compression"],
            "threshold_factors": getattr(model, "packed_tfactors", None) or models.layer_tfactors(model), **extra,
            "args": vars(args)}


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


def save_epoch(args: argparse.Namespace, model: nn.Module, optimizer, scheduler, history: list[dict],
               best_acc: float, is_best: bool, started: float) -> None:
    """Checkpoint, best model, curve and results.json after an epoch (main process only)."""
    epoch = history[-1]["epoch"]
    state = {"state_dict": model.state_dict(), "tfactors": models.layer_tfactors(model)}
    if not args.model_only:
        state.update(epoch=epoch, arch=args.arch, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                     best_acc=best_acc, history=history, args=vars(args), rng=rng_state())
    save_checkpoint(state, os.path.join(args.save_path, "checkpoint.pth.tar"))
    if is_best:
        save_checkpoint(state, os.path.join(args.save_path, "model_best.pth.tar"))
    plot_curves(history, os.path.join(args.save_path, "curve.png"), title=f"{args.arch} on {args.dataset}")
    if epoch < args.epochs:
        write_json(training_summary(args, model, model_report(args, model), history, started, "running"),
                   os.path.join(args.save_path, "results.json"))


def run(args: argparse.Namespace) -> None:
    started = time.time()
    device, context = select_rank_device(args)
    if context.is_main:
        os.makedirs(args.save_path, exist_ok=True)
    logger = make_logger(args.save_path if context.is_main else None, quiet=not context.is_main)
    seed_everything(args.manualSeed)
    logger.info(f"{args.arch} on {args.dataset}, device {device}"
                + (f", {context.world_size} processes" if context.enabled else "") + f", saving to {args.save_path}")

    packed = bool(args.resume) and os.path.isfile(args.resume) and is_packed_file(args.resume)
    if packed and not args.evaluate:
        raise UserError(f"{args.resume} is a packed inference file: use it with --evaluate")
    model = load_packed_model(args, device) if packed else build_model(args, device)
    optimizer = make_optimizer(args, model)
    scheduler = make_scheduler(args, optimizer)
    start_epoch, best_acc, history = args.start_epoch, 0.0, []
    if args.resume and not packed:
        start_epoch, best_acc, history = resume(args, model, optimizer, scheduler, logger)

    if args.export:
        if context.is_main:
            size = export_packed(model, args.export, args.export_encoding)
            logger.info(f"=> wrote {args.export} ({size:,} bytes, {args.export_encoding} encoding)")
            report_compression(args, model, size, logger)
        return
    model = prepare_model(args, model, device, context)

    train_loader, test_loader = build_loaders(args.dataset, args.data_path, args.batch_size, device,
                                              seed=args.manualSeed, workers=args.workers, subset=args.subset,
                                              include_train=not args.evaluate, rank=context.rank,
                                              world_size=context.world_size)
    logger.info(f"{sum(p.numel() for p in model.parameters()):,} parameters; {test_loader.dataset_size} test images"
                + (f", {train_loader.dataset_size} train images" if train_loader else ""))
    if args.evaluate:
        run_evaluation(args, model, test_loader, device, context, packed, logger, started)
        return

    scaler = torch.amp.GradScaler(device.type, enabled=args.amp and args.amp_dtype == "float16")
    tensorboard = TensorBoardLog(args.save_path) if context.is_main else None
    for epoch in range(start_epoch, args.epochs):
        epoch_start = time.time()
        train_loader.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        train = train_one_epoch(model, train_loader, optimizer, scaler, device, epoch, args, logger, context.is_main)
        val = evaluate(model, test_loader, device, args, context.is_main)
        scheduler.step()
        is_best = val["top1"] > best_acc
        best_acc = max(best_acc, val["top1"])
        record = {"epoch": epoch + 1, "lr": lr, "time_s": time.time() - epoch_start,
                  **{f"train_{k}": v for k, v in train.items()}, **{f"val_{k}": v for k, v in val.items()}}
        history.append(record)
        logger.info(f"epoch {epoch + 1:3d}/{args.epochs}  lr {lr:.2e}  train loss {train['loss']:.4f} "
                    f"top1 {train['top1']:6.2f} | val loss {val['loss']:.4f} top1 {val['top1']:6.2f} "
                    f"top5 {val['top5']:6.2f} | best {best_acc:6.2f} | {record['time_s']:.1f}s")
        if context.is_main:
            save_epoch(args, unwrap(model), optimizer, scheduler, history, best_acc, is_best, started)
            tensorboard.epoch(epoch, record, unwrap(model))
    if not context.is_main:
        return
    tensorboard.close()
    report = report_compression(args, unwrap(model), None, logger)
    summary = training_summary(args, unwrap(model), report, history, started, "complete")
    summary["world_size"] = context.world_size
    write_json(summary, os.path.join(args.save_path, "results.json"))
    final = history[-1] if history else {}
    logger.info(f"done: best top1 {best_acc:.2f}, final top1 {final.get('val_top1', float('nan')):.2f}, "
                f"sparsity {100 * summary['sparsity']:.2f}%, {summary['wall_time_s']:.0f}s")


def main(argv: list[str] | None = None) -> int:
    try:
        run(parse_args(argv))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
