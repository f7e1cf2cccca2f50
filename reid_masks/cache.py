"""The HDF5 mask cache: the contract between ``reid-masks`` and ``reid-train``.

One file per dataset, one group per split (``train``, ``query``, ``gallery``); every
dataset in a group has one row per image, aligned with ``path`` (relative to the dataset
root) and in the dataset adapter's order. See README.md, "The mask cache".
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from reid_masks.datasets.records import CACHE_SPLITS
from reid_masks.errors import UserError
from reid_masks.fileio import atomic_path

#: 2: the `cuts` column (which source placed each region cut); 3: the `parts` column;
#: 4: `inputs` (fingerprints of the parsing / mask files a row was made from), `row_digest`
#: and `map_digests` (each row's derived columns tied to its image fingerprint, README "The mask cache");
#: 5: `parsing` (the parser's own LIP labels at the image's size, as PNG bytes; a fourth map digest)
SCHEMA_VERSION = 5
READABLE_SCHEMA_VERSIONS = (1, 2, 3, 4, 5)  # older caches are read without the newer columns
COLUMNS_SINCE = {"cuts": 2, "parts": 3, "inputs": 4, "row_digest": 4, "map_digests": 4, "parsing": 5}  # columns a cache of an older schema version does not have
#: Columns of schema 4 that an older cache lacks and :class:`Rows` can do without (empty until :meth:`Rows.sealed`).
DIGEST_COLUMNS = ("inputs", "row_digest", "map_digests")
#: The full-size maps, each with its own digest (``map_digests[:, k]``): verified where they are read in full.
#: A schema-4 cache has the first three (its ``map_digests`` is (n, 3)).
MAP_COLUMNS = ("person", "regions", "parts", "parsing")
#: The columns ``row_digest`` covers besides ``path``, ``inputs`` and ``map_digests``, with their stored dtypes.
ROW_DIGEST_COLUMNS = (("fingerprint", "S16"), ("status", np.uint8), ("score", np.float32), ("box", np.float32),
                      ("keypoints", np.float32), ("image_size", np.int32), ("masks", np.float32), ("cuts", np.uint8))
VERIFY_BLOCK = 4096  # rows read at a time by :func:`check_cache_rows`
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
    inputs: np.ndarray | None = None  # (n,) object (str): "name=<blake2b>" of each parsing / mask file read ("" none)
    row_digest: np.ndarray | None = None  # (n,) S16: :func:`row_digests` (b"" until sealed)
    map_digests: np.ndarray | None = None  # (n, 4) S16: blake2b of person, regions, parts, parsing (b"" until sealed)
    parsing: np.ndarray | None = None  # (n,) object: uint8 arrays, each a PNG of the row's LIP labels at its image size (empty: no parser)

    def __post_init__(self) -> None:
        n = len(self.index)
        if self.parsing is None:
            self.parsing = byte_rows([b""] * n)
        if self.inputs is None:
            self.inputs = np.full(n, "", dtype=object)
        if self.row_digest is None:
            self.row_digest = np.zeros(n, dtype="S16")
        if self.map_digests is None:
            self.map_digests = np.zeros((n, len(MAP_COLUMNS)), dtype="S16")

    def __len__(self) -> int:
        return len(self.index)

    def take(self, order: np.ndarray) -> "Rows":
        return Rows(**{f.name: getattr(self, f.name)[order] for f in fields(self)})

    def sealed(self) -> "Rows":
        """These rows with their digests computed from their columns (rows just made, or of a
        cache older than schema 4)."""
        maps = map_digests(vars(self))
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(map_digests=maps, row_digest=row_digests(vars(self) | {"map_digests": maps}))
        return Rows(**values)

    def upgraded(self) -> "Rows":
        """Rows of a schema-4 cache (three map digests, no ``parsing``) as rows of this schema:
        their digests verified first (ValueError naming the rows), then sealed again with an
        empty ``parsing`` -- exact for a cache made without a parser, the only kind whose rows
        are carried over (:meth:`MaskCache.parsing_lost`)."""
        if self.map_digests.shape[1] >= len(MAP_COLUMNS):
            return self
        bad = digest_mismatches(vars(self))
        if len(bad) or self.unsealed().any():
            first = self.index[bad[:3]] if len(bad) else self.index[self.unsealed()][:3]
            raise ValueError(f"rows {', '.join(map(str, first))} do not match their row digests "
                             f"(masks moved between rows or edited since they were made)")
        return self.sealed()

    def unsealed(self) -> np.ndarray:
        """Which rows carry no digest yet."""
        return np.asarray(self.row_digest, dtype="S16") == b""

    @staticmethod
    def concat(parts: list["Rows"]) -> "Rows":
        return Rows(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Rows)})

    def to_npz(self) -> dict[str, np.ndarray]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["path"] = np.asarray(self.path, dtype=str)
        out["fingerprint"] = np.asarray(self.fingerprint).astype("S16")  # drops h5py's dtype metadata
        out["inputs"] = np.asarray(self.inputs, dtype=str).reshape(len(self))
        out["row_digest"] = np.asarray(self.row_digest).astype("S16")
        out["map_digests"] = np.asarray(self.map_digests).astype("S16")
        # variable-length rows as one flat array and each row's length (npz holds no object arrays)
        out["parsing"] = np.concatenate([np.zeros(0, np.uint8), *self.parsing]).astype(np.uint8)
        out["parsing_sizes"] = np.asarray([len(b) for b in self.parsing], np.int64)
        return out

    @staticmethod
    def from_npz(data: Any) -> "Rows":
        """Rows from :meth:`to_npz`'s arrays (``data``: a mapping of those names)."""
        values = {f.name: data[f.name] for f in fields(Rows)}
        values["path"] = values["path"].astype(object)
        values["inputs"] = values["inputs"].astype(object)
        sizes = np.asarray(data["parsing_sizes"], np.int64)
        if sizes.sum() != len(values["parsing"]) or (sizes < 0).any():
            raise ValueError(f"parsing: {len(values['parsing'])} bytes for rows of {int(sizes.sum())}")
        values["parsing"] = byte_rows(np.split(np.asarray(values["parsing"], np.uint8), np.cumsum(sizes)[:-1]) if len(sizes) else [])
        return Rows(**values)


