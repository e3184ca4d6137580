"""The output folder of a run: created, locked against a second live run, cleaned of the
temporary files a killed run left, and never silently reused for a new run.

    with claim_run_folder(args.save_path, mode="train", resuming=..., overwrite=...) as notes:
        ...   # only this process writes here; `notes` says what was done to the folder

What a folder holds decides what a new run may do there:
- trained models (checkpoint.pth.tar, model_best.pth.tar), a finished record or an
  evaluation's record are protected: a new run is refused unless it resumes the run or
  passes --overwrite, and --overwrite never deletes a file the run reads (--resume,
  --pretrained);
- the leftovers of a start that stopped before its first checkpoint (log.txt, tb_log,
  a "running"/"failed"/"interrupted" record with no epoch) protect nothing: the folder
  is reused, the old log kept as log.N.txt;
- an evaluation never writes into a folder holding a training run, --overwrite or not.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator, Sequence

from .errors import UserError, write_error
from .files import is_temporary, missing_folders

LOCK_NAME = ".lock"
MODELS = ("checkpoint.pth.tar", "model_best.pth.tar")
TRAINING_OUTPUTS = ("results.json", *MODELS, "curve.png", "compression.json", "log.txt", "tb_log")


def read_record(path: str) -> dict | None:
    """The folder's results.json, or None when it has none; an unreadable one is {}."""
    try:
        with open(os.path.join(path, "results.json")) as f:
            record = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def holds_training_run(path: str) -> bool:
    """Whether `path` holds a training run's models or record (finished or not)."""
    record = read_record(path)
    return any(os.path.isfile(os.path.join(path, name)) for name in MODELS) or (
        record is not None and record.get("mode", "train") == "train" and bool(record.get("epochs_done", 1)))


def protected_outputs(path: str) -> list[str]:
    """What in `path` a new run must not replace: trained models, and a record that is
    finished, an evaluation's, or counts epochs."""
    protected = [name for name in MODELS if os.path.isfile(os.path.join(path, name))]
    record = read_record(path)
    if record is not None and (record.get("status") == "complete" or record.get("mode") == "evaluate"
                               or record.get("epochs_done") or not record):
        protected.append("results.json")
    return protected


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
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
    except OSError as exc:
        handle.close()
        raise write_error(lock_path, exc) from None
    return handle


def _remove(path: str, names: Sequence[str]) -> None:
    for name in names:
        target = os.path.join(path, name)
        try:
            shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
        except OSError as exc:
            raise write_error(target, exc) from None


def _rotate_log(path: str) -> str:
    """Rename log.txt to the first free log.N.txt; returns the new name."""
    number = 1
    while os.path.exists(os.path.join(path, f"log.{number}.txt")):
        number += 1
    name = f"log.{number}.txt"
    try:
        os.rename(os.path.join(path, "log.txt"), os.path.join(path, name))
    except OSError as exc:
        raise write_error(os.path.join(path, name), exc) from None
    return name


def _refusal(path: str, present: list[str]) -> UserError:
    ways = [f"continue it with --resume {os.path.join(path, 'checkpoint.pth.tar')}"] if "checkpoint.pth.tar" in present \
        else []
    ways += ["choose another --save_path", "pass --overwrite to replace it"]
    return UserError(f"{path} already holds a run ({', '.join(present)}); {', '.join(ways[:-1])} or {ways[-1]}")


def _check_inputs_survive(path: str, names: Sequence[str], inputs: Sequence[str | None]) -> None:
    doomed = {os.path.realpath(os.path.join(path, name)) for name in names}
    for given in inputs:
        if given and (os.path.realpath(given) in doomed
                      or any(os.path.realpath(given).startswith(target + os.sep) for target in doomed)):
            raise UserError(f"--overwrite would delete {given}, which this run reads; copy it out of {path} first "
                            "or choose another --save_path")


def _prepare_training_folder(path: str, resuming: bool, overwrite: bool, inputs: Sequence[str | None]) -> list[str]:
    previous = [name for name in TRAINING_OUTPUTS if os.path.exists(os.path.join(path, name))]
    if not previous or resuming:
        return []
    if protected_outputs(path):
        if not overwrite:
            raise _refusal(path, previous)
        _check_inputs_survive(path, previous, inputs)
        _remove(path, previous)
        return [f"=> --overwrite: removed the earlier run's {', '.join(previous)} from {path}"]
    notes = []
    if "log.txt" in previous:
        notes.append(f"=> {path} held a start that stopped before its first checkpoint; its log is now "
                     f"{_rotate_log(path)}")
    _remove(path, [name for name in previous if name != "log.txt"])
    return notes


@contextlib.contextmanager
def claim_run_folder(path: str, mode: str, resuming: bool = False, overwrite: bool = False,
                     inputs: Sequence[str | None] = ()) -> Iterator[list[str]]:
    """Own `path` for this run (see the module docstring); yields notes for the run's log.
    mode "train" or "evaluate"; `resuming`: this run continues the run in `path`;
    `inputs`: files the run reads, which --overwrite must not delete. Temporary files of
    a killed writer (this project's naming rule only) are removed once the lock is held."""
    created = missing_folders(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    had_log = os.path.exists(os.path.join(path, "log.txt"))
    handle = _take_lock(path)
    finished = False
    try:
        if mode == "train":
            notes = _prepare_training_folder(path, resuming, overwrite, inputs)
        else:
            if holds_training_run(path):
                raise UserError(f"{path} holds a training run, which an evaluation never writes into; give the "
                                "evaluation its own --save_path (or none, for a folder of its own)")
            record = read_record(path)
            if record is not None and record.get("mode", "evaluate") == "evaluate" and not overwrite:
                raise UserError(f"{path} already holds an evaluation (results.json); choose another --save_path "
                                "or pass --overwrite to replace it")
            notes = []
        for name in os.listdir(path):
            if is_temporary(name):
                os.remove(os.path.join(path, name))
        yield notes
        finished = True
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
        if mode == "evaluate" and not finished:
            _remove_evaluation_leftovers(path, created, had_log)


def _remove_evaluation_leftovers(path: str, created: list[str], had_log: bool) -> None:
    """A refused or failed evaluation leaves nothing: its lock and log, and the folders it created."""
    names = [LOCK_NAME] + ([] if had_log else ["log.txt"])
    for name in names:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(path, name))
    for folder in reversed(created):
        try:
            os.rmdir(folder)
        except OSError:
            break
