"""``reid-masks generate``: dataset images -> HDF5 mask cache, resumable and shardable.

Work is cut into fixed chunks of rows (train, then query, then gallery, in the adapter's
order). Each finished chunk is saved atomically under ``<out>.partial/``, so a crash or
Ctrl-C loses at most the chunks in flight and a rerun resumes; when every chunk is done
the cache is assembled into a temporary file and renamed to ``<out>``. ``--shard i/n``
takes chunks ``i, i+n, i+2n, ...`` and writes ``<stem>.shard<i>of<n>.h5`` for
``reid-masks merge``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import queue
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reid_masks import __version__
from reid_masks.assemble import assemble, cache_estimate, mib
from reid_masks.cache import DEFAULT_PERSON_HW, STATUS, STATUS_NAMES, MaskCache, Rows, byte_rows, check_cache_rows, encode_parsing
from reid_masks.chunks import BadChunk, ChunkStore
from reid_masks.datasets import CACHE_SPLITS, Record, ReIDDataset, build_dataset, cache_splits
from reid_masks.derive import KEYPOINT_MIN_SCORE, Derived, Observation, derive
from reid_masks.errors import UserError
from reid_masks.fileio import OutputLock, check_writable, is_disk_full, remove_dead_temps, write_json_atomic, write_target
from reid_masks.keypoints_import import KeypointTable, load_keypoints
from reid_masks.progress import Progress
from reid_masks.workers import Interrupted, detached_worker_init, sigterm_as_interrupt

log = logging.getLogger(__name__)
CHUNK_ROWS = 256


@dataclass
class GenerateConfig:
    dataset: str
    root: Path
    out: Path
    dataset_options: dict[str, Any] = field(default_factory=dict)
    parsing_dir: Path | None = None
    masks_dir: Path | None = None
    seg_siblings: bool = False
    keypoints: Path | None = None  # imported keypoints (reid_masks.keypoints_import) instead of a keypoint model
    keypoints_images: Path | None = None  # the COCO images that map a results list's image ids
    backend: str = "auto"  # auto | torchvision | detectron2 | none
    backend_options: dict[str, Any] = field(default_factory=dict)
    parser: str | None = None  # schp | precomputed | none; None: precomputed with --parsing-dir, else none
    parser_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 8
    workers: int = 2
    shard: tuple[int, int] = (0, 1)
    update: bool = False
    person_size: tuple[int, int] = DEFAULT_PERSON_HW
    chunk_rows: int = CHUNK_ROWS
    command: str = ""


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' with 0 <= i < n (Slurm array task ids start at 0)."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text!r}: expected 0 <= i < n (shards are numbered 0..n-1)")
    return i, n


def shard_path(out: Path, shard: tuple[int, int]) -> Path:
    i, n = shard
    return out if n == 1 else out.with_name(f"{out.stem}.shard{i}of{n}{out.suffix}")


def fingerprint(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=8).hexdigest().encode()


def file_fingerprint(path: Path) -> bytes:
    """:func:`fingerprint` of a file's bytes; ``b"missing"`` for one that cannot be read."""
    try:
        return fingerprint(Path(path).read_bytes())
    except OSError:
        return b"missing"


# --- the files a row is made from, besides its image ---------------------------------------------


class RowInput:
    """A per-image input source read besides the image: the hook every such source plugs into.

    A source has a short ``name`` (shown when its data for a row changes) and gives, for the
    image at ``rel`` (path relative to the dataset root), the fingerprint(s) of what the row of
    that image is made from: by default the blake2b of each file :meth:`files` returns
    (``name=missing`` for an absent file). They go into the cache's ``inputs`` column as
    ``name=<16 hex>``, so data replaced after the cache was made makes ``generate`` call the
    cache stale naming the source, ``--update`` recompute that row, and a resumed chunk made
    from older data be recomputed. To add a source: subclass this with ``name`` and either
    :meth:`files` (one or more files per image: PNGs, per-image json) or, for a source that
    keeps every image in one file, :meth:`fingerprints` over that image's own entry (as
    :class:`ImportedKeypoints` does), so an edit to one entry marks only its row; then return
    an instance from :func:`row_inputs`. The source's own reading stays in :class:`ImageSource`.
    """

    name = ""

    def files(self, rel: str) -> list[Path]:
        return []

    def fingerprints(self, rel: str, hashed: dict[Path, bytes] | None = None) -> list[bytes]:
        """One fingerprint per file of :meth:`files` (``hashed``: fingerprints already computed, by path)."""
        hashed = hashed or {}
        return [hashed[f] if f in hashed else file_fingerprint(f) for f in self.files(rel)]


class ParsingPNGs(RowInput):
    """``--parsing-dir``: LIP label PNGs at ``<dir>/<image path>.png``."""

    name = "parsing"

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def files(self, rel: str) -> list[Path]:
        return [(self.folder / rel).with_suffix(".png")]


