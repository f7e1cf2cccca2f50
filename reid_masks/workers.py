"""``worker_init_fn`` for every DataLoader of both tools: workers leave signals to their parent
and die with it.

Slurm and the terminal signal every process of a job (SIGTERM at the time limit or on
preemption, SIGUSR1 from ``--signal``, SIGINT on Ctrl-C). A worker killed by one takes the
batch in flight with it and makes the DataLoader print a long "worker exited unexpectedly"
traceback, while the main process wants to finish its work and stop cleanly; so workers ignore
the three and the main process ends them. And when the main process is killed outright
(``kill -9``, the out-of-memory killer), ``PR_SET_PDEATHSIG`` makes the kernel kill its workers
too, instead of leaving them running as orphans.

Because workers ignore SIGTERM, the main process must end leftover ones with SIGKILL when it
exits: multiprocessing's own exit handler would SIGTERM them and then wait forever (an
exception from a worker -- an unreadable image -- leaves the DataLoader's workers running
while the error goes up to the command line).

The parent's side (``generate``, ``merge``): :func:`sigterm_as_interrupt` turns SIGTERM into
the same KeyboardInterrupt as Ctrl-C, and :class:`Interrupted` is the one-line error each
command raises then (exit status 128 + the signal number).
"""
from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util  # noqa: F401 -- its exit handler first, so ours (atexit: last in, first out) runs before it
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from reid_masks.errors import UserError

PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def detached_worker_init(worker_id: int = 0) -> None:
    """Ignore SIGTERM / SIGUSR1 / SIGINT and ask the kernel for SIGKILL when the parent dies."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


class Interrupted(UserError):
    """Ctrl-C or SIGTERM during a run: finished work kept; exits 128 + the signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (Slurm's time limit, preemption, scancel) raises like Ctrl-C in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _kill_leftover_workers() -> None:
    """At exit: SIGKILL daemonic children still alive (DataLoader workers ignore SIGTERM)."""
    children = [c for c in multiprocessing.active_children() if c.daemon]
    if not children:
        return
    # torch's SIGCHLD handler would raise "worker killed" in the middle of this clean-up
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=10)


atexit.register(_kill_leftover_workers)
