"""Atomic writes: every result file appears complete under its final name, or not at all."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed over ``path`` when the block succeeds,
    removed when it fails (a crash mid-write leaves at most a hidden ``.tmp`` file).

    ``suffix`` ends the temporary name, for writers that add an extension (``np.savez``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str, mode: int | None = None) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        if mode is not None:
            tmp.chmod(mode)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """JSON (indented, newline-terminated) through a temporary file renamed over ``path``."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
