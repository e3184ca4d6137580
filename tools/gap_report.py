"""Why a ternarized run trails its full-precision twin: three checks on two finished runs.

    python -m tools.gap_report save/cifar10/fp_resnet20_e40_seed5000 save/cifar10/tern_resnet20_e40_seed5000 \\
        --dataset cifar10 --data_path data/cifar10-jpeg

1. the straight-through estimator's clip: the share of latent weights with |W| ≥ 1, where
   no gradient passes;
2. BatchNorm's stored statistics: test top-1 of model_best as saved and after recomputing
   the running statistics on --calibration un-augmented training images;
3. the schedule: validation top-1, training loss and training top-1 of both runs at
   equal epochs (from results.json), which tells under- from overfitting.
"""
from __future__ import annotations

import os

import torch
import torch.nn as nn

from utils.cli import command, command_parser, positive_int, read_json
from utils.data import build_loaders, dataset_info
from utils.errors import UserError
from utils.evaluation import evaluate
from utils.model_loader import load_model


def recompute_batchnorm(model: nn.Module, images: torch.Tensor, batch: int = 500) -> nn.Module:
    """Running mean/var of every BatchNorm as the exact average over `images` (normalised)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            model(images[start:start + batch])
    return model.eval()


def run_histories(folders: list[str]) -> list[list[dict]]:
    """The per-epoch history of each finished run folder, checked before any data is read."""
    histories = []
    for folder in folders:
        if not os.path.isdir(folder):
            raise UserError(f"no such run folder: {folder}")
        if not os.path.isfile(os.path.join(folder, "model_best.pth.tar")):
            raise UserError(f"{folder} holds no trained model (model_best.pth.tar); give a training run's folder")
        record = read_json(os.path.join(folder, "results.json"), "run record")
        history = record.get("history") if isinstance(record, dict) else None
        if record.get("mode", "train") != "train" or not isinstance(history, list) or not history:
            raise UserError(f"{folder}/results.json records no training epochs; give a training run's folder")
        histories.append(history)
    return histories


@command
def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("full_precision", help="folder of the full-precision run")
    parser.add_argument("ternarized", help="folder of the ternarized run")
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data_path", default="./data/cifar10")
    parser.add_argument("--calibration", type=positive_int, default=20000,
                        help="training images for recomputing BatchNorm")
    args = parser.parse_args(argv)
    histories = run_histories([args.full_precision, args.ternarized])
    info = dataset_info(args.dataset, args.data_path)
    train, test = build_loaders(args.dataset, args.data_path, info, 500, torch.device("cpu"), seed=0)
    clean = (train.images[:args.calibration].float() - train.mean) / train.std
    for label, folder in (("full precision", args.full_precision), ("ternarized", args.ternarized)):
        loaded = load_model(os.path.join(folder, "model_best.pth.tar"), info, args.dataset)
        model, checkpoint = loaded.model, loaded.checkpoint
        weights = [p.detach() for p in model.parameters() if p.dim() > 1]
        clipped = sum(int((w.abs() >= 1).sum()) for w in weights) / sum(w.numel() for w in weights)
        print(f"{label}: model_best from epoch {checkpoint.get('epoch')}: test top-1 {evaluate(model, test)['top1']:.2f}; "
              f"latent weights with |W| >= 1: {100 * clipped:.4f}%; after recomputing BatchNorm statistics on "
              f"{len(clean)} training images: {evaluate(recompute_batchnorm(model, clean), test)['top1']:.2f}")
    print("| epoch | val top-1 FP | val top-1 tern | gap | train loss FP | train loss tern | train top-1 FP | train top-1 tern |")
    print("|---|---|---|---|---|---|---|---|")
    epochs = min(len(h) for h in histories)
    for epoch in sorted({*range(4, epochs, max(1, epochs // 10)), epochs - 1}):
        fp, tern = histories[0][epoch], histories[1][epoch]
        print(f"| {epoch + 1} | {fp['val_top1']:.2f} | {tern['val_top1']:.2f} | {fp['val_top1'] - tern['val_top1']:+.2f} | "
              f"{fp['train_loss']:.4f} | {tern['train_loss']:.4f} | {fp['train_top1']:.2f} | {tern['train_top1']:.2f} |")


if __name__ == "__main__":
    raise SystemExit(main())
