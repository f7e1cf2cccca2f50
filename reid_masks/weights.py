"""Weight-file identity for provenance: one cached SHA-256 per (path, size, mtime), one record per loaded file."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file, cached: checkpoints are 100+ MB and hashed once per process."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def weights_record(loaded: str | os.PathLike | None, zoo_file: str | os.PathLike | None, url: str | None) -> dict[str, Any]:
    """What a model really loaded: the file's absolute path and sha256, and ``url`` only when that
    file is the zoo/release file (``zoo_file``, the library's cache entry for ``url``).

    A file given by the user is recorded by path and hash alone: naming the zoo URL for it would
    claim an origin nobody checked. ``loaded=None`` (random weights) records nothing.
    """
    if loaded is None:
        return {"path": None, "sha256": None, "source": None, "url": None}
    p = Path(loaded).expanduser().resolve()
    z = Path(zoo_file).expanduser() if zoo_file is not None else None
    is_zoo = z is not None and z.is_file() and os.path.samefile(p, z)
    return {"path": str(p), "sha256": file_sha256(p), "source": "zoo" if is_zoo else "file", "url": url if is_zoo else None}