COLUMNS = [f.name for f in fields(Rows)]


def byte_rows(items: Iterable[Any]) -> np.ndarray:
    """(n,) object array of 1-D uint8 arrays (a variable-length column, e.g. ``parsing``);
    ``np.asarray`` would make equal-length rows one 2-D array."""
    items = list(items)
    out = np.empty(len(items), dtype=object)
    for k, item in enumerate(items):
        out[k] = np.frombuffer(item, np.uint8) if isinstance(item, bytes) else np.asarray(item, np.uint8).reshape(-1)
    return out


def encode_parsing(labels: np.ndarray | None) -> bytes:
    """The ``parsing`` cell of one row: LIP labels (HxW uint8) as an 8-bit grey PNG; ``b""`` for None."""
    if labels is None:
        return b""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(labels, np.uint8), mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def decode_parsing(cell: Any) -> np.ndarray | None:
    """LIP labels (HxW uint8) of one ``parsing`` cell; None for an empty one (no parser)."""
    data = bytes(np.asarray(cell, np.uint8))
    if not data:
        return None
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on PIL's read-only view)


def parser_of(provenance: Any) -> str:
    """The parsing source a cache's ``provenance`` names (``schp``, ``precomputed``); ``none`` without one."""
    parser = provenance.get("parser", {}) if isinstance(provenance, dict) else {}
    return str(parser.get("name", "none")) if isinstance(parser, dict) else "none"


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).hexdigest().encode()


def _text(value: Any) -> bytes:
    return (value if isinstance(value, bytes) else str(value).encode()) + b"\0"


def map_column_digests(column: np.ndarray) -> np.ndarray:
    """(n,) S16: blake2b-64 of each row of one map column (uint8 bytes; a ``parsing`` cell's PNG bytes)."""
    if column.dtype == object:
        return np.asarray([_digest(np.asarray(cell, np.uint8).tobytes()) for cell in column], dtype="S16")
    flat = np.ascontiguousarray(column, dtype=np.uint8).reshape(len(column), -1)
    return np.asarray([_digest(row.tobytes()) for row in flat], dtype="S16").reshape(len(column))


