"""The HDF5 mask cache: the contract between ``reid-masks`` and ``reid-train``.

One file per dataset, one group per split (``train``, ``query``, ``gallery``); every
dataset in a group has one row per image, aligned with ``path`` (relative to the dataset
root) and in the dataset adapter's order. See README.md, "The mask cache".
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from reid_masks.datasets.records import CACHE_SPLITS
from reid_masks.errors import UserError
from reid_masks.fileio import atomic_path

SCHEMA_VERSION = 3  # 2: the `cuts` column (which source placed each region cut); 3: the `parts` column
READABLE_SCHEMA_VERSIONS = (1, 2, 3)  # older caches are read without the newer columns
COLUMNS_SINCE = {"cuts": 2, "parts": 3}  # columns a cache of an older schema version does not have
MASK_HW = (24, 8)
DEFAULT_PERSON_HW = (256, 128)
STATUS_NAMES = ("ok", "no_person", "no_keypoints", "unreadable")
STATUS = {name: code for code, name in enumerate(STATUS_NAMES)}
REGION_NAMES = ("background", "head", "upper", "lower")
PART_NAMES = ("background", "head", "torso", "arms", "legs")
#: Where a region cut (the shoulder line head | upper, the hip line upper | lower) came from:
#: none (unreadable image), the target's two keypoints, the parsing labels, fixed fractions
#: of the person's height, or the no-person prior. README, "How masks are derived".
CUT_NAMES = ("none", "keypoints", "parsing", "estimate", "prior")
CUT = {name: code for code, name in enumerate(CUT_NAMES)}
ROW_CHUNK = 256


@dataclass
class Rows:
    """Columns for some rows of one split; ``index`` is each row's position in the split."""

    index: np.ndarray  # (n,) int64
    path: np.ndarray  # (n,) object (str)
    pid: np.ndarray  # (n,) int32
    camid: np.ndarray  # (n,) int16
    fingerprint: np.ndarray  # (n,) bytes, 16 hex chars of blake2b of the image file
    status: np.ndarray  # (n,) uint8, STATUS codes
    score: np.ndarray  # (n,) float32, target instance score (0 when none)
    box: np.ndarray  # (n, 4) float32, x0 y0 x1 y1 in image pixels
    keypoints: np.ndarray  # (n, 17, 3) float32, x y score in image pixels (score 0: absent)
    image_size: np.ndarray  # (n, 2) int32, height width
    masks: np.ndarray  # (n, 3, 24, 8) float32 in [0, 1]: whole, upper, bottom
    person: np.ndarray  # (n, H, W) uint8 0/1 at the cache's person size
    regions: np.ndarray  # (n, H, W) uint8: 0 bg, 1 head, 2 upper, 3 lower
    cuts: np.ndarray  # (n, 2) uint8, CUT codes of the shoulder line and the hip line
    parts: np.ndarray  # (n, H, W) uint8: PART_NAMES codes (0 bg, 1 head, 2 torso, 3 arms, 4 legs)

    def __len__(self) -> int:
        return len(self.index)

    def take(self, order: np.ndarray) -> "Rows":
        return Rows(**{f.name: getattr(self, f.name)[order] for f in fields(self)})

    @staticmethod
    def concat(parts: list["Rows"]) -> "Rows":
        return Rows(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Rows)})

    def to_npz(self) -> dict[str, np.ndarray]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["path"] = np.asarray(self.path, dtype=str)
        out["fingerprint"] = np.asarray(self.fingerprint).astype("S16")  # drops h5py's dtype metadata
        return out

    @staticmethod
    def from_npz(data: Any) -> "Rows":
        values = {f.name: data[f.name] for f in fields(Rows)}
        values["path"] = values["path"].astype(object)
        return Rows(**values)


COLUMNS = [f.name for f in fields(Rows)]


