"""Datasets laid out as one folder per split with ids and cameras in the file names.

Market-1501, DukeMTMC-reID and any user layout described by a regex.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Tuple

from reid_masks.datasets.records import MULTI_QUERY, Record, ReIDDataset, SPLITS, check_file_names, relabel
from reid_masks.errors import UserError


def resolve_root(root: str | Path, manifest: dict[str, Any], marker: str) -> Path:
    """The folder holding ``marker``: ``root`` itself or one of the manifest's wrapper folders."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: dataset root not found (expected a folder holding {marker})")
    if (root / marker).exists():
        return root
    for wrapper in manifest.get("wrapper_dirs", []):
        if (root / wrapper / marker).exists():
            return root / wrapper
    return root


def compile_pattern(pattern: str, origin: str, groups: tuple[str, ...] = ("pid", "camid")) -> re.Pattern:
    """The file-name regex; it must have the named ``groups`` (test-only sets carry no camera)."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise UserError(f"{origin}: invalid file-name regex {pattern!r} ({exc})") from None
    if not set(groups) <= set(regex.groupindex):
        needed = " and ".join(f"(?P<{g}>...)" for g in groups)
        raise UserError(f"{origin}: the file-name regex needs named groups {needed}")
    return regex


def list_images(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Image files in ``folder``, dangling symlinks included: they become rows marked unreadable
    (``validate`` reports them), never a silently shorter split."""
    return check_file_names(sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in extensions and (p.is_file() or (p.is_symlink() and not p.exists()))
    ))


def parse_names(
    files: list[Path], regex: re.Pattern, root: Path, split: str, camera_base: int, cameras: int | None
) -> list[Record]:
    """Records for ``files``; an unparseable name or an out-of-range camera is a user error."""
    records, bad = [], []
    for f in files:
        m = regex.match(f.name)
        if m is None:
            bad.append(f.name)
            continue
        camid = int(m.group("camid")) - camera_base
        if camid < 0 or (cameras is not None and camid >= cameras):
            raise UserError(f"{f}: camera {m.group('camid')} out of range (expected {camera_base}..{camera_base + (cameras or 1) - 1})")
        records.append(Record(f.relative_to(root).as_posix(), int(m.group("pid")), camid, split))
    if bad:
        raise UserError(
            f"{files[0].parent}: {len(bad)} file name(s) do not match {regex.pattern!r} (first: {', '.join(bad[:3])})"
        )
    return records


def load_folder_dataset(
    name: str,
    root: str | Path,
    split_dirs: dict[str, str],
    pattern: str,
    *,
    extensions: tuple[str, ...] = (".jpg",),
    camera_base: int = 1,
    cameras: int | None = None,
    junk_pid: int | None = None,
    manifest: dict[str, Any] | None = None,
    origin: str = "pattern",
) -> ReIDDataset:
    """Read the three split folders; junk ids are dropped, other ids (distractors) kept."""
    manifest = manifest or {}
    base = resolve_root(root, manifest, split_dirs["train"])
    regex = compile_pattern(pattern, origin)
    splits: dict[str, list[Record]] = {}
    for split in SPLITS:
        folder = base / split_dirs[split]
        if not folder.is_dir():
            raise UserError(f"{folder}: split folder for {split!r} not found (expected the {name} layout)")
        records = parse_names(list_images(folder, extensions), regex, base, split, camera_base, cameras)
        if junk_pid is not None:
            records = [r for r in records if r.pid != junk_pid]
        if not records:
            raise UserError(f"{folder}: no images with extension {'/'.join(extensions)}")
        splits[split] = records
    splits["train"] = relabel(splits["train"])
    return ReIDDataset(name, base, splits["train"], splits["query"], splits["gallery"])


def load_manifest_folders(manifest: dict[str, Any], root: str | Path) -> ReIDDataset:
    """Market-1501 / DukeMTMC-reID from their manifest's layout facts.

    A manifest with ``multi_query.dir`` (Market-1501: ``gt_bbox``) also reads that folder, when
    present, into ``multi_query`` (junk ids dropped); a copy without it loads as before.
    """
    ds = load_folder_dataset(
        manifest["name"],
        root,
        {s: manifest["splits"][s]["dir"] for s in SPLITS},
        manifest["filename"]["pattern"],
        extensions=(manifest["filename"]["extension"],),
        camera_base=manifest["camera_base"],
        cameras=manifest["cameras"],
        junk_pid=manifest.get("junk_pid"),
        manifest=manifest,
        origin=f"data_manifests/{manifest['name']}.json",
    )
    spec = manifest.get(MULTI_QUERY)
    folder = ds.root / spec["dir"] if spec else None
    if folder is not None and folder.is_dir():
        regex = compile_pattern(manifest["filename"]["pattern"], f"data_manifests/{manifest['name']}.json")
        files = list_images(folder, (manifest["filename"]["extension"],))
        records = parse_names(files, regex, ds.root, MULTI_QUERY, manifest["camera_base"], manifest["cameras"])
        ds.multi_query = [r for r in records if r.pid != manifest.get("junk_pid")]
    return ds


def load_folder(
    root: str | Path,
    *,
    pattern: Optional[str] = None,
    train_dir: str = "train",
    query_dir: str = "query",
    gallery_dir: str = "gallery",
    extensions: Tuple[str, ...] = (".jpg", ".jpeg", ".png"),
    junk_pid: Optional[int] = None,
    camera_base: int = 0,
) -> ReIDDataset:
    """A user layout: ``pattern`` is a regex with named groups ``pid`` and ``camid``.

    The keyword-only parameters are the ``folder`` dataset's options (``--dataset-option``).
    """
    if not pattern:
        raise UserError("folder: dataset option 'pattern' is required (a regex with named groups (?P<pid>...) and (?P<camid>...))")
    return load_folder_dataset(
        "folder",
        root,
        {"train": train_dir, "query": query_dir, "gallery": gallery_dir},
        pattern,
        extensions=tuple(e.lower() for e in extensions),
        camera_base=camera_base,
        junk_pid=junk_pid,
    )
