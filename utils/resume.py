"""Continuing a run from its checkpoint: this project's files (bit-exact: optimizer, lr
schedule, random-number state, history; the weights come with utils.model_loader) and
the authors' reference files (epoch and optimizer state).

A resumed run keeps the settings it was started with: flags left unset take the
checkpoint's values, a flag set to a different value is refused (--epochs may change,
to train longer or shorter), so results.json never records one thing while the run
does another. Where the data is and how fast it runs (--data_path, --amp, ...) are taken
from the checkpoint too when not given, and may change (main.py applies these rules).
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .checkpoint import is_reference_checkpoint
from .errors import UserError


@dataclass
class TrainingState:
    start_epoch: int = 0
    best_acc: float = 0.0
    best_epoch: int | None = None
    history: list = field(default_factory=list)
    wall_time_s: float = 0.0  # seconds the run took before this process, up to its last checkpoint


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


@dataclass(frozen=True)
class OptimizerSettings:
    """The command line's optimizer: its kind and hyper-parameters."""
    name: str  # "SGD" or "Adam"
    learning_rate: float
    momentum: float
    decay: float
    nesterov: bool = True


def load_optimizer_state(path: str, settings: OptimizerSettings, optimizer: torch.optim.Optimizer,
                         state: dict) -> None:
    """optimizer.load_state_dict, refused with a clear error when the file's optimizer is
    another kind or has other parameters."""
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not groups or not isinstance(groups[0], dict):
        raise UserError(f"{path}: the optimizer state is damaged")
    saved_kind = "Adam" if "betas" in groups[0] else "SGD" if "momentum" in groups[0] else "unknown"
    if saved_kind != settings.name:
        raise UserError(f"{path} was trained with the {saved_kind} optimizer; resume it with "
                        f"--optimizer {saved_kind} (or use --fine_tune to restart from its weights)")
    if len(groups) != len(optimizer.param_groups):
        raise UserError(f"{path}'s optimizer has {len(groups)} parameter group(s), this run's has "
                        f"{len(optimizer.param_groups)} groups, set by --decay_on and trained quantizer scales (one "
                        "group: --decay_on all, no trained scales, as the authors' code); resume it with the settings "
                        "it was trained with, or train on from its weights with --fine_tune")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: the optimizer state does not fit this model ({exc})") from exc


def resume_training(path: str, checkpoint: dict, settings: OptimizerSettings, optimizer: torch.optim.Optimizer,
                    scheduler, start_epoch: int, log: Callable[[str], None]) -> TrainingState:
    """The training state of a checkpoint whose weights are already in the model
    (utils.model_loader.load_model): optimizer, lr schedule, random-number state, epoch,
    best top-1 and history. A file of this project without one (weights only) is refused;
    a reference file without one starts at `start_epoch`. A damaged
    training state is a UserError naming what is wrong."""
    try:
        if is_reference_checkpoint(checkpoint):
            return _resume_reference(path, checkpoint, settings, optimizer, scheduler, start_epoch, log)
        if not all(k in checkpoint for k in ("epoch", "optimizer", "scheduler", "history")):
            raise UserError(f"{path} holds weights only (no training state, e.g. a --model_only checkpoint), so its "
                            f"schedule cannot continue: train on from it with --resume {path} --fine_tune "
                            "--save_path NEW_FOLDER, or evaluate it with --evaluate")
        load_optimizer_state(path, settings, optimizer, checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if "rng" in checkpoint:
            set_rng_state(checkpoint["rng"])
        state = TrainingState(int(checkpoint["epoch"]), float(checkpoint.get("best_acc", 0.0)),
                              checkpoint.get("best_epoch"), list(checkpoint["history"]),
                              float(checkpoint.get("wall_time_s", 0.0)))
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        raise UserError(f"{path}: its training state is damaged ({type(exc).__name__}: {exc})") from None
    if len(state.history) != state.start_epoch:
        raise UserError(f"{path}: its training state is damaged (epoch {state.start_epoch} but "
                        f"{len(state.history)} epochs of history)")
    log(f"=> resumed {path} at epoch {state.start_epoch}")
    return state


def _resume_reference(path: str, checkpoint: dict, settings: OptimizerSettings, optimizer, scheduler,
                      start_epoch: int, log: Callable[[str], None]) -> TrainingState:
    """Continue a run of the authors' code: its epoch, its optimizer state (momentum
    buffers; the parameter order is the same), the lr schedule placed at that epoch, and
    the best accuracy its recorder holds. Their curves are not converted."""
    if not all(k in checkpoint for k in ("epoch", "optimizer")):
        log(f"=> loaded {path} (weights only: the reference file holds no epoch and optimizer)")
        return TrainingState(start_epoch)
    epoch = int(checkpoint["epoch"])
    load_optimizer_state(path, settings, optimizer, checkpoint["optimizer"])
    factor = scheduler.lr_lambdas[0](epoch)
    for group in optimizer.param_groups:  # the command line's hyper-parameters, the file's buffers
        group.update(initial_lr=settings.learning_rate, lr=settings.learning_rate * factor,
                     weight_decay=settings.decay)
        if settings.name == "SGD":
            group.update(momentum=settings.momentum, nesterov=settings.nesterov)
    scheduler.base_lrs = [settings.learning_rate] * len(optimizer.param_groups)
    scheduler.last_epoch = epoch
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    accuracy = getattr(checkpoint.get("recorder"), "epoch_accuracy", None)
    best = float(np.max(accuracy[:epoch, 1])) if isinstance(accuracy, np.ndarray) and accuracy.ndim == 2 and epoch else 0.0
    log(f"=> resumed reference checkpoint {path} at epoch {epoch}: restored the weights, the optimizer state "
        f"(momentum buffers), lr {settings.learning_rate * factor:.2e} from the schedule"
        + (f" and best top-1 {best:.2f} from its recorder" if best else "")
        + "; not restored: its training curves and random-number state")
    return TrainingState(epoch, best)
