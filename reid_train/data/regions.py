"""MGRAN's input masks from the mask cache: pedestrian mask + head / upper / lower masks.

Every image of a split gets a (4, h, w) stack of 0/1 masks at the cache's ``person_size``
(default 256x128); the dataset resizes it to the training resolution with nearest
(``nearest-exact``) sampling and sends it through the same paired transform as the
image, so flips and pad + crop move the masks with the pixels.

Channel 0 is always the pedestrian mask (cache column ``person``). Channels 1-3 depend on
the kind:

``regions`` (MGRAN, MGRAN-GF)
    ``regions == 1`` (head), ``== 2`` (upper body), ``== 3`` (lower body): the pedestrian
    mask cut along the shoulder and hip lines by ``reid-masks generate`` (README, "How
    masks are derived").

``parts`` (MGRAN-PL, the paper's "part-level" alignment; Table 6)
    Three axis-aligned rectangles -- NOT mask-shaped: the bounding box ``[y0, y1) x
    [x0, x1)`` of the pedestrian mask cut into horizontal stripes at a shoulder row ``s``
    and a hip row ``t``: head part ``[y0, s)``, upper part ``[s, t)``, lower part
    ``[t, y1)``, each over the full box width ``[x0, x1)`` (background inside the box
    included). The cut rows, in cache pixels:

    * from the keypoints when both keypoints of the pair have score >= 0.3 (the cache's
      ``keypoint_min_score``): the line's y is the mean y of left/right shoulder (COCO 5,
      6) -- or hip (11, 12) -- in image pixels, scaled by ``h / image height``; the cut is
      the first row whose centre lies at or below it, ``ceil(y - 0.5)``;
    * else from the cached regions: ``s`` = the first row whose most frequent region label
      is upper or lower, ``t`` = the first row whose most frequent label is lower;
    * else fixed fractions of the box: ``s = y0 + 0.18 (y1 - y0)``, ``t = y0 + 0.5 (y1 - y0)``
      (the estimates ``reid_masks.derive`` uses without keypoints).

    Rows are then clamped to ``y0 <= s <= t <= y1``. An empty pedestrian mask (never
    written by ``reid-masks generate``, which stores a prior box for ``no_person``) gives the
    whole image as the box.

Status: rows whose cache status is ``unreadable`` have all-zero masks (stage 1 could not
decode the image); callers leave them out through ``indices`` (the rule of
``reid_train.data.cache_check``: unusable train rows are left out, query/gallery refused).
``no_person`` rows (the documented prior box) and ``no_keypoints`` rows are used as they are.

Memory: the masks of a split are held in one (N, h, w) uint8 array (``regions | person <<
2``): 32 KiB per image at 256x128, ~0.4 GB for Market-1501's train split, ~0.65 GB for its
gallery. It is read from the cache in blocks and shared copy-on-write by DataLoader
workers (the HDF5 file is closed before they fork).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from reid_masks.cache import MaskCache, check_cache_matches
from reid_masks.datasets import ReIDDataset
from reid_masks.derive import (  # the mask stage's own cut rules: one definition
    HIP_FRACTION, KEYPOINT_MIN_SCORE, KP_L_HIP, KP_L_SHOULDER, KP_R_HIP, KP_R_SHOULDER, SHOULDER_FRACTION,
)

__all__ = ["REGION_KINDS", "SplitRegionMasks", "load_split_region_masks", "part_rows", "part_masks"]

REGION_KINDS = ("regions", "parts")
_BLOCK = 1024  # rows read from the cache at a time


def _kp_cut(keypoints: np.ndarray, a: int, b: int, scale_y: float) -> int | None:
    if keypoints[a, 2] < KEYPOINT_MIN_SCORE or keypoints[b, 2] < KEYPOINT_MIN_SCORE:
        return None
    y = 0.5 * (float(keypoints[a, 1]) + float(keypoints[b, 1])) * scale_y
    return int(math.ceil(y - 0.5))


def part_rows(person: np.ndarray, regions: np.ndarray, keypoints: np.ndarray, image_size: np.ndarray) -> tuple[int, int, int, int, int, int]:
    """``(y0, s, t, y1, x0, x1)`` of MGRAN-PL's three stripes for one image (module docstring).

    ``person`` / ``regions``: (h, w) cache masks; ``keypoints``: (17, 3) in image pixels;
    ``image_size``: (height, width) of the original image. Rows and columns are in cache
    pixels, end-exclusive.
    """
    h, w = person.shape
    rows = np.nonzero(person.any(axis=1))[0]
    cols = np.nonzero(person.any(axis=0))[0]
    if len(rows) == 0:
        y0, y1, x0, x1 = 0, h, 0, w
    else:
        y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    img_h = float(image_size[0])
    scale_y = h / img_h if img_h > 0 else 0.0
    s = _kp_cut(keypoints, KP_L_SHOULDER, KP_R_SHOULDER, scale_y) if scale_y else None
    t = _kp_cut(keypoints, KP_L_HIP, KP_R_HIP, scale_y) if scale_y else None
    if s is None or t is None:
        counts = np.stack([(regions == k).sum(axis=1) for k in (1, 2, 3)], axis=1)  # (h, 3)
        labelled = counts.sum(axis=1) > 0
        majority = counts.argmax(axis=1) + 1
        if s is None:
            hit = np.nonzero(labelled & (majority >= 2))[0]
            s = int(hit[0]) if len(hit) else int(round(y0 + SHOULDER_FRACTION * (y1 - y0)))
        if t is None:
            hit = np.nonzero(labelled & (majority == 3))[0]
            t = int(hit[0]) if len(hit) else int(round(y0 + HIP_FRACTION * (y1 - y0)))
    s = min(max(s, y0), y1)
    t = min(max(t, s), y1)
    return y0, s, t, y1, x0, x1


def part_masks(rows: tuple[int, int, int, int, int, int] | np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(3, h, w) uint8 0/1 rectangles (head, upper, lower parts) from :func:`part_rows`."""
    y0, s, t, y1, x0, x1 = (int(v) for v in rows)
    out = np.zeros((3,) + tuple(hw), np.uint8)
    for k, (a, b) in enumerate(((y0, s), (s, t), (t, y1))):
        out[k, a:b, x0:x1] = 1
    return out


