"""``reid-masks export``: the cache in the formats other re-ID codebases read.

* ``bpbreid``: ``masks/pifpaf_maskrcnn_filtering/<split folder>/<image stem>.npy`` under the
  dataset root, 36 PifPaf-style confidence fields per image (:mod:`reid_masks.pifpaf`);
* ``lip-png``: LIP label PNGs ``<out>/<image path>.png`` (what SCHP's extractor writes: 8-bit
  palette PNGs whose pixel values are the labels, with its colour map): the
  parser's own labels at the image's size, as the cache's ``parsing`` column keeps them (schema
  5); only for caches made with a parsing source;
* ``seg-png``: 0/255 person-mask PNGs in MGCAM's ``<split folder>_seg/`` layout;
* ``npz``: ``<out>/<split>.npz`` with every column, for anyone's own loader.

Streaming: the cache is read a block of rows at a time, so memory does not grow with the
dataset. Resumable: every file is written through a temporary name and renamed; a rerun
skips files that are already complete (header, size, decodable) and rewrites torn ones.
A stamp file in the output records which cache was exported; an output of another cache is
refused unless ``--overwrite``. README: "Exporting the masks".
"""
from __future__ import annotations

import hashlib
import json
import signal
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import click
import numpy as np

from reid_masks import __version__
from reid_masks.cache import DIGEST_COLUMNS, STATUS, WRITTEN_COLUMNS, MaskCache, decode_parsing, map_mismatches
from reid_masks.errors import UserError
from reid_masks.fileio import OutputLock, atomic_path, check_writable, read_json, remove_dead_temps, write_json_atomic
from reid_masks.progress import Progress

FORMATS = ("bpbreid", "lip-png", "seg-png", "npz")
BLOCK_ROWS = 512
BPBREID_DIR = ("masks", "pifpaf_maskrcnn_filtering")
#: bpbreid's file name suffix per dataset, where it is not ``.npy`` (its ``masks_dirs`` tables).
BPBREID_SUFFIX = {"occluded_duke": ".jpg.confidence_fields.npy"}
#: bpbreid datasets whose ``infer_masks_path`` takes the folder two levels up (images in per-id folders).
BPBREID_GRANDPARENT = ("occluded_reid",)
#: Columns of the npz export: not the digests (the cache's own integrity), nor ``parsing`` (PNGs of
#: varying sizes: ``--format lip-png`` writes them as files).
NPZ_COLUMNS = tuple(c for c in WRITTEN_COLUMNS if c not in ("fingerprint", "parsing") and c not in DIGEST_COLUMNS)
#: ``--block-rows`` bound: 4,096 rows of two 256x128 maps are 256 MiB (the bpbreid fields of one row at a time on top).
MAX_BLOCK_ROWS = 4096


@dataclass
class ExportResult:
    fmt: str
    base: Path
    written: int = 0
    skipped: int = 0  # already there and complete
    torn: list[str] = field(default_factory=list)  # incomplete files found and rewritten
    no_file: int = 0  # unreadable rows: no image, no file
    empty: int = 0  # bpbreid: rows without a confident keypoint (all-zero fields)

    def lines(self) -> list[str]:
        out = [f"{self.fmt}: {self.written} file(s) written, {self.skipped} already complete, under {self.base}"]
        if self.torn:
            out.append(f"rewrote {len(self.torn)} incomplete file(s) (first: {', '.join(self.torn[:3])})")
        if self.no_file:
            out.append(f"{self.no_file} unreadable row(s) have no file (their images could not be decoded when the cache was made)")
        if self.empty:
            out.append(f"{self.empty} row(s) without a keypoint of score >= 0.3 have all-zero fields (bpbreid sees no visible part)")
        return out


# --- where each format puts an image's file -------------------------------------------------

def bpbreid_target(base: Path, dataset: str) -> Callable[[str], Path]:
    """bpbreid's ``infer_masks_path`` (and its Occluded-REID variant) for image paths of ``dataset``."""
    suffix = BPBREID_SUFFIX.get(dataset, ".npy")
    up = 3 if dataset in BPBREID_GRANDPARENT else 2
    folder = base.joinpath(*BPBREID_DIR)

    def target(rel: str) -> Path:
        parts = PurePosixPath(rel).parts
        sub = parts[-up] if len(parts) >= up else ""
        return folder / sub / (PurePosixPath(rel).stem + suffix)

    return target