def write_cache(path: str | Path, splits: dict[str, tuple[int, Rows]], attrs: dict[str, Any], partial: bool = False) -> None:
    """Write a cache of in-memory rows atomically (a temporary file renamed over ``path``).

    ``splits`` maps split name to (number of rows the split has, its rows). Every row
    0..n-1 must be present once, unless ``partial`` (a shard): then the rows' positions
    are stored in an ``index`` dataset for ``reid-masks merge``. Large caches are written
    chunk by chunk with :class:`CacheWriter` instead (``reid-masks generate`` / ``merge``).
    """
    person_hw = next((tuple(r.person.shape[1:]) for _, r in splits.values() if r.person.ndim == 3), DEFAULT_PERSON_HW)
    layout = {s: (n, np.sort(r.index) if partial else None) for s, (n, r) in splits.items()}
    with atomic_path(path) as tmp:
        with CacheWriter(tmp, layout, attrs, person_hw) as writer:
            for split, (_, rows) in splits.items():
                writer.write(split, rows.take(np.argsort(rows.index, kind="stable")))


class CacheWriter:
    """Streams rows into a new cache file, so memory does not grow with the dataset.

    ``layout`` maps each split to ``(num_rows, stored_index)``: ``stored_index`` is None for
    a complete cache (rows 0..num_rows-1 are stored at their own position) or, for a shard,
    the sorted positions of the rows it holds (written as the ``index`` dataset). Datasets
    are created at their final size, chunked and compressed as the cache contract says;
    :meth:`write` puts rows at their positions (in any order, each row once) and
    :meth:`close` checks that every stored row was written exactly once.
    """

    def __init__(self, path: str | Path, layout: dict[str, tuple[int, np.ndarray | None]], attrs: dict[str, Any], person_hw: tuple[int, int]):
        import h5py

        self.path = Path(path)
        self._file = h5py.File(self.path, "w", rdcc_nbytes=32 << 20)
        self._stored: dict[str, np.ndarray | None] = {}
        self._written: dict[str, np.ndarray] = {}
        f = self._file
        for key, value in attrs.items():
            f.attrs[key] = json.dumps(value) if isinstance(value, (dict, list, tuple)) else value
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["status_names"] = json.dumps(STATUS_NAMES)
        f.attrs["region_names"] = json.dumps(REGION_NAMES)
        f.attrs["part_names"] = json.dumps(PART_NAMES)
        f.attrs["cut_names"] = json.dumps(CUT_NAMES)
        for split, (num_rows, stored) in layout.items():
            group = f.create_group(split)
            group.attrs["num_rows"] = int(num_rows)
            n = int(num_rows) if stored is None else len(stored)
            if stored is not None:
                stored = np.asarray(stored, np.int64)
                if len(stored) and (np.any(np.diff(stored) <= 0) or stored[0] < 0 or stored[-1] >= num_rows):
                    raise ValueError(f"split {split}: stored row positions must be increasing, within 0..{num_rows - 1}")
                group.create_dataset("index", data=stored)
            self._stored[split] = stored
            self._written[split] = np.zeros(n, dtype=bool)
            for name, (shape, dtype) in column_layout(person_hw).items():
                big = len(shape) > 0 and n > 0
                chunks = (min(n, ROW_CHUNK if len(shape) < 2 else 64),) + shape if big else None
                group.create_dataset(name, shape=(n,) + shape, dtype=dtype, chunks=chunks, compression="gzip" if big else None,
                                     compression_opts=4 if big else None, shuffle=big)

    def positions(self, split: str, index: np.ndarray) -> np.ndarray:
        """Where rows with split positions ``index`` are stored in this file."""
        stored = self._stored[split]
        index = np.asarray(index, np.int64)
        if stored is None:
            pos = index
            bad = (pos < 0) | (pos >= len(self._written[split]))
        else:
            pos = np.searchsorted(stored, index)
            bad = (pos >= len(stored)) | (stored[np.minimum(pos, len(stored) - 1)] != index) if len(stored) else np.ones(len(index), bool)
        if bad.any():
            raise ValueError(f"split {split}: row {int(index[np.argmax(bad)])} does not belong in this file")
        return pos

    def write(self, split: str, rows: Rows) -> None:
        """Store ``rows`` (sorted by ``index``) at their positions; each row once."""
        if not len(rows):
            return
        pos = self.positions(split, rows.index)
        if np.any(np.diff(pos) <= 0):
            raise ValueError(f"split {split}: rows must be sorted by index, each once")
        written = self._written[split]
        if written[pos].any():
            raise ValueError(f"split {split}: row {int(rows.index[np.argmax(written[pos])])} written twice")
        group = self._file[split]
        # contiguous runs become slice writes (h5py point selections are slow)
        breaks = np.flatnonzero(np.diff(pos) != 1) + 1
        for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(pos)]):
            lo, hi = int(pos[a]), int(pos[b - 1]) + 1
            for name in WRITTEN_COLUMNS:
                data = getattr(rows, name)[a:b]
                if name == "path":
                    data = np.asarray(data, dtype=object)
                elif name == "fingerprint":
                    data = np.asarray(data, dtype="S16")
                group[name][lo:hi] = data
        written[pos] = True

    def missing(self) -> dict[str, int]:
        return {s: int((~w).sum()) for s, w in self._written.items() if not w.all()}

    def close(self, check: bool = True) -> None:
        try:
            missing = self.missing() if check else {}
            if missing:
                raise ValueError("rows never written: " + ", ".join(f"{s} {n}" for s, n in missing.items()))
        finally:
            self._file.close()

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(check=exc_type is None)


