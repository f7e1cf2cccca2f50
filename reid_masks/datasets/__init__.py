"""Dataset adapters shared by ``reid-masks`` and ``reid-train``.

>>> ds = build_dataset("market1501", "/data/market1501")
>>> ds.train[0]
Record(path='bounding_box_train/0002_c1s1_000451_03.jpg', pid=0, camid=0, split='train')
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from reid_masks.datasets.cuhk03 import load_cuhk03
from reid_masks.datasets.folders import load_folder_dataset, load_manifest_folders
from reid_masks.datasets.manifest import DATASET_NAMES, load_manifest, read_manifest_file
from reid_masks.datasets.msmt17 import load_msmt17
from reid_masks.datasets.records import SPLITS, Record, ReIDDataset, relabel
from reid_masks.errors import UserError

__all__ = [
    "DATASET_NAMES", "SPLITS", "Record", "ReIDDataset", "build_dataset", "dataset_names",
    "load_manifest", "read_manifest_file", "relabel",
]


def dataset_names() -> tuple[str, ...]:
    """Names ``build_dataset`` accepts (``cuhk03`` takes ``variant``, ``protocol``, ``split_id``)."""
    return DATASET_NAMES + ("cuhk03_labeled", "cuhk03_detected", "folder")


def build_dataset(name: str, root: str | Path, **options: Any) -> ReIDDataset:
    """Load a dataset's train/query/gallery records.

    Options: for cuhk03 ``variant`` (``labeled`` default, or ``detected``), ``protocol``
    (``new`` default: CUHK03-NP; ``classic``: the 20 splits of ``cuhk-03.mat``) and
    ``split_id`` (0-19, classic only); for
    ``folder``: ``pattern`` (regex with named groups ``pid`` and ``camid``),
    ``train_dir``/``query_dir``/``gallery_dir``, ``extensions``, ``junk_pid``,
    ``camera_base``.
    """
    if name in ("cuhk03_labeled", "cuhk03_detected"):
        name, options = "cuhk03", {**options, "variant": name.split("_")[1]}
    if name == "folder":
        return _build_folder(root, **options)
    manifest = load_manifest(name)
    allowed = {"cuhk03": {"variant", "protocol", "split_id"}}.get(name, set())
    unknown = set(options) - allowed
    if unknown:
        raise UserError(f"{name}: unknown option(s) {', '.join(sorted(unknown))} (allowed: {', '.join(sorted(allowed)) or 'none'})")
    if manifest["layout"] == "folders":
        return load_manifest_folders(manifest, root)
    if manifest["layout"] == "lists":
        return load_msmt17(manifest, root)
    return load_cuhk03(manifest, root, **options)


def _build_folder(
    root: str | Path,
    pattern: str | None = None,
    train_dir: str = "train",
    query_dir: str = "query",
    gallery_dir: str = "gallery",
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png"),
    junk_pid: int | None = None,
    camera_base: int = 0,
) -> ReIDDataset:
    if not pattern:
        raise UserError("folder: option 'pattern' is required (a regex with named groups (?P<pid>...) and (?P<camid>...))")
    return load_folder_dataset(
        "folder",
        root,
        {"train": train_dir, "query": query_dir, "gallery": gallery_dir},
        pattern,
        extensions=tuple(e.lower() for e in extensions),
        camera_base=camera_base,
        junk_pid=junk_pid,
    )
