"""A plain PyTorch ``Dataset`` over a mask cache and its dataset, for any trainer.

Only torch, numpy, h5py and PIL: no torchreid, no fast-reid. Items are dicts::

    {"image": (3, H, W) float tensor in [0, 1] (or what ``transform`` returns),
     "pid": int, "camid": int, "path": str, "index": int,   # index: position in the split
     <column>: tensor, ...}                                   # the chosen cache columns

Small columns (``masks``, ``keypoints``, ``status``, ...) are held in memory; the full-size
ones (``person``, ``regions``, ``parts``; ``parsing``: the LIP labels at the image's size) are read per item from the file, opened once per
DataLoader worker. Before anything is read, the cache is checked against the dataset exactly
as ``reid-train`` checks it (every image hashed against its row's fingerprint, unusable rows:
train rows left out, query/gallery rows refused). docs/using_the_cache.md shows torchreid- and
fast-reid-style loops.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from reid_masks.cache import COLUMNS, DIGEST_COLUMNS, MaskCache, decode_parsing, locate_records
from reid_masks.datasets import build_dataset
from reid_masks.errors import UserError
from reid_masks.imageio import read_image

#: Columns read per item (one image-sized map each; ``parsing`` at the image's own size); the others are loaded once.
PER_ITEM_COLUMNS = ("person", "regions", "parts", "parsing")
CHOOSABLE = tuple(c for c in COLUMNS if c not in ("index", "path", "pid", "camid", "fingerprint", *DIGEST_COLUMNS))


class MaskCacheDataset(Dataset):
    """One split of a dataset with the chosen columns of its mask cache (module docstring).

    ``dataset``: the adapter name (default: the one the cache was made for) and
    ``dataset_options`` its options; ``transform(item) -> item`` runs last (e.g. resize the
    image and the masks together); ``check=False`` skips the fingerprint check (not advised).
    """

    def __init__(self, cache: str | Path, root: str | Path, split: str, columns: Sequence[str] = ("masks",),
                 dataset: str | None = None, dataset_options: dict[str, Any] | None = None,
                 transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None, check: bool = True):
        bad = [c for c in columns if c not in CHOOSABLE]
        if bad:
            raise UserError(f"columns {bad}: expected some of {', '.join(CHOOSABLE)}")
        self.cache_path = Path(cache)
        with MaskCache(self.cache_path) as mc:
            name = dataset or mc.dataset
            if not name:
                raise UserError(f"{self.cache_path}: the cache names no dataset; pass dataset=")
            self.dataset = build_dataset(name, root, **(dataset_options or {}))
            records = self.dataset.split(split)
            if check:
                from reid_train.data.cache_check import check_cache_images

                keep = check_cache_images(self.cache_path, self.dataset, [split])[split]
            else:
                keep = np.arange(len(records))
            located = locate_records(mc, self.dataset, split)
            lacking = [c for c in columns if not mc.has_column(c)]
            if lacking:
                raise UserError(f"{self.cache_path}: cache schema version {mc.schema_version} has no {', '.join(lacking)} column; "
                                f"regenerate it with 'reid-masks generate'")
            if "parsing" in columns and mc.parser == "none":
                raise UserError(f"{self.cache_path}: column 'parsing' holds the parser's labels, and this cache was made without a "
                                f"parser (--parsing-dir or --parser schp)")
            self.records = [records[i] for i in keep]
            self.keep = np.asarray(keep, np.int64)
            where = np.zeros((len(records), 2), object)
            for cache_split, positions, rows in located:
                where[positions, 0], where[positions, 1] = cache_split, rows
            self.rows = where[self.keep]
            self.loaded = {c: torch.from_numpy(np.ascontiguousarray(mc.gather(located, c, len(records))[self.keep]))
                           for c in columns if c not in PER_ITEM_COLUMNS}
        self.per_item = [c for c in columns if c in PER_ITEM_COLUMNS]
        self.transform = transform
        self._file: Any = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def _h5(self) -> Any:
        """The cache file, opened once per process (h5py handles must not cross a fork)."""
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file, self._pid = h5py.File(self.cache_path, "r"), os.getpid()
        return self._file

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        image = torch.from_numpy(np.array(read_image(self.dataset.abspath(rec)))).permute(2, 0, 1).float().div_(255)  # PIL's array is read-only
        item: dict[str, Any] = {"image": image, "pid": rec.pid, "camid": rec.camid, "path": rec.path, "index": int(self.keep[index])}
        for c, values in self.loaded.items():
            item[c] = values[index]
        if self.per_item:
            split, row = self.rows[index]
            for c in self.per_item:
                value = self._h5()[split][c][int(row)]
                item[c] = torch.from_numpy(decode_parsing(value) if c == "parsing" else value)
        return self.transform(item) if self.transform is not None else item

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        return state
