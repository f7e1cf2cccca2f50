"""From one image's raw observations (instances, parsing, mask PNG) to a cache row.

Rules (documented in README, "How masks are derived"):

* Target person: re-ID crops are centred on one person; among the detector's instances
  the target maximises ``0.5*centrality + 0.3*height + 0.2*score`` (``centrality`` =
  1 - |box centre x - image centre x| / (W/2), ``height`` = box height / H), so a tall,
  centred person beats a confident passer-by cut by the border.
* Whole-body mask: the parsing foreground when parsing exists (MMGA uses JPPNet masks),
  else the target instance mask binarized at 0.5, else the mask PNG.
* Upper / bottom: LIP label groups (``UPPER_LABELS``, ``BOTTOM_LABELS``); dress and
  jumpsuit pixels are split at the hip line. Without parsing, the person mask is cut at
  the hip line. Hip line: through the two hip keypoints when both are confident; else
  the top of the pants/skirt labels; else the bottom of the upper clothes; without parsing,
  scaled from confident shoulders by the body proportions (``HIP_FRACTION /
  SHOULDER_FRACTION`` of the head-to-shoulder distance, so an occluder hiding the legs
  does not move it); else half the person's height.
* MGRAN regions: the pedestrian mask (the instance mask when a detector ran, else the
  parsing foreground or mask PNG) cut along the line through both shoulders (head |
  upper) and both hips (upper | lower). Without keypoints the cuts come from the parsing
  labels (head labels, upper, lower groups) when parsing exists, else from the estimated
  lines. ``Derived.cuts`` records the source of each line (``cache.CUT_NAMES``).
* Body parts (``parts``, MGRAN-PL; codes ``PART_NAMES``: 1 head, 2 torso, 3 arms, 4 legs),
  always inside the pedestrian mask. With parsing, from the LIP labels: head
  (``HEAD_LABELS``), torso (``TORSO_LABELS``), arms (``ARM_LABELS``), legs (``LEG_LABELS``);
  dress / jumpsuit pixels are torso above the hip line, legs below it; pedestrian pixels
  without a body-part label stay 0. Without parsing, the MGRAN regions split by the limbs:
  arms are the pedestrian pixels within ``ARM_RADIUS_FRACTION`` x the person's height of
  the shoulder-elbow and elbow-wrist segments whose two keypoints are confident; the rest
  is head / torso / legs as the regions head / upper / lower. Without keypoints either
  there are no arm pixels.
* Status: ``ok`` when the target has at least one keypoint with score >=
  ``KEYPOINT_MIN_SCORE``, else ``no_keypoints`` (rows made without keypoints, images
  without an imported entry (``generate --keypoints``), and
  detector rows whose target matched no confident keypoint instance).
* No person found: status ``no_person`` and a fixed prior (a centred box 50% wide, 90%
  high, split at its middle) so training can run; filter these rows by status if wanted.
* 24x8 masks are area averages of the full-resolution binary masks (soft values in [0, 1]).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from reid_masks.cache import CUT, MASK_HW, PART_NAMES, STATUS

if TYPE_CHECKING:  # annotations only: the derivation itself needs no torch
    from reid_masks.backends.base import Instances

LIP_LABELS = (  # the 20 LIP parsing labels, by value
    "background", "hat", "hair", "glove", "sunglasses", "upper-clothes", "dress", "coat", "socks", "pants",
    "jumpsuits", "scarf", "skirt", "face", "left-arm", "right-arm", "left-leg", "right-leg", "left-shoe", "right-shoe",
)
HEAD_LABELS = (1, 2, 4, 13)  # hat, hair, sunglasses, face
UPPER_ONLY_LABELS = (3, 5, 7, 11, 14, 15)  # glove, upper-clothes, coat, scarf, arms
LOWER_LABELS = (8, 9, 12, 16, 17, 18, 19)  # socks, pants, skirt, legs, shoes
SPLIT_AT_HIP_LABELS = (6, 10)  # dress, jumpsuits
UPPER_LABELS = HEAD_LABELS + UPPER_ONLY_LABELS  # MMGA's upper body includes the head
TORSO_LABELS = (5, 7, 11)  # upper-clothes, coat, scarf (+ dress / jumpsuit above the hip line)
ARM_LABELS = (3, 14, 15)  # glove, left arm, right arm
LEG_LABELS = LOWER_LABELS  # socks, pants, skirt, legs, shoes (+ dress / jumpsuit below the hip line)
PART = {name: code for code, name in enumerate(PART_NAMES)}
KP_ARMS = ((5, 7), (7, 9), (6, 8), (8, 10))  # COCO shoulder-elbow, elbow-wrist, left and right
ARM_RADIUS_FRACTION = 0.045  # arm half-width, as a fraction of the person's height (keypoint fallback)
BOTTOM_LABELS = LOWER_LABELS
KP_L_SHOULDER, KP_R_SHOULDER, KP_L_HIP, KP_R_HIP = 5, 6, 11, 12
KEYPOINT_MIN_SCORE = 0.3  # keypoints below this score are treated as absent for the cuts
SHOULDER_FRACTION, HIP_FRACTION = 0.18, 0.5  # line estimates, as fractions of the person's height from its top
PRIOR_BOX = (0.25, 0.05, 0.75, 0.95)  # x0, y0, x1, y1 fractions for the no-person prior


@dataclass
class Observation:
    """What the sources produced for one image; any of the three may be absent."""

    height: int
    width: int
    instances: Instances | None = None
    parsing: np.ndarray | None = None  # (H, W) uint8 LIP labels
    mask_png: np.ndarray | None = None  # (H, W) bool person mask


@dataclass
class Derived:
    status: int
    score: float
    box: np.ndarray  # (4,)
    keypoints: np.ndarray  # (17, 3)
    masks: np.ndarray  # (3, 24, 8) float32
    person: np.ndarray  # (H, W) bool at image resolution
    regions: np.ndarray  # (H, W) uint8 at image resolution
    cuts: np.ndarray  # (2,) uint8: CUT codes of the shoulder line and the hip line
    parts: np.ndarray  # (H, W) uint8 PART_NAMES codes at image resolution


def select_target(instances: Instances, height: int, width: int) -> int | None:
    """Index of the target person (the rule in the module docstring), None if there is none."""
    if len(instances) == 0:
        return None
    b = instances.boxes
    cx = (b[:, 0] + b[:, 2]) / 2
    centrality = 1.0 - np.clip(np.abs(cx - width / 2) / (width / 2), 0, 1)
    tall = np.clip((b[:, 3] - b[:, 1]) / height, 0, 1)
    rank = 0.5 * centrality + 0.3 * tall + 0.2 * instances.scores
    return int(np.argmax(rank))


def overlap_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): the fraction of each output cell covered by each input pixel."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    px = np.arange(n_in)[None, :]
    cover = np.clip(np.minimum(hi, px + 1) - np.maximum(lo, px), 0, None)
    return (cover / (n_in / n_out)).astype(np.float64)


def area_resize(mask: np.ndarray, size: tuple[int, int] = MASK_HW) -> np.ndarray:
    """Exact area average of a (H, W) mask onto ``size`` (fractional pixel coverage counted)."""
    wy, wx = overlap_matrix(mask.shape[0], size[0]), overlap_matrix(mask.shape[1], size[1])
    return (wy @ mask.astype(np.float64) @ wx.T).clip(0, 1).astype(np.float32)


def line_rows(p: np.ndarray, q: np.ndarray, width: int) -> np.ndarray:
    """y of the line through points p and q at every column x (a horizontal line if they share x)."""
    xs = np.arange(width, dtype=np.float32) + 0.5
    dx = q[0] - p[0]
    if abs(dx) < 1e-3:
        return np.full(width, (p[1] + q[1]) / 2, np.float32)
    return p[1] + (xs - p[0]) * (q[1] - p[1]) / dx


def keypoint_line(kps: np.ndarray | None, a: int, b: int, width: int) -> np.ndarray | None:
    if kps is None or kps[a, 2] < KEYPOINT_MIN_SCORE or kps[b, 2] < KEYPOINT_MIN_SCORE:
        return None
    return line_rows(kps[a, :2], kps[b, :2], width)


def flat(row: float, width: int) -> np.ndarray:
    return np.full(width, row, np.float32)


def person_extent(person: np.ndarray) -> tuple[float, float]:
    rows = np.nonzero(person.any(axis=1))[0]
    return (float(rows[0]), float(rows[-1] + 1)) if len(rows) else (0.0, float(person.shape[0]))


def hip_line_from_parsing(parsing: np.ndarray, person: np.ndarray) -> tuple[np.ndarray, int]:
    """The hip line from the labels and its source (``CUT`` code: parsing, else estimate)."""
    width = parsing.shape[1]
    lower_clothes = np.nonzero(np.isin(parsing, (9, 12)).any(axis=1))[0]
    if len(lower_clothes):
        return flat(float(lower_clothes[0]), width), CUT["parsing"]
    upper_clothes = np.nonzero(np.isin(parsing, (5, 7)).any(axis=1))[0]
    if len(upper_clothes):
        return flat(float(upper_clothes[-1] + 1), width), CUT["parsing"]
    top, bottom = person_extent(person)
    return flat(top + HIP_FRACTION * (bottom - top), width), CUT["estimate"]


def hip_line_estimate(person: np.ndarray, shoulders: np.ndarray | None) -> tuple[np.ndarray, int]:
    """Hip line without confident hips: scaled from the shoulder line by the body proportions
    when the shoulders are confident (an occluder hiding the legs shortens the visible
    extent, not the head-to-shoulder distance), else half the visible height."""
    top, bottom = person_extent(person)
    width = person.shape[1]
    if shoulders is not None and float(shoulders.mean()) > top:
        return flat(top + (float(shoulders.mean()) - top) * HIP_FRACTION / SHOULDER_FRACTION, width), CUT["estimate"]
    return flat(top + HIP_FRACTION * (bottom - top), width), CUT["estimate"]


def shoulder_line_estimate(parsing: np.ndarray | None, person: np.ndarray) -> tuple[np.ndarray, int]:
    """The shoulder line without keypoints and its source (``CUT`` code: parsing, else estimate)."""
    width = person.shape[1]
    if parsing is not None:
        clothes = np.nonzero(np.isin(parsing, (5, 6, 7, 10, 11)).any(axis=1))[0]
        if len(clothes):
            return flat(float(clothes[0]), width), CUT["parsing"]
        head = np.nonzero(np.isin(parsing, HEAD_LABELS).any(axis=1))[0]
        if len(head):
            return flat(float(head[-1] + 1), width), CUT["parsing"]
    top, bottom = person_extent(person)
    return flat(top + SHOULDER_FRACTION * (bottom - top), width), CUT["estimate"]


def has_keypoints(kps: np.ndarray | None) -> bool:
    """Whether ``kps`` (17, 3) has a keypoint with score >= KEYPOINT_MIN_SCORE: the line between ``ok`` and ``no_keypoints``."""
    return kps is not None and bool((kps[:, 2] >= KEYPOINT_MIN_SCORE).any())


def below(line: np.ndarray, height: int) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies below ``line``."""
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5
    return ys >= line[None, :]


