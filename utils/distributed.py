"""Multi-process training with torch.distributed, launched by torchrun:

    torchrun --nproc_per_node 4 main.py ...                                  # one node, 4 GPUs
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 \\
             --master_addr node0 --master_port 29500 main.py ...            # on each of 2 nodes

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them the run is a single process.
NCCL is used on GPUs, gloo on CPU.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError

_PEER_FAILURE_MARKS = ("gloo", "nccl", "connection closed", "connection reset", "processgroup", "broken pipe")


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes logs, checkpoints and results."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(use_cuda: bool) -> DistributedContext:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU); a plain
    single-process context when not launched by torchrun."""
    if not launched_by_torchrun():
        return DistributedContext()
    context = DistributedContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                                 int(os.environ.get("LOCAL_RANK", 0)))
    if use_cuda:
        torch.cuda.set_device(context.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return context


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all processes in place (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of `tensor` over all processes, in place (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_peer_failure(exc: BaseException) -> bool:
    """Whether `exc` is a collective that failed because another process of the run died
    or failed (torch.distributed's errors, or gloo/NCCL's RuntimeErrors)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(mark in str(exc).lower() for mark in _PEER_FAILURE_MARKS)


def peer_failure(exc: BaseException) -> UserError:
    """The one line a surviving process says when another one failed."""
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"another process of this torchrun run failed or stopped ({first_line[:160]}); the last saved "
                     "epoch is the resume point")
