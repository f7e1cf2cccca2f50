"""Dataset adapters shared by ``reid-masks`` and ``reid-train``.

>>> ds = build_dataset("market1501", "/data/market1501")
>>> ds.train[0]
Record(path='bounding_box_train/0002_c1s1_000451_03.jpg', pid=0, camid=0, split='train')
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from reid_masks.datasets.cuhk03 import load_cuhk03
from reid_masks.datasets.folders import load_folder, load_manifest_folders
from reid_masks.datasets.images import load_images
from reid_masks.datasets.manifest import DATASET_NAMES, load_manifest, read_manifest_file
from reid_masks.datasets.msmt17 import load_msmt17
from reid_masks.datasets.options import check_options, describe, loader_options
from reid_masks.datasets.records import CACHE_SPLITS, SPLITS, Record, ReIDDataset, cache_splits, relabel
from reid_masks.datasets.testsets import load_test_folders
from reid_masks.errors import UserError

__all__ = [
    "DATASET_NAMES", "SPLITS", "CACHE_SPLITS", "cache_splits", "Record", "ReIDDataset", "build_dataset", "check_dataset_options",
    "dataset_names", "dataset_options", "load_manifest", "read_manifest_file", "relabel",
]

# A loader's keyword-only parameters are its dataset's options (reid_masks.datasets.options).
# Datasets with a packaged manifest are loaded by their manifest's "layout":
# loader(manifest, root, *, options). Datasets without one: loader(root, *, options).
LAYOUT_LOADERS: dict[str, Callable[..., ReIDDataset]] = {
    "folders": load_manifest_folders,
    "lists": load_msmt17,
    "cuhk03": load_cuhk03,
    "test_folders": load_test_folders,  # Occluded-REID, Partial-REID, Partial-iLIDS: query/gallery only
}
OWN_LOADERS: dict[str, Callable[..., ReIDDataset]] = {"folder": load_folder, "images": load_images}
# Names that fix some options of another dataset.
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "cuhk03_labeled": ("cuhk03", {"variant": "labeled"}),
    "cuhk03_detected": ("cuhk03", {"variant": "detected"}),
}


def dataset_names() -> tuple[str, ...]:
    """Names ``build_dataset`` accepts."""
    return DATASET_NAMES + tuple(ALIASES) + tuple(OWN_LOADERS)


def dataset_loader(name: str) -> Callable[..., ReIDDataset]:
    """The loader of a dataset name (no alias); unknown names are a one-line UserError."""
    if name in OWN_LOADERS:
        return OWN_LOADERS[name]
    if name not in DATASET_NAMES:
        raise UserError(f"unknown dataset {name!r}: expected one of {', '.join(dataset_names())}")
    return LAYOUT_LOADERS[load_manifest(name)["layout"]]


def resolve_dataset(name: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The dataset's own name (aliases resolved) and its checked, typed options."""
    if name in ALIASES:
        base, fixed = ALIASES[name]
        for key, value in fixed.items():
            if key in options and str(options[key]) != str(value):
                raise UserError(f"{name}: dataset option {key}={options[key]!r} contradicts the name (use {base} with {key}={options[key]})")
        name, options = base, {**options, **fixed}
    return name, check_options(name, dataset_loader(name), options)


def check_dataset_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` typed for dataset ``name``; unknown names or bad values are a UserError.

    The one check behind ``--dataset-option`` (reid-masks) and ``data.options`` (reid-train).
    """
    return resolve_dataset(name, options)[1]


def dataset_options(name: str) -> dict[str, str]:
    """``{option: how its value is written}`` for a dataset (aliases resolved)."""
    base, fixed = ALIASES.get(name, (name, {}))
    return {k: describe(h) for k, (h, _) in loader_options(dataset_loader(base)).items() if k not in fixed}


def build_dataset(name: str, root: str | Path, **options: Any) -> ReIDDataset:
    """Load a dataset's train/query/gallery records.

    Options (see ``dataset_options``): ``variant`` for cuhk03 (``labeled`` default, or
    ``detected``); for ``folder``: ``pattern`` (regex with named groups ``pid`` and
    ``camid``), ``train_dir``/``query_dir``/``gallery_dir``, ``extensions``,
    ``junk_pid``, ``camera_base``. Text values are converted to the option's type.
    """
    name, options = resolve_dataset(name, options)
    if name in OWN_LOADERS:
        return OWN_LOADERS[name](root, **options)
    return dataset_loader(name)(load_manifest(name), root, **options)
