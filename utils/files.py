"""The one way this project writes a file: atomically, under one temporary-name rule.

Every output (checkpoints, results.json, curves, packed and ONNX exports, the decode
cache, reports) is written to a temporary file beside its target and renamed over it, so
a crash, a kill or a full disk mid-write leaves the previous version whole. Temporary
files are named `.<target name>.<pid>.ternary-tmp`; a run folder is cleaned of exactly
these names (`is_temporary`) and of nothing else the user keeps there.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import IO

from .errors import write_error

TEMPORARY_SUFFIX = ".ternary-tmp"

_UMASK = os.umask(0)
os.umask(_UMASK)


def temporary_path(path: str) -> str:
    """The temporary file an atomic write of `path` goes through (same folder, so the rename is atomic)."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.{os.getpid()}{TEMPORARY_SUFFIX}")


def missing_folders(path: str) -> list[str]:
    """The folders os.makedirs(path) would create (the missing part of the path), outermost first."""
    missing, folder = [], os.path.abspath(path)
    while folder and not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing[::-1]


def is_temporary(name: str) -> bool:
    """Whether a file name is one of this project's unfinished atomic writes."""
    return name.startswith(".") and name.endswith(TEMPORARY_SUFFIX)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file for writing; on success flush, fsync and rename it over
    `path`, otherwise remove it. A failed write (no space, permission, missing folder) is
    a UserError naming `path` and the cause."""
    temporary = temporary_path(path)
    try:
        with open(temporary, mode) as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_UMASK)
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        with contextlib.suppress(OSError):
            os.remove(temporary)


def write_bytes(path: str, data: bytes | memoryview) -> None:
    """Write `data` to `path` atomically."""
    with atomic_write(path) as handle:
        handle.write(data)


def write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically (UTF-8)."""
    with atomic_write(path, "w") as handle:
        handle.write(text)


def write_json(path: str, data: dict) -> None:
    """Write `data` as indented JSON to `path` atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")