class MaskPNGs(RowInput):
    """``--masks-dir`` (``<dir>/<image path>.png``) or ``--seg-siblings`` (MGCAM's ``<split>_seg/``)."""

    name = "mask"

    def __init__(self, root: Path, folder: Path | None):
        self.root, self.folder = Path(root), folder

    def files(self, rel: str) -> list[Path]:
        if self.folder is not None:
            return [(Path(self.folder) / rel).with_suffix(".png")]
        p = Path(rel)
        return [self.root / f"{p.parts[0]}_seg" / Path(*p.parts[1:]).with_suffix(".png")]


class ImportedKeypoints(RowInput):
    """``--keypoints``: one source file (or folder) for all images; each row's fingerprint is that of
    its own entry (:meth:`reid_masks.keypoints_import.KeypointTable.entry_digest`, ``none`` without one)."""

    name = "keypoints"

    def __init__(self, table: KeypointTable):
        self.table = table

    def fingerprints(self, rel: str, hashed: dict[Path, bytes] | None = None) -> list[bytes]:
        return [self.table.entry_digest(rel)[:16].encode() or b"none"]


def row_inputs(root: Path, parsing_dir: Path | None, masks_dir: Path | None, seg_siblings: bool,
               keypoints: KeypointTable | None = None) -> list[RowInput]:
    """The per-image input sources of a run (:class:`RowInput`: add new sources here)."""
    out: list[RowInput] = []
    if parsing_dir is not None:
        out.append(ParsingPNGs(parsing_dir))
    if masks_dir is not None or seg_siblings:
        out.append(MaskPNGs(root, masks_dir))
    if keypoints is not None:
        out.append(ImportedKeypoints(keypoints))
    return out


def inputs_text(sources: list[RowInput], rel: str, hashed: dict[Path, bytes] | None = None) -> str:
    """The ``inputs`` cell of a row: ``name=<fingerprint>`` per source file or entry, space-separated ("" without sources)."""
    return " ".join(f"{src.name}={fp.decode()}" for src in sources for fp in src.fingerprints(rel, hashed))


def inputs_texts(sources: list[RowInput], rels: list[str], workers: int) -> list[str]:
    """:func:`inputs_text` of many rows, their files hashed in threads first (:func:`hash_files`)."""
    if not sources:
        return [""] * len(rels)
    files = [f for rel in rels for src in sources for f in src.files(rel)]
    hashed = dict(zip(files, hash_files(files, workers)))
    return [inputs_text(sources, rel, hashed) for rel in rels]


