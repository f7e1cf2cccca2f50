"""CUHK03: the 767/700 new protocol (CUHK03-NP, the default) or the classic 20 splits.

``cuhk-03.mat`` is MATLAB v7.3 (HDF5): ``labeled`` and ``detected`` each hold one
reference per camera pair to a (10 images x ids) cell array. Images are extracted once
to ``images_<variant>/<pair>_<pid:03d>_<view>_<img:02d>.png`` (the names the new
protocol's ``filelist`` uses) and reused.

``protocol="new"`` (Zhong et al., CVPR 2017): the split file's ``train_idx``/``query_idx``/
``gallery_idx`` (1-based) index that ``filelist``.

``protocol="classic"`` (Li et al., CVPR 2014; torchreid's ``cuhk03_classic_split``):
``cuhk-03.mat``'s ``testsets`` is a cell array of 20 test sets, each a (100 x 2) array of
``[camera pair, person in that pair]`` (1-based). Split ``split_id`` (0-19) tests on those
100 identities -- every image of them is a query *and* a gallery image (the CUHK03 metric
removes same-identity same-view gallery items, so a view-1 query is matched against
view 2) -- and trains on every image of the other 1,367. Test ids are ``pair * 1000 +
person`` (e.g. ``3_045_*`` -> 3045); train ids are relabelled 0..N-1. The camera is the
view (0 or 1), as in the new protocol.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from reid_masks.datasets.folders import compile_pattern, resolve_root
from reid_masks.datasets.records import Record, ReIDDataset, check_file_names, relabel
from reid_masks.errors import UserError

Variant = Literal["labeled", "detected"]
VARIANTS: tuple[str, ...] = get_args(Variant)
Protocol = Literal["new", "classic"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)


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
    # the authors' files hold integers (class double stored as uint8/uint16); a float64 copy
    # (re-saved, or an older synthetic file) is read too, but only with whole numbers
    for key in ("train_idx", "query_idx", "gallery_idx", "labels"):
        values = np.asarray(mat[key]).ravel()
        if values.dtype.kind not in "iuf" or (values.dtype.kind == "f" and not np.array_equal(values, np.round(values))):
            raise UserError(f"{path}: {key} must hold whole numbers, got {values.dtype} values such as {values[:3].tolist()}")
    out = {k: mat[k].ravel().astype(np.int64) - 1 for k in ("train_idx", "query_idx", "gallery_idx")}
    out["labels"] = mat["labels"].ravel().astype(np.int64)
    out["filelist"] = np.asarray(names)
    for key in ("train_idx", "query_idx", "gallery_idx"):
        if out[key].size and (out[key].min() < 0 or out[key].max() >= len(names)):
            raise UserError(f"{path}: {key} out of range for a filelist of {len(names)} names (expected 1-based indices)")
    return out


def open_raw_mat(mat_path: Path, purpose: str) -> Any:
    """``cuhk-03.mat`` opened with h5py (MATLAB v7.3); missing or foreign files are a UserError."""
    import h5py

    if not mat_path.is_file():
        raise UserError(f"{mat_path}: cuhk-03.mat not found ({purpose})")
    try:
        return h5py.File(mat_path, "r")
    except OSError:
        raise UserError(f"{mat_path}: expected the MATLAB v7.3 (HDF5) cuhk-03.mat from cuhk03_release") from None


def extract_images(mat_path: Path, variant: str, out_dir: Path) -> int:
    """Write every image of ``variant`` as PNG; a temporary folder is renamed when complete."""
    from PIL import Image

    mat = open_raw_mat(mat_path, f"needed once to extract {out_dir.name}/")
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


def read_testsets(mat_path: Path) -> list[np.ndarray]:
    """The classic protocol's test sets from ``cuhk-03.mat``: (100, 2) int arrays of [pair, person]."""
    with open_raw_mat(mat_path, "the classic protocol reads its 'testsets'") as mat:
        if "testsets" not in mat:
            raise UserError(f"{mat_path}: no 'testsets' cell array (the classic protocol's 20 test sets); expected cuhk03_release's cuhk-03.mat")
        out = []
        for ref in np.asarray(mat["testsets"]).ravel():
            pairs = np.asarray(mat[ref][()]).T  # MATLAB (100 x 2), stored transposed
            if pairs.ndim != 2 or pairs.shape[1] != 2:
                raise UserError(f"{mat_path}: a 'testsets' entry has shape {pairs.shape}, expected (ids, 2) [camera pair, person]")
            out.append(pairs.astype(np.int64))
    return out


def load_cuhk03(
    manifest: dict[str, Any], root: str | Path, *, variant: Variant = "labeled", protocol: Protocol = "new", split_id: int = 0,
) -> ReIDDataset:
    if variant not in VARIANTS:
        raise UserError(f"cuhk03: unknown variant {variant!r} (expected labeled or detected)")
    if protocol not in PROTOCOLS:
        raise UserError(f"cuhk03: unknown protocol {protocol!r} (expected new (CUHK03-NP, 767/700) or classic (20 splits of 1,367/100))")
    if not isinstance(split_id, int) or isinstance(split_id, bool):
        raise UserError(f"cuhk03: split_id must be an integer, got {split_id!r}")
    if protocol == "classic":
        return _load_classic(manifest, root, variant, split_id)
    if split_id != 0:
        raise UserError(f"cuhk03: split_id={split_id} needs protocol=classic (the new protocol has one split)")
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


def _load_classic(manifest: dict[str, Any], root: str | Path, variant: str, split_id: int) -> ReIDDataset:
    spec = manifest["variants"][variant]
    base = resolve_root(root, manifest, manifest["raw_mat"])
    mat_path = base / manifest["raw_mat"]
    testsets = read_testsets(mat_path)
    if not 0 <= split_id < len(testsets):
        raise UserError(f"cuhk03: split_id={split_id} out of range; {mat_path} has {len(testsets)} classic splits (0..{len(testsets) - 1})")
    img_dir = base / spec["images_dir"]
    if not img_dir.is_dir():  # extraction writes a temporary folder and renames it when complete
        extract_images(mat_path, variant, img_dir)
    regex = compile_pattern(manifest["filename"]["pattern"], "data_manifests/cuhk03.json")
    test_ids = {int(pair) * 1000 + int(person) for pair, person in testsets[split_id]}
    train, test = [], []
    for path in check_file_names(sorted(p for p in img_dir.iterdir() if p.suffix == manifest["filename"]["extension"])):
        m = regex.match(path.name)
        if m is None:
            raise UserError(f"{path}: file name does not match {regex.pattern!r} (extracted from {mat_path})")
        pid = int(m.group("pair")) * 1000 + int(m.group("pid"))
        rec = Record(f"{spec['images_dir']}/{path.name}", pid, int(m.group("camid")) - 1, "query" if pid in test_ids else "train")
        (test if pid in test_ids else train).append(rec)
    absent = sorted(test_ids - {r.pid for r in test})
    if absent:
        raise UserError(f"{mat_path}: testsets[{split_id}] names {len(absent)} identities with no image in {img_dir} (first: pair {absent[0] // 1000}, person {absent[0] % 1000})")
    gallery = [r._replace(split="gallery") for r in test]
    info = {"variant": variant, "protocol": "classic", "split_id": split_id}
    return ReIDDataset(f"cuhk03_{variant}", base, relabel(train), test, gallery, info=info)
