"""Test-only benchmarks: a query folder and a gallery folder, no training split.

Occluded-REID, Partial-REID and Partial-iLIDS are evaluated after training on another
dataset (usually Market-1501). Their images carry no camera id; the protocol every
public loader follows treats the query folder as camera 0 and the gallery folder as
camera 1, so the same-camera rule of the CMC/mAP evaluation removes nothing. The
manifest's ``camera_of_split`` holds that rule, ``splits.<split>.dirs`` the folder
names seen in public copies (first found wins) and ``per_id_folders`` whether images
sit one level down in one folder per identity.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

from reid_masks.datasets.folders import compile_pattern
from reid_masks.datasets.records import Record, ReIDDataset, check_file_names
from reid_masks.errors import UserError

TEST_SPLITS = ("query", "gallery")
log = logging.getLogger(__name__)


def find_test_base(root: str | Path, manifest: dict[str, Any]) -> Path:
    """``root`` or the wrapper folder under it that holds one of the query folder names."""
    root = Path(root).expanduser()
    names = manifest["splits"]["query"]["dirs"]
    if not root.is_dir():
        raise UserError(f"{root}: dataset root not found (expected a folder holding {' or '.join(names)})")
    for cand in [root] + [root / w for w in manifest.get("wrapper_dirs", [])]:
        if any((cand / n).is_dir() for n in names):
            return cand
    return root


def split_folder(base: Path, manifest: dict[str, Any], split: str) -> Path:
    """The split's folder; a missing one is a UserError naming every accepted name."""
    names = manifest["splits"][split]["dirs"]
    for name in names:
        if (base / name).is_dir():
            return base / name
    raise UserError(f"{base}: {split} folder not found (expected {' or '.join(n + '/' for n in names)} of the {manifest['title']} layout)")


def scan_split(base: Path, manifest: dict[str, Any], split: str) -> tuple[list[Record], list[str]]:
    """(records, names that do not match the file-name pattern) of one split folder."""
    folder = split_folder(base, manifest, split)
    regex = compile_pattern(manifest["filename"]["pattern"], f"data_manifests/{manifest['name']}.json", groups=("pid",))
    extensions = tuple(manifest["filename"]["extensions"])
    files = folder.glob("*/*") if manifest.get("per_id_folders") else folder.iterdir()
    records, bad = [], []
    camid = int(manifest["camera_of_split"][split])
    # one image per stem: a copy holding the release's .tif files and converted .jpg ones would
    # otherwise list each image twice; the extension listed first in the manifest wins
    chosen: dict[Path, Path] = {}
    found = 0
    for f in files:
        if not f.is_file() or f.suffix.lower() not in extensions:
            continue
        check_file_names([f])
        found += 1
        key = f.with_suffix("")
        if key not in chosen or extensions.index(f.suffix.lower()) < extensions.index(chosen[key].suffix.lower()):
            chosen[key] = f
    if found > len(chosen):
        kept = Counter(f.suffix.lower() for f in chosen.values())
        log.warning("%s: %d image(s) exist under several extensions; reading one per name, preferring %s (read: %s)",
                    folder, found - len(chosen), " over ".join(extensions),
                    ", ".join(f"{n} {ext}" for ext, n in sorted(kept.items())))
    for f in sorted(chosen.values()):
        m = regex.match(f.name)
        if m is None:
            bad.append(f.relative_to(base).as_posix())
            continue
        records.append(Record(f.relative_to(base).as_posix(), int(m.group("pid")), camid, split))
    return records, bad


def load_test_folders(manifest: dict[str, Any], root: str | Path) -> ReIDDataset:
    """Query and gallery records (ids as in the file names); the train split is empty."""
    base = find_test_base(root, manifest)
    splits: dict[str, list[Record]] = {}
    for split in TEST_SPLITS:
        records, bad = scan_split(base, manifest, split)
        if bad:
            raise UserError(f"{base}: {len(bad)} {split} file name(s) do not match {manifest['filename']['pattern']!r} (first: {', '.join(bad[:3])})")
        if not records:
            folder = split_folder(base, manifest, split)
            raise UserError(f"{folder}: no {'/'.join(manifest['filename']['extensions'])} images{' in its per-identity folders' if manifest.get('per_id_folders') else ''}")
        splits[split] = records
    return ReIDDataset(manifest["name"], base, [], splits["query"], splits["gallery"], info={"test_only": True})
