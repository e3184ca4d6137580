"""Graceful stops: SIGTERM (what cluster schedulers send before preemption) and SIGINT
(Ctrl-C) end the training loop at the next step boundary instead of killing it mid-step.

The handler only records the signal; the loop polls `requested` after each step and
raises Interrupted, which main.py turns into a resumable stop (results.json marked
"interrupted", one line saying how to resume, exit code 128 + signal number). A second
signal while stopping ends at once (KeyboardInterrupt), still leaving every file whole
because checkpoints are written to a temporary file and renamed.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """The run stopped on a signal; `signum` is the signal, `epoch` the unfinished epoch (1-based)."""

    def __init__(self, signum: int, epoch: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} in epoch {epoch}")
        self.signum, self.epoch = signum, epoch

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Context manager: while active, SIGTERM/SIGINT set `requested` (the signal number)
    instead of killing the process. Outside the main thread it does nothing."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested is not None:  # the second signal: stop now
            raise KeyboardInterrupt
        self.requested = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