def changed_inputs(old: str, new: str) -> list[str]:
    """Names of the sources whose files differ between two ``inputs`` cells."""
    def parse(text: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for pair in text.split():
            name, _, value = pair.partition("=")
            out.setdefault(name, []).append(value)
        return out

    a, b = parse(old), parse(new)
    return [name for name in dict.fromkeys([*a, *b]) if a.get(name) != b.get(name)]


# --- per image work (runs in DataLoader workers) -------------------------------------------


@dataclass
class Item:
    split: str
    index: int
    record: Record
    fingerprint: bytes
    image: np.ndarray | None  # RGB, None when unreadable
    parsing: np.ndarray | None
    mask_png: np.ndarray | None
    error: str | None = None  # a user error to raise in the main process
    inputs: str = ""  # the row's ``inputs`` cell (:class:`RowInput`)
    derived: Derived | None = None
    instances: Any = None  # the backend's Instances (set in the main process), or the imported keypoints' (set on load)


class ImageSource:
    """Reads an image, its precomputed parsing / mask PNG and imported keypoints; picklable for workers."""

    def __init__(self, root: Path, parsing_dir: Path | None, masks_dir: Path | None, seg_siblings: bool, keypoints: KeypointTable | None = None):
        self.root, self.parsing_dir, self.masks_dir, self.seg_siblings = root, parsing_dir, masks_dir, seg_siblings
        self.keypoints = keypoints
        self.inputs = row_inputs(root, parsing_dir, masks_dir, seg_siblings, keypoints)

    def mask_png_path(self, rel: str) -> Path | None:
        return MaskPNGs(self.root, self.masks_dir).files(rel)[0] if self.masks_dir is not None or self.seg_siblings else None

    def load(self, split: str, index: int, rec: Record) -> Item:
        from reid_masks.imageio import read_image, read_label_png, read_parsing_png

        path = self.root / rec.path
        inputs = inputs_text(self.inputs, rec.path)  # before reading them: a file replaced meanwhile is seen as changed next run
        try:
            data = path.read_bytes()
        except OSError:  # a dangling link, a vanished or unreadable file: the row says so, never dropped
            return Item(split, index, rec, b"missing", None, None, None, inputs=inputs)
        item = Item(split, index, rec, fingerprint(data), None, None, None, inputs=inputs)
        try:
            item.image = read_image(path, data)
        except UserError:  # any decoder failure: recorded as the row's status
            return item
        h, w = item.image.shape[:2]
        try:
            if self.parsing_dir is not None:
                item.parsing = self._label(read_parsing_png, (self.parsing_dir / rec.path).with_suffix(".png"), h, w, "parsing")
            mpath = self.mask_png_path(rec.path)
            if mpath is not None:
                item.mask_png = self._label(read_label_png, mpath, h, w, "person mask") > 0
            if self.keypoints is not None:
                item.instances = self.keypoints.instances(rec.path, h, w)
        except UserError as exc:
            item.error = str(exc)
        return item

    @staticmethod
    def _label(reader: Any, path: Path, h: int, w: int, what: str) -> np.ndarray:
        if not path.is_file():
            raise UserError(f"{path}: {what} PNG not found (expected one per image, same relative path and stem)")
        lab = reader(path)
        if lab.shape != (h, w):
            raise UserError(f"{path}: {what} PNG is {lab.shape[1]}x{lab.shape[0]}, expected the image's {w}x{h}")
        return lab


class ItemDataset:
    """torch-style map dataset over the pending rows; derives in the worker when no model runs."""

    def __init__(self, source: ImageSource, rows: list[tuple[str, int, Record]], derive_here: bool):
        self.source, self.rows, self.derive_here = source, rows, derive_here

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Item:
        item = self.source.load(*self.rows[i])
        if self.derive_here and item.image is not None and item.error is None:
            item.derived = derive(observation(item, item.instances))
            item.image = item.instances = None  # nothing downstream needs the pixels or the people
        return item


def observation(item: Item, instances: Any) -> Observation:
    h, w = item.image.shape[:2]
    return Observation(h, w, instances, item.parsing, item.mask_png)


def collate(items: list[Item]) -> list[Item]:
    return items


# --- assembling rows --------------------------------------------------------------------------


def row_of(item: Item, person_hw: tuple[int, int]) -> dict[str, Any]:
    """The cache columns for one processed item."""
    from PIL import Image

    ph, pw = person_hw
    if item.derived is None:  # unreadable image
        return dict(
            status=STATUS["unreadable"], score=0.0, box=np.zeros(4, np.float32), keypoints=np.zeros((17, 3), np.float32),
            image_size=np.zeros(2, np.int32), masks=np.zeros((3, 24, 8), np.float32),
            person=np.zeros((ph, pw), np.uint8), regions=np.zeros((ph, pw), np.uint8), cuts=np.zeros(2, np.uint8),
            parts=np.zeros((ph, pw), np.uint8), parsing=b"",
        )
    d = item.derived
    h, w = d.person.shape

    def nearest(a: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(a.astype(np.uint8)).resize((pw, ph), Image.NEAREST)) if (h, w) != (ph, pw) else a.astype(np.uint8)

    return dict(
        status=d.status, score=d.score, box=d.box, keypoints=d.keypoints, image_size=np.array([h, w], np.int32),
        masks=d.masks, person=nearest(d.person), regions=nearest(d.regions), cuts=d.cuts, parts=nearest(d.parts),
        parsing=encode_parsing(item.parsing),  # the parser's own labels, at the image's size (lip-png exports them as they were)
    )


def rows_from(items: list[Item], person_hw: tuple[int, int]) -> Rows:
    cols = [row_of(it, person_hw) for it in items]

    def col(name: str, dtype: Any) -> np.ndarray:
        return np.asarray([c[name] for c in cols], dtype=dtype)

    return Rows(
        index=np.asarray([it.index for it in items], np.int64),
        path=np.asarray([it.record.path for it in items], dtype=object),
        pid=np.asarray([it.record.pid for it in items], np.int32),
        camid=np.asarray([it.record.camid for it in items], np.int16),
        fingerprint=np.asarray([it.fingerprint for it in items], dtype="S16"),
        status=col("status", np.uint8), score=col("score", np.float32), box=col("box", np.float32),
        keypoints=col("keypoints", np.float32), image_size=col("image_size", np.int32), masks=col("masks", np.float32),
        person=col("person", np.uint8), regions=col("regions", np.uint8), cuts=col("cuts", np.uint8).reshape(-1, 2),
        parts=col("parts", np.uint8), inputs=np.asarray([it.inputs for it in items], dtype=object),
        parsing=byte_rows(c["parsing"] for c in cols),
    ).sealed()


def parser_name(cfg: GenerateConfig) -> str:
    name = cfg.parser or ("precomputed" if cfg.parsing_dir else "none")
    if name == "schp" and cfg.parsing_dir:
        raise UserError("--parser schp and --parsing-dir exclude each other (use --parser precomputed to read PNGs)")
    if name == "precomputed" and not cfg.parsing_dir:
        raise UserError("--parser precomputed needs --parsing-dir DIR (LIP label PNGs at DIR/<image's relative path with .png for its extension>)")
    return name


def make_parser(cfg: GenerateConfig) -> Any:
    from reid_masks.parsing.source import make_parser_source

    return make_parser_source(parser_name(cfg), **cfg.parser_options)


def make_backend(cfg: GenerateConfig) -> Any:
    name = cfg.backend
    has_source = bool(cfg.parsing_dir or cfg.masks_dir or cfg.seg_siblings or parser_name(cfg) == "schp")
    if cfg.keypoints is not None:
        if name not in ("auto", "none"):
            raise UserError(f"--keypoints replaces the keypoint model: use it without --backend {name} (the person mask then comes from --parsing-dir, --parser schp, --masks-dir or --seg-siblings)")
        if not has_source:
            raise UserError("--keypoints gives keypoints only: add a mask source (--parsing-dir, --parser schp, --masks-dir or --seg-siblings)")
    if cfg.keypoints_images is not None and cfg.keypoints is None:
        raise UserError("--keypoints-images maps the image ids of a --keypoints results list; give --keypoints too")
    if name == "auto":
        name = "none" if has_source else "torchvision"
    if name == "none":
        if not has_source:
            raise UserError("--backend none needs a mask source: --parsing-dir, --parser schp, --masks-dir or --seg-siblings")
        return None
    if name == "torchvision":
        from reid_masks.backends.torchvision_backend import TorchvisionBackend

        return TorchvisionBackend(**cfg.backend_options)
    if name == "detectron2":
        from reid_masks.backends.detectron2_backend import Detectron2Backend

        return Detectron2Backend(**cfg.backend_options)
    raise UserError(f"--backend {name!r}: expected auto, torchvision, detectron2 or none")


def work_rows(ds: ReIDDataset) -> list[tuple[str, int, Record]]:
    return [(s, i, r) for s in cache_splits(ds) for i, r in enumerate(ds.split(s))]


def dataset_signature(rows: list[tuple[str, int, Record]]) -> str:
    h = hashlib.sha256()
    for s, i, r in rows:
        h.update(f"{s}\t{i}\t{r.path}\t{r.pid}\t{r.camid}\n".encode())
    return h.hexdigest()[:16]


def provenance(cfg: GenerateConfig, backend: Any, parser: Any, keypoints: KeypointTable | None = None) -> dict[str, Any]:
    prov = {
        "package": "reid-masks",
        "version": __version__,
        "backend": backend.provenance() if backend is not None else {"name": "none"},
        "parser": parser.provenance() if parser is not None else {"name": parser_name(cfg)},
        "parsing_dir": str(cfg.parsing_dir.resolve()) if cfg.parsing_dir else None,
        "masks_dir": str(cfg.masks_dir.resolve()) if cfg.masks_dir else None,
        "seg_siblings": cfg.seg_siblings,
        "mask_threshold": 0.5,
        "keypoint_min_score": KEYPOINT_MIN_SCORE,
        "person_size": list(cfg.person_size),
        "derivation": "reid_masks.derive v2 (README: How masks are derived)",
    }
    if keypoints is not None:  # only then: caches made without it keep their provenance (and --update)
        prov["keypoints"] = keypoints.provenance()
    return prov


def hash_files(paths: list[Path], workers: int, progress: Progress | None = None) -> list[bytes]:
    """:func:`fingerprint` of every file (``b"missing"`` for one that cannot be read), in threads.

    blake2b and file reads release the GIL, so threads scale on local disks and hide the
    latency of network file systems (rates: docs/benchmarks.md, "Fingerprint check").
    """
    from concurrent.futures import ThreadPoolExecutor

    out: list[bytes] = []
    step = 1024
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(paths), step):
            out.extend(pool.map(file_fingerprint, paths[start : start + step]))
            if progress is not None:
                progress.update(len(paths[start : start + step]))
    return out