def arm_mask(kps: np.ndarray | None, person: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels within the arm radius of a confident arm segment (capsules)."""
    h, w = person.shape
    out = np.zeros((h, w), bool)
    if kps is None:
        return out
    top, bottom = person_extent(person)
    radius = ARM_RADIUS_FRACTION * (bottom - top)
    ys = np.arange(h, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(w, dtype=np.float32)[None, :] + 0.5
    for a, b in KP_ARMS:
        if kps[a, 2] < KEYPOINT_MIN_SCORE or kps[b, 2] < KEYPOINT_MIN_SCORE:
            continue
        (px, py), (qx, qy) = kps[a, :2], kps[b, :2]
        dx, dy = qx - px, qy - py
        t = np.clip(((xs - px) * dx + (ys - py) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
        out |= (xs - px - t * dx) ** 2 + (ys - py - t * dy) ** 2 <= radius * radius
    return out


def parts_from_parsing(parsing: np.ndarray, low: np.ndarray) -> np.ndarray:
    """(H, W) uint8 body-part codes from LIP labels; ``low``: below the hip line (dress split)."""
    split = np.isin(parsing, SPLIT_AT_HIP_LABELS)
    out = np.zeros(parsing.shape, np.uint8)
    out[np.isin(parsing, HEAD_LABELS)] = PART["head"]
    out[np.isin(parsing, TORSO_LABELS) | (split & ~low)] = PART["torso"]
    out[np.isin(parsing, ARM_LABELS)] = PART["arms"]
    out[np.isin(parsing, LEG_LABELS) | (split & low)] = PART["legs"]
    return out


def parts_from_regions(regions: np.ndarray, arms: np.ndarray) -> np.ndarray:
    """Body-part codes from MGRAN regions (head / upper / lower) with the arm pixels carved out."""
    out = np.choose(np.minimum(regions, 3), [0, PART["head"], PART["torso"], PART["legs"]]).astype(np.uint8)
    out[arms & (regions > 0)] = PART["arms"]
    return out


def prior_mask(height: int, width: int) -> np.ndarray:
    x0, y0, x1, y1 = PRIOR_BOX
    m = np.zeros((height, width), bool)
    m[int(round(y0 * height)) : int(round(y1 * height)), int(round(x0 * width)) : int(round(x1 * width))] = True
    return m


def derive(obs: Observation) -> Derived:
    """The cache row of one image from its observations (rules in the module docstring)."""
    h, w = obs.height, obs.width
    inst = obs.instances
    target = select_target(inst, h, w) if inst is not None else None
    kps = None
    score, box = 0.0, np.zeros(4, np.float32)
    inst_mask = None
    if target is not None:
        score, box = float(inst.scores[target]), inst.boxes[target].astype(np.float32)
        if inst.masks is not None:
            inst_mask = inst.masks[target] >= 0.5
        if inst.keypoints is not None:
            kps = inst.keypoints[target].astype(np.float32)
    keypoints = kps if kps is not None else np.zeros((17, 3), np.float32)

    parsing_fg = obs.parsing > 0 if obs.parsing is not None else None
    person = next((m for m in (inst_mask, parsing_fg, obs.mask_png) if m is not None and m.any()), None)
    whole = next((m for m in (parsing_fg, inst_mask, obs.mask_png) if m is not None and m.any()), None)
    if person is None or whole is None:
        person = whole = prior_mask(h, w)
        status = STATUS["no_person"]
        hip = flat(h / 2, w)
        upper, bottom = whole & ~below(hip, h), whole & below(hip, h)
        regions = np.where(upper, 2, np.where(bottom, 3, 0)).astype(np.uint8)
        cuts = np.array([CUT["prior"], CUT["prior"]], np.uint8)
        parts = parts_from_regions(regions, np.zeros_like(person))
        return Derived(status, score, box, keypoints, stack_masks(whole, upper, bottom), person, regions, cuts, parts)

    status = STATUS["ok"] if has_keypoints(kps) else STATUS["no_keypoints"]
    shoulders = keypoint_line(kps, KP_L_SHOULDER, KP_R_SHOULDER, w)
    hips = keypoint_line(kps, KP_L_HIP, KP_R_HIP, w)

    # MMGA whole / upper / bottom
    if obs.parsing is not None:
        hip_cut, hip_src = (hips, CUT["keypoints"]) if hips is not None else hip_line_from_parsing(obs.parsing, whole)
        split = np.isin(obs.parsing, SPLIT_AT_HIP_LABELS)
        low = below(hip_cut, h)
        upper = np.isin(obs.parsing, UPPER_LABELS) | (split & ~low)
        bottom = np.isin(obs.parsing, BOTTOM_LABELS) | (split & low)
    else:
        hip_cut, hip_src = (hips, CUT["keypoints"]) if hips is not None else hip_line_estimate(whole, shoulders)
        low = below(hip_cut, h)
        upper, bottom = whole & ~low, whole & low

    # MGRAN regions on the pedestrian mask
    if shoulders is not None and hips is not None:
        region = np.where(below(hips, h), 3, np.where(below(shoulders, h), 2, 1))
        sh_src = CUT["keypoints"]
    elif obs.parsing is not None:
        split = np.isin(obs.parsing, SPLIT_AT_HIP_LABELS)
        low = below(hip_cut, h)
        region = np.where(np.isin(obs.parsing, HEAD_LABELS), 1, 0)
        region = np.where(np.isin(obs.parsing, UPPER_ONLY_LABELS) | (split & ~low), 2, region)
        region = np.where(np.isin(obs.parsing, LOWER_LABELS) | (split & low), 3, region)
        # detector pixels without a parsing label: cut by the estimated lines
        sh_est, sh_src = shoulder_line_estimate(obs.parsing, person)
        est = np.where(below(hip_cut, h), 3, np.where(below(sh_est, h), 2, 1))
        region = np.where(region == 0, est, region)
    else:
        sh, sh_src = (shoulders, CUT["keypoints"]) if shoulders is not None else shoulder_line_estimate(None, person)
        region = np.where(below(hip_cut, h), 3, np.where(below(sh, h), 2, 1))
    regions = np.where(person, region, 0).astype(np.uint8)
    cuts = np.array([sh_src, hip_src], np.uint8)

    # MGRAN-PL body parts on the pedestrian mask
    if obs.parsing is not None:
        parts = np.where(person, parts_from_parsing(obs.parsing, below(hip_cut, h)), 0).astype(np.uint8)
    else:
        parts = parts_from_regions(regions, arm_mask(kps, person))
    return Derived(status, score, box, keypoints, stack_masks(whole, upper, bottom), person, regions, cuts, parts)


def stack_masks(whole: np.ndarray, upper: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    return np.stack([area_resize(whole), area_resize(upper), area_resize(bottom)]).astype(np.float32)
