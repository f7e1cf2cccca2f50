"""Atomic writes: every result file appears complete under its final name, or not at all.

A temporary file is named ``.<name>.tmp-<host>-<pid><suffix>`` beside its target, so the
leftovers of a process killed mid-write (``kill -9``, an out-of-memory kill, a node crash)
can be told apart from a live writer's and removed by :func:`remove_dead_temps`, on local
disks and on shared storage written from several hosts.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from reid_masks.errors import UserError

log = logging.getLogger(__name__)
HOST = socket.gethostname().replace("-", "_") or "localhost"


def temp_name(path: Path, suffix: str = "", pid: int | None = None) -> Path:
    return path.with_name(f".{path.name}.tmp-{HOST}-{os.getpid() if pid is None else pid}{suffix}")


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed over ``path`` when the block succeeds,
    removed when it fails (a crash mid-write leaves at most a hidden ``.tmp`` file, which the
    next run removes with :func:`remove_dead_temps`).

    ``suffix`` ends the temporary name, for writers that add an extension (``np.savez``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<host>[^-/]+)-(?P<pid>\d+)(?P<suffix>\.[A-Za-z0-9]+)?$")


def remove_dead_temps(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove the temporary files that processes of this host left in ``folder`` when they died.

    Only files named by :func:`atomic_path` whose writer (same host, same pid) is no longer
    running are removed; with ``name``, only the temporaries of that target file. Temporaries
    of other hosts are left alone (their processes cannot be checked from here). Returns
    the removed paths.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.match(p.name)
        if not m or (name is not None and m["name"] != name) or m["host"] != HOST:
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or pid_alive(pid):
            continue
        try:
            size = p.stat().st_size
            p.unlink()
        except OSError:
            continue
        log.info("removed %s (%d bytes), left by process %d that is no longer running", p, size, pid)
        removed.append(p)
    return removed


def is_disk_full(exc: BaseException) -> bool:
    """True for 'no space left' / 'quota exceeded' errors, however deep h5py or numpy wrapped them."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(exc).lower()
        if "no space left" in text or "disk quota exceeded" in text or "errno = 28" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def missing_folders(path: str | Path) -> list[Path]:
    """The folders of ``path`` (``path`` included) that do not exist yet, deepest first."""
    out = []
    for p in (Path(path).absolute(), *Path(path).absolute().parents):
        if p.exists():
            break
        out.append(p)
    return out


PID_DIGITS = 7  # Linux's pid_max is at most 2**22 = 4194304: a temporary name is never longer than this allows


def lock_path(path: Path) -> Path:
    """The hidden lock file :class:`OutputLock` keeps beside ``path``."""
    return path.with_name(f".{path.name}.lock")


def sibling_names(path: Path, folder: bool = False, also: Iterable[str] = ()) -> list[str]:
    """The names a run writes beside its output ``path``: the output, its lock and (a file) its
    temporary (:func:`atomic_path`, with the widest pid), plus a command's own ``also``."""
    names = [path.name, lock_path(path).name]
    if not folder:
        names.append(temp_name(path, pid=10**PID_DIGITS - 1).name)
    return names + list(also)


