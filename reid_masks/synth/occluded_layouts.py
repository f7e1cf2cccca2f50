"""Synthetic copies of the occluded / partial re-ID benchmarks (layouts as in data_manifests/).

* ``occluded_duke``: DukeMTMC-reID's folders and names; every query is occluded (any of
  the renderer's occluder kinds), train and gallery images at 10% -- the rule of
  Occluded-Duke (all queries occluded, ~10% of the gallery).
* ``occluded_reid``: ``occluded_body_images/<pid>/<pid>_<n>.tif`` queries (all occluded)
  and ``whole_body_images/<pid>/...`` gallery images (none occluded), 5 + 5 per identity.
* ``partial_reid``: flat ``partial_body_images/<pid>_<n>.jpg`` (the top 45-80% of a
  crop: a partial body) and ``whole_body_images/<pid>_<n>.jpg``, 5 + 5 per identity.
* ``partial_ilids``: ``partial_body_images/<pid>.jpg`` and ``whole_body_images/<pid>.jpg``,
  one of each per identity.

Queries are rendered in camera 0 and gallery images in camera 1, the cameras the
adapters give them. The parsing PNGs mark occluder pixels as background (0).
"""
from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath
from typing import Callable

import numpy as np

from reid_masks.synth.layouts import Job, pick_pids
from reid_masks.synth.render import Identity

TEST_LAYOUTS = ("occluded_reid", "partial_reid", "partial_ilids")
OCCLUDED_DUKE_OTHER_RATE = 0.1  # train and gallery images with an occluder in the synthetic Occluded-Duke
PARTIAL_KEEP = (0.45, 0.8)  # fraction of the crop height a partial-body query keeps (from the top)
PER_ID = {"occluded_reid": 5, "partial_reid": 5, "partial_ilids": 1}  # images per identity and split


def occlude_jobs(layout: str, jobs: list[Job], rate: float | None) -> list[Job]:
    """Occluders per the layout's rule; ``rate`` (if given) for the images the rule leaves free."""
    if layout != "occluded_duke":
        return jobs if rate is None else [dataclasses.replace(j, occlusion_rate=rate) for j in jobs]
    other = OCCLUDED_DUKE_OTHER_RATE if rate is None else rate
    return [dataclasses.replace(j, occlusion_rate=1.0 if j.path.startswith("query/") else other) for j in jobs]


def test_pid(layout: str, path: str) -> int:
    """The identity in a synthetic test-set file name (the adapters parse the real names)."""
    name = PurePosixPath(path).stem
    return int(name if layout == "partial_ilids" else name.split("_")[0])


def test_jobs(layout: str, ids: int, rng: np.random.Generator, ident: Callable[[int], Identity],
              rate: float | None) -> tuple[list[Job], list[int]]:
    """Query and gallery jobs of a test-only layout, and the identities drawn."""
    pids = pick_pids(rng, ids, 1, 1000)
    n = PER_ID[layout]
    jobs = []
    for pid in pids:
        for k in range(1, n + 1):
            h, w = int(rng.integers(120, 161)), int(rng.integers(56, 73))
            if layout == "occluded_reid":
                q = Job(f"occluded_body_images/{pid:03d}/{pid:03d}_{k:02d}.tif", ident(pid), 0, h, w, occlusion_rate=1.0)
                g = Job(f"whole_body_images/{pid:03d}/{pid:03d}_{k:02d}.tif", ident(pid), 1, h, w, occlusion_rate=rate or 0.0)
            else:
                name = f"{pid:03d}.jpg" if layout == "partial_ilids" else f"{pid:03d}_{k:02d}.jpg"
                keep = float(rng.uniform(*PARTIAL_KEEP))
                q = Job(f"partial_body_images/{name}", ident(pid), 0, h, w, occlusion_rate=rate or 0.0, keep=keep)
                g = Job(f"whole_body_images/{name}", ident(pid), 1, h, w, occlusion_rate=rate or 0.0)
            jobs += [q, g]
    return jobs, pids
