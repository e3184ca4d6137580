"""What a run logs besides checkpoints and results.json: log.txt (and the console),
TensorBoard scalars in tb_log/ and the curve.png plot."""
from __future__ import annotations

import logging
import os
import sys

import torch.nn as nn

from models.ternary import layer_stats, ternary_layers

from .errors import write_error
from .files import atomic_write


class LogFileHandler(logging.FileHandler):
    """log.txt; when it cannot be written (full disk, folder gone) it says so once on
    stderr and stops writing, instead of printing a traceback for every message."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not getattr(self, "failed", False):
            self.failed = True
            print(f"warning: cannot write {self.baseFilename} any more; logging to the console only", file=sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(self, "failed", False):
            super().emit(record)


def make_logger(save_path: str | None, name: str = "ternary", quiet: bool = False) -> logging.Logger:
    """A logger that prints to stdout and, with a save_path, appends to save_path/log.txt.
    quiet=True (the non-main processes of a distributed run) keeps warnings only."""
    logger = logging.getLogger(f"{name}.{save_path}")
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if save_path:
        try:
            handler = LogFileHandler(os.path.join(save_path, "log.txt"))
        except OSError as exc:
            raise write_error(os.path.join(save_path, "log.txt"), exc) from None
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logger.addHandler(handler)
    return logger


class TensorBoardLog:
    """tensorboardX scalars: loss/top-1/top-5 per split, learning rate, and per ternarized
    layer its sparsity and the α of each REL branch."""

    def __init__(self, save_path: str) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(os.path.join(save_path, "tb_log"))

    def epoch(self, epoch: int, record: dict, model: nn.Module) -> None:
        try:
            self._epoch(epoch, record, model)
        except OSError as exc:
            self.close()
            raise write_error(self.writer.logdir, exc) from None

    def _epoch(self, epoch: int, record: dict, model: nn.Module) -> None:
        step = record["epoch"]  # the epoch as the log counts it, from 1
        for split in ("train", "val"):
            for metric in ("loss", "top1", "top5"):
                key = f"{split}_{metric}"
                if key in record:
                    self.writer.add_scalar(f"{split}/{metric}", record[key], step)
        self.writer.add_scalar("lr", record["lr"], step)
        for name, layer in ternary_layers(model):
            stats = layer_stats(layer)
            self.writer.add_scalar(f"sparsity/{name}", stats["sparsity"], step)
            labels = ("positive", "negative") if stats["quantizer"] == "ttq" else [f"branch{k}" for k in range(len(stats["alphas"]))]
            for label, alpha in zip(labels, stats["alphas"]):
                self.writer.add_scalar(f"alpha/{name}/{label}", alpha, step)
        self.writer.flush()

    def close(self) -> None:
        """Close the event file; when that write fails too, mark it closed so tensorboardX's
        exit handler does not try again (and print a traceback)."""
        try:
            self.writer.close()
        except OSError:
            for file_writer in (self.writer.all_writers or {}).values():
                file_writer.event_writer._closed = True
            self.writer.all_writers = None


def plot_curves(history: list[dict], path: str, title: str = "") -> None:
    """Accuracy (left axis) and loss (right axis, log scale: a loss spike and the late
    small losses both stay readable) per epoch, train and val, as a PNG written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    marker = "o" if len(epochs) < 30 else None  # a line needs two points: short runs show each epoch as a dot
    fig, acc_axis = plt.subplots(figsize=(8, 5))
    loss_axis = acc_axis.twinx()
    acc_axis.plot(epochs, [r["train_top1"] for r in history], "g-", marker=marker, label="train top-1")
    acc_axis.plot(epochs, [r["val_top1"] for r in history], "y-", marker=marker, label="val top-1")
    loss_axis.plot(epochs, [r["train_loss"] for r in history], "g:", marker=marker, label="train loss")
    loss_axis.plot(epochs, [r["val_loss"] for r in history], "y:", marker=marker, label="val loss")
    acc_axis.set_xlabel("epoch")
    acc_axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if epochs:
        acc_axis.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)  # whole epochs only, even for a 1-epoch run
    acc_axis.set_ylabel("accuracy (%)")
    loss_axis.set_yscale("log")
    loss_axis.set_ylabel("loss (log scale)")
    acc_axis.set_ylim(0, 100)
    acc_axis.grid(alpha=0.3)
    handles = acc_axis.get_legend_handles_labels()[0] + loss_axis.get_legend_handles_labels()[0]
    acc_axis.legend(handles, [h.get_label() for h in handles], loc="center right")
    acc_axis.set_title(title)
    save_figure(fig, path, dpi=100)


def save_figure(fig, path: str, dpi: int) -> None:
    """Write a matplotlib figure as PNG atomically, then free it."""
    import matplotlib.pyplot as plt  # matplotlib is imported only where a figure is drawn

    fig.tight_layout()
    try:
        with atomic_write(path) as handle:
            fig.savefig(handle, format="png", dpi=dpi)
    finally:
        plt.close(fig)