def map_digests(columns: dict[str, Any]) -> np.ndarray:
    """(n, 4) S16: :func:`map_column_digests` of each row's ``person``, ``regions``, ``parts`` and ``parsing``."""
    return np.stack([map_column_digests(columns[name]) for name in MAP_COLUMNS], axis=1)


def row_digests(columns: dict[str, Any]) -> np.ndarray:
    """(n,) S16: blake2b-64 of each row's ``path``, ``inputs``, the :data:`ROW_DIGEST_COLUMNS`
    (image fingerprint, status, masks, ...) and its ``map_digests``.

    It ties every derived column to the image fingerprint of the same row: rows of the masks
    (or maps) moved to other rows, or values edited, no longer match. Values are hashed in
    their stored dtypes, so rows in memory and rows read back from a cache digest alike.
    """
    n = len(columns["path"])
    fixed = [np.ascontiguousarray(columns[name], dtype=dtype).reshape(n, -1).view(np.uint8) for name, dtype in ROW_DIGEST_COLUMNS]
    fixed.append(np.ascontiguousarray(columns["map_digests"], dtype="S16").reshape(n, -1).view(np.uint8))
    block = np.concatenate(fixed, axis=1)
    inputs = columns.get("inputs")
    inputs = [""] * n if inputs is None else inputs
    return np.asarray([_digest(_text(p) + _text(i) + block[k].tobytes()) for k, (p, i) in enumerate(zip(columns["path"], inputs))], dtype="S16")


def digest_mismatches(columns: dict[str, Any]) -> np.ndarray:
    """Positions of the rows whose digests do not match their columns: ``row_digest`` always,
    and each of :data:`MAP_COLUMNS` that ``columns`` holds against its ``map_digests`` entry."""
    bad = np.asarray(columns["row_digest"], dtype="S16") != row_digests(columns)
    bad[map_mismatches(columns)] = True
    return np.flatnonzero(bad)


def map_mismatches(columns: dict[str, Any]) -> np.ndarray:
    """Positions of the rows whose maps in ``columns`` (any of :data:`MAP_COLUMNS`) differ from
    their ``map_digests`` entries: what a reader of the maps checks (MGRAN's mask loader)."""
    stored = np.asarray(columns["map_digests"], dtype="S16")
    bad = np.zeros(len(stored), dtype=bool)
    for k, name in enumerate(MAP_COLUMNS[: stored.shape[1]]):  # a schema-4 cache: the first three
        if name in columns:
            bad |= stored[:, k] != map_column_digests(columns[name])
    return np.flatnonzero(bad)


def masks_out_of_range(masks: np.ndarray) -> np.ndarray:
    """Positions of the rows whose 24x8 masks hold a value outside [0, 1] or not finite (NaN, inf)."""
    m = np.asarray(masks, dtype=np.float32).reshape(len(masks), -1)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(m).all(axis=1) & (m >= 0).all(axis=1) & (m <= 1).all(axis=1)
    return np.flatnonzero(~ok)


def check_cache_rows(cache: "MaskCache", splits: Iterable[str] | None = None, maps: Iterable[str] = ()) -> str | None:
    """Refuse a cache whose rows are not the rows ``generate`` wrote, in one line naming the cache,
    the split and the first rows: every row's ``row_digest`` (masks, keypoints, status, map
    digests ... tied to its image fingerprint, path and input files) and its masks' range
    ([0, 1], finite). ``maps`` (names of :data:`MAP_COLUMNS`) are verified too, at the cost of
    reading them in full (README: "The mask cache", cost in docs/benchmarks.md).

    Reads ``VERIFY_BLOCK`` rows at a time. The one check behind ``reid-train fit``,
    ``evaluate``, ``extract``, ``visualize`` and ``reid-masks inspect`` / ``merge``. A cache
    older than schema 4 has no digests: its ranges are still checked and the returned line
    (a warning for the caller to show) says its rows cannot be verified; None otherwise.
    """
    splits = cache.splits if splits is None else list(splits)
    maps = list(maps)
    sealed = cache.has_column("row_digest")
    names = ["masks"] + ([c for c in COLUMNS if c != "index" and c not in MAP_COLUMNS] + maps if sealed else [])
    fix = "regenerate it: remove it, then rerun the reid-masks generate command that made it (without --update)"
    for split in splits:
        n = cache.num_stored(split)
        for a in range(0, n, VERIFY_BLOCK):
            b = min(n, a + VERIFY_BLOCK)
            cols = {name: cache.read(split, name, slice(a, b)) for name in dict.fromkeys(names)}
            bad = masks_out_of_range(cols["masks"])
            if len(bad):
                raise UserError(f"{cache.path}: {split} row(s) {_rows(cache, split, a + bad)} have mask values outside [0, 1] or "
                                f"not finite (NaN/inf); the cache was edited or damaged: {fix}")
            if sealed:
                bad = digest_mismatches(cols)
                if len(bad):
                    raise UserError(f"{cache.path}: {split} row(s) {_rows(cache, split, a + bad)} do not match their row digest "
                                    f"(masks moved to other rows or edited since reid-masks generate wrote them); {fix}")
    if not sealed:
        return (f"{cache.path}: cache schema version {cache.schema_version} has no row digests, so its masks cannot be verified "
                f"against their images; rerun the reid-masks generate command that made it with --update to add them")
    return None


