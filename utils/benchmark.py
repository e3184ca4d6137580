"""Speed benchmark: full precision vs ternarized vs REL, measured in one run.

    python -m utils.benchmark                      # ResNet-20, batch 128, 32×32, CPU
    python -m utils.benchmark --arch resnet18 --batch_size 16 --image_size 224

Prints the median time of a training step (forward, backward, SGD step) and of an
eval forward (after training, on unchanged weights, as in real evaluation), and their
ratios to full precision. The variants are interleaved round-robin so that drift in
machine load hits all of them alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

from models import ARCHS, get_model

VARIANTS = {"full precision": None, "ternary": 1, "REL t_ex=2": 2, "REL t_ex=4": 4}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


@torch.no_grad()
def _eval_step(model: nn.Module, x: torch.Tensor) -> None:
    model(x)


def _timed(fn, device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def benchmark(arch: str, batch_size: int, image_size: int, repeats: int, warmup: int,
              device: torch.device) -> dict[str, dict[str, float]]:
    """Median seconds per train step and per eval forward for each variant of `arch`."""
    num_classes = 10 if ARCHS[arch].family == "cifar" else 1000
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    y = torch.randint(0, num_classes, (batch_size,), device=device)
    runs = {}
    for name, tex in VARIANTS.items():
        torch.manual_seed(0)
        model = get_model(arch, num_classes=num_classes, tex=tex).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        runs[name] = (model, optimizer)
    train = _round_robin(runs, lambda model, opt: _train_step(model.train(), opt, x, y), repeats, warmup, device)
    evaluation = _round_robin(runs, lambda model, opt: _eval_step(model.eval(), x), repeats, warmup, device)
    return {name: {"train": train[name], "eval": evaluation[name]} for name in runs}


def _round_robin(runs: dict, step, repeats: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds of `step(model, optimizer)` per variant, variants interleaved."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(warmup + repeats):
        for name, (model, optimizer) in runs.items():
            elapsed = _timed(lambda: step(model, optimizer), device)
            if i >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def format_table(results: dict[str, dict[str, float]], batch_size: int) -> str:
    base = results["full precision"]
    lines = ["| variant | train step (ms) | train ratio | eval (ms) | eval ratio | train img/s | eval img/s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {1000 * r['train']:.1f} | {r['train'] / base['train']:.3f}× | "
                     f"{1000 * r['eval']:.1f} | {r['eval'] / base['eval']:.3f}× | "
                     f"{batch_size / r['train']:.0f} | {batch_size / r['eval']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet20", help="full-precision arch to compare against its ternary twins")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = benchmark(args.arch, args.batch_size, args.image_size, args.repeats, args.warmup, device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.arch}, batch {args.batch_size}, {args.image_size}×{args.image_size}, {where}, "
          f"median of {args.repeats} steps, torch {torch.__version__}")
    print(format_table(results, args.batch_size))


if __name__ == "__main__":
    main()
