"""CUHK03-NP: the 767/700 new protocol over images stored in ``cuhk-03.mat``.

``cuhk-03.mat`` is MATLAB v7.3 (HDF5): ``labeled`` and ``detected`` each hold one
reference per camera pair to a (10 images x ids) cell array. Images are extracted once
to ``images_<variant>/<pair>_<pid:03d>_<view>_<img:02d>.png`` (the names the new
protocol's ``filelist`` uses) and reused; the split file's ``train_idx``/``query_idx``/
``gallery_idx`` (1-based) index that ``filelist``.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from reid_masks.datasets.folders import compile_pattern, resolve_root
from reid_masks.datasets.records import Record, ReIDDataset, relabel
from reid_masks.errors import UserError

Variant = Literal["labeled", "detected"]
VARIANTS: tuple[str, ...] = get_args(Variant)


def read_split_mat(path: Path) -> dict[str, np.ndarray]:
    """The new-protocol split file: 0-based index arrays, ``filelist`` names and ``labels``."""
    import scipy.io

    if not path.is_file():
        raise UserError(f"{path}: CUHK03 new-protocol split file not found")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises several types for non-MATLAB-v5 input
        raise UserError(f"{path}: expected a MATLAB v5 CUHK03 new-protocol split file ({type(exc).__name__}: {exc})") from None
    need = ("train_idx", "query_idx", "gallery_idx", "filelist", "labels")
    missing = [k for k in need if k not in mat]
    if missing:
        raise UserError(f"{path}: not a CUHK03 new-protocol split file (missing {', '.join(missing)}; expected {', '.join(need)})")
    names = [str(np.asarray(x).ravel()[0]) for x in mat["filelist"].ravel()]
    out = {k: mat[k].ravel().astype(np.int64) - 1 for k in ("train_idx", "query_idx", "gallery_idx")}
    out["labels"] = mat["labels"].ravel().astype(np.int64)
    out["filelist"] = np.asarray(names)
    for key in ("train_idx", "query_idx", "gallery_idx"):
        if out[key].size and (out[key].min() < 0 or out[key].max() >= len(names)):
            raise UserError(f"{path}: {key} out of range for a filelist of {len(names)} names (expected 1-based indices)")
    return out


def extract_images(mat_path: Path, variant: str, out_dir: Path) -> int:
    """Write every image of ``variant`` as PNG; a temporary folder is renamed when complete."""
    import h5py
    from PIL import Image

    if not mat_path.is_file():
        raise UserError(f"{mat_path}: cuhk-03.mat not found (needed once to extract {out_dir.name}/)")
    try:
        mat = h5py.File(mat_path, "r")
    except OSError:
        raise UserError(f"{mat_path}: expected the MATLAB v7.3 (HDF5) cuhk-03.mat from cuhk03_release") from None
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    count = 0
    with mat:
        if variant not in mat:
            raise UserError(f"{mat_path}: no '{variant}' dataset (expected the cuhk03_release cuhk-03.mat with 'labeled' and 'detected')")
        for pair, pair_ref in enumerate(np.asarray(mat[variant]).ravel()):
            cells = mat[pair_ref][()].T  # (ids, 10) references
            for pid in range(cells.shape[0]):
                for img_idx, ref in enumerate(cells[pid]):
                    img = mat[ref][()].T
                    if img.ndim < 3 or img.size == 0:
                        continue  # empty cell: that view has fewer than five images
                    view = 1 if img_idx < 5 else 2
                    name = f"{pair + 1}_{pid + 1:03d}_{view}_{img_idx + 1:02d}.png"
                    Image.fromarray(np.ascontiguousarray(img.astype(np.uint8))).save(tmp / name)
                    count += 1
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return count


def load_cuhk03(manifest: dict[str, Any], root: str | Path, *, variant: Variant = "labeled") -> ReIDDataset:
    if variant not in VARIANTS:
        raise UserError(f"cuhk03: unknown variant {variant!r} (expected labeled or detected)")
    spec = manifest["variants"][variant]
    base = resolve_root(root, manifest, spec["split_mat"])
    split = read_split_mat(base / spec["split_mat"])
    regex = compile_pattern(manifest["filename"]["pattern"], "data_manifests/cuhk03.json")
    img_dir = spec["images_dir"]

    def records(key: str, name: str) -> list[Record]:
        out = []
        for idx in split[key]:
            fname = split["filelist"][idx]
            m = regex.match(fname)
            if m is None:
                raise UserError(f"{base / spec['split_mat']}: filelist name {fname!r} does not match {regex.pattern!r}")
            out.append(Record(f"{img_dir}/{fname}", int(split["labels"][idx]), int(m.group("camid")) - 1, name))
        return out

    train, query, gallery = records("train_idx", "train"), records("query_idx", "query"), records("gallery_idx", "gallery")
    if not all((base / r.path).is_file() for r in train + query + gallery):
        extract_images(base / manifest["raw_mat"], variant, base / img_dir)
        absent = [r.path for r in train + query + gallery if not (base / r.path).is_file()]
        if absent:
            raise UserError(f"{base / manifest['raw_mat']}: {len(absent)} images of the split file are not in the .mat (first: {absent[0]})")
    return ReIDDataset(f"cuhk03_{variant}", base, relabel(train), query, gallery, info={"variant": variant})