def name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder`` (or its nearest existing parent) takes."""
    for p in (folder, *folder.parents):
        try:
            return int(os.pathconf(p, "PC_NAME_MAX"))
        except (OSError, ValueError):  # not there (yet), or its name is itself too long
            continue
    return 255


def check_name_lengths(path: Path, names: Iterable[str], option: str = "--out") -> None:
    """Refuse, in one line, ``path`` when a folder name of it or one of ``names`` (written in its
    folder) is longer than the file system's NAME_MAX there. Raises :class:`UserError` naming
    ``option``, the longest name, its length and the limit."""
    limit = name_max(path.parent)
    for longest in (*path.parent.parts, max(names, key=lambda n: len(os.fsencode(n)))):
        size = len(os.fsencode(longest))
        if size > limit:
            what = "a folder name of it" if longest in path.parent.parts else "a name written beside it"
            raise UserError(f"{option} {path}: name too long: '{longest}' ({what}) has {size} bytes and the file system takes "
                            f"at most {limit} bytes per name; shorten it by {size - limit} byte(s) or more")


def check_writable(path: str | Path, option: str = "--out", folder: bool = False, also: Iterable[str] = ()) -> Path:
    """Refuse, in one line and before any work, an output that could not be written at the end.

    ``path`` is a file to write (or, with ``folder``, a folder to write into). The names the
    run will write beside it (:func:`sibling_names`; ``also``: a command's own, e.g. generate's
    ``<out>.partial``) must fit the file system's NAME_MAX. The folder is created as the write
    would create it, a probe file is written there and removed, and folders this check created
    are removed again, so a refused run leaves nothing behind. Returns ``path``. Raises
    :class:`UserError` naming ``option`` and the reason.
    """
    path = Path(path)
    target = path if folder else path.parent
    check_name_lengths(path, sibling_names(path, folder, also), option)  # first: stat() of such a path fails with ENAMETOOLONG
    if not folder and path.is_dir():
        raise UserError(f"{option} {path}: is a folder, expected a file name")
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: is a file, expected a folder")
    missing = missing_folders(target)
    blocker = next((p for p in (target, *target.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise UserError(f"{blocker}: output folder is not writable (it is a file; {option} {path})")
    try:
        target.mkdir(parents=True, exist_ok=True)
        probe = target / f".write-test-{HOST}-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise UserError(f"{target}: output folder is not writable ({reason}; {option} {path})") from None
    finally:
        for p in missing:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break
    return path


def write_target(path: str | Path) -> Path:
    """Where writing ``path`` must go: the file a symlink points to (resolved once, at start), else
    ``path``. An output renamed into place over a link would replace the link with a regular file
    and leave the file it pointed to stale; its lock, temporaries and ``.partial`` folder then sit
    beside the file written."""
    path = Path(path)
    return path.resolve() if path.is_symlink() else path


def write_text_atomic(path: str | Path, text: str, mode: int | None = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        if mode is not None:
            tmp.chmod(mode)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """JSON (indented, newline-terminated) through a temporary file renamed over ``path``."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def append_json_line(path: str | Path, data: Any) -> None:
    """Append ``data`` as one JSON line to ``path`` (created if missing); what is there is never rewritten.

    The whole line goes in one ``write`` on an ``O_APPEND`` descriptor, then ``fsync``, so
    appenders do not interleave and a crash leaves at most a torn last line (readers skip
    it). After a torn line a newline comes first, so the new line stands on its own.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(data) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str | Path, missing: str, expected: str) -> Any:
    """A JSON file's content; a missing or unparseable file is a one-line UserError:
    ``"{path}: {missing}"`` or ``"{path}: expected {expected} (reason)"``."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: {missing}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: expected {expected} ({exc})") from None


class OutputLock:
    """An exclusive lock on an output file, held while one run writes it.

    The lock is a POSIX record lock (``fcntl.lockf``) on a hidden ``.<name>.lock`` file beside
    the output: the kernel (or the NFS lock manager) drops it when the holder dies, however it
    dies, so a lock is never stale. The file records who holds it, so a second run is refused
    at once with one line naming the other process. The lock file itself is left in place
    (removing it would race with a process about to lock it).
    """

    def __init__(self, path: str | Path, command: str = ""):
        self.path = Path(path)
        self.lock_path = lock_path(self.path)
        self.command = command
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        import fcntl
        import time

        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except ValueError:
                holder = {}
            os.close(fd)
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('since', '?')}"
            raise UserError(f"{self.path}: another run is writing it ({who}: {holder.get('command', '?')}); wait for it to finish or stop it") from None
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": self.command})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            try:
                os.ftruncate(self._fd, 0)
                fcntl.lockf(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
