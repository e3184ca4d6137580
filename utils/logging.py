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
            labels = layer.strategy.scale_names or [f"branch{k}" for k in range(len(stats["alphas"]))]
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


def run_title(arch: str, dataset: str, args: dict, epochs: int | None) -> str:
    """What a curve shows, in its title: network, quantizer and REL, data set, length, seed, precision."""
    parts = [arch]
    if args.get("tex") and args["tex"] > 1:
        parts.append(f"REL t_ex={args['tex']}")
    if arch.startswith("tern_") or args.get("tex") or args.get("tfactors") or args.get("auto_thresholds"):
        parts.append(f"{args.get('quantizer') or 'paper'} quantizer" + (", auto thresholds"
                                                                        if args.get("auto_thresholds") else ""))
    if args.get("first_last"):
        parts.append(f"first/last {args['first_last']}")
    data = dataset + (f" ({os.path.basename(os.path.normpath(args['data_path']))})"
                      if dataset in ("cifar10", "cifar100", "folder") and args.get("data_path") else "")
    if args.get("subset"):
        data += f", subset {args['subset']}"
    precision = "bf16" if args.get("amp") else "fp32"
    return f"{' · '.join(parts)}\n{data} · {epochs} epochs · seed {args.get('manualSeed')} · {precision}"


def plot_curves(history: list[dict], path: str, title: str = "") -> None:
    """Two panels per epoch, written atomically as a PNG: top-1 (train, validation; the
    best validation epoch marked) and loss (log scale, plain-number ticks)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    epochs = [r["epoch"] for r in history]
    marker = "o" if len(epochs) < 30 else None  # a line needs two points: short runs show each epoch as a dot
    fig, (acc_axis, loss_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, metric, label in ((acc_axis, "top1", "top-1 (%)"), (loss_axis, "loss", "cross-entropy loss")):
        axis.plot(epochs, [r[f"train_{metric}"] for r in history], color="tab:blue", marker=marker, label="train")
        axis.plot(epochs, [r[f"val_{metric}"] for r in history], color="tab:red", marker=marker, lw=2,
                  label="validation")
        axis.set(xlabel="epoch", ylabel=label)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axis.grid(alpha=0.3)
        if epochs:
            axis.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)  # whole epochs only, even for a 1-epoch run
    if history:
        best = max(history, key=lambda r: r["val_top1"])
        acc_axis.annotate(f"best {best['val_top1']:.2f} (epoch {best['epoch']})", (best["epoch"], best["val_top1"]),
                          textcoords="offset points", xytext=(-10, -22), ha="right", color="tab:red",
                          arrowprops=dict(arrowstyle="-", color="tab:red"))
    loss_axis.set_yscale("log")
    loss_axis.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    loss_axis.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    acc_axis.legend(loc="lower right")
    fig.suptitle(title, fontsize=10)
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
