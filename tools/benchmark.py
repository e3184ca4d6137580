"""Speed and memory benchmark: full precision vs ternarized vs REL, measured in one run.

    python -m tools.benchmark                                   # ResNet-20 (32×32, batch 128) and ResNet-18 (224×224, batch 16)
    python -m tools.benchmark --models resnet20:128:32 --repeats 30
    python -m tools.benchmark --device cuda                     # on a GPU
    python -m tools.benchmark --modes_only                      # only the precision / memory-format / compile table

For each model (ARCH:BATCH:IMAGE_SIZE) it prints the median time of a training step
(forward, backward, SGD step) and of an eval forward (after training, on unchanged
weights, as in real evaluation), images/s, ratios to full precision and the peak memory
of a training step (CUDA: max allocated; CPU: peak resident set of a fresh process).
Variants are interleaved, in a random order each round, so that drift in machine load
and cache effects hit all alike.
The modes table compares, for ResNet-20 full precision and ternarized, fp32 against
bf16 autocast (--amp), NHWC (--channels_last) and torch.compile (--compile), and turns
the step times into a CIFAR-10 epoch (391 training steps of 128 + 79 eval batches).
It then times the training loop on the small-data pipeline (a CIFAR-10-sized uint8
tensor on the device, cropped and flipped per batch) to give the share of the time spent
waiting for data, and the cost of re-optimising the thresholds (--tfactors auto) against
a training step.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import threading
import time

import torch
import torch.nn as nn

from models import ARCHS, get_model, optimize_model_thresholds
from utils.cli import command, command_parser, positive_int
from utils.data import DATASETS, TensorLoader
from utils.hardware import fast_bf16, select_device

VARIANTS = {"full precision": None, "ternary": 1, "REL t_ex=2": 2, "REL t_ex=4": 4}
CIFAR_TRAIN_STEPS_PER_EPOCH = 391  # 50,000 images, batch 128
CIFAR_EVAL_STEPS_PER_EPOCH = 79  # 10,000 images, batch 128
MODES = {  # name: (bf16 autocast, channels_last, torch.compile)
    "fp32": (False, False, False),
    "fp32 + channels_last": (False, True, False),
    "bf16": (True, False, False),
    "bf16 + channels_last": (True, True, False),
    "bf16 + channels_last + compile": (True, True, True),
}


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


def _num_classes(arch: str) -> int:
    return 10 if ARCHS[arch].family == "cifar" else 1000


def _build(arch: str, tex: int | None, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = get_model(arch, num_classes=_num_classes(arch), tex=tex).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def benchmark(arch: str, batch_size: int, image_size: int, repeats: int, warmup: int,
              device: torch.device) -> dict[str, dict[str, float]]:
    """Median seconds per train step and per eval forward for each variant of `arch`."""
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    y = torch.randint(0, _num_classes(arch), (batch_size,), device=device)
    runs = {name: _build(arch, tex, device) for name, tex in VARIANTS.items()}
    train = _round_robin(runs, lambda model, opt: _train_step(model.train(), opt, x, y), repeats, warmup, device)
    evaluation = _round_robin(runs, lambda model, opt: _eval_step(model.eval(), x), repeats, warmup, device)
    return {name: {"train": train[name], "eval": evaluation[name]} for name in runs}


def _round_robin(runs: dict, step, repeats: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median seconds of `step(model, optimizer)` per variant: variants interleaved, in a
    fresh (seeded) random order every round so no variant always follows the same one."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    order = random.Random(0)
    for i in range(warmup + repeats):
        for name in order.sample(list(runs), len(runs)):
            model, optimizer = runs[name]
            elapsed = _timed(lambda: step(model, optimizer), device)
            if i >= warmup:
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_train_memory(arch: str, tex: int | None, batch_size: int, image_size: int, device: torch.device) -> float:
    """Peak memory (MiB) of training steps: CUDA max allocated; on CPU, in a fresh
    process, the peak resident set during two steps minus the resident set before them
    (model, optimizer and inputs already built), i.e. what training adds, sampled every 0.5 ms."""
    if device.type == "cuda":
        model, optimizer = _build(arch, tex, device)
        x = torch.randn(batch_size, 3, image_size, image_size, device=device)
        y = torch.randint(0, _num_classes(arch), (batch_size,), device=device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):
            _train_step(model.train(), optimizer, x, y)
        return torch.cuda.max_memory_allocated(device) / 2**20
    probe = [sys.executable, "-m", "tools.benchmark", "--memory_probe", f"{arch}:{batch_size}:{image_size}:{tex or 0}"]
    repository = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # A fixed mmap threshold makes glibc hand every large tensor back to the OS when freed,
    # so the resident set follows the live tensors instead of malloc's cache.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    done = subprocess.run(probe, check=True, capture_output=True, text=True, cwd=repository, env=env)
    return float(done.stdout.split()[-1])


def _memory_probe(spec: str) -> None:
    arch, batch_size, image_size, tex = spec.split(":")
    batch_size, image_size, tex = int(batch_size), int(image_size), int(tex) or None
    model, optimizer = _build(arch, tex, torch.device("cpu"))
    x = torch.randn(batch_size, 3, image_size, image_size)
    y = torch.randint(0, _num_classes(arch), (batch_size,))
    before = _resident_mib()
    peak, running = [before], threading.Event()
    running.set()

    def sample() -> None:  # ru_maxrss would report the import's peak; poll the resident set instead
        while running.is_set():
            peak[0] = max(peak[0], _resident_mib())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(2):
        _train_step(model.train(), optimizer, x, y)
    running.clear()
    sampler.join()
    print(peak[0] - before)


def _resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def data_wait_share(batch_size: int, steps: int, device: torch.device) -> dict[str, float]:
    """Train tern_resnet20 on a CIFAR-10-sized uint8 tensor through TensorLoader (random
    crop + flip + normalise per batch on the device) and time how long each step waits
    for its batch versus the whole step."""
    info = DATASETS["cifar10"]
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (50_000,), generator=generator)
    loader = TensorLoader(images, labels, info, batch_size, train=True, device=device, seed=0)
    model, optimizer = _build("tern_resnet20", None, device)
    model.train()
    waiting = total = 0.0
    batches = iter(loader)
    for step in range(steps + 2):
        _synchronize(device)
        start = time.perf_counter()
        x, y = next(batches)
        _synchronize(device)
        fetched = time.perf_counter()
        _train_step(model, optimizer, x, y)
        _synchronize(device)
        if step >= 2:  # warm-up steps are not counted
            waiting += fetched - start
            total += time.perf_counter() - start
    return {"wait_s": waiting / steps, "step_s": total / steps, "share": waiting / total}


def threshold_overhead(repeats: int, step_seconds: dict[int, float], device: torch.device) -> dict[int, dict]:
    """Seconds to re-optimise every layer of tern_resnet20 (t_ex 1, 2), and that cost as a
    share of a training epoch at the default cadence (once per epoch) and per step."""
    result = {}
    for tex in (1, 2):
        model, _ = _build("tern_resnet20", tex, device)
        optimize_model_thresholds(model)
        seconds = statistics.median(_timed(lambda: optimize_model_thresholds(model), device) for _ in range(repeats))
        step = step_seconds[tex]
        result[tex] = {"seconds": seconds, "per_epoch": seconds / (CIFAR_TRAIN_STEPS_PER_EPOCH * step),
                       "per_step": seconds / step}
    return result


def _mode_run(arch: str, mode: tuple[bool, bool, bool], device: torch.device, x: torch.Tensor):
    amp, channels_last, compiled = mode
    model, optimizer = _build(arch, None, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compiled else model
    inputs = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return model, forward, optimizer, inputs, amp


def precision_modes(arch: str, repeats: int, warmup: int, device: torch.device) -> dict[tuple[str, str], dict]:
    """Median train-step and eval seconds of `arch` and its ternary twin (batch 128, 32×32)
    under every mode of MODES, all interleaved in one round robin."""
    x = torch.randn(128, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (128,), device=device)
    modes = {name: mode for name, mode in MODES.items() if fast_bf16(device) or not mode[0]}
    runs = {(variant, name): _mode_run(variant, mode, device, x)
            for variant in (arch, f"tern_{arch}") for name, mode in modes.items()}

    def train(run, _optimizer) -> None:
        model, forward, optimizer, inputs, amp = run
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = nn.functional.cross_entropy(forward(inputs), y)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def evaluate(run, _optimizer) -> None:
        model, forward, _, inputs, amp = run
        model.eval()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            forward(inputs)

    pairs = {key: (run, None) for key, run in runs.items()}
    train_s = _round_robin(pairs, train, repeats, warmup, device)
    eval_s = _round_robin(pairs, evaluate, repeats, warmup, device)
    return {key: {"train": train_s[key], "eval": eval_s[key],
                  "epoch": CIFAR_TRAIN_STEPS_PER_EPOCH * train_s[key] + CIFAR_EVAL_STEPS_PER_EPOCH * eval_s[key]}
            for key in runs}


def format_modes(results: dict[tuple[str, str], dict], arch: str) -> str:
    tern = f"tern_{arch}"
    base = results[arch, "fp32"]["train"]
    lines = [f"| mode | {arch} train step (ms) | {tern} train step (ms) | ternary / full precision | "
             f"speed-up vs fp32 (full precision) | CIFAR-10 epoch, full precision (s) | CIFAR-10 epoch, ternary (s) |",
             "|---|---|---|---|---|---|---|"]
    for name in dict.fromkeys(mode for _, mode in results):
        fp, tq = results[arch, name], results[tern, name]
        lines.append(f"| {name} | {1000 * fp['train']:.1f} | {1000 * tq['train']:.1f} | {tq['train'] / fp['train']:.3f}× | "
                     f"{base / fp['train']:.2f}× | {fp['epoch']:.1f} | {tq['epoch']:.1f} |")
    return "\n".join(lines)


def format_table(results: dict[str, dict[str, float]], batch_size: int, memory: dict[str, float]) -> str:
    base = results["full precision"]
    lines = ["| variant | train step (ms) | train ratio | train img/s | eval (ms) | eval ratio | eval img/s | "
             "train step memory (MiB) |", "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {1000 * r['train']:.1f} | {r['train'] / base['train']:.3f}× | "
                     f"{batch_size / r['train']:.0f} | {1000 * r['eval']:.1f} | {r['eval'] / base['eval']:.3f}× | "
                     f"{batch_size / r['eval']:.0f} | {memory[name]:.0f} |")
    return "\n".join(lines)


def parse_model(spec: str) -> tuple[str, int, int]:
    parts = spec.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected ARCH:BATCH:SIZE, e.g. resnet20:128:32, got {spec!r}")
    arch, batch_size, image_size = parts
    if arch not in ARCHS:
        raise argparse.ArgumentTypeError(f"unknown arch {arch}")
    return arch, positive_int(batch_size), positive_int(image_size)


@command
def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--models", nargs="+", type=parse_model, default=[("resnet20", 128, 32), ("resnet18", 16, 224)],
                        metavar="ARCH:BATCH:SIZE", help="full-precision archs to compare against their ternary twins")
    parser.add_argument("--repeats", type=positive_int, default=20, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=positive_int, default=3)
    parser.add_argument("--data_steps", type=positive_int, default=30, help="training steps timed on the data pipeline")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: the GPU when there is one, else the CPU")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--modes_only", action="store_true",
                        help="only the fp32 / bf16 / channels_last / compile table of ResNet-20")
    parser.add_argument("--memory_probe", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        _memory_probe(args.memory_probe)
        return
    device = select_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}; medians of {args.repeats} steps after {args.warmup} warm-up")
    print("\nresnet20, batch 128, 32×32: precision, memory format and compilation"
          + ("" if fast_bf16(device) else " (no fast bf16 on this device: bf16 rows left out)"))
    print(format_modes(precision_modes("resnet20", args.repeats, args.warmup, device), "resnet20"))
    if args.modes_only:
        return
    resnet20_steps = None
    for arch, batch_size, image_size in args.models:
        results = benchmark(arch, batch_size, image_size, args.repeats, args.warmup, device)
        memory = {name: peak_train_memory(arch, tex, batch_size, image_size, device) for name, tex in VARIANTS.items()}
        print(f"\n{arch}, batch {batch_size}, {image_size}×{image_size}")
        print(format_table(results, batch_size, memory))
        if arch == "resnet20" and batch_size == 128:
            resnet20_steps = {1: results["ternary"]["train"], 2: results["REL t_ex=2"]["train"]}

    data = data_wait_share(128, args.data_steps, device)
    print(f"\nsmall-data pipeline (tern_resnet20, CIFAR-10-sized uint8 tensor on {device.type}, batch 128): "
          f"{1000 * data['wait_s']:.2f} ms of a {1000 * data['step_s']:.1f} ms step waiting for data = "
          f"{100 * data['share']:.2f}% of the epoch")
    if resnet20_steps:
        for tex, cost in threshold_overhead(5, resnet20_steps, device).items():
            print(f"--tfactors auto, tern_resnet20 t_ex={tex}: {1000 * cost['seconds']:.1f} ms per re-optimisation = "
                  f"{100 * cost['per_epoch']:.3f}% of a CIFAR-10 epoch at the default cadence (once per epoch), "
                  f"{100 * cost['per_step']:.1f}% if done every step")


if __name__ == "__main__":
    raise SystemExit(main())