def damaged_rows(dset: Any) -> tuple[int, int] | None:
    """Rows ``(start, stop)`` of the first chunk of an h5py dataset that cannot be read (a
    contiguous or scalar dataset: all of it, when it cannot be read); None when it reads."""
    if not dset.chunks or not dset.shape:
        try:
            dset[()]
        except OSError:
            return 0, len(dset) if dset.shape else 0
        return None
    for i in range(dset.id.get_num_chunks()):
        start = dset.id.get_chunk_info(i).chunk_offset[0]
        stop = min(start + dset.chunks[0], dset.shape[0])
        try:
            dset[start:stop]
        except OSError:
            return start, stop
    return None


def find_damaged_chunk(path: str | Path) -> tuple[str, int, int] | None:
    """``(split/column, first row, end row)`` of the first stored chunk of the cache at ``path`` that
    does not decode (a flipped byte in a gzip chunk), small columns first; None when every chunk reads."""
    import h5py

    with h5py.File(path, "r") as f:
        columns: list[Any] = []
        f.visititems(lambda name, obj: columns.append(obj) if isinstance(obj, h5py.Dataset) else None)
        for dset in sorted(columns, key=lambda d: d.size * d.dtype.itemsize):
            where = damaged_rows(dset)
            if where is not None:
                return (dset.name.lstrip("/"), *where)
    return None


def damaged_message(path: str | Path, where: str, start: int, stop: int, exc: BaseException) -> str:
    """The one line for a damaged chunk: the file, the split/column and rows, h5py's reason, what to do."""
    return (f"{path}: damaged data in {where} rows {start}-{stop - 1} ({str(exc).splitlines()[0]}); "
            f"the file is corrupted: regenerate it with 'reid-masks generate' (or restore a copy)")


