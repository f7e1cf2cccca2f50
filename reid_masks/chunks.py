"""Finished chunks of a ``generate`` run: ``<out>.partial/chunk-<g>.npz``, compressed and verified.

A chunk is written to a temporary name and renamed, but a crash on a filesystem without atomic
rename, a full disk or an NFS hiccup can still leave a torn or empty file. So a chunk is never
trusted by its name alone: :meth:`ChunkStore.load` reads every array (the zip CRC of each is
checked on read) and checks the rows against the ones the chunk must hold; a bad chunk is
reported by name and recomputed.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from reid_masks.cache import COLUMNS, Rows
from reid_masks.fileio import atomic_path

COMPRESS_LEVEL = 3


class BadChunk(Exception):
    """A chunk file that cannot be used (torn, empty, wrong rows)."""


class ChunkStore:
    """Finished chunks as ``<partial>/chunk-<g>.npz`` (zip-deflated columns, one file per chunk)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, g: int) -> Path:
        return self.folder / f"chunk-{g:06d}.npz"

    def exists(self, g: int) -> bool:
        return self.path(g).is_file()

    def save(self, g: int, by_split: dict[str, Rows]) -> None:
        arrays = {f"{s}.{k}": v for s, rows in by_split.items() for k, v in rows.to_npz().items()}
        with atomic_path(self.path(g), suffix=".npz") as tmp:
            # an .npz np.load reads; deflate level 3 costs half of np.savez_compressed's level 6
            # (measured on 256 rows) and keeps the folder below the cache's own size
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=COMPRESS_LEVEL) as zf:
                for name, value in arrays.items():
                    with zf.open(name + ".npy", "w", force_zip64=True) as fh:
                        np.lib.format.write_array(fh, np.asanyarray(value), allow_pickle=False)

    def load(self, g: int, expected: dict[str, np.ndarray] | None = None) -> dict[str, Rows]:
        """The chunk's rows per split; :class:`BadChunk` unless it is whole and holds exactly
        the ``expected`` row positions per split (when given)."""
        path = self.path(g)
        try:
            if path.stat().st_size == 0:
                raise BadChunk(f"{path}: empty file")
            with np.load(path, allow_pickle=False) as data:
                names = list(data.files)
                splits = sorted({k.split(".")[0] for k in names})
                out = {}
                for s in splits:
                    out[s] = Rows.from_npz({k.split(".", 1)[1]: data[k] for k in names if k.split(".", 1)[0] == s})
        except BadChunk:
            raise
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
            raise BadChunk(f"{path}: unreadable ({type(exc).__name__}: {exc})") from None
        for s, rows in out.items():
            lengths = {f: len(getattr(rows, f)) for f in COLUMNS}
            if len(set(lengths.values())) != 1:
                raise BadChunk(f"{path}: {s} columns have different lengths {lengths}")
        if expected is not None:
            got = {s: np.sort(r.index) for s, r in out.items() if len(r)}
            want = {s: np.sort(np.asarray(v, np.int64)) for s, v in expected.items() if len(v)}
            if got.keys() != want.keys() or any(not np.array_equal(got[s], want[s]) for s in want):
                raise BadChunk(f"{path}: holds other rows than chunk {g} should")
        return out

    def discard(self, g: int) -> None:
        try:
            self.path(g).unlink()
        except FileNotFoundError:
            pass

    def size(self, on_disk: bool = False) -> int:
        """Bytes of all chunk files so far; ``on_disk``: the space they take (whole file-system blocks)."""
        stats = [p.stat() for p in self.folder.glob("chunk-*.npz") if p.is_file()]
        return sum(max(st.st_size, st.st_blocks * 512) if on_disk else st.st_size for st in stats)