def compare_with_existing(out: Path, ds: ReIDDataset, rows: list[tuple[str, int, Record]], prov: dict, workers: int,
                          sources: list[RowInput]) -> tuple[list[str | None], list[str], MaskCache]:
    """What changed, per row of the dataset, since the existing cache at ``out`` was made.

    Returns each row's change (None: unchanged; ``"image"``: image changed or added; else the
    names of the :class:`RowInput` sources whose files changed, e.g. ``"parsing"``), the rows'
    current ``inputs`` cells, and the open cache. A cache whose rows fail their digests or
    ranges (:func:`check_cache_rows`) is refused: ``--update`` would carry them over.
    """
    old = MaskCache(out)
    try:
        if old.dataset != ds.name:
            raise UserError(f"{out}: existing cache is for dataset {old.dataset!r}, not {ds.name!r} (choose another --out)")
        old_prov = dict(old.attrs.get("provenance", {}))
        if strip_volatile(old_prov) != strip_volatile(prov):
            raise UserError(f"{out}: existing cache was made with other options ({diff_keys(old_prov, prov)}); remove it or choose another --out")
        check_cache_rows(old)
    except BaseException:
        old.close()
        raise
    current = hash_files([ds.root / r.path for _, _, r in rows], workers)
    inputs = inputs_texts(sources, [r.path for _, _, r in rows], workers)
    with_inputs = old.has_column("inputs")
    known = {s: dict(zip(old.column(s, "path"), zip(old.column(s, "fingerprint"), old.column(s, "inputs") if with_inputs else [None] * old.num_stored(s))))
             for s in old.splits}
    changes: list[str | None] = []
    for (s, _, r), fp, now in zip(rows, current, inputs):
        got = known.get(s, {}).get(r.path)
        if got is None or got[0] != fp:
            changes.append("image")
        elif with_inputs and got[1] != now:
            changes.append(",".join(changed_inputs(got[1], now)))
        else:
            changes.append(None)
    return changes, inputs, old


def describe_changes(rows: list[tuple[str, int, Record]], changes: list[str | None]) -> list[str]:
    """'2 image(s) changed or added (first: ...)', '1 parsing file(s) changed (first: ...)'."""
    by_kind: dict[str, list[str]] = {}
    for (_, _, r), change in zip(rows, changes):
        for kind in (change.split(",") if change else []):
            by_kind.setdefault(kind, []).append(r.path)
    return [f"{len(paths)} image(s) changed or added (first: {paths[0]})" if kind == "image" else f"{len(paths)} row(s) whose {kind} file changed (first: {paths[0]})"
            for kind, paths in by_kind.items()]