#: Columns stored per row (``index`` is implicit in a complete cache); :func:`column_layout` gives their shapes.
WRITTEN_COLUMNS = tuple(c for c in COLUMNS if c != "index")


def column_layout(person_hw: tuple[int, int]) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Per-row shape and dtype of every stored column."""
    import h5py

    ph, pw = person_hw
    return {
        "path": ((), h5py.string_dtype("utf-8")), "fingerprint": ((), "S16"), "pid": ((), np.int32), "camid": ((), np.int16),
        "status": ((), np.uint8), "score": ((), np.float32), "box": ((4,), np.float32), "keypoints": ((17, 3), np.float32),
        "image_size": ((2,), np.int32), "masks": ((3, *MASK_HW), np.float32), "person": ((ph, pw), np.uint8), "regions": ((ph, pw), np.uint8),
        "cuts": ((2,), np.uint8),
        "parts": ((ph, pw), np.uint8),
    }


class MaskCache:
    """Read access to a cache; small columns are loaded on demand, images' masks by row."""

    def __init__(self, path: str | Path):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: mask cache not found (create it with 'reid-masks generate')")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError:
            raise UserError(f"{self.path}: not an HDF5 mask cache (unreadable HDF5 file)") from None
        version = self._file.attrs.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            self._file.close()
            raise UserError(f"{self.path}: cache schema version {version}, this reid-masks reads versions "
                            f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))} (regenerate the cache)")
        self.schema_version = int(version)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "MaskCache":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def attrs(self) -> dict[str, Any]:
        out = {}
        for key, value in self._file.attrs.items():
            if isinstance(value, str) and value[:1] in "[{":
                try:
                    value = json.loads(value)
                except ValueError:
                    pass
            out[key] = value.item() if isinstance(value, np.generic) else value
        return out

    @property
    def dataset(self) -> str:
        return str(self._file.attrs.get("dataset", ""))

    @property
    def splits(self) -> list[str]:
        return [s for s in CACHE_SPLITS if s in self._file]

    def num_rows(self, split: str) -> int:
        """Rows of the whole split (a shard holds only some of them, see ``row_index``)."""
        return int(self._file[split].attrs["num_rows"])

    def row_index(self, split: str) -> np.ndarray:
        """Each stored row's position in the split (0..n-1 for a complete cache)."""
        group = self._file[split]
        return group["index"][()] if "index" in group else np.arange(len(group["path"]))

    def has_column(self, name: str) -> bool:
        """Whether this cache's schema version has column ``name`` (``COLUMNS_SINCE``: ``cuts`` 2, ``parts`` 3)."""
        return self.schema_version >= COLUMNS_SINCE.get(name, 1)

    def _need(self, name: str) -> None:
        if not self.has_column(name):
            raise UserError(f"{self.path}: cache schema version {self.schema_version} has no '{name}' column (added in version "
                            f"{COLUMNS_SINCE[name]}); regenerate the cache with 'reid-masks generate' (without --update)")

    def column(self, split: str, name: str) -> np.ndarray:
        self._need(name)
        data = self._file[split][name][()]
        if name == "path":
            data = np.asarray([p.decode() if isinstance(p, bytes) else p for p in data], dtype=object)
        return data

    def rows(self, split: str, index: np.ndarray | None = None, columns: Iterable[str] = COLUMNS) -> dict[str, np.ndarray]:
        """Columns for the given rows (all rows when ``index`` is None)."""
        group = self._file[split]
        out = {}
        for name in columns:
            self._need(name)
            if name == "index":
                out[name] = self.row_index(split) if index is None else self.row_index(split)[np.asarray(index, dtype=np.int64)]
            elif index is None:
                out[name] = self.column(split, name)
            else:
                uniq, inv = np.unique(np.asarray(index, dtype=np.int64), return_inverse=True)
                data = group[name][uniq] if len(uniq) else group[name][:0]  # h5py wants increasing indices
                out[name] = data[inv]
        if "path" in out and index is not None:
            out["path"] = np.asarray([p.decode() if isinstance(p, bytes) else p for p in out["path"]], dtype=object)
        return out

    def block(self, split: str, start: int, stop: int) -> Rows:
        """Stored rows ``start:stop`` of a split as :class:`Rows` (``index`` = their split positions)."""
        group = self._file[split]
        for name in WRITTEN_COLUMNS:
            self._need(name)
        values = {name: group[name][start:stop] for name in WRITTEN_COLUMNS}
        values["path"] = np.asarray([p.decode() if isinstance(p, bytes) else p for p in values["path"]], dtype=object)
        values["index"] = group["index"][start:stop] if "index" in group else np.arange(start, start + len(values["pid"]), dtype=np.int64)
        return Rows(**values)

    def num_stored(self, split: str) -> int:
        return len(self._file[split]["pid"])

    def column_slice(self, split: str, name: str, start: int, stop: int) -> np.ndarray:
        """Stored rows ``start:stop`` of one column (one sequential read; paths as str)."""
        self._need(name)
        data = self._file[split][name][start:stop]
        if name == "path":
            data = np.asarray([p.decode() if isinstance(p, bytes) else p for p in data], dtype=object)
        return data

    def column_shape(self, split: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
        """(shape, dtype) of a stored column, without reading it."""
        self._need(name)
        ds = self._file[split][name]
        return tuple(ds.shape), ds.dtype

    def all_rows(self, split: str) -> Rows:
        return Rows(**self.rows(split))

    def path_index(self, split: str) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.column(split, "path"))}

    def gather(self, located: list[tuple[str, np.ndarray, np.ndarray]], name: str, n: int) -> np.ndarray:
        """Column ``name`` of ``n`` records found with :func:`locate_records`, in record order."""
        self._need(name)
        ref = self._file[self.splits[0]][name]
        out = np.zeros((n,) + ref.shape[1:], dtype=ref.dtype)
        for split, positions, rows in located:
            out[positions] = self.column(split, name)[rows]  # one sequential read per group (h5py point reads are slow)
        return out


