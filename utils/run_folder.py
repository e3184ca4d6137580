"""The output folder of a run: created, locked against a second live run, cleaned of the
temporary files a killed run left, and never silently reused for a new run.

    with claim_run_folder(args.save_path, mode="train", resuming=..., overwrite=...):
        ...   # only this process writes here
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator

from .errors import UserError, write_error
from .files import is_temporary

LOCK_NAME = ".lock"
TRAINING_OUTPUTS = ("results.json", "checkpoint.pth.tar", "model_best.pth.tar", "curve.png", "compression.json",
                    "log.txt", "tb_log")


def holds_training_run(path: str) -> bool:
    if os.path.isfile(os.path.join(path, "checkpoint.pth.tar")):
        return True
    try:
        with open(os.path.join(path, "results.json")) as f:
            return json.load(f).get("mode") == "train"
    except (OSError, ValueError, AttributeError):
        return os.path.exists(os.path.join(path, "results.json"))


def _take_lock(path: str):
    lock_path = os.path.join(path, LOCK_NAME)
    try:
        handle = open(lock_path, "a+")
    except OSError as exc:
        raise write_error(lock_path, exc) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        handle.close()
        raise UserError(f"another run (pid {owner}) is writing to {path}; wait for it to finish or choose "
                        "another --save_path") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


@contextlib.contextmanager
def claim_run_folder(path: str, mode: str, resuming: bool = False, overwrite: bool = False) -> Iterator[None]:
    """Own `path` for this run. mode "train": a folder that already holds a run is refused
    unless this run resumes it (resuming=True) or --overwrite (which removes the old
    outputs); mode "evaluate": a folder holding a training run is refused. Temporary
    files of a killed writer are removed once the lock is held."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    handle = _take_lock(path)
    try:
        previous = [name for name in TRAINING_OUTPUTS if os.path.exists(os.path.join(path, name))]
        if mode == "train" and previous and not resuming:
            if not overwrite:
                raise UserError(f"{path} already holds a run ({', '.join(previous)}); continue it with --resume "
                                f"{os.path.join(path, 'checkpoint.pth.tar')}, choose another --save_path, or pass "
                                "--overwrite to replace it")
            for name in previous:
                target = os.path.join(path, name)
                shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        if mode == "evaluate" and holds_training_run(path) and not overwrite:
            raise UserError(f"{path} holds a training run; give the evaluation its own --save_path")
        for name in os.listdir(path):
            if is_temporary(name):
                os.remove(os.path.join(path, name))
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