#: The change ``--update`` records for every row of a cache made with a parser before the
#: ``parsing`` column (schema < 5): no row of it can be kept.
PARSING_LOST = "no parsing labels"


#: What a keypoint source's provenance says about its content: checked per row (the ``inputs``
#: column's ``keypoints`` entry), so ``--update`` recomputes the rows whose entries changed
#: instead of refusing the whole cache.
KEYPOINT_CONTENT_KEYS = ("sha256", "files", "images_with_entries", "people")


def strip_volatile(prov: dict) -> dict:
    """The provenance that must match for a cache (or its partial chunks) to be reused."""
    out = {k: v for k, v in prov.items() if k not in ("command", "created")}
    if isinstance(out.get("keypoints"), dict):
        kp = {k: v for k, v in out["keypoints"].items() if k not in KEYPOINT_CONTENT_KEYS}
        if isinstance(kp.get("images"), dict):  # a results list's images file: its path, not its bytes
            kp["images"] = {k: v for k, v in kp["images"].items() if k != "sha256"}
        out["keypoints"] = kp
    return out


def diff_keys(a: dict, b: dict) -> str:
    a, b = strip_volatile(a), strip_volatile(b)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "differs in " + ", ".join(keys) if keys else "same"


@dataclass
class GenerateResult:
    """What a run did: the cache path, whether it was (re)written, and its rows' statuses."""

    path: Path
    written: bool
    status_counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)  # status -> first few "split/path"

    def summary_lines(self) -> list[str]:
        """One line per status other than ok / no_keypoints, with the first paths and what to do."""
        lines = []
        advice = {
            "unreadable": "fix or remove these files (reid-masks validate --check-images lists them), then rerun with --update; reid-train leaves unreadable train rows out and refuses unreadable query/gallery rows",
            "no_person": "no person found: masks fall back to the prior box (README: How masks are derived); look at them with reid-masks preview",
        }
        for status in ("unreadable", "no_person"):
            n = self.status_counts.get(status, 0)
            if n:
                first = ", ".join(self.examples.get(status, [])[:3])
                lines.append(f"{n} row(s) {status} (first: {first}): {advice[status]}")
        return lines


def generate(cfg: GenerateConfig) -> GenerateResult:
    """Run the mask stage; returns the cache written (a shard file under ``--shard``).

    One run at a time per output (a lock beside it); temporary files of dead runs are removed;
    Ctrl-C and SIGTERM keep every finished chunk and raise :class:`Interrupted`.
    """
    ds = build_dataset(cfg.dataset, cfg.root, **cfg.dataset_options)
    out = write_target(shard_path(cfg.out, cfg.shard))
    partial = out.with_name(out.name + ".partial")
    check_writable(out, also=[partial.name])
    with OutputLock(out, cfg.command), sigterm_as_interrupt():
        remove_dead_temps(out.parent, out.name)
        remove_dead_temps(partial)
        try:
            return _generate_locked(cfg, ds, out, partial)
        except KeyboardInterrupt as exc:
            signum = signal.SIGTERM if str(exc) == "SIGTERM" else signal.SIGINT
            kept = len(list(partial.glob("chunk-*.npz"))) if partial.is_dir() else 0
            raise Interrupted(f"interrupted by {signal.Signals(signum).name}: {kept} finished chunk(s) kept in {partial}; rerun the same command to resume", signum) from None


def check_images_exist(ds: ReIDDataset, rows: list[tuple[str, int, Record]], sample: int = 64) -> None:
    """Refuse a root where none of a spread-out sample of the listed images exists.

    A missing file is recorded as an ``unreadable`` row (never dropped); but when none of the
    sample is there, the root is wrong (e.g. MSMT17 list files found, images elsewhere) and a
    cache full of unreadable rows would only waste the run.
    """
    if not rows:
        return
    picks = [rows[i][2] for i in np.linspace(0, len(rows) - 1, min(sample, len(rows))).astype(int)]
    if not any((ds.root / r.path).exists() for r in picks):
        raise UserError(f"{ds.root}: none of {len(picks)} images listed by the {ds.name} adapter exists there (first: {picks[0].path}); is --root the dataset's folder?")