def locate_records(cache: MaskCache, dataset: Any, split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Where the records of ``dataset``'s ``split`` are in the cache, matched by path.

    Returns ``[(cache split, positions in the record list, rows in that cache split)]``.
    A record is looked up in the cache split of the same name first, then in the others:
    CUHK03's classic splits regroup the images of a cache made for the new protocol
    (``reid-masks generate --dataset cuhk03_labeled``). A record in no split, or a cache of
    another dataset, is a UserError naming the cache file.
    """
    name = cache.dataset
    if name and name != dataset.name:
        raise UserError(f"{cache.path}: cache is for dataset {name!r}, not {dataset.name!r}")
    recs = dataset.split(split)
    where = np.full(len(recs), -1, dtype=np.int64)
    rows = np.zeros(len(recs), dtype=np.int64)
    order = [split] + [s for s in cache.splits if s != split] if split in cache.splits else cache.splits
    for k, cache_split in enumerate(order):
        todo = np.flatnonzero(where < 0)
        if not len(todo):
            break
        index = cache.path_index(cache_split)
        for i in todo:
            row = index.get(recs[i].path)
            if row is not None:
                where[i], rows[i] = k, row
    missing = np.flatnonzero(where < 0)
    if len(missing):
        raise UserError(f"{cache.path}: {len(missing)} {split} image(s) of {dataset.root} are not in the cache (first: {recs[missing[0]].path}); regenerate it for this dataset")
    return [(order[k], np.flatnonzero(where == k), rows[where == k]) for k in range(len(order)) if np.any(where == k)]
