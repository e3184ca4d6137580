"""Checkpoints: atomic saving and loading that never executes code from the file.

Every file is read with torch.load(weights_only=True): only tensors and plain Python
containers are rebuilt. Checkpoints of the reference implementation also pickle its
`utils.RecorderMeter` (numpy arrays of the training curves); that one class is mapped to
an inert stub. Any other object, or a pickle that tries to call a function, is refused.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn as nn

from .errors import UserError


class ReferenceRecorderStub:
    """Inert stand-in for the reference's RecorderMeter: its attributes only, no methods run."""


def _numpy_array_globals() -> list:
    multiarray = getattr(np, "_core", None) or np.core
    reconstruct = multiarray.multiarray._reconstruct
    dtypes = [type(np.dtype(t)) for t in ("float32", "float64", "int64", "int32", "bool", "uint8")]
    return [(reconstruct, "numpy.core.multiarray._reconstruct"), (reconstruct, "numpy._core.multiarray._reconstruct"),
            np.ndarray, np.dtype, *dtypes]


def _safe_globals() -> list:
    return [(ReferenceRecorderStub, "utils.RecorderMeter"), *_numpy_array_globals()]


_UNSAFE_MARKERS = ("Unsupported global", "unrecognized function", "Can only create new object", "is blocked")


def _unpickler_reason(message: str) -> str:
    """The specific reason inside torch's long weights_only error message."""
    _, _, detail = message.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (detail or message).splitlines() if line.strip()]
    return lines[0][:300] if lines else "unknown reason"


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint file safely. Raises UserError for a missing, corrupt or unsafe file."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(str(exc))
        if any(marker in reason for marker in _UNSAFE_MARKERS):
            raise UserError(f"refusing to load {path}: it holds objects other than tensors and plain data "
                            f"({reason})") from exc
        raise UserError(f"cannot read checkpoint {path}: not a valid checkpoint file ({reason})") from exc
    except Exception as exc:  # truncated zip, bad magic number, ...
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"cannot read checkpoint {path}: {type(exc).__name__}: {first_line}") from exc
    if not isinstance(checkpoint, Mapping):
        raise UserError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict or state_dict")
    return dict(checkpoint)


def save_checkpoint(state: dict, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`, so a
    crash mid-save leaves the previous file intact."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pth.tar")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def extract_state_dict(checkpoint: Mapping) -> dict[str, torch.Tensor]:
    """The model weights of a checkpoint: {'state_dict': ...} or a bare state_dict, with
    the "module." prefix of DataParallel / DistributedDataParallel stripped."""
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError("the checkpoint holds no state_dict of tensors")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load weights strictly; a mismatch is a UserError naming missing, unexpected and
    wrongly shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
                   for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
                 for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", wrong_shape)) if keys]
        raise UserError(f"{source} does not fit the model: {'; '.join(parts)}")
    model.load_state_dict(state_dict, strict=True)
