"""MSMT17: images under train/ and test/, splits given by list files."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from reid_masks.datasets.folders import compile_pattern
from reid_masks.datasets.records import Record, ReIDDataset, SPLITS, leaves_root, relabel, text_lines
from reid_masks.errors import UserError


def find_base(root: str | Path, manifest: dict[str, Any]) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: dataset root not found (expected a folder holding list_train.txt)")
    for cand in [root] + [root / w for w in manifest.get("wrapper_dirs", [])]:
        if (cand / "list_train.txt").is_file():
            return cand
    raise UserError(f"{root}: list_train.txt not found (expected the MSMT17 layout: train/ test/ list_*.txt)")


def image_dir(base: Path, candidates: list[str]) -> str:
    for name in candidates:
        if (base / name).is_dir():
            return name
    raise UserError(f"{base}: image folder not found (expected one of {', '.join(candidates)})")


def read_list(path: Path, folder: str, regex: re.Pattern, split: str, camera_base: int) -> list[Record]:
    """Records from one list file; each line is '<pid dir>/<file> <label>'."""
    if not path.is_file():
        raise UserError(f"{path}: list file not found (expected lines '<pid dir>/<file> <label>')")
    records = []
    for lineno, line in enumerate(text_lines(path, "lines '<pid dir>/<file> <label>'"), 1):
        if not line.strip():
            continue
        parts = line.split()
        m = regex.match(Path(parts[0]).name) if len(parts) == 2 else None
        if m is None or not parts[1].lstrip("-").isdigit():
            raise UserError(f"{path}:{lineno}: cannot parse {line.strip()!r} (expected '<pid dir>/<file> <label>' with names like {regex.pattern!r})")
        if leaves_root(parts[0]):
            raise UserError(f"{path}:{lineno}: {parts[0]!r} leaves the dataset root (expected a path relative to {folder}/, like '<pid dir>/<file>')")
        camid = int(m.group("camid")) - camera_base
        records.append(Record(f"{folder}/{parts[0]}", int(parts[1]), camid, split))
    return records


def load_msmt17(manifest: dict[str, Any], root: str | Path) -> ReIDDataset:
    base = find_base(root, manifest)
    regex = compile_pattern(manifest["filename"]["pattern"], "data_manifests/msmt17.json")
    dirs = {"train": image_dir(base, manifest["image_dirs"]["train"]), "test": image_dir(base, manifest["image_dirs"]["test"])}
    splits = {}
    for split in SPLITS:
        spec = manifest["splits"][split]
        folder = dirs["train" if split == "train" else "test"]
        splits[split] = [r for lst in spec["lists"] for r in read_list(base / lst, folder, regex, split, manifest["camera_base"])]
    splits["train"] = relabel(splits["train"])
    return ReIDDataset("msmt17", base, splits["train"], splits["query"], splits["gallery"])
