"""Images against the mask cache, before any computation: stale masks and unusable rows.

Every command that reads images with a mask cache (``fit``, ``evaluate``, ``extract``,
``visualize``: the trainer and :func:`reid_train.engine.evaluator.build_test_loader`)
calls :func:`check_cache_images` for the splits it uses, before the first iteration:

1. **every row still is the one ``generate`` wrote** (:func:`reid_masks.cache.check_cache_rows`,
   the check ``reid-masks inspect`` and ``merge`` run too): each row's masks, keypoints,
   status and map digests must match its ``row_digest``, which ties them to the row's image
   fingerprint, and the masks must be finite and in [0, 1]; rows moved or edited since are
   refused in one line naming the cache, the split and the first rows. A cache older than
   schema 4 has no digests: one warning line says its rows cannot be verified.
2. **every image still is the one the masks were made from**: each image file is hashed
   now (blake2b, :func:`reid_masks.generate.fingerprint`, the cache's ``fingerprint``
   column) and compared with the fingerprint of the cache row that carries its path. An
   image changed since ``reid-masks generate`` ran, or a cache whose ``path`` column no
   longer lines up with its masks, is refused with one line: how many rows, the first
   paths, and the ``reid-masks generate ... --update`` command that recomputes them.
   All files are hashed, in threads (file reads and blake2b release the GIL); rates are
   in docs/benchmarks.md ("Fingerprint check"), e.g. MSMT17's 126k images take seconds.
3. **rows that cannot be used** (status ``unreadable``: stage 1 could not decode the image,
   its masks are all zero) follow one rule for every model (README, "Unusable cache rows"):
   *train* rows are left out of training, with one warning line naming the count and the
   first paths; *query/gallery* rows are refused, because scoring a subset would silently
   change the evaluation protocol.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from reid_masks.cache import STATUS_NAMES, MaskCache, check_cache_rows, locate_records
from reid_masks.datasets import ReIDDataset
from reid_masks.errors import UserError
from reid_masks.generate import hash_files
from reid_masks.progress import Progress

__all__ = ["UNUSABLE_STATUS", "check_cache_images", "update_command", "hash_threads"]

logger = logging.getLogger(__name__)

UNUSABLE_STATUS = ("unreadable",)  # statuses whose rows no model can use (all-zero masks)
SHOW = 3  # paths named in a message


def hash_threads() -> int:
    """Threads for hashing: I/O bound on shared file systems, so more than the cores (capped)."""
    return min(32, 4 * (os.cpu_count() or 1))


def update_command(cache: MaskCache, dataset: ReIDDataset) -> str:
    """The ``reid-masks generate`` command that made ``cache``, with ``--update`` (recompute changed rows)."""
    made_with = str(cache.attrs.get("provenance", {}).get("command", "") or "")
    if made_with.startswith("reid-masks generate"):
        return made_with if "--update" in made_with.split() else made_with + " --update"
    return (f"reid-masks generate --dataset {dataset.name} --root {dataset.root} --out {cache.path} --update "
            f"(plus the options the cache was made with)")


def _first(paths: list[str]) -> str:
    return ", ".join(paths[:SHOW]) + (", ..." if len(paths) > SHOW else "")


def check_cache_images(cache: str | Path, dataset: ReIDDataset, splits: Iterable[str],
                       threads: int | None = None) -> dict[str, np.ndarray]:
    """Indices of the records of each split that may be used (module docstring).

    Raises a one-line :class:`UserError` for records the cache lacks, images whose
    fingerprint differs from their row's, unreadable image files, and unusable
    query/gallery rows; unusable train rows are left out (one warning line).
    """
    splits = list(splits)
    start = time.perf_counter()
    with MaskCache(cache) as mc:
        located = {s: locate_records(mc, dataset, s) for s in splits}  # by path, in any group of the cache
        note = check_cache_rows(mc, sorted({g for s in splits for g, _, _ in located[s]}))
        if note and int(os.environ.get("RANK", "0")) == 0:
            logger.warning("%s", note)
        names = list(mc.attrs.get("status_names", STATUS_NAMES))
        unusable_codes = [names.index(s) for s in UNUSABLE_STATUS if s in names]
        stored = {s: mc.gather(located[s], "fingerprint", len(dataset.split(s))) for s in splits}
        status = {s: mc.gather(located[s], "status", len(dataset.split(s))) for s in splits}
        records = [(s, r) for s in splits for r in dataset.split(s)]
        total = len(records)
        progress = Progress(total, label="checking images against the mask cache") if total >= 20000 else None
        current = hash_files([dataset.abspath(r) for _, r in records], threads or hash_threads(), progress)
        fix = update_command(mc, dataset)
    where = ", ".join(splits)
    expected = np.concatenate([stored[s] for s in splits]) if splits else np.zeros(0, "S16")
    # a file that was already unreadable when the cache was made (a dangling link) is an
    # 'unreadable' row, handled by the rule below; only files that vanished since are refused here
    missing = [r.path for (_, r), fp, want in zip(records, current, expected) if fp == b"missing" and bytes(want) != b"missing"]
    if missing:
        raise UserError(f"{dataset.root}: {len(missing)} {where} image(s) cannot be read (first: {_first(missing)}); "
                        f"check the dataset folder and its permissions")
    stale = [r.path for (_, r), fp, want in zip(records, current, expected) if fp != bytes(want)]
    if stale:
        raise UserError(f"{cache}: {len(stale)} of {total} {where} image(s) differ from the images its masks were made "
                        f"from (changed or replaced images, or rows out of order; first: {_first(stale)}); "
                        f"recompute those rows with: {fix}")
    usable: dict[str, np.ndarray] = {}
    for s in splits:
        bad = np.isin(status[s], unusable_codes)
        paths = [dataset.split(s)[i].path for i in np.nonzero(bad)[0]]
        if paths and s != "train":
            raise UserError(f"{cache}: {len(paths)} {s} image(s) have cache status 'unreadable' (first: {_first(paths)}); "
                            f"evaluating without them would change the protocol -- replace the files with readable "
                            f"images and run: {fix}")
        if paths and int(os.environ.get("RANK", "0")) == 0:
            logger.warning("%s: %d of %d train image(s) have cache status 'unreadable' and are left out of training "
                           "(first: %s)", cache, len(paths), len(bad), _first(paths))
        usable[s] = np.nonzero(~bad)[0]
    logger.info("checked %d %s image(s) against the fingerprints of %s in %.1fs", total, where, cache, time.perf_counter() - start)
    return usable
