"""MGRAN's input masks from the mask cache: pedestrian mask + region or body-part masks.

Every image of a split gets a (C, h, w) stack of 0/1 masks at the cache's ``person_size``
(default 256x128); the dataset resizes it to the training resolution with nearest
(``nearest-exact``) sampling and sends it through the same paired transform as the
image, so flips and pad + crop move the masks with the pixels.

Channel 0 is always the pedestrian mask (cache column ``person``). The other channels
depend on the kind (:data:`CHANNELS`):

``regions`` (MGRAN, MGRAN-GF): 4 channels
    ``regions == 1`` (head), ``== 2`` (upper body), ``== 3`` (lower body): the pedestrian
    mask cut along the shoulder and hip lines by ``reid-masks generate`` (README, "How
    masks are derived"); the paper's four keypoints are unnamed, shoulders and hips are the
    project's reading (docs/mgran.md, "Regions: our reading").

``parts`` (MGRAN-PL, the paper's "part-level" alignment, Table 6): 5 channels
    ``parts == 1`` (head), ``== 2`` (torso), ``== 3`` (arms), ``== 4`` (legs): the body
    parts of the cache column ``parts`` (schema version 3) -- from the LIP parsing labels
    when stage 1 had parsing, else the regions split by the keypoint-defined arms
    (``reid_masks.derive``). Always inside the pedestrian mask. A cache older than version 3 has no
    ``parts`` column: a UserError naming the file says to regenerate it.

Status: rows whose cache status is ``unreadable`` have all-zero masks (stage 1 could not
decode the image); callers leave them out through ``indices`` (the rule of
``reid_train.data.cache_check``: unusable train rows are left out, query/gallery refused).
``no_person`` rows (the documented prior box) and ``no_keypoints`` rows are used as they are.

Integrity: in a schema-4 cache the maps read are hashed and compared with the rows'
``map_digests`` (``reid_masks.cache.map_mismatches``), so person/regions/parts rows moved
or edited after ``generate`` are refused in one line (the row-level check in
``reid_train.data.cache_check`` covers the other columns without reading the maps).

Memory: the masks of a split are held in one (N, h, w) uint8 array (the label in the low
bits, the pedestrian bit above it): 32 KiB per image at 256x128, ~0.4 GB for Market-1501's
train split, ~0.65 GB for its gallery. It is read from the cache in blocks and shared copy-on-write by DataLoader
workers (the HDF5 file is closed before they fork).
"""

from __future__ import annotations

import functools

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from reid_masks.cache import MaskCache, locate_records, map_mismatches
from reid_masks.datasets import ReIDDataset
from reid_masks.errors import UserError

__all__ = ["CHANNELS", "REGION_KINDS", "SplitRegionMasks", "expand_region_codes", "load_split_region_masks"]

CHANNELS: dict[str, tuple[str, ...]] = {  # kind -> the mask channels, in order
    "regions": ("pedestrian", "head", "upper", "lower"),  # cache column regions: 1..3
    "parts": ("pedestrian", "head", "torso", "arms", "legs"),  # cache column parts: 1..4
}
REGION_KINDS = tuple(CHANNELS)
_LABEL_BITS = 3  # labels 0..4 in the low bits of a code, the pedestrian bit above them
_BLOCK = 1024  # rows read from the cache at a time


class SplitRegionMasks:
    """The (C, h, w) uint8 masks of every record of a split, by record index (C = len(CHANNELS[kind]))."""

    def __init__(self, kind: str, codes: np.ndarray) -> None:
        self.kind = kind
        self.codes = codes  # (N, h, w) uint8: label in bits 0-2, pedestrian in bit 3

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.codes.shape[1:])

    def __getitem__(self, index: int) -> Tensor:
        return expand_region_codes(self.code(index), self.kind)

    def code(self, index: int, size: tuple[int, int] | None = None) -> Tensor:
        """The (1, h, w) uint8 code map of one record, nearest-resized (``nearest-exact``) to
        ``size`` when given. Resize, flip and crop move this one channel; the C masks are
        :func:`expand_region_codes` of it (on the device, for a batch)."""
        code = self.codes[index]
        if size is not None and tuple(size) != self.size:
            for axis in (0, 1):  # np.take: a plain gather, ~8x cheaper than two fancy indexings
                if size[axis] != self.size[axis]:
                    code = np.take(code, _nearest_exact_index(self.size[axis], size[axis]), axis=axis)
        return torch.from_numpy(np.ascontiguousarray(code))[None]


