"""Mask and region derivation against the synthetic ground truth."""
from __future__ import annotations

import numpy as np
import pytest

from reid_masks.backends.base import Instances
from reid_masks.cache import CUT, STATUS
from reid_masks.derive import (
    BOTTOM_LABELS, HEAD_LABELS, HIP_FRACTION, KEYPOINT_MIN_SCORE, LOWER_LABELS, Observation, UPPER_LABELS, UPPER_ONLY_LABELS, area_resize, derive, select_target,
)
from reid_masks.synth.render import render_person, sample_identity


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def people(n: int = 40, seed: int = 0):
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        image, parsing, info = render_person(sample_identity(rng), i % 6, rng, 128, 64)
        yield image, parsing, info


def truth_groups(parsing: np.ndarray, hip_row: float):
    """Upper/bottom ground truth: label groups, dress cut at the true hip row (independent code)."""
    rows = np.arange(parsing.shape[0])[:, None] + 0.5
    dress = (parsing == 6) | (parsing == 10)
    upper = np.isin(parsing, UPPER_LABELS) | (dress & (rows < hip_row))
    lower = np.isin(parsing, BOTTOM_LABELS) | (dress & (rows >= hip_row))
    return upper, lower


def test_area_resize_is_exact_box_average():
    m = np.zeros((48, 16), bool)
    m[:24, :8] = True  # the top-left quarter
    out = area_resize(m, (24, 8))
    assert out.shape == (24, 8)
    assert np.allclose(out[:12, :4], 1) and np.allclose(out[12:, :], 0) and np.allclose(out[:, 4:], 0)
    odd = np.zeros((128, 64), bool)
    odd[0:5, :] = True  # 5 rows of 128 -> the first cell (rows 0..5.33) is 5/5.33 full
    assert area_resize(odd)[0, 0] == pytest.approx(5 / (128 / 24), abs=1e-5)


def test_parsing_route_matches_ground_truth_groups():
    """IoU of whole/upper/bottom at full resolution: whole 1.0, upper and bottom >= 0.95 (dress cut estimated)."""
    ious = {"whole": [], "upper": [], "bottom": []}
    for image, parsing, info in people():
        d = derive(Observation(128, 64, None, parsing, None))
        kp = info["keypoints"]
        hip_row = (kp[11, 1] + kp[12, 1]) / 2
        upper_t, lower_t = truth_groups(parsing, hip_row)
        assert d.status == STATUS["no_keypoints"]
        assert np.array_equal(d.person, parsing > 0)
        whole_24 = area_resize(parsing > 0)
        assert np.allclose(d.masks[0], whole_24)
        # recover the full-resolution upper/bottom from the 24x8 mask is lossy: compare at 24x8 via soft IoU
        for k, truth in ((1, upper_t), (2, lower_t)):
            t = area_resize(truth)
            ious["upper" if k == 1 else "bottom"].append(float(np.minimum(d.masks[k], t).sum() / max(np.maximum(d.masks[k], t).sum(), 1e-6)))
        ious["whole"].append(1.0)
    assert min(ious["upper"]) >= 0.80 and np.mean(ious["upper"]) >= 0.95, ious["upper"]
    assert min(ious["bottom"]) >= 0.80 and np.mean(ious["bottom"]) >= 0.95, ious["bottom"]


def test_masks_are_soft_in_unit_range_and_partition_the_whole():
    for image, parsing, info in people(10):
        d = derive(Observation(128, 64, None, parsing, None))
        assert d.masks.shape == (3, 24, 8) and d.masks.dtype == np.float32
        assert d.masks.min() >= 0 and d.masks.max() <= 1
        # upper and bottom partition the whole body (every label is in exactly one group)
        assert np.allclose(d.masks[1] + d.masks[2], d.masks[0], atol=1e-5)


def detector_obs(parsing: np.ndarray, info: dict, with_keypoints: bool = True) -> Observation:
    """A perfect detector: the true person mask and keypoints as one instance."""
    kp = info["keypoints"].copy()
    kp[:, 2] = (kp[:, 2] > 0).astype(np.float32)  # visibility -> score
    x0, y0, x1, y1 = info["box"]
    inst = Instances(
        np.array([[x0, y0, x1, y1]], np.float32), np.array([0.99], np.float32),
        (parsing > 0).astype(np.float32)[None], kp[None] if with_keypoints else None,
    )
    return Observation(parsing.shape[0], parsing.shape[1], inst, None, None)


def test_keypoint_route_regions_against_parsing_truth():
    """Cutting the person mask at the shoulder and hip lines recovers head/upper/lower regions."""
    head_ious, lower_ious = [], []
    for image, parsing, info in people():
        kp = info["keypoints"]
        if min(kp[5, 2], kp[6, 2], kp[11, 2], kp[12, 2]) == 0:
            continue
        d = derive(detector_obs(parsing, info))
        assert d.status == STATUS["ok"]
        assert np.array_equal(d.regions > 0, parsing > 0)
        head_ious.append(iou(d.regions == 1, np.isin(parsing, HEAD_LABELS)))
        lower_ious.append(iou(d.regions == 3, np.isin(parsing, LOWER_LABELS)))
    assert len(head_ious) >= 10
    # the neck and shoulder tops sit between the head labels and the shoulder line; arms hang below hips
    assert np.mean(head_ious) >= 0.6, head_ious
    assert np.mean(lower_ious) >= 0.75, lower_ious


