"""Check a user's dataset copy against its manifest before hours of GPU time are spent."""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reid_masks.datasets.cuhk03 import read_split_mat
from reid_masks.datasets.folders import compile_pattern, list_images, resolve_root
from reid_masks.datasets.manifest import load_manifest
from reid_masks.datasets.msmt17 import find_base, image_dir, read_list
from reid_masks.datasets.records import SPLITS, Record
from reid_masks.datasets.testsets import TEST_SPLITS, find_test_base, scan_split
from reid_masks.errors import UserError

MAX_LISTED = 3


class CountDifference(str):
    """A problem line that only says a count differs from the manifest (left out by ``counts=False``)."""


def compare_counts(split: str, expected: dict[str, Any], found: dict[str, int]) -> list[str]:
    """One line per count that differs from the manifest."""
    return [
        CountDifference(f"{split}: expected {expected[key]} {key}, found {found[key]}")
        for key in ("files", "junk", "distractors", "images", "ids")
        if key in expected and key in found and expected[key] != found[key]
    ]


def check_folders(manifest: dict[str, Any], root: Path) -> tuple[list[str], list[tuple[Path, Record]]]:
    base = resolve_root(root, manifest, manifest["splits"]["train"]["dir"])
    regex = compile_pattern(manifest["filename"]["pattern"], f"manifest {manifest['name']}")
    problems, seen = [], []
    for split in SPLITS:
        spec = manifest["splits"][split]
        folder = base / spec["dir"]
        if not folder.is_dir():
            problems.append(f"{split}: missing split folder {folder} (expected {spec.get('files', spec['images'])} {manifest['filename']['extension']} files)")
            continue
        files = list_images(folder, (manifest["filename"]["extension"],))
        pids, bad = [], []
        for f in files:
            m = regex.match(f.name)
            if m is None:
                bad.append(f.name)
                continue
            pid, camid = int(m.group("pid")), int(m.group("camid")) - manifest["camera_base"]
            if not 0 <= camid < manifest["cameras"]:
                problems.append(f"{split}: {f.name} has camera {m.group('camid')}, expected 1..{manifest['cameras']}")
            pids.append(pid)
            seen.append((f, Record(f.relative_to(base).as_posix(), pid, camid, split)))
        if bad:
            problems.append(f"{split}: {len(bad)} file name(s) in {folder} do not match {regex.pattern} (first: {', '.join(bad[:MAX_LISTED])})")
        junk = sum(p == manifest.get("junk_pid") for p in pids)
        kept = [p for p in pids if p != manifest.get("junk_pid")]
        found = {
            "files": len(files),
            "junk": junk,
            "distractors": sum(p == manifest.get("distractor_pid") for p in kept),
            "images": len(kept),
            "ids": len(set(kept)),
        }
        problems += compare_counts(split, spec, found)
    return problems, seen


def check_lists(manifest: dict[str, Any], root: Path) -> tuple[list[str], list[tuple[Path, Record]]]:
    base = find_base(root, manifest)
    regex = compile_pattern(manifest["filename"]["pattern"], f"manifest {manifest['name']}")
    problems, seen = [], []
    for split in SPLITS:
        spec = manifest["splits"][split]
        try:
            folder = image_dir(base, manifest["image_dirs"]["train" if split == "train" else "test"])
            recs = [r for lst in spec["lists"] for r in read_list(base / lst, folder, regex, split, manifest["camera_base"])]
        except UserError as exc:
            problems.append(f"{split}: {exc}")
            continue
        problems += compare_counts(split, spec, {"images": len(recs), "ids": len({r.pid for r in recs})})
        seen += [(base / r.path, r) for r in recs]
    return problems, seen