def lip_target(base: Path) -> Callable[[str], Path]:
    return lambda rel: (base / rel).with_suffix(".png")  # as --parsing-dir reads them


def seg_target(base: Path) -> Callable[[str], Path]:
    """MGCAM's layout, as ``generate --seg-siblings`` reads it: ``<first folder>_seg/<rest>.png``."""

    def target(rel: str) -> Path:
        parts = PurePosixPath(rel).parts
        if len(parts) < 2:
            raise UserError(f"{rel}: --format seg-png needs images inside split folders (MGCAM's <split>_seg/ layout)")
        return (base / f"{parts[0]}_seg").joinpath(*parts[1:]).with_suffix(".png")

    return target


# --- complete-file checks (resume) ----------------------------------------------------------

def read_npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from an open .npy stream, leaving it at the data."""
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f)


def npy_complete(path: Path, shape: tuple[int, ...], dtype: Any = np.float32) -> bool:
    """True when ``path`` is a whole .npy of this shape and dtype (header and size checked, data not read)."""
    try:
        with open(path, "rb") as f:
            got_shape, fortran, got_dtype = read_npy_header(f)
            offset = f.tell()
        size = path.stat().st_size
    except (OSError, ValueError):
        return False
    return tuple(got_shape) == tuple(shape) and got_dtype == np.dtype(dtype) and not fortran and size == offset + int(np.prod(shape)) * np.dtype(dtype).itemsize


def png_complete(path: Path, hw: tuple[int, int], mode: str = "L") -> bool:
    """True when ``path`` decodes fully as a one-channel 8-bit PNG (``mode``: L grey, P palette) of size ``hw``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.format != "PNG" or im.mode != mode or im.size != (hw[1], hw[0]):
                return False
            im.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return False
    return True


# --- writers --------------------------------------------------------------------------------

def write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def write_png(path: Path, labels: np.ndarray, palette: list[int] | None = None) -> None:
    """An 8-bit PNG of ``labels``: grey, or with ``palette`` (mode P: the pixel values stay the labels)."""
    from PIL import Image

    im = Image.fromarray(labels, mode="L")
    if palette is not None:
        im.putpalette(palette)  # L becomes P with the same pixel values (as SCHP's extractor does it)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            im.save(f, format="PNG", compress_level=3)


def class_palette(num_classes: int) -> list[int]:
    """The colour map SCHP's extractor puts in its LIP PNGs (PASCAL VOC's: the bits of each label
    spread over the high bits of R, G, B), flattened for ``putpalette``."""
    out = []
    for label in range(num_classes):
        rgb = [0, 0, 0]
        for bit in range(8):
            for c in range(3):
                rgb[c] |= ((label >> (3 * bit + c)) & 1) << (7 - bit)
        out.extend(rgb)
    return out


#: ``lip-png``'s palette: SCHP's, for LIP's 20 labels.
LIP_PNG_PALETTE = class_palette(20)


