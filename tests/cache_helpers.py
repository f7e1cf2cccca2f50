"""Mask caches for tests, derived from the synthetic datasets' LIP parsing PNGs.

A stand-in for ``reid_masks.generate.generate`` (the real mask stage): the whole-body
mask is ``parsing > 0`` area-downsampled to 24x8, upper/bottom group the LIP labels
(head + torso + arms / legs + feet). Written with the real ``write_cache`` so the trainer
reads exactly the production format. Swap ``make_cache`` for ``generate(dataset, root,
out, parsing_dir=root / "parsing")`` once that exists.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reid_masks.cache import CUT, MASK_HW, STATUS, Rows, write_cache
from reid_masks.datasets import build_dataset
from reid_masks.derive import parts_from_parsing
from reid_masks.imageio import read_label_png

PERSON_HW = (64, 32)
UPPER_LABELS = (1, 2, 3, 4, 5, 6, 7, 10, 11, 13, 14, 15)  # hat hair glove sunglasses clothes dress coat jumpsuit scarf face arms
BOTTOM_LABELS = (8, 9, 12, 16, 17, 18, 19)  # socks pants skirt legs shoes

_made: dict[tuple[str, str, str], Path] = {}


def _area(maps: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(maps.astype(np.float32))[None]
    return F.interpolate(t, size=hw, mode="area")[0].numpy()


def split_rows(dataset, split: str) -> Rows:
    recs = dataset.split(split)
    n = len(recs)
    masks = np.zeros((n, 3) + MASK_HW, np.float32)
    person = np.zeros((n,) + PERSON_HW, np.uint8)
    regions = np.zeros((n,) + PERSON_HW, np.uint8)
    parts = np.zeros((n,) + PERSON_HW, np.uint8)
    sizes = np.zeros((n, 2), np.int32)
    for i, rec in enumerate(recs):
        parsing = read_label_png((dataset.root / "parsing" / rec.path).with_suffix(".png"))
        sizes[i] = parsing.shape
        whole = parsing > 0
        upper = np.isin(parsing, UPPER_LABELS)
        bottom = np.isin(parsing, BOTTOM_LABELS)
        masks[i] = _area(np.stack([whole, upper, bottom]), MASK_HW)
        small = _area(np.stack([whole, upper, bottom]), PERSON_HW)
        person[i] = small[0] >= 0.5
        regions[i] = np.where(small[2] >= 0.5, 3, np.where(small[1] >= 0.5, 2, 0)) * person[i]
        labels = parts_from_parsing(parsing, np.zeros(parsing.shape, bool))  # nearest-sampled to the cache size
        ys = (np.arange(PERSON_HW[0]) + 0.5) * parsing.shape[0] / PERSON_HW[0]
        xs = (np.arange(PERSON_HW[1]) + 0.5) * parsing.shape[1] / PERSON_HW[1]
        parts[i] = labels[ys.astype(int)[:, None], xs.astype(int)[None, :]] * person[i]
    return Rows(
        index=np.arange(n, dtype=np.int64),
        path=np.asarray([r.path for r in recs], dtype=object),
        pid=np.asarray([r.pid for r in recs], np.int32),
        camid=np.asarray([r.camid for r in recs], np.int16),
        fingerprint=np.asarray([hashlib.blake2b((dataset.root / r.path).read_bytes(), digest_size=8).hexdigest().encode() for r in recs], dtype="S16"),
        status=np.full(n, STATUS["ok"], np.uint8),
        score=np.ones(n, np.float32),
        box=np.zeros((n, 4), np.float32),
        keypoints=np.zeros((n, 17, 3), np.float32),
        image_size=sizes,
        masks=masks,
        person=person,
        regions=regions,
        cuts=np.full((n, 2), CUT["parsing"], np.uint8),
        parts=parts,
    )


def make_cache(root: Path, name: str = "market1501", out: Path | None = None, drop: int = 0) -> Path:
    """Write (once per arguments) a mask cache for the synthetic dataset at ``root``.

    ``drop``: leave out the last ``drop`` train rows (a cache that misses images).
    """
    root = Path(root)
    out = Path(out) if out is not None else root.parent / f"{root.name}-{name}-drop{drop}.h5"
    key = (str(root), name, str(out))
    if key in _made and out.exists():
        return out
    dataset = build_dataset(name, root)
    splits = {}
    for split in ("train", "query", "gallery"):
        rows = split_rows(dataset, split)
        if split == "train" and drop:
            rows = rows.take(np.arange(len(rows) - drop))
        splits[split] = (len(rows), rows)
    write_cache(out, splits, {"dataset": name, "generator": "tests/cache_helpers.py (parsing PNGs)", "person_hw": list(PERSON_HW)})
    _made[key] = out
    return out


def same_column(x: np.ndarray, y: np.ndarray) -> bool:
    """Two columns of a cache equal, value for value (``parsing`` is an object array of byte rows)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype == object and len(x) and isinstance(x[0], np.ndarray):
        return x.shape == y.shape and y.dtype == object and [bytes(v) for v in x] == [bytes(v) for v in y]
    return bool(np.array_equal(x, y))
