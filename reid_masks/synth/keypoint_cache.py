"""A Market-1501-layout copy of rendered crops with a cache that has keypoints, for tests and benchmarks.

The renderer knows each crop's keypoints and visible masks; :func:`reid_masks.synth.maskquality.observe`
reports them as a perfect detector would (instance mask, keypoints scored 0.9 visible / 0.1
hidden), and the real derivation (:func:`reid_masks.derive.derive`) makes the rows, written with
the real cache writer. :func:`repeat_cache` makes a large cache from a small one (rows repeated
under new image names) for scale runs that need no images (``reid-masks export --out``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from reid_masks.cache import DEFAULT_PERSON_HW, MaskCache, Rows, byte_rows, encode_parsing, parser_of, write_cache
from reid_masks.datasets import build_dataset
from reid_masks.derive import derive
from reid_masks.generate import fingerprint
from reid_masks.synth.maskquality import observe, render_crops

PROVENANCE = {"backend": {"name": "synthetic truth (reid_masks.synth.keypoint_cache)"}, "parser": {"name": "none"}}


def _nearest(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((hw[1], hw[0]), Image.NEAREST))


def keypoint_dataset(root: Path, n: int = 16, seed: int = 3, person_hw: tuple[int, int] = DEFAULT_PERSON_HW,
                     provenance: dict[str, Any] | None = None) -> Path:
    """Write ``n`` crops under ``root`` (Market-1501 names; half train, a quarter query, the rest
    gallery) and their cache ``<root>.h5``; returns the cache path. The rows keep the crops' true
    LIP labels in ``parsing`` when ``provenance`` names a parser (as ``generate`` would)."""
    provenance = provenance or PROVENANCE
    with_parsing = parser_of(provenance) != "none"
    root = Path(root)
    crops = render_crops(n, seed=seed, occlusion_rate=0.3)
    folders = ["bounding_box_train"] * (n // 2) + ["query"] * (n // 4) + ["bounding_box_test"] * (n - n // 2 - n // 4)
    derived, labels = {}, {}
    for i, (crop, folder) in enumerate(zip(crops, folders)):
        rel = f"{folder}/{(i % 4) + 1:04d}_c{(i % 3) + 1}s1_{i:06d}_00.jpg"
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop.image).save(root / rel, quality=95)
        derived[rel] = derive(observe(crop, "detector"))
        labels[rel] = encode_parsing(crop.parsing) if with_parsing else b""
    ds = build_dataset("market1501", root)
    splits = {}
    for split in ("train", "query", "gallery"):
        recs = ds.split(split)
        d = [derived[r.path] for r in recs]
        splits[split] = (len(recs), Rows(
            index=np.arange(len(recs), dtype=np.int64), path=np.asarray([r.path for r in recs], dtype=object),
            pid=np.asarray([r.pid for r in recs], np.int32), camid=np.asarray([r.camid for r in recs], np.int16),
            fingerprint=np.asarray([fingerprint((root / r.path).read_bytes()) for r in recs], dtype="S16"),
            status=np.asarray([x.status for x in d], np.uint8), score=np.asarray([x.score for x in d], np.float32),
            box=np.stack([x.box for x in d]).astype(np.float32), keypoints=np.stack([x.keypoints for x in d]).astype(np.float32),
            image_size=np.asarray([x.person.shape for x in d], np.int32), masks=np.stack([x.masks for x in d]).astype(np.float32),
            person=np.stack([_nearest(x.person.astype(np.uint8), person_hw) for x in d]),
            regions=np.stack([_nearest(x.regions, person_hw) for x in d]), cuts=np.stack([x.cuts for x in d]).astype(np.uint8),
            parts=np.stack([_nearest(x.parts, person_hw) for x in d]), parsing=byte_rows(labels[r.path] for r in recs),
        ))
    out = root.parent / f"{root.name}.h5"
    write_cache(out, splits, {"dataset": "market1501", "person_size": list(person_hw), "provenance": provenance})
    return out


def repeat_cache(small: Path, out: Path, copies: int, provenance: dict[str, Any] | None = None) -> int:
    """``small``'s rows repeated ``copies`` times under new image names (``<stem>.jpg`` -> ``<stem>_<k>.jpg``);
    returns the number of rows. The images do not exist: for runs that write with ``--out``."""
    with MaskCache(small) as mc:
        rows = {s: mc.all_rows(s) for s in mc.splits}
        attrs = mc.attrs
    splits = {}
    for s, r in rows.items():
        rep = r.take(np.tile(np.arange(len(r)), copies))
        rep.index = np.arange(len(rep), dtype=np.int64)
        rep.path = np.asarray([f"{p.rsplit('.', 1)[0]}_{k:04d}.{p.rsplit('.', 1)[1]}" for k in range(copies) for p in r.path], dtype=object)
        rep.row_digest = np.zeros(len(rep), "S16")  # new paths: rows sealed anew by write_cache
        splits[s] = (len(rep), rep)
    write_cache(out, splits, {"dataset": attrs.get("dataset", "market1501"), "provenance": provenance or attrs.get("provenance", PROVENANCE)})
    return sum(n for n, _ in splits.values())