def _rows(cache: "MaskCache", split: str, stored: np.ndarray, show: int = 3) -> str:
    """"12, 40, 41 (of 7 bad)" -- split positions of the first stored rows given."""
    index = cache.row_index(split)[np.asarray(stored[:show], np.int64)]
    more = f" (of {len(stored)})" if len(stored) > show else ""
    return ", ".join(str(int(i)) for i in index) + (", ..." + more if more else "")


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
        """Store ``rows`` (sorted by ``index``) at their positions; each row once.

        Rows that carry digests (made by ``generate``, read from a schema-4 cache) are
        verified against them, so chunks, ``merge`` and ``--update`` never carry a moved or
        edited row into a new cache under a fresh digest; rows without (written from memory,
        or from a cache older than schema 4) are sealed here.
        """
        if not len(rows):
            return
        try:
            rows = rows.upgraded()  # rows of a schema-4 shard (merge): three map digests, verified, then sealed with the fourth
        except ValueError as exc:
            raise ValueError(f"split {split}: {exc}") from None
        unsealed = rows.unsealed()
        if unsealed.all():
            rows = rows.sealed()
        else:
            bad = digest_mismatches(vars(rows))
            if unsealed.any() or len(bad):
                first = rows.index[bad[:3]] if len(bad) else rows.index[unsealed][:3]
                raise ValueError(f"split {split}: rows {', '.join(map(str, first))} do not match their row digests "
                                 f"(masks moved between rows or edited since they were made)")
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
                elif name == "inputs":
                    data = np.asarray(data, dtype=object)
                elif name == "parsing":  # h5py's slice assignment turns equal-length cells into a 2-D array
                    group[name].write_direct(byte_rows(data), np.s_[0 : hi - lo], np.s_[lo:hi])
                    continue
                elif name in ("fingerprint", "row_digest", "map_digests"):
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
        "inputs": ((), h5py.string_dtype("utf-8")), "row_digest": ((), "S16"), "map_digests": ((len(MAP_COLUMNS),), "S16"),
        "parsing": ((), h5py.vlen_dtype(np.uint8)),  # PNG bytes: already compressed, so stored without a filter
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
    def parser(self) -> str:
        """The cache's parsing source from its provenance (``schp``, ``precomputed``); ``none`` without one."""
        return parser_of(self.attrs.get("provenance", {}))

    def parsing_lost(self) -> bool:
        """True for a cache made with a parser but older than the ``parsing`` column (schema < 5):
        its rows cannot be carried into a schema-5 cache, whose parsing would then be missing."""
        return not self.has_column("parsing") and self.parser != "none"

    def parsing(self, split: str, row: int) -> np.ndarray | None:
        """LIP labels (HxW uint8, the image's size) of stored row ``row``; None without a parser."""
        return decode_parsing(self.read(split, "parsing", int(row)))

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

    def read(self, split: str, name: str, sel: Any = ()) -> np.ndarray:
        """``split/name[sel]``; a damaged compressed chunk (h5py's OSError) is a one-line UserError."""
        self._need(name)
        dset = self._file[split][name]
        try:
            data = dset[sel]
        except OSError as exc:
            start, end = damaged_rows(dset) or (0, len(dset))
            raise UserError(damaged_message(self.path, f"{split}/{name}", start, end, exc)) from None
        if name == "path" or name == "inputs":
            data = np.asarray([p.decode() if isinstance(p, bytes) else p for p in np.atleast_1d(data)], dtype=object)
        return data

    def column(self, split: str, name: str) -> np.ndarray:
        return self.read(split, name)

    def rows(self, split: str, index: np.ndarray | None = None, columns: Iterable[str] = COLUMNS) -> dict[str, np.ndarray]:
        """Columns for the given rows (all rows when ``index`` is None); by default every column
        this cache's schema has (a cache older than schema 4 has no digest columns)."""
        if columns is COLUMNS:
            columns = [c for c in COLUMNS if self.has_column(c)]
        out = {}
        for name in columns:
            self._need(name)
            if name == "index":
                out[name] = self.row_index(split) if index is None else self.row_index(split)[np.asarray(index, dtype=np.int64)]
            elif index is None:
                out[name] = self.column(split, name)
            else:
                uniq, inv = np.unique(np.asarray(index, dtype=np.int64), return_inverse=True)
                data = self.read(split, name, uniq if len(uniq) else slice(0, 0))  # h5py wants increasing indices
                out[name] = data[inv]
        return out

    def block(self, split: str, start: int, stop: int) -> Rows:
        """Stored rows ``start:stop`` of a split as :class:`Rows` (``index`` = their split positions)."""
        group = self._file[split]
        names = [c for c in WRITTEN_COLUMNS if self.has_column(c)]  # older: upgraded or sealed on write
        values = {name: self.read(split, name, slice(start, stop)) for name in names}
        values["index"] = group["index"][start:stop] if "index" in group else np.arange(start, start + len(values["pid"]), dtype=np.int64)
        return Rows(**values)

    @property
    def person_hw(self) -> tuple[int, int]:
        """Height, width of the stored person / regions / parts maps (as stored, whatever the attributes say)."""
        return tuple(self._file[self.splits[0]]["person"].shape[1:]) if self.splits else DEFAULT_PERSON_HW

    def num_stored(self, split: str) -> int:
        return len(self._file[split]["pid"])

    def column_slice(self, split: str, name: str, start: int, stop: int) -> np.ndarray:
        """Stored rows ``start:stop`` of one column (one sequential read; paths as str)."""
        return self.read(split, name, slice(start, stop))

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