def _generate_locked(cfg: GenerateConfig, ds: ReIDDataset, out: Path, partial: Path) -> GenerateResult:
    rows = work_rows(ds)
    check_images_exist(ds, rows)
    backend = make_backend(cfg)
    keypoints = None
    if cfg.keypoints is not None:  # read and checked whole, before any work (every shard the same)
        keypoints = load_keypoints(cfg.keypoints, cfg.keypoints_images, ds.root, (r.path for _, _, r in rows), ds.name, max(1, cfg.workers))
    parser = make_parser(cfg)
    prov = provenance(cfg, backend, parser, keypoints)
    counts = {s: len(ds.split(s)) for s in cache_splits(ds)}

    old: MaskCache | None = None
    todo = set(range(len(rows)))
    sources = row_inputs(ds.root, cfg.parsing_dir, cfg.masks_dir, cfg.seg_siblings, keypoints)
    current_inputs: list[str] = []
    if out.is_file():
        if cfg.shard[1] != 1:
            raise UserError(f"{out}: shard output exists already; remove it to regenerate this shard")
        changes, current_inputs, old = compare_with_existing(out, ds, rows, prov, cfg.workers, sources)
        current_paths = {(s, r.path) for s, _, r in rows}
        removed = [p for s in old.splits for p in old.column(s, "path") if (s, p) not in current_paths]
        unsealed = not old.has_column("row_digest")  # schema < 4: rows without digests, nor input fingerprints
        lost = old.parsing_lost()  # schema < 5 with a parser: no row can be kept, for want of its parsing labels
        if lost and cfg.update:
            changes = [change or PARSING_LOST for change in changes]
        if not any(changes) and not removed and not unsealed:
            old.close()
            log.info("%s is up to date", out)
            sys.stderr.write(f"{out}: up to date ({len(rows)} images and their input files), nothing to do\n")
            if lost:
                sys.stderr.write(f"note: {out}: a schema-{old.schema_version} cache keeps no parsing labels (reid-masks export --format "
                                 f"lip-png needs them); rerun with --update to add them (it recomputes all {len(rows)} rows)\n")
            return GenerateResult(out, False, *status_summary(out))
        if not cfg.update:
            old.close()
            if unsealed and not any(changes) and not removed:
                raise UserError(f"{out}: cache of schema version {old.schema_version} has no row digests (its masks cannot be tied to their "
                                f"rows, nor its rows to their parsing/mask files); rerun with --update to add them")
            what = describe_changes(rows, changes) + [f"{len(removed)} removed" + (f" (first: {removed[0]})" if removed else "")]
            raise UserError(f"{out}: stale cache, {' and '.join(what)} since it was made; rerun with --update to recompute only those rows")
        todo = {k for k, change in enumerate(changes) if change}
        if unsealed and sources:
            sys.stderr.write(f"warning: {out}: a schema-{old.schema_version} cache records no fingerprints of its {'/'.join(s.name for s in sources)} "
                             f"files: the rows kept are assumed made from the current ones (remove the cache to recompute every row)\n")
        sys.stderr.write(f"{out}: updating {len(todo)} changed or added row(s), {len(removed)} removed, {len(rows) - len(todo)} kept\n")

    try:
        return _run(cfg, ds, out, partial, rows, todo, old, backend, parser, prov, counts, sources, current_inputs, keypoints)
    finally:
        if old is not None:
            old.close()