def test_keypoint_split_of_whole_mask_against_truth_groups():
    ious = []
    for image, parsing, info in people():
        kp = info["keypoints"]
        if min(kp[11, 2], kp[12, 2]) == 0:
            continue
        d = derive(detector_obs(parsing, info))
        upper_t, lower_t = truth_groups(parsing, (kp[11, 1] + kp[12, 1]) / 2)
        t = area_resize(lower_t)
        ious.append(float(np.minimum(d.masks[2], t).sum() / np.maximum(d.masks[2], t).sum()))
    assert np.mean(ious) >= 0.8, ious


def test_parsing_regions_without_keypoints():
    for image, parsing, info in people(10):
        d = derive(Observation(128, 64, None, parsing, None))
        assert np.array_equal(d.regions == 1, np.isin(parsing, HEAD_LABELS))
        assert np.array_equal(np.isin(d.regions, (2,)) & np.isin(parsing, UPPER_ONLY_LABELS), np.isin(parsing, UPPER_ONLY_LABELS))
        assert np.array_equal(np.isin(d.regions, (3,)) & np.isin(parsing, LOWER_LABELS), np.isin(parsing, LOWER_LABELS))


def test_target_is_the_centred_tall_person_not_the_confident_passer_by():
    h, w = 128, 64
    boxes = np.array([[40, 20, 64, 100], [14, 8, 50, 124]], np.float32)  # passer-by cut at the right border; target centred
    inst = Instances(boxes, np.array([0.99, 0.80], np.float32), None, None)
    assert select_target(inst, h, w) == 1
    assert select_target(Instances.empty(h, w), h, w) is None


def test_target_selection_on_rendered_crops_with_two_people():
    picked = 0
    for i in range(20):
        rng = np.random.default_rng([5, i])
        main, other = sample_identity(rng), sample_identity(rng)
        image, parsing, info = render_person(main, 0, rng, 128, 64, second_person=other)
        masks, boxes = [], []
        for m in (info["other_parsing"] > 0, parsing > 0):
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            masks.append(m.astype(np.float32))
        inst = Instances(np.array(boxes, np.float32), np.array([0.95, 0.9], np.float32), np.stack(masks), None)
        d = derive(Observation(128, 64, inst, None, None))
        picked += np.array_equal(d.person, parsing > 0)
    assert picked == 20


def test_no_person_fallback_is_flagged():
    d = derive(Observation(128, 64, Instances.empty(128, 64), None, None))
    assert d.status == STATUS["no_person"]
    assert d.masks[0].sum() > 0 and np.allclose(d.masks[1] + d.masks[2], d.masks[0])
    assert d.keypoints[:, 2].max() == 0


def test_detector_without_keypoints_is_flagged():
    image, parsing, info = next(people(1))
    d = derive(detector_obs(parsing, info, with_keypoints=False))
    assert d.status == STATUS["no_keypoints"]
    assert set(np.unique(d.regions)) <= {0, 1, 2, 3} and (d.regions > 0).sum() == (parsing > 0).sum()


def with_scores(obs: Observation, scores: np.ndarray) -> Observation:
    """``obs`` with its one instance's keypoint scores replaced (positions kept)."""
    kp = obs.instances.keypoints.copy()
    kp[0, :, 2] = scores
    obs.instances.keypoints = kp
    return obs


def test_detector_rows_without_confident_keypoints_are_no_keypoints():
    """Backends return zero-filled keypoints for an unmatched target: that is no_keypoints, cut like no keypoint model."""
    image, parsing, info = next(people(1))
    bare = derive(detector_obs(parsing, info, with_keypoints=False))
    for scores in (np.zeros(17), np.full(17, KEYPOINT_MIN_SCORE - 0.01)):
        d = derive(with_scores(detector_obs(parsing, info), scores))
        assert d.status == STATUS["no_keypoints"]
        assert np.array_equal(d.regions, bare.regions) and np.array_equal(d.masks, bare.masks)
        assert tuple(d.cuts) == tuple(bare.cuts) == (CUT["estimate"], CUT["estimate"])
    one = np.zeros(17)
    one[0] = KEYPOINT_MIN_SCORE  # a confident nose: keypoints exist, but no line can be drawn
    d = derive(with_scores(detector_obs(parsing, info), one))
    assert d.status == STATUS["ok"] and tuple(d.cuts) == (CUT["estimate"], CUT["estimate"])


def test_cuts_say_which_source_placed_each_line():
    image, parsing, info = next(p for p in people() if min(p[2]["keypoints"][[5, 6, 11, 12], 2]) > 0)
    assert tuple(derive(detector_obs(parsing, info)).cuts) == (CUT["keypoints"], CUT["keypoints"])
    # shoulders confident, hips not: the hip line is the estimate at HIP_FRACTION of the person's height
    scores = np.ones(17)
    scores[[11, 12]] = 0
    d = derive(with_scores(detector_obs(parsing, info), scores))
    assert d.status == STATUS["ok"] and tuple(d.cuts) == (CUT["keypoints"], CUT["estimate"])
    rows = np.nonzero((parsing > 0).any(axis=1))[0]
    hip = rows[0] + HIP_FRACTION * (rows[-1] + 1 - rows[0])
    ys = np.arange(parsing.shape[0])[:, None] + 0.5
    assert np.array_equal(d.regions == 3, (parsing > 0) & (ys >= hip))
    # parsing alone: both lines follow the labels; parsing + keypoints of the detector: the keypoint lines
    assert tuple(derive(Observation(128, 64, None, parsing, None)).cuts) == (CUT["parsing"], CUT["parsing"])
    both = detector_obs(parsing, info)
    both.parsing = parsing
    assert tuple(derive(both).cuts) == (CUT["keypoints"], CUT["keypoints"])
    assert tuple(derive(Observation(128, 64, Instances.empty(128, 64), None, None)).cuts) == (CUT["prior"], CUT["prior"])
