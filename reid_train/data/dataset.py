"""Torch datasets over a reid-masks dataset split, joined to the mask cache by path.

Masks are small (3x24x8 floats per image, ~30 MB for Market-1501's train split), so
they are read from the HDF5 cache once, in the main process, and indexed in memory; the
HDF5 file is closed before any DataLoader worker forks (h5py handles must not cross a
fork). Images are decoded in ``__getitem__``, i.e. in the DataLoader workers.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from reid_masks.cache import MaskCache, damaged_message, find_damaged_chunk, locate_records
from reid_masks.datasets import ReIDDataset
from reid_masks.errors import UserError
from reid_masks.imageio import read_image

from .regions import load_split_region_masks
from .transforms import PairedTransform

__all__ = ["ReIDImageDataset", "load_split_masks", "damaged_cache_errors"]


@contextmanager
def damaged_cache_errors(cache: str | Path | None) -> Iterator[None]:
    """h5py's traceback for a damaged chunk of ``cache`` read in the block becomes one UserError
    naming the file, the split/column and rows, and what to do; other errors pass unchanged."""
    try:
        yield
    except OSError as exc:
        where = find_damaged_chunk(cache) if cache and Path(cache).is_file() else None
        if where is None:
            raise
        raise UserError(damaged_message(cache, *where, exc)) from None


def load_split_masks(cache: str | Path | MaskCache, dataset: ReIDDataset, split: str) -> torch.Tensor:
    """(N, 3, 24, 8) float32 masks of ``dataset``'s ``split`` records, in record order.

    Rows are matched by path with :func:`locate_records` (in any split of the cache), so a
    cache of another dataset, or one missing some of this dataset's images, is a one-line
    UserError.
    """
    own = not isinstance(cache, MaskCache)
    mc = MaskCache(cache) if own else cache
    try:
        masks = mc.gather(locate_records(mc, dataset, split), "masks", len(dataset.split(split)))
    finally:
        if own:
            mc.close()
    return torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))


class ReIDImageDataset(Dataset):
    """Items of one split: ``{"image", "pid", "camid", "index"[, "masks"]}``.

    ``image``: the resized / flipped / cropped (3, H, W) **uint8** image -- not normalised:
    :meth:`PairedTransform.normalize` does that, on the device, for the whole batch
    (``erase``, present when the transform erases, is each item's random-erasing
    rectangle for it); ``masks``: (3, 24, 8) whole/upper/bottom, transformed with the
    image -- present only when a cache is given (training of mask-guided variants;
    baselines and evaluation need images only); ``index``: position
    in the split, so features can be matched back to records.

    ``region_masks`` (``"regions"`` or ``"parts"``; MGRAN, needs ``cache``): items carry
    ``region_codes`` instead of ``masks``, the (1, H, W) uint8 code map of the masks at the
    image's resolution: the cache's map is resized to the transform's size with nearest
    sampling, then moved by the same flip / pad + crop as the image (so MGRAN needs them in
    training and evaluation alike). ``regions.expand_region_codes(codes, kind)`` gives the
    (C, H, W) 0/1 stack (pedestrian, head, upper, lower; see ``regions.py``); the trainer and
    the evaluator do that on the device, for the batch (a quarter of the bytes to collate).

    ``indices``: the records of the split to use (default all), e.g. the usable rows that
    :func:`reid_train.data.cache_check.check_cache_images` returns.
    """

    def __init__(
        self,
        dataset: ReIDDataset,
        split: str,
        transform: PairedTransform,
        cache: str | Path | MaskCache | None = None,
        region_masks: str | None = None,
        indices: Sequence[int] | None = None,
    ) -> None:
        self.dataset = dataset
        self.split = split
        records = dataset.split(split)
        keep = np.arange(len(records)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.records = [records[i] for i in keep]
        self.transform = transform
        if region_masks is not None and cache is None:
            raise ValueError(f"region_masks={region_masks!r} needs a mask cache")
        self.region_masks = load_split_region_masks(cache, dataset, split, region_masks, keep) if region_masks else None
        self.masks = load_split_masks(cache, dataset, split)[keep] if cache is not None and not region_masks else None
        self.pids = [r.pid for r in self.records]
        self.camids = [r.camid for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        image = read_image(self.dataset.abspath(rec))
        extra: dict[str, Any] = {}
        if self.region_masks is not None:  # MGRAN: the code map nearest-resized, moved with the image
            image, code, erase = self.transform.geometric(image, self.region_masks.code(index, self.transform.size))
            extra["region_codes"] = code
        else:
            image, masks, erase = self.transform.geometric(image, self.masks[index] if self.masks is not None else None)
            if masks is not None:
                extra["masks"] = masks
        if erase is not None:
            extra["erase"] = erase
        return {"image": image, "pid": rec.pid, "camid": rec.camid, "index": index, **extra}