class SplitRegionMasks:
    """The (4, h, w) uint8 masks of every record of a split, by record index."""

    def __init__(self, kind: str, codes: np.ndarray, parts: np.ndarray | None = None) -> None:
        self.kind = kind
        self.codes = codes  # (N, h, w) uint8: bits 0-1 region label, bit 2 pedestrian
        self.parts = parts  # (N, 6) int32 part_rows, for kind "parts"

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.codes.shape[1:])

    def __getitem__(self, index: int) -> Tensor:
        code = torch.from_numpy(self.codes[index])
        person = (code >> 2) & 1
        if self.kind == "parts":
            rest = torch.from_numpy(part_masks(self.parts[index], self.size))
            return torch.cat([person[None], rest])
        label = code & 3
        return torch.stack([person, label == 1, label == 2, label == 3]).to(torch.uint8)


def load_split_region_masks(cache: str | Path | MaskCache, dataset: ReIDDataset, split: str, kind: str = "regions",
                            indices: np.ndarray | None = None) -> SplitRegionMasks:
    """MGRAN masks of ``dataset``'s ``split`` in record order (module docstring).

    ``indices``: the records to load (default all), in that order. Records the cache lacks
    are a UserError naming the cache file (``check_cache_matches``).
    """
    if kind not in REGION_KINDS:
        raise ValueError(f"region mask kind must be one of {REGION_KINDS}, got {kind!r}")
    own = not isinstance(cache, MaskCache)
    mc = MaskCache(cache) if own else cache
    try:
        rows = check_cache_matches(mc, dataset, [split])[split]
        if indices is not None:
            rows = rows[np.asarray(indices, dtype=np.int64)]
        hw = tuple(mc.rows(split, rows[:1], columns=("person",))["person"].shape[1:])
        codes = np.zeros((len(rows),) + hw, np.uint8)
        parts = np.zeros((len(rows), 6), np.int32) if kind == "parts" else None
        columns = ("person", "regions") + (("keypoints", "image_size") if kind == "parts" else ())
        order = np.argsort(rows, kind="stable")  # read in file order: each compressed chunk is decoded ~once
        for start in range(0, len(rows), _BLOCK):
            dest = order[start : start + _BLOCK]
            data = mc.rows(split, rows[dest], columns=columns)
            person = data["person"] > 0
            regions = np.minimum(data["regions"], 3).astype(np.uint8)
            codes[dest] = regions | (person.astype(np.uint8) << 2)
            if parts is not None:
                for j, d in enumerate(dest):
                    parts[d] = part_rows(person[j], regions[j], data["keypoints"][j], data["image_size"][j])
    finally:
        if own:
            mc.close()
    return SplitRegionMasks(kind, codes, parts)