def nearest(labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``labels`` resized to ``hw`` with nearest sampling (PIL's, as the cache was made)."""
    from PIL import Image

    if labels.shape == tuple(hw):
        return labels
    return np.asarray(Image.fromarray(labels).resize((int(hw[1]), int(hw[0])), Image.NEAREST))


# --- what a format needs from the cache -----------------------------------------------------

def check_source(mc: MaskCache, fmt: str) -> None:
    """Refuse, in one line, a cache that lacks what ``fmt`` is made from."""
    if fmt == "lip-png":
        if mc.parser == "none":
            raise UserError(f"{mc.path}: --format lip-png needs a cache made with a parsing source (--parsing-dir or --parser schp); "
                            f"this one's parser is 'none': use --format seg-png or npz, or regenerate with a parser")
        if not mc.has_column("parsing"):
            raise UserError(f"{mc.path}: cache schema version {mc.schema_version} keeps no parsing labels (added in version 5); "
                            f"rerun the reid-masks generate command that made it with --update to add them (it recomputes every row)")
    if fmt == "bpbreid":
        if not any(np.any(mc.column(s, "status") == STATUS["ok"]) for s in mc.splits):
            raise UserError(f"{mc.path}: --format bpbreid renders keypoints, and no row of this cache has one (made without a keypoint "
                            f"model); regenerate it with a keypoint backend (--backend torchvision or detectron2)")


def cache_identity(mc: MaskCache) -> str:
    """Which cache an output came from: its dataset, rows and provenance (creation time included)."""
    a = mc.attrs
    key = json.dumps([a.get("dataset"), a.get("dataset_signature"), a.get("provenance"), {s: mc.num_rows(s) for s in mc.splits}],
                     sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def resolve_root(mc: MaskCache, root: Path) -> Path:
    """The folder the cache's paths are relative to: ``root`` or a known wrapper folder under it."""
    from reid_masks.datasets import DATASET_NAMES, load_manifest

    if not root.is_dir():
        raise UserError(f"--root {root}: dataset root not found")
    wrappers = load_manifest(mc.dataset).get("wrapper_dirs", []) if mc.dataset in DATASET_NAMES else []
    firsts = [mc.column_slice(s, "path", 0, 1) for s in mc.splits if mc.num_stored(s)]
    firsts = [str(p[0]) for p in firsts if len(p)]
    for cand in [root] + [root / w for w in wrappers]:
        if firsts and any((cand / p).exists() for p in firsts):
            return cand
    raise UserError(f"--root {root}: does not hold the cache's images (no {root / firsts[0]}); give the dataset root the cache {mc.path} was made from"
                    if firsts else f"{mc.path}: the cache holds no rows")


@dataclass
class Plan:
    """Where ``fmt`` writes: ``base`` (the folder the layout starts in), the stamp file and lock."""

    fmt: str
    base: Path
    stamp: Path
    option: str


def plan(mc: MaskCache, fmt: str, root: Path | None, out: Path | None) -> Plan:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if (root is None) == (out is None):
        raise UserError(f"--format {fmt}: give one of --root DATASET_ROOT or --out DIR")
    if root is not None and fmt in ("lip-png", "npz"):
        raise UserError(f"--format {fmt} writes a folder of its own: give --out DIR, not --root")
    base = resolve_root(mc, Path(root)) if root is not None else Path(out)
    option = "--root" if root is not None else "--out"
    stamp_dir = base.joinpath(*BPBREID_DIR) if fmt == "bpbreid" else base
    return Plan(fmt, base, stamp_dir / f"reid-masks-export-{fmt}.json", option)


def check_stamp(p: Plan, identity: str, overwrite: bool, content: dict[str, Any]) -> float:
    """Check the output's stamp, then write ours; returns the time before which existing files
    are stale (0: none). ``--overwrite`` makes every file older than this run stale, measured on
    the output's own clock (the stamp's modification time: right on NFS too), and a rerun after
    an interrupted overwrite keeps that time."""
    old = read_json(p.stamp, "missing", "a reid-masks export stamp") if p.stamp.exists() else None
    if old is not None and not isinstance(old, dict):
        old = None
    since = 0.0
    if not overwrite and old is not None:
        if old.get("cache_identity") != identity:
            raise UserError(f"{p.stamp}: this output holds a {p.fmt} export of another cache ({old.get('cache', '?')}); "
                            f"pass --overwrite to replace its files, or choose another {p.option}")
        since = float(old.get("stale_before", 0.0))
    write_json_atomic(p.stamp, {**content, "cache_identity": identity, "stale_before": since})
    if overwrite:
        since = p.stamp.stat().st_mtime
        write_json_atomic(p.stamp, {**content, "cache_identity": identity, "stale_before": since})
    return since


# --- the export -----------------------------------------------------------------------------

def export(cache: str | Path, fmt: str, root: Path | None = None, out: Path | None = None, overwrite: bool = False,
           block_rows: int = BLOCK_ROWS, command: str = "", progress: bool = True) -> ExportResult:
    """Write ``cache`` in format ``fmt`` (module docstring). One run per output (a lock);
    Ctrl-C / SIGTERM keep every finished file and raise ``Interrupted`` (exit 130 / 143)."""
    from reid_masks.generate import Interrupted, sigterm_as_interrupt

    with MaskCache(cache) as mc:
        p = plan(mc, fmt, root, out)
        check_source(mc, fmt)
        check_writable(p.stamp.parent, p.option, folder=True)
        with OutputLock(p.stamp, command), sigterm_as_interrupt():
            identity = cache_identity(mc)
            since = check_stamp(p, identity, overwrite, {"format": fmt, "cache": str(Path(cache).resolve()),
                                                          "exporter": f"reid-masks {__version__}", "command": command})
            result = ExportResult(fmt, p.base)
            try:
                if fmt == "npz":
                    export_npz(mc, p.base, since, result, block_rows, progress)
                else:
                    export_files(mc, fmt, p.base, since, result, block_rows, progress)
            except KeyboardInterrupt as exc:
                signum = signal.SIGTERM if str(exc) == "SIGTERM" else signal.SIGINT
                raise Interrupted(f"interrupted by {signal.Signals(signum).name}: {result.written} file(s) written this run are kept under "
                                  f"{p.base}; rerun the same command to finish (complete files are skipped)", signum) from None
            return result


def target_maker(mc: MaskCache, fmt: str, base: Path) -> Callable[[str], Path]:
    return {"bpbreid": lambda: bpbreid_target(base, mc.dataset), "lip-png": lambda: lip_target(base), "seg-png": lambda: seg_target(base)}[fmt]()


def check_targets(mc: MaskCache, fmt: str, make: Callable[[str], Path]) -> set[str]:
    """The folders the export writes into; two images that would share a file are a one-line error.

    Reads the ``path`` column a block at a time and keeps one string per image (not the
    paths' objects), so MSMT17's 126k images cost a few MiB.
    """
    seen: dict[str, str] = {}
    folders: set[str] = set()
    for split in mc.splits:
        for start in range(0, mc.num_stored(split), 4096):
            for rel in mc.column_slice(split, "path", start, start + 4096):
                t = make(str(rel))
                other = seen.setdefault(str(t), rel)
                if other != rel:
                    raise UserError(f"{mc.path}: images {other} and {rel} map to the same {fmt} file {t}; this layout cannot hold both")
                folders.add(str(t.parent))
    return folders


def export_files(mc: MaskCache, fmt: str, base: Path, since: float, result: ExportResult, block_rows: int, show: bool) -> None:
    """One file per image, a block of rows at a time; complete files are skipped."""
    from reid_masks.pifpaf import field_size, render_fields

    make = target_maker(mc, fmt, base)
    for folder in sorted(check_targets(mc, fmt, make)):
        remove_dead_temps(folder)
    columns = {"bpbreid": ("keypoints", "person"), "lip-png": ("parsing",), "seg-png": ("person",)}[fmt]
    sealed = mc.has_column("map_digests")
    bar = Progress(sum(mc.num_stored(s) for s in mc.splits), label=f"export {fmt}") if show else None
    unreadable = STATUS["unreadable"]
    for split in mc.splits:
        sizes_all = mc.column(split, "image_size")
        status_all = mc.column(split, "status")
        n = mc.num_stored(split)
        for start in range(0, n, block_rows):
            stop = min(start + block_rows, n)
            todo = []
            for i, rel in enumerate(mc.column_slice(split, "path", start, stop), start):
                h, w = (int(v) for v in sizes_all[i])
                if status_all[i] == unreadable or h <= 0 or w <= 0:
                    result.no_file += 1
                    continue
                t = make(str(rel))
                if t.exists():
                    shape = (36, *field_size(h, w)) if fmt == "bpbreid" else (h, w)
                    ok = npy_complete(t, shape) if fmt == "bpbreid" else png_complete(t, shape, "P" if fmt == "lip-png" else "L")
                    if ok and (since <= 0 or t.stat().st_mtime >= since):
                        result.skipped += 1
                        continue
                    if not ok:
                        result.torn.append(str(t))
                todo.append((i, t))
            if todo:
                block = {c: mc.column_slice(split, c, start, stop) for c in columns}
                if sealed:  # the maps written out are the ones generate made for these rows
                    check_maps(mc, split, start, block | {"map_digests": mc.column_slice(split, "map_digests", start, stop)})
                for i, t in todo:
                    h, w = (int(v) for v in sizes_all[i])
                    j = i - start
                    if fmt == "bpbreid":
                        if status_all[i] != STATUS["ok"]:
                            result.empty += 1
                        write_npy(t, render_fields(block["keypoints"][j], block["person"][j], h, w))
                    elif fmt == "lip-png":
                        labels = decode_parsing(block["parsing"][j])
                        if labels is None or labels.shape != (h, w):
                            raise UserError(f"{mc.path}: {split} row {i} ({rel_of(mc, split, i)}) has "
                                            f"{'no parsing labels' if labels is None else f'parsing labels of {labels.shape[1]}x{labels.shape[0]}'}"
                                            f", expected the image's {w}x{h}; the cache was edited or damaged: regenerate it")
                        write_png(t, labels, LIP_PNG_PALETTE)
                    else:
                        write_png(t, nearest((block["person"][j] > 0).astype(np.uint8) * 255, (h, w)))
                    result.written += 1
            if bar is not None:
                bar.update(stop - start)


def rel_of(mc: MaskCache, split: str, i: int) -> str:
    return str(mc.column_slice(split, "path", i, i + 1)[0])


def check_maps(mc: MaskCache, split: str, start: int, block: dict[str, np.ndarray]) -> None:
    """Refuse maps that differ from their ``map_digests`` (rows moved or edited), in one line."""
    bad = map_mismatches(block)
    if len(bad):
        first = ", ".join(f"{start + int(k)} ({rel_of(mc, split, start + int(k))})" for k in bad[:3])
        raise UserError(f"{mc.path}: {split} row(s) {first} do not match their map digests ({len(bad)} in rows {start}-{start + len(block['map_digests']) - 1}); "
                        f"the cache was edited or damaged since reid-masks generate wrote it: regenerate it; nothing more is written")


def npz_complete(path: Path, expected: dict[str, tuple[tuple[int, ...], np.dtype]]) -> bool:
    """True when ``path`` is a readable .npz holding exactly these members (shapes, dtypes) with intact CRCs."""
    try:
        with zipfile.ZipFile(path) as zf:
            if sorted(zf.namelist()) != sorted(f"{k}.npy" for k in expected):
                return False
            for name, (shape, dtype) in expected.items():
                with zf.open(f"{name}.npy") as f:
                    got_shape, _, got_dtype = read_npy_header(f)
                if tuple(got_shape) != tuple(shape) or (dtype is not None and got_dtype != dtype):
                    return False
            return zf.testzip() is None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        return False


def export_npz(mc: MaskCache, base: Path, since: float, result: ExportResult, block_rows: int, show: bool) -> None:
    """``<base>/<split>.npz`` per split, each member streamed into the zip block by block."""
    remove_dead_temps(base)
    total = sum(mc.num_stored(s) for s in mc.splits)
    bar = Progress(total, label="export npz") if show else None
    names = [c for c in NPZ_COLUMNS if mc.has_column(c)]
    for split in mc.splits:
        n = mc.num_stored(split)
        target = base / f"{split}.npz"
        paths = mc.column(split, "path")
        path_dtype = np.dtype(f"<U{max([len(p) for p in paths], default=1)}")
        expected = {c: ((n,) + mc.column_shape(split, c)[0][1:], path_dtype if c == "path" else mc.column_shape(split, c)[1]) for c in names}
        if target.exists():
            if npz_complete(target, expected) and (since <= 0 or target.stat().st_mtime >= since):
                result.skipped += 1
                if bar is not None:
                    bar.update(n)
                continue
            result.torn.append(str(target))
        with atomic_path(target) as tmp:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1, allowZip64=True) as zf:
                for c in names:
                    shape, dtype = expected[c]
                    with zf.open(f"{c}.npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
                        if c == "path":
                            f.write(np.asarray(paths, dtype=path_dtype).tobytes())
                            continue
                        for start in range(0, n, block_rows):
                            f.write(np.ascontiguousarray(mc.column_slice(split, c, start, min(n, start + block_rows)), dtype=dtype).tobytes())
                    if bar is not None and c == names[-1]:
                        bar.update(n)
        result.written += 1


@click.command("export")
@click.argument("cache", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS),
              help="bpbreid (masks/pifpaf_maskrcnn_filtering/ under the dataset root), lip-png (SCHP-style LIP PNGs), "
                   "seg-png (MGCAM <split>_seg/ person masks), npz (one file per split). README: 'Exporting the masks'.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="Dataset root to write into (bpbreid, seg-png), as those codebases expect.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Folder to write instead (every format; lip-png and npz need it).")
@click.option("--overwrite", is_flag=True, help="Replace an export of another cache in the same place (else refused).")
@click.option("--block-rows", default=BLOCK_ROWS, show_default=True, type=click.IntRange(1, MAX_BLOCK_ROWS),
              help="Cache rows read at a time: the memory bound (64 KiB per row of 256x128 maps).")
def export_command(cache: Path, fmt: str, root: Path | None, out: Path | None, overwrite: bool, block_rows: int) -> None:
    """Export a mask cache for other re-ID codebases (bpbreid, SCHP readers, MGCAM, your own loader); resumable."""
    import shlex
    import sys

    result = export(cache, fmt, root=root, out=out, overwrite=overwrite, block_rows=block_rows,
                    command=shlex.join(["reid-masks", *sys.argv[1:]]))
    lines = result.lines()
    click.echo(lines[0])
    for line in lines[1:]:
        click.echo(f"note: {line}", err=True)