@functools.lru_cache(maxsize=16)
def _nearest_exact_index(src: int, dst: int) -> np.ndarray:
    """The source index of each of ``dst`` positions under ``F.interpolate(mode="nearest-exact")``,
    taken from torch itself so that gathering equals interpolating (a gather is ~10x cheaper)."""
    ramp = torch.arange(src, dtype=torch.float64).view(1, 1, src, 1)
    return F.interpolate(ramp, size=(dst, 1), mode="nearest-exact")[0, 0, :, 0].long().numpy()


def expand_region_codes(codes: Tensor, kind: str) -> Tensor:
    """(..., 1, H, W) uint8 code maps -> (..., C, H, W) uint8 0/1 masks, channels :data:`CHANNELS`
    of ``kind`` (a zero code: in no channel). Works on any device."""
    person = (codes >> _LABEL_BITS) & 1
    label = codes & ((1 << _LABEL_BITS) - 1)
    return torch.cat([person, *[(label == k).to(torch.uint8) for k in range(1, len(CHANNELS[kind]))]], dim=-3)


def load_split_region_masks(cache: str | Path | MaskCache, dataset: ReIDDataset, split: str, kind: str = "regions",
                            indices: np.ndarray | None = None) -> SplitRegionMasks:
    """MGRAN masks of ``dataset``'s ``split`` in record order (module docstring).

    ``indices``: the records to load (default all), in that order. ``kind="parts"`` needs
    the cache's ``parts`` column (schema version 3); an older cache is a UserError naming
    the file. Records the cache lacks are a UserError naming the cache file
    (``locate_records``: by path, in any split of the cache).
    """
    if kind not in REGION_KINDS:
        raise ValueError(f"region mask kind must be one of {REGION_KINDS}, got {kind!r}")
    own = not isinstance(cache, MaskCache)
    mc = MaskCache(cache) if own else cache
    try:
        keep = np.arange(len(dataset.split(split))) if indices is None else np.asarray(indices, dtype=np.int64)
        slot = np.full(len(dataset.split(split)), -1, dtype=np.int64)
        slot[keep] = np.arange(len(keep))  # record -> position in the output
        groups = [(cs, slot[pos][slot[pos] >= 0], rows[slot[pos] >= 0]) for cs, pos, rows in locate_records(mc, dataset, split)]
        groups = [g for g in groups if len(g[1])]
        hw = tuple(mc.rows(groups[0][0], groups[0][2][:1], columns=("person",))["person"].shape[1:]) if groups else (1, 1)
        codes = np.zeros((len(keep),) + hw, np.uint8)
        column = kind  # the cache column of the same name
        limit = len(CHANNELS[kind]) - 1
        sealed = mc.has_column("map_digests")  # schema 4: the maps read are checked against their digests
        for cache_split, positions, rows in groups:
            order = np.argsort(rows, kind="stable")  # read in file order: each compressed chunk is decoded ~once
            for start in range(0, len(rows), _BLOCK):
                take = order[start : start + _BLOCK]
                data = mc.rows(cache_split, rows[take], columns=("person", column) + (("map_digests",) if sealed else ()))
                bad = map_mismatches(data) if sealed else ()
                if len(bad):
                    raise UserError(f"{mc.path}: {cache_split} row(s) {', '.join(str(int(r)) for r in rows[take][bad][:3])} have "
                                    f"person/{column} maps that do not match their digests (moved to other rows or edited since "
                                    f"reid-masks generate wrote them); regenerate the cache: remove it, then rerun the "
                                    f"reid-masks generate command that made it (without --update)")
                person = (data["person"] > 0).astype(np.uint8)
                label = np.where(data[column] <= limit, data[column], 0).astype(np.uint8) * person
                codes[positions[take]] = label | (person << _LABEL_BITS)
    finally:
        if own:
            mc.close()
    return SplitRegionMasks(kind, codes)
