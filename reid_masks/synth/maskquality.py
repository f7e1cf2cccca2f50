"""How well the mask stage's rules hold up under occlusion, measured on synthetic crops.

The renderer knows every visible pixel of the target person, so the derived whole /
upper / bottom masks and MGRAN regions can be scored against the truth, with and
without occluders in front of the person. Two sources feed :func:`reid_masks.derive.derive`:

* ``parsing``: the true LIP parsing as a precomputed source (``--parsing-dir``);
* ``detector``: a detector that segments every visible person perfectly -- the target's
  visible mask, plus the occluding person as a second instance when one occludes -- and
  scores keypoints 0.9 when visible, 0.1 when hidden by the occluder (Keypoint R-CNN
  still guesses hidden joints, with low scores), 0 outside the crop.

So what is measured is the derivation (target choice, hip/shoulder cuts, label groups),
not a network's segmentation quality. ``benchmarks/bench_occlusion.py`` prints the table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reid_masks.backends.base import Instances
from reid_masks.derive import BOTTOM_LABELS, HEAD_LABELS, LOWER_LABELS, SPLIT_AT_HIP_LABELS, UPPER_LABELS, UPPER_ONLY_LABELS, Observation, area_resize, derive
from reid_masks.synth.render import OCCLUDER_KINDS, render_person, sample_identity

ROUTES = ("parsing", "detector")
VISIBLE_SCORE, HIDDEN_SCORE = 0.9, 0.1
MASKS = ("whole", "upper", "bottom")
REGIONS = ("head", "upper", "lower")


@dataclass
class Crop:
    image: np.ndarray
    parsing: np.ndarray
    info: dict


def render_crops(n: int, seed: int, occlusion_rate: float, kinds: tuple[str, ...] = OCCLUDER_KINDS,
                 height: int = 128, width: int = 64) -> list[Crop]:
    """``n`` crops of random people; each is occluded with probability ``occlusion_rate``."""
    crops = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        ident = sample_identity(rng)
        image, parsing, info = render_person(ident, i % 6, rng, height, width, occlusion_rate=occlusion_rate, occluders=kinds)
        crops.append(Crop(image, parsing, info))
    return crops


def _box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def observe(crop: Crop, route: str) -> Observation:
    """What the ``route``'s sources would report for ``crop`` (see the module docstring)."""
    h, w = crop.parsing.shape
    if route == "parsing":
        return Observation(h, w, None, crop.parsing, None)
    if route != "detector":
        raise ValueError(f"unknown route {route!r}; expected one of {ROUTES}")
    target = crop.parsing > 0
    kp = crop.info["keypoints"].copy()
    kp[:, 2] = np.select([kp[:, 2] == 2, kp[:, 2] == 1], [VISIBLE_SCORE, HIDDEN_SCORE], 0.0)
    boxes, scores, masks, kps = [_box(target)], [0.95], [target.astype(np.float32)], [kp]
    occluder = crop.info["occluder_parsing"] > 0
    if occluder.any():  # the passer-by in front is a person too; it is often the more confident one
        boxes.append(_box(occluder))
        scores.append(0.99)
        masks.append(occluder.astype(np.float32))
        kps.append(np.zeros((17, 3), np.float32))
    inst = Instances(np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.stack(masks), np.stack(kps).astype(np.float32))
    return Observation(h, w, inst, None, None)


def truth(crop: Crop) -> dict[str, np.ndarray]:
    """Full-resolution truth: whole/upper/bottom label groups (dress cut at the true hip
    row) and head/upper/lower regions; all of them visible pixels of the target only."""
    p = crop.parsing
    kp = crop.info["keypoints"]
    hip_row = (kp[11, 1] + kp[12, 1]) / 2  # true joint positions, also for hidden joints
    rows = np.arange(p.shape[0])[:, None] + 0.5
    split = np.isin(p, SPLIT_AT_HIP_LABELS)
    low = rows >= hip_row
    return {
        "whole": p > 0,
        "upper": np.isin(p, UPPER_LABELS) | (split & ~low),
        "bottom": np.isin(p, BOTTOM_LABELS) | (split & low),
        "region_head": np.isin(p, HEAD_LABELS),
        "region_upper": np.isin(p, UPPER_ONLY_LABELS) | (split & ~low),
        "region_lower": np.isin(p, LOWER_LABELS) | (split & low),
    }


def soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two [0, 1] masks (min over max); 1.0 when both are empty."""
    union = float(np.maximum(a, b).sum())
    return float(np.minimum(a, b).sum()) / union if union > 0 else 1.0


def score_crop(crop: Crop, route: str) -> dict[str, float]:
    """IoUs of one crop (24x8 masks softly, regions at full resolution), whether the
    target person was picked, and how many derived pixels lie on the occluder."""
    d = derive(observe(crop, route))
    t = truth(crop)
    out = {f"mask_{name}": soft_iou(d.masks[k], area_resize(t[name])) for k, name in enumerate(MASKS)}
    for k, name in enumerate(REGIONS, start=1):
        out[f"region_{name}"] = soft_iou((d.regions == k).astype(np.float32), t[f"region_{name}"].astype(np.float32))
    occ = crop.info["occluder_mask"]
    out["target_picked"] = float(np.array_equal(d.person, t["whole"]))
    out["pixels_on_occluder"] = float(((d.person | (d.regions > 0)) & occ).sum())
    return out


def measure(route: str, n: int = 60, seed: int = 0, occlusion_rate: float = 1.0,
            kinds: tuple[str, ...] = OCCLUDER_KINDS) -> dict[str, float]:
    """Mean of :func:`score_crop` over ``n`` crops, plus the share actually occluded."""
    crops = render_crops(n, seed, occlusion_rate, kinds)
    scores = [score_crop(c, route) for c in crops]
    out = {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}
    out["pixels_on_occluder"] = float(sum(s["pixels_on_occluder"] for s in scores))
    out["occluded"] = float(np.mean([c.info["occluded"] for c in crops]))
    return out
