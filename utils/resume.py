"""Continuing a run from its checkpoint: this project's files (bit-exact: weights,
optimizer, lr schedule, random-number state, history) and the authors' reference files
(weights, epoch and optimizer state; their REL bias rule).

A resumed run keeps the settings it was started with: flags left unset take the
checkpoint's values, a flag set to a different value is refused (--epochs may change,
to train longer or shorter), so results.json never records one thing while the run
does another. Where the data is and how fast it runs (--data_path, --amp, ...) are taken
from the checkpoint too when not given, and may change.
"""
from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import is_reference_checkpoint, restore_model
from .errors import UserError

# Flags that define the experiment; the dest of `auto_thresholds` is set by --tfactors.
RUN_DEFINING = ("dataset", "arch", "tex", "tfactors", "auto_thresholds", "threshold_every", "first_last",
                "optimizer", "learning_rate", "momentum", "decay", "batch_size", "schedule", "gammas", "manualSeed",
                "subset")
_FLAG_OF = {"auto_thresholds": "tfactors"}
# Flags a resumed run takes from the checkpoint when not given, and may change.
CARRIED_OVER = ("data_path", "amp", "amp_dtype", "channels_last", "model_only", "print_freq", "workers")


@dataclass
class TrainingState:
    start_epoch: int = 0
    best_acc: float = 0.0
    best_epoch: int | None = None
    history: list = field(default_factory=list)


def adopt_checkpoint_args(args: argparse.Namespace, checkpoint: dict, log: Callable[[str], None]) -> None:
    """Make `args` the resumed run's settings (see the module docstring)."""
    saved = checkpoint.get("args")
    if not isinstance(saved, dict):
        return
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
    if "epochs" in explicit and saved.get("epochs") not in (None, args.epochs):
        log(f"=> --epochs {args.epochs}: the run was started for {saved['epochs']} epochs")
    elif "epochs" in saved:
        args.epochs = saved["epochs"]


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


def load_optimizer_state(args: argparse.Namespace, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """optimizer.load_state_dict, refused with a clear error when the file's optimizer is
    another kind or has other parameters."""
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not groups or not isinstance(groups[0], dict):
        raise UserError(f"{args.resume}: the optimizer state is damaged")
    saved_kind = "Adam" if "betas" in groups[0] else "SGD" if "momentum" in groups[0] else "unknown"
    if saved_kind != args.optimizer:
        raise UserError(f"{args.resume} was trained with the {saved_kind} optimizer; resume it with "
                        f"--optimizer {saved_kind} (or use --fine_tune to restart from its weights)")
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{args.resume}: the optimizer state does not fit this model ({exc})") from exc


def resume(args: argparse.Namespace, checkpoint: dict, model: nn.Module, optimizer, scheduler,
           log: Callable[[str], None]) -> TrainingState:
    """Load --resume into the model (always) and the training state (unless --evaluate,
    --export or --fine_tune). A damaged training state is a UserError naming what is wrong."""
    reference_bias = restore_model(model, checkpoint, args.resume)
    if reference_bias:
        log(f"=> {args.resume} is a reference checkpoint: REL layers {', '.join(reference_bias)} add their bias "
            "once per branch, as the reference does")
    if args.evaluate or args.fine_tune or args.export:
        log(f"=> loaded {args.resume} (weights only)")
        return TrainingState(args.start_epoch)
    try:
        if is_reference_checkpoint(checkpoint):
            return _resume_reference(args, checkpoint, optimizer, scheduler, log)
        if not all(k in checkpoint for k in ("epoch", "optimizer", "scheduler", "history")):
            log(f"=> loaded {args.resume} (weights only: the file holds no training state)")
            return TrainingState(args.start_epoch)
        load_optimizer_state(args, optimizer, checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if "rng" in checkpoint:
            set_rng_state(checkpoint["rng"])
        state = TrainingState(int(checkpoint["epoch"]), float(checkpoint.get("best_acc", 0.0)),
                              checkpoint.get("best_epoch"), list(checkpoint["history"]))
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        raise UserError(f"{args.resume}: its training state is damaged ({type(exc).__name__}: {exc})") from None
    if len(state.history) != state.start_epoch:
        raise UserError(f"{args.resume}: its training state is damaged (epoch {state.start_epoch} but "
                        f"{len(state.history)} epochs of history)")
    log(f"=> resumed {args.resume} at epoch {state.start_epoch}")
    return state


def _resume_reference(args: argparse.Namespace, checkpoint: dict, optimizer, scheduler,
                      log: Callable[[str], None]) -> TrainingState:
    """Continue a run of the authors' code: its epoch, its optimizer state (momentum
    buffers; the parameter order is the same), the lr schedule placed at that epoch, and
    the best accuracy its recorder holds. Their curves are not converted."""
    if not all(k in checkpoint for k in ("epoch", "optimizer")):
        log(f"=> loaded {args.resume} (weights only: the reference file holds no epoch and optimizer)")
        return TrainingState(args.start_epoch)
    epoch = int(checkpoint["epoch"])
    load_optimizer_state(args, optimizer, checkpoint["optimizer"])
    factor = scheduler.lr_lambdas[0](epoch)
    for group in optimizer.param_groups:  # the command line's hyper-parameters, the file's buffers
        group.update(initial_lr=args.learning_rate, lr=args.learning_rate * factor, weight_decay=args.decay)
        if args.optimizer == "SGD":
            group.update(momentum=args.momentum, nesterov=True)
    scheduler.base_lrs = [args.learning_rate] * len(optimizer.param_groups)
    scheduler.last_epoch = epoch
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    accuracy = getattr(checkpoint.get("recorder"), "epoch_accuracy", None)
    best = float(np.max(accuracy[:epoch, 1])) if isinstance(accuracy, np.ndarray) and accuracy.ndim == 2 and epoch else 0.0
    log(f"=> resumed reference checkpoint {args.resume} at epoch {epoch}: restored the weights, the optimizer state "
        f"(momentum buffers), lr {args.learning_rate * factor:.2e} from the schedule"
        + (f" and best top-1 {best:.2f} from its recorder" if best else "")
        + "; not restored: its training curves and random-number state")
    return TrainingState(epoch, best)
