"""The error a user sees: one line, no traceback."""
from __future__ import annotations

import errno

_CAUSES = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "read-only file system",
           errno.ENOENT: "the folder does not exist", errno.ENOTDIR: "a part of the path is not a folder"}


class UserError(Exception):
    """A problem with the user's input or files: main.py reports it as one line, no traceback."""


def write_error(path: str, exc: OSError) -> UserError:
    """The UserError for a failed write of `path`, naming the cause (no space, permission ...)."""
    cause = _CAUSES.get(exc.errno, exc.strerror or str(exc) or type(exc).__name__)
    return UserError(f"cannot write {path}: {cause}; files written before it are intact")
