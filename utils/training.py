"""The training loop: one epoch, the epochs of a run with
their checkpoints, curve and results.json, and how a run stops (signal, divergence).

    config = TrainConfig(save_path=..., epochs=..., arch=..., dataset=..., input_shape=..., args=...)
    fit(model, optimizer, scheduler, state, train_loader, test_loader, device, context, config, logger, stop, started)
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import models

from .checkpoint import load_checkpoint, save_checkpoint
from .compression import compression_report, format_report
from .distributed import DistributedContext, all_reduce_max, is_peer_failure, peer_failure
from .errors import UserError
from .evaluation import Metrics, evaluate, format_metrics
from .files import write_json
from .hardware import Precision, unwrap
from .logging import TensorBoardLog, plot_curves, run_title
from .resume import TrainingState, rng_state
from .results import model_statistics, run_record
from .signals import Interrupted, StopSignals


@dataclass
class TrainConfig:
    """What the loop needs of a run besides the model, data and optimizer."""
    save_path: str
    epochs: int
    arch: str
    dataset: str
    input_shape: tuple[int, int, int]  # (C, H, W) of the data set, for the compression report
    args: dict = field(default_factory=dict)  # the command's arguments, recorded in checkpoints and results.json
    precision: Precision = Precision()
    print_freq: int = 100
    auto_thresholds: bool = False  # --tfactors auto: re-optimise the thresholds ...
    threshold_every: int = 0  # ... every N steps (0: at every epoch start)
    model_only: bool = False  # checkpoints hold {state_dict} only
    preprocessing: dict | None = None  # data set, input shape, mean/std, class names (utils.data.preprocessing_record)

    def path(self, name: str) -> str:
        return os.path.join(self.save_path, name)


def check_finite(loss: float, what: str, epoch: int, save_path: str) -> None:
    """Stop a diverged run before anything of it is saved."""
    if math.isfinite(loss):
        return
    best = os.path.join(save_path, "model_best.pth.tar")
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
                    device: torch.device, epoch: int, config: TrainConfig, logger: logging.Logger,
                    stop: StopSignals, context: DistributedContext) -> dict[str, float]:
    """One epoch. The step never waits for the device: metrics stay on it and are read
    (and checked for NaN) every print_freq steps and at the end. A stop signal ends the
    epoch after the current step (checked every step in a single process, every
    print_freq steps across a distributed run) by raising Interrupted."""
    model.train()
    if config.auto_thresholds and not config.threshold_every:
        models.optimize_model_thresholds(unwrap(model))
    metrics = Metrics(device)
    progress = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                    disable=None if context.is_main else True, dynamic_ncols=True)
    for step, (images, target) in enumerate(progress, 1):
        images, target = config.precision.to_device(images, target, device)
        with config.precision.autocast(device):
            logits = model(images)
            loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        metrics.update(loss.detach(), logits.detach(), target)
        if config.auto_thresholds and config.threshold_every and step % config.threshold_every == 0:
            models.optimize_model_thresholds(unwrap(model))
        if not context.enabled and stop.requested:
            raise Interrupted(stop.requested, epoch + 1)
        if step % config.print_freq == 0:
            summary = metrics.summary()
            check_finite(summary["loss"], "training", epoch, config.save_path)
            signum = stop_requested(stop, context, device)
            if signum:
                raise Interrupted(signum, epoch + 1)
            progress.set_postfix(loss=f"{summary['loss']:.3f}", top1=f"{summary['top1']:.1f}")
            logger.info(f"  epoch {epoch + 1} step {step}/{len(loader)}  loss {summary['loss']:.4f}  "
                        f"top1 {summary['top1']:.2f}")
    summary = metrics.summary()
    check_finite(summary["loss"], "training", epoch, config.save_path)
    return summary


def training_record(config: TrainConfig, model: nn.Module, history: list[dict], started: float, status: str,
                    world_size: int, report: dict | None = None, error: str | None = None) -> dict:
    """results.json of a training run: status "running" until the last epoch is done,
    then "complete" (or "interrupted" / "failed")."""
    report = report or compression_report(model, config.input_shape)
    return run_record(mode="train", status=status, arch=config.arch, dataset=config.dataset, args=config.args,
                      started=started, statistics=model_statistics(model, report), precision=config.precision.name,
                      world_size=world_size, epochs=config.epochs, history=history, error=error)


def save_epoch(config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
               history: list[dict], best: tuple[float, int | None], is_best: bool, started: float,
               world_size: int) -> None:
    """Best model, checkpoint, curve and results.json after an epoch (main process only).
    The best model is written first: a kill between the two files leaves a checkpoint
    one epoch older, whose resumed run recomputes the same epoch."""
    epoch = history[-1]["epoch"]
    state = {"state_dict": model.state_dict(), "tfactors": models.layer_tfactors(model),
             "bias_copies": models.layer_bias_copies(model), "preprocessing": config.preprocessing}
    if not config.model_only:
        state.update(epoch=epoch, arch=config.arch, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                     best_acc=best[0], best_epoch=best[1], history=history, args=config.args, rng=rng_state(),
                     world_size=world_size, wall_time_s=time.time() - started)
    if is_best:
        save_checkpoint(state, config.path("model_best.pth.tar"))
    save_checkpoint(state, config.path("checkpoint.pth.tar"))
    plot_curves(history, config.path("curve.png"), title=run_title(config.arch, config.dataset, config.args,
                                                                    config.epochs))
    if epoch < config.epochs:
        write_json(config.path("results.json"), training_record(config, model, history, started, "running", world_size))


def repair_best_model(save_path: str, checkpoint: dict, log) -> None:
    """A run killed between its checkpoint and model_best (as older versions wrote them)
    has a model_best older than the checkpoint's best epoch: when the checkpoint itself is
    the best epoch, write model_best from it again. A model_best at a later epoch than
    the checkpoint (a kill between model_best and the checkpoint, the order save_epoch
    writes them in) is newer, not behind: it is kept, and the resumed run recomputes
    that epoch bit for bit."""
    best_epoch, epoch = checkpoint.get("best_epoch"), checkpoint.get("epoch")
    path = os.path.join(save_path, "model_best.pth.tar")
    if best_epoch is None or best_epoch != epoch:
        return
    saved_epoch = load_checkpoint(path).get("epoch") if os.path.isfile(path) else None
    if saved_epoch is None or (isinstance(saved_epoch, int) and saved_epoch < best_epoch):
        save_checkpoint(checkpoint, path)
        held = "it was missing" if saved_epoch is None else f"it held epoch {saved_epoch}"
        log(f"=> rewrote {path} from epoch {best_epoch} ({held})")


def launcher(world_size: int) -> str:
    """The command that starts main.py with `world_size` processes, as a resume must."""
    if world_size == 1:
        return "python main.py"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    nodes = world_size // per_node
    return (f"torchrun --nproc_per_node {per_node}" + (f" --nnodes {nodes} (with your rendezvous flags)"
                                                       if nodes > 1 else "") + " main.py")


def resume_hint(config: TrainConfig, history: list[dict], world_size: int = 1) -> str:
    """What a stopped run can do next, given the epochs it saved."""
    checkpoint = config.path("checkpoint.pth.tar")
    if not history:
        return "no epoch finished, nothing to resume; start the run again"
    if config.model_only:
        return (f"epoch {history[-1]['epoch']}'s weights are saved in {checkpoint} without training state "
                f"(--model_only): evaluate them with --evaluate --resume {checkpoint}, or train on from them "
                f"with --resume {checkpoint} --fine_tune --save_path NEW_FOLDER")
    return f"epoch {history[-1]['epoch']} is saved; continue with: {launcher(world_size)} --resume {checkpoint}"


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, state: TrainingState, train_loader,
        test_loader, device: torch.device, context: DistributedContext, config: TrainConfig,
        logger: logging.Logger, stop: StopSignals, started: float) -> None:
    """The epochs from state.start_epoch on. A stop signal or a failure marks results.json
    ("interrupted" / "failed") before it propagates; only complete epochs are ever saved."""
    precision = config.precision
    scaler = torch.amp.GradScaler(device.type, enabled=precision.amp and precision.amp_dtype == "float16")
    tensorboard = TensorBoardLog(config.save_path) if context.is_main else None
    history, best = state.history, (state.best_acc, state.best_epoch)
    saved = len(history)  # the epochs whose files are written: what a record of a stopped run describes
    started -= state.wall_time_s  # wall_time_s counts the earlier processes of a resumed run too
    try:
        for epoch in range(state.start_epoch, config.epochs):
            signum = stop_requested(stop, context, device)
            if signum:  # a signal during the last save, or before the first epoch
                raise Interrupted(signum, epoch + 1)
            epoch_start = time.time()
            train_loader.set_epoch(epoch)
            lr = optimizer.param_groups[0]["lr"]
            train_metrics = train_one_epoch(model, train_loader, optimizer, scaler, device, epoch, config, logger,
                                            stop, context)
            val = evaluate(model, test_loader, device, precision, context.is_main)
            check_finite(val["loss"], "validation", epoch, config.save_path)
            scheduler.step()
            is_best = val["top1"] > best[0]
            best = (val["top1"], epoch + 1) if is_best else best
            record = {"epoch": epoch + 1, "lr": lr, "time_s": time.time() - epoch_start, "precision": precision.name,
                      **{f"train_{k}": v for k, v in train_metrics.items()}, **{f"val_{k}": v for k, v in val.items()}}
            history.append(record)
            logger.info(f"epoch {epoch + 1:3d}/{config.epochs}  lr {lr:.2e}  train loss {train_metrics['loss']:.4f} "
                        f"top1 {train_metrics['top1']:6.2f} | val loss {val['loss']:.4f} "
                        f"{format_metrics(val, 'top1', 'top5', 6, ' ')} | best {best[0]:6.2f} | "
                        f"{record['time_s']:.1f}s")
            if context.is_main:
                save_epoch(config, unwrap(model), optimizer, scheduler, history, best, is_best, started,
                           context.world_size)
            saved = len(history)
            if context.is_main:
                tensorboard.epoch(epoch, record, unwrap(model))
    except (Interrupted, UserError, KeyboardInterrupt, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not (context.enabled and is_peer_failure(exc)):
            raise
        failure = peer_failure(exc) if isinstance(exc, RuntimeError) else exc
        if context.is_main:
            tensorboard.close()
            status = "interrupted" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "failed"
            with contextlib.suppress(UserError):
                write_json(config.path("results.json"),
                           training_record(config, unwrap(model), history[:saved], started, status,
                                           context.world_size, error=str(failure) or type(exc).__name__))
        if isinstance(exc, Interrupted):
            exc.resume_hint = resume_hint(config, history[:saved], context.world_size)
            exc.quiet = not context.is_main  # one line per run, from the main process
        if failure is not exc:
            raise failure from None
        raise
    if not context.is_main:
        return
    tensorboard.close()
    report = compression_report(unwrap(model), config.input_shape)
    logger.info(format_report(report))
    write_json(config.path("compression.json"), report)
    summary = training_record(config, unwrap(model), history, started, "complete", context.world_size, report)
    write_json(config.path("results.json"), summary)
    final = history[-1] if history else {}
    logger.info(f"done: best top1 {best[0]:.2f}, final top1 {final.get('val_top1', float('nan')):.2f}, "
                f"sparsity {100 * summary['sparsity']:.2f}%, {summary['wall_time_s']:.0f}s")