def check_cuhk03(manifest: dict[str, Any], root: Path) -> tuple[list[str], list[tuple[Path, Record]]]:
    import h5py

    base = resolve_root(root, manifest, next(iter(manifest["variants"].values()))["split_mat"])
    problems, seen = [], []
    raw = base / manifest["raw_mat"]
    for variant, vspec in manifest["variants"].items():
        try:
            split = read_split_mat(base / vspec["split_mat"])
        except UserError as exc:
            problems.append(f"{variant}: {exc}")
            continue
        for name in SPLITS:
            idx = split[f"{name}_idx"]
            names = split["filelist"][idx]
            found = {"images": len(idx), "ids": len(set(split["labels"][idx].tolist()))}
            problems += compare_counts(f"{variant} {name}", vspec["splits"][name], found)
            for fname, pid in zip(names, split["labels"][idx]):
                path = base / vspec["images_dir"] / fname
                if path.is_file() or path.is_symlink():  # absent ones are extracted from the .mat
                    seen.append((path, Record(path.relative_to(base).as_posix(), int(pid), 0, name)))
        if not (base / vspec["images_dir"]).is_dir():
            if not raw.is_file():
                problems.append(f"{variant}: neither {vspec['images_dir']}/ nor {raw} found (cuhk-03.mat is needed to extract the images)")
            else:
                try:
                    with h5py.File(raw, "r") as mat:
                        if variant not in mat:
                            problems.append(f"{variant}: {raw} has no '{variant}' dataset")
                except OSError:
                    problems.append(f"{variant}: {raw} is not MATLAB v7.3 (HDF5) as cuhk03_release ships it")
    return problems, seen


def check_test_folders(manifest: dict[str, Any], root: Path) -> tuple[list[str], list[tuple[Path, Record]]]:
    """Test-only sets: each query/gallery folder exists, names parse, counts match."""
    base = find_test_base(root, manifest)
    problems, seen = [], []
    for split in TEST_SPLITS:
        spec = manifest["splits"][split]
        try:
            recs, bad = scan_split(base, manifest, split)
        except UserError as exc:
            problems.append(f"{split}: {exc}")
            continue
        if bad:
            problems.append(f"{split}: {len(bad)} file name(s) do not match {manifest['filename']['pattern']} (first: {', '.join(bad[:MAX_LISTED])})")
        problems += compare_counts(split, spec, {"images": len(recs), "ids": len({r.pid for r in recs})})
        seen += [(base / r.path, r) for r in recs]
    return problems, seen

def check_built(name: str, root: Path, options: dict[str, Any]) -> tuple[list[str], list[tuple[Path, Record]]]:
    """A dataset without a manifest (e.g. ``folder``): does its adapter read it, and what it lists."""
    from reid_masks.datasets import build_dataset

    try:
        ds = build_dataset(name, root, **options)
    except UserError as exc:
        return [str(exc)], []
    return [], [(ds.abspath(r), r) for s in SPLITS for r in ds.split(s)]


def unreachable_files(seen: list[tuple[Path, Record]]) -> list[str]:
    """Lines for listed or globbed images that cannot be opened: missing, dangling symlinks, no permission."""
    found: dict[tuple[str, str], list[str]] = {}
    for path, rec in seen:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if os.path.islink(path):
                found.setdefault((rec.split, "dangling symlink(s)"), []).append(f"{rec.path} -> {os.readlink(path)}")
            else:
                found.setdefault((rec.split, "listed image(s) missing"), []).append(rec.path)
            continue
        except OSError as exc:
            found.setdefault((rec.split, "image(s) that cannot be opened"), []).append(f"{rec.path} ({exc.strerror})")
            continue
        if not stat.S_ISREG(st.st_mode):
            found.setdefault((rec.split, "listed path(s) that are not files"), []).append(rec.path)
        elif not os.access(path, os.R_OK):
            found.setdefault((rec.split, "image(s) without read permission"), []).append(rec.path)
    return [f"{split}: {len(v)} {what} (first: {', '.join(v[:MAX_LISTED])})" for (split, what), v in found.items()]