def _run(cfg: GenerateConfig, ds: ReIDDataset, out: Path, partial: Path, rows: list, todo: set[int], old: MaskCache | None,
         backend: Any, parser: Any, prov: dict, counts: dict[str, int], sources: list[RowInput], current_inputs: list[str],
         keypoints: KeypointTable | None = None) -> GenerateResult:
    store = ChunkStore(partial)
    meta = {"signature": dataset_signature(rows), "provenance": strip_volatile(prov), "chunk_rows": cfg.chunk_rows, "shard": list(cfg.shard), "update": cfg.update}
    prepare_partial(partial, meta)

    n_chunks = -(-len(rows) // cfg.chunk_rows)
    mine = [g for g in range(n_chunks) if g % cfg.shard[1] == cfg.shard[0]]
    members = {g: list(range(g * cfg.chunk_rows, min((g + 1) * cfg.chunk_rows, len(rows)))) for g in mine}

    def expected(g: int) -> dict[str, np.ndarray]:
        out_: dict[str, list[int]] = {}
        for k in members[g]:
            out_.setdefault(rows[k][0], []).append(rows[k][1])
        return {s: np.asarray(v, np.int64) for s, v in out_.items()}

    pending, loaded = [], {}
    for g in mine:
        if not store.exists(g):
            pending.append(g)
            continue
        try:
            chunk = store.load(g, expected(g))
            loaded[g] = {s: (r.index, r.fingerprint, r.inputs) for s, r in chunk.items()}  # small columns only
        except BadChunk as exc:
            sys.stderr.write(f"{exc}; recomputing chunk {g}\n")
            store.discard(g)
            pending.append(g)
    for g in outdated_chunks(ds, rows, loaded, sources, cfg.workers):
        store.discard(g)
        pending.append(g)
    pending.sort()
    resumed = len(mine) - len(pending)
    if resumed:
        sys.stderr.write(f"resuming: {resumed} of {len(mine)} chunks already done in {partial}\n")

    compute = {g: [k for k in members[g] if k in todo] for g in pending}
    keep = {g: [k for k in members[g] if k not in todo] for g in pending}
    reuse = ReusedRows(old, rows, current_inputs) if old is not None else None
    progress = Progress(sum(len(v) for v in compute.values()))
    try:
        run_chunks(cfg, ds, rows, compute, keep, reuse, store, backend, parser, progress, keypoints)
    except BaseException as exc:
        progress.end_line()  # the one-line error (interrupted, disk full, ...) starts on its own line
        if not isinstance(exc, Exception):
            raise
        if is_disk_full(exc):
            done = sum(store.exists(g) for g in mine)
            per_chunk = store.size(on_disk=True) / max(done, 1)
            # the rest of the chunks (10% for chunks larger than the first ones), then the cache beside
            # all of them (assemble's own estimate), less what is free now
            total = 1.1 * per_chunk * (len(mine) - done) + cache_estimate(per_chunk * len(mine))
            free = shutil.disk_usage(partial).free
            space = ("unknown space more needed" if not done else f"about {mib(total - free, up=True)} more needed" if total > free
                     else f"about {mib(total, up=True)} needed in all, though {mib(free)} is free now (a quota?)")
            raise UserError(f"{partial}: no space left on device; {done} of {len(mine)} chunk(s) kept there, {space}; free space and rerun the same command to resume") from None
        raise

    stored = {s: [] for s in counts}
    for g in mine:
        for k in members[g]:
            stored[rows[k][0]].append(rows[k][1])
    partial_out = cfg.shard[1] > 1
    layout = {s: (counts[s], sorted(stored[s]) if partial_out else None) for s in counts}
    attrs = {
        "dataset": ds.name,
        "dataset_root": str(ds.root.resolve()),
        "dataset_signature": meta["signature"],
        "provenance": {**prov, "command": cfg.command, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        "person_size": list(cfg.person_size),
        "mask_size": [24, 8],
        "shard": f"{cfg.shard[0]}/{cfg.shard[1]}",
        "num_chunks": n_chunks,
    }
    chunk_sources = [{"kind": "chunk", "folder": str(partial), "chunk": g} for g in mine]
    assemble(out, layout, attrs, cfg.person_size, chunk_sources, estimate_bytes=cache_estimate(store.size()),
             kept_note=f"all {len(mine)} chunk(s) are kept in {partial}")
    shutil.rmtree(partial, ignore_errors=True)
    return GenerateResult(out, True, *status_summary(out))


def status_summary(path: Path, examples: int = 3) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Rows per status over all splits of a cache, and the first few paths of each status."""
    counts: dict[str, int] = {}
    first: dict[str, list[str]] = {}
    with MaskCache(path) as cache:
        for s in cache.splits:
            status = cache.column(s, "status")
            for code, name in enumerate(STATUS_NAMES):
                hits = np.flatnonzero(status == code)
                if len(hits):
                    counts[name] = counts.get(name, 0) + len(hits)
                    if len(first.setdefault(name, [])) < examples:
                        paths = cache.rows(s, hits[: examples], columns=["path"])["path"]
                        first[name].extend(str(p) for p in paths[: examples - len(first[name])])
    return counts, first


def outdated_chunks(ds: ReIDDataset, rows: list[tuple[str, int, Record]], loaded: dict[int, dict[str, tuple]],
                    sources: list[RowInput], workers: int) -> list[int]:
    """Finished chunks holding a row whose image or input files changed since the chunk was made
    (an interrupted run resumed over an edited dataset): each is named on stderr, to be recomputed."""
    where = {(s, i): k for k, (s, i, _) in enumerate(rows)}
    ks = [where[(s, int(i))] for g in loaded for s, (index, _, _) in loaded[g].items() for i in index]
    if not ks:
        return []
    images = dict(zip(ks, hash_files([ds.root / rows[k][2].path for k in ks], workers)))
    inputs = dict(zip(ks, inputs_texts(sources, [rows[k][2].path for k in ks], workers)))
    out = []
    for g, by_split in loaded.items():
        stale = [rows[where[(s, int(i))]][2].path for s, (index, fps, ins) in by_split.items() for i, fp, was in zip(index, fps, ins)
                 if bytes(fp) != images[where[(s, int(i))]] or was != inputs[where[(s, int(i))]]]
        if stale:
            sys.stderr.write(f"chunk {g}: {len(stale)} row(s) made from an older version of their image or input files "
                             f"(first: {stale[0]}); recomputing chunk {g}\n")
            out.append(g)
    return out


class ReusedRows:
    """Rows of the existing cache that ``--update`` keeps, read chunk by chunk.

    Rows of a schema-5 cache carry their digests (verified when the new cache is written), those
    of a schema-4 one are verified and sealed again with the empty ``parsing`` (only a cache made
    without a parser has rows kept: :meth:`MaskCache.parsing_lost`); those of an older cache get
    the rows' current ``inputs`` cells and are sealed here.
    """

    def __init__(self, old: MaskCache, rows: list[tuple[str, int, Record]], current_inputs: list[str]):
        self.old, self.rows, self.current_inputs = old, rows, current_inputs
        self.pos = {s: old.path_index(s) for s in old.splits}
        self.lock = threading.Lock()

    def take(self, ks: list[int]) -> dict[str, Rows]:
        out = {}
        for s in CACHE_SPLITS:
            mine_k = [k for k in ks if self.rows[k][0] == s]
            mine = [self.rows[k] for k in mine_k]
            if not mine:
                continue
            with self.lock:
                data = self.old.rows(s, np.asarray([self.pos[s][r.path] for _, _, r in mine], np.int64))
            data["index"] = np.asarray([i for _, i, _ in mine], np.int64)
            data["pid"] = np.asarray([r.pid for _, _, r in mine], np.int32)
            data["camid"] = np.asarray([r.camid for _, _, r in mine], np.int16)
            if self.old.has_column("row_digest"):
                out[s] = Rows(**data).upgraded()  # schema 4 (made without a parser): the empty parsing added and sealed
            else:
                data["inputs"] = np.asarray([self.current_inputs[k] for k in mine_k], dtype=object)
                out[s] = Rows(**data).sealed()
        return out


def prepare_partial(partial: Path, meta: dict) -> None:
    """Create ``partial`` or check that the run it holds used the same inputs and options."""
    meta_path = partial / "meta.json"
    if meta_path.is_file():
        try:
            old = json.loads(meta_path.read_text())
        except ValueError:
            old = None
        if old is None:  # a torn meta.json: the chunks' own checks decide what is reusable
            sys.stderr.write(f"{meta_path}: unreadable, rewriting it\n")
        elif old != json.loads(json.dumps(meta)):
            what = ", ".join(k for k in meta if old.get(k) != json.loads(json.dumps(meta))[k])
            raise UserError(f"{partial}: an interrupted run with other inputs or options ({what}) is here; remove this folder to start over")
        else:
            return
    write_json_atomic(meta_path, meta)


def run_chunks(cfg: GenerateConfig, ds: ReIDDataset, rows: list, compute: dict[int, list[int]], keep: dict[int, list[int]],
               reuse: ReusedRows | None, store: ChunkStore, backend: Any, parser: Any, progress: Progress, keypoints: KeypointTable | None = None) -> None:
    """Decode in workers, infer in batches, derive off the model's path, save finished chunks.

    ``compute[g]`` are the rows of chunk ``g`` to process, ``keep[g]`` those ``--update``
    copies from the existing cache; a chunk is saved once all of its rows are there.
    """
    from torch.utils.data import DataLoader

    for g in sorted(compute):
        if not compute[g]:  # every row of this chunk is reused (--update)
            store.save(g, reuse.take(keep[g]) if keep[g] else {})
    order = [k for g in sorted(compute) for k in compute[g]]
    if not order:
        return
    chunk_of = {k: g for g, ks in compute.items() for k in ks}
    rows_index = {(s, i): k for k, (s, i, _) in enumerate(rows)}
    source = ImageSource(ds.root, cfg.parsing_dir, cfg.masks_dir, cfg.seg_siblings, keypoints)
    loader = DataLoader(
        ItemDataset(source, [rows[k] for k in order], derive_here=backend is None and parser is None),
        batch_size=cfg.batch_size, num_workers=cfg.workers, collate_fn=collate, worker_init_fn=detached_worker_init if cfg.workers > 0 else None,
        persistent_workers=False, prefetch_factor=4 if cfg.workers > 0 else None,
    )
    pending: dict[int, list[Item]] = {g: [] for g, ks in compute.items() if ks}
    results: queue.Queue = queue.Queue(maxsize=8)
    failure: list[BaseException] = []

    def finish(items: list[Item]) -> None:
        for it in items:
            if it.derived is None and it.image is not None:
                it.derived = derive(observation(it, it.instances))
                it.image = None
            g = chunk_of[rows_index[(it.split, it.index)]]
            pending[g].append(it)
            if len(pending[g]) == len(compute[g]):
                save_chunk(store, g, pending.pop(g), cfg.person_size, reuse.take(keep[g]) if keep[g] else {})
        progress.update(len(items))

    def consumer() -> None:
        while True:
            batch = results.get()
            if batch is None:
                return
            if failure:
                continue  # keep draining so the producer never blocks on a full queue
            try:
                finish(batch)
            except BaseException as exc:  # surfaced in the main thread
                failure.append(exc)

    writer = threading.Thread(target=consumer, name="derive-and-write", daemon=True)
    writer.start()
    batches = iter(loader)
    try:
        for batch in batches:
            for it in batch:
                if it.error:
                    raise UserError(it.error)
            readable = [it for it in batch if it.image is not None]
            if backend is not None and readable:
                for it, inst in zip(readable, backend.predict([it.image for it in readable])):
                    it.instances = inst
            if parser is not None and readable:
                for it, lab in zip(readable, parser.parse_batch([it.image for it in readable])):
                    it.parsing = lab
            if failure:
                raise failure[0]
            results.put(batch)
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:  # stop the workers now, quietly, before the writer finishes
            shutdown()
        results.put(None)
        writer.join()
    if failure:
        raise failure[0]
    if pending:
        raise RuntimeError(f"chunks left incomplete: {sorted(pending)[:5]}")


def save_chunk(store: ChunkStore, g: int, items: list[Item], person_hw: tuple[int, int], reused: dict[str, Rows]) -> None:
    by_split = {}
    for s in CACHE_SPLITS:
        parts = []
        mine = [it for it in items if it.split == s]
        if mine:
            parts.append(rows_from(mine, person_hw))
        if s in reused:
            parts.append(reused[s])
        if parts:
            rows = Rows.concat(parts)
            by_split[s] = rows.take(np.argsort(rows.index, kind="stable"))
    store.save(g, by_split)
