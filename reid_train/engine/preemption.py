"""Stop requests for ``fit``: SIGTERM, SIGUSR1 and Ctrl-C end a run cleanly, never halfway.

A cluster stops jobs with signals: Slurm sends SIGTERM at the time limit, on ``scancel``,
``scontrol requeue`` and preemption (then SIGKILL after ``KillWait``, 30 s by default), and
``#SBATCH --signal=B:USR1@120`` sends SIGUSR1 two minutes earlier. While :class:`StopSignals`
is active, the first of these signals only sets a flag; the trainer looks at it after every
iteration, finishes that iteration, writes a checkpoint that resumes exactly there and
raises :class:`Stopped`. The CLI logs its one-line message and exits with
``128 + signal number`` -- the status a shell reports for a process killed by that signal:
143 (SIGTERM), 138 (SIGUSR1), 130 (SIGINT), so a site's ``RequeueExit=138,143`` (slurm.conf)
or a job script (pipelines/slurm/fit.sbatch.example) can requeue the job.

While the evaluation after an epoch runs (its checkpoint already written), the run is
:meth:`StopSignals.interruptible`: a stop signal ends the evaluation at once
(:class:`StopNow`), since nothing of it needs keeping.

A second Ctrl-C stops at once (``KeyboardInterrupt``, the last checkpoint stays as it was);
repeated SIGTERM/SIGUSR1 (Slurm signals every process of the job, ``torchrun`` forwards them
again) are ignored. DataLoader workers ignore the three signals and die with their parent
(:func:`reid_masks.workers.detached_worker_init` as ``worker_init_fn``): Slurm and the terminal
signal them too, and a worker that dies takes the iteration in progress with it.
"""
from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from contextlib import contextmanager
from types import FrameType
from typing import Any, Iterator

from reid_masks.workers import STOP_SIGNALS

__all__ = ["STOP_SIGNALS", "StopSignals", "Stopped", "StopNow", "exit_status", "continue_command"]


def exit_status(signum: int) -> int:
    """The exit status for a run stopped by ``signum``: 128 + the signal number."""
    return 128 + int(signum)


class Stopped(Exception):
    """A run stopped by a signal after saving its checkpoint; ``exit_status`` is 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_status = exit_status(signum)


class StopNow(BaseException):
    """Raised by a stop signal inside :meth:`StopSignals.interruptible` (a BaseException, so that
    no ``except Exception`` of the interrupted code swallows it)."""


class StopSignals:
    """Context manager: SIGTERM / SIGUSR1 / SIGINT set :attr:`signum` instead of ending the process.

    Only the main thread can install signal handlers; elsewhere (a training loop run from a
    thread) the context does nothing and the signals keep their usual effect.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        self._raise = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:  # no logging here: the run logs one line when it has stopped
            self.signum = signum
            if self._raise:
                raise StopNow(signum)
        elif signum == signal.SIGINT:  # the user insists
            raise KeyboardInterrupt

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """Within the block the first stop signal raises :class:`StopNow` at once (also one
        caught before the block); for work that can be dropped and redone, e.g. an evaluation."""
        self._raise = True
        try:
            if self.signum is not None:
                raise StopNow(self.signum)
            yield
        finally:
            self._raise = False

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()


def continue_command(argv: list[str] | None = None) -> str:
    """The command line that continues this run: the one given, with ``--resume`` added.

    Under ``torchrun`` the launcher's own options are not visible here, so the line says to
    relaunch with them.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in args:
        args.append("--resume")
    line = shlex.join(["reid-train", *args])
    if "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        line = f"torchrun <same options> -m reid_train.cli {shlex.join(args)}"
    return line
