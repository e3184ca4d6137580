"""results.json: one shape for every mode (training, evaluation of a checkpoint, a packed
.tern file or an ONNX file), built here and nowhere else.

Every record has all of these keys (null where a mode has no value):

    mode            "train" or "evaluate"
    status          "running" (rewritten after every epoch), "complete", "interrupted", "failed"
    error           why an interrupted or failed run stopped
    arch, dataset   the network (null for an ONNX file, which does not name it) and the data set
    source          the evaluated file; format: "checkpoint", "packed" or "onnx" (null when training)
    precision       how batches were computed: fp32 / bf16 / fp16, "+channels_last"
    world_size      processes (torchrun)
    params, ternary_layers, sparsity, weight_compression, threshold_factors
                    the model's statistics (from utils.compression)
    top1, top5, loss
                    the last test measurement: the final epoch's, or the evaluation's
                    (top5 null with 5 classes or fewer, where it is always 100)
    epochs, epochs_done, best_top1, best_top5, best_epoch, final_top1, final_top5, history
                    training only: the schedule's length, the finished epochs, the best and
                    the last epoch, and one record per epoch
    wall_time_s     seconds the run took
    args            the command's arguments
"""
from __future__ import annotations

import time

import torch.nn as nn

from models import layer_tfactors


def model_statistics(model: nn.Module | None, report: dict | None) -> dict:
    """The model keys of a record; `report` is utils.compression.compression_report's."""
    if model is None or report is None:
        return {"params": None, "ternary_layers": None, "sparsity": None, "weight_compression": None,
                "threshold_factors": None}
    return {"params": sum(p.numel() for p in model.parameters()), "ternary_layers": report["ternary_layers"],
            "sparsity": report["ternary_sparsity"], "weight_compression": report["weight_compression"],
            "threshold_factors": getattr(model, "packed_tfactors", None) or layer_tfactors(model)}


def run_record(*, mode: str, status: str, arch: str | None, dataset: str, args: dict, started: float,
               statistics: dict, precision: str, world_size: int = 1, test: dict | None = None,
               source: str | None = None, file_format: str | None = None, epochs: int | None = None,
               history: list[dict] | None = None, error: str | None = None) -> dict:
    """One results.json record (see the module docstring). For training, `history` holds
    the finished epochs and `test` is taken from the last of them."""
    training = mode == "train"
    history = list(history or []) if training else None
    best = max(history, key=lambda r: r["val_top1"]) if history else {}
    final = history[-1] if history else {}
    if training and final:
        test = {"top1": final["val_top1"], "top5": final.get("val_top5"), "loss": final["val_loss"]}
    test = test or {}
    return {
        "mode": mode, "status": status, "error": error, "arch": arch, "dataset": dataset,
        "source": source, "format": file_format, "precision": precision, "world_size": world_size,
        **statistics,
        "top1": test.get("top1"), "top5": test.get("top5"), "loss": test.get("loss"),
        "epochs": epochs if training else None, "epochs_done": len(history) if training else None,
        "best_top1": best.get("val_top1"), "best_top5": best.get("val_top5"), "best_epoch": best.get("epoch"),
        "final_top1": final.get("val_top1"), "final_top5": final.get("val_top5"), "history": history,
        "wall_time_s": time.time() - started, "args": args,
    }