def unreadable_images(paths: list[Path], workers: int = 2) -> list[str]:
    """Lines for images that fail to decode completely (truncated or not an image)."""
    from joblib import Parallel, delayed

    from reid_masks.imageio import read_image

    def check(path: Path) -> str | None:
        try:
            read_image(path)
        except UserError as exc:
            return str(exc)
        return None

    chunk = max(1, len(paths) // (workers * 8) or 1)
    results = Parallel(n_jobs=workers, batch_size=chunk)(delayed(check)(p) for p in paths)
    return [r for r in results if r]


CHECKERS = {"folders": check_folders, "lists": check_lists, "cuhk03": check_cuhk03, "test_folders": check_test_folders}


@dataclass
class Validation:
    """What ``validate`` found: the problem lines and, per split, the images / ids / cameras read."""

    problems: list[str]
    splits: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def only_counts_differ(self) -> bool:
        return bool(self.problems) and all(isinstance(p, CountDifference) for p in self.problems)

    def summary_lines(self) -> list[str]:
        return [f"{split}: {c['images']} images, {c['ids']} ids, {c['cameras']} cameras" for split, c in self.splits.items()]


def split_counts(seen: list[tuple[Path, Record]], junk_pid: int | None = None) -> dict[str, dict[str, int]]:
    """Images, ids and cameras per split of the records read (the junk id left out, as the adapters do)."""
    out: dict[str, dict[str, int]] = {}
    for split in dict.fromkeys(r.split for _, r in seen):
        recs = [r for _, r in seen if r.split == split and r.pid != junk_pid]
        out[split] = {"images": len(recs), "ids": len({r.pid for r in recs}), "cameras": len({r.camid for r in recs})}
    return out


def validate_dataset(
    name: str, root: str | Path, manifest: dict[str, Any] | None = None, check_images: bool = False, workers: int = 2,
    options: dict[str, Any] | None = None, counts: bool = True,
) -> list[str]:
    """Every difference between the copy at ``root`` and ``manifest``; empty when it matches (:func:`check_dataset`)."""
    return check_dataset(name, root, manifest, check_images, workers, options, counts).problems


def check_dataset(
    name: str, root: str | Path, manifest: dict[str, Any] | None = None, check_images: bool = False, workers: int = 2,
    options: dict[str, Any] | None = None, counts: bool = True,
) -> Validation:
    """Check the copy at ``root`` against ``manifest``: layout, names, readable images and (``counts``) the counts.

    ``manifest`` None: the packaged one; a dataset without any (``folder``) is checked by
    reading it with its adapter and ``options``. Every listed image must be a readable file.
    ``counts=False``: a subset or a re-split copy -- everything but the manifest's counts.
    """
    from reid_masks.datasets import DATASET_NAMES, resolve_dataset

    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: dataset root not found")
    base_name, options = resolve_dataset(name, dict(options or {}))
    if manifest is None and base_name in DATASET_NAMES:
        manifest = load_manifest(base_name)
    if manifest is None:
        problems, seen = check_built(base_name, root, options)
    else:
        if manifest["name"] != base_name:
            raise UserError(f"manifest is for {manifest['name']!r}, not {name!r}")
        if "variant" in options and "variants" in manifest:  # cuhk03_detected: that variant only
            manifest = {**manifest, "variants": {options["variant"]: manifest["variants"][options["variant"]]}}
        checker = CHECKERS.get(manifest["layout"])
        if checker is None:  # a layout without its own checker: read it with the adapter
            problems, seen = check_built(base_name, root, options)
        else:
            problems, seen = checker(manifest, root)
    problems += unreachable_files(seen)
    if check_images:
        problems += unreadable_images([p for p, _ in seen if os.path.isfile(p)], workers)
    if not counts:
        problems = [p for p in problems if not isinstance(p, CountDifference)]
    return Validation(problems, split_counts(seen, manifest.get("junk_pid") if manifest else None))
