"""Tests for the synthetic pedestrian renderer (reid_masks.synth.render)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from reid_masks.synth.render import (
    LIP_PALETTE,
    RENDERED_LABELS,
    Identity,
    camera_background,
    colorize_parsing,
    render_person,
    sample_identity,
)

H, W = 128, 64
UPPER_LABELS = [5, 7, 14, 15]
LOWER_LABELS = [9, 12, 16, 17, 18, 19]
CLOTHING_UPPER = [5, 6, 7]


def _identities(seed: int, n: int) -> list[Identity]:
    rng = np.random.default_rng(seed)
    return [sample_identity(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def renders() -> list[tuple[Identity, int, np.ndarray, np.ndarray, dict]]:
    """A batch of renders over several identities and cameras (some with a second person)."""
    ids = _identities(1, 12)
    rng = np.random.default_rng(2)
    out = []
    for k in range(60):
        ident = ids[k % len(ids)]
        second = ids[(k + 3) % len(ids)] if k % 3 == 0 else None
        img, par, info = render_person(ident, k % 5, rng, second_person=second)
        out.append((ident, k % 5, img, par, info))
    return out


def test_determinism() -> None:
    ida = sample_identity(np.random.default_rng(7))
    idb = sample_identity(np.random.default_rng(7))
    assert ida == idb and hash(ida) == hash(idb)
    other = sample_identity(np.random.default_rng(8))
    a = render_person(ida, 3, np.random.default_rng(123), second_person=other)
    b = render_person(idb, 3, np.random.default_rng(123), second_person=other)
    assert a[0].tobytes() == b[0].tobytes()
    assert a[1].tobytes() == b[1].tobytes()
    assert a[2]["keypoints"].tobytes() == b[2]["keypoints"].tobytes()
    assert a[2]["other_parsing"].tobytes() == b[2]["other_parsing"].tobytes()
    assert a[2]["box"] == b[2]["box"] and a[2]["occluded"] == b[2]["occluded"]
    c = render_person(ida, 3, np.random.default_rng(124))
    assert c[0].tobytes() != a[0].tobytes()
    bg1 = camera_background(4, H, W, np.random.default_rng(5))
    bg2 = camera_background(4, H, W, np.random.default_rng(5))
    assert bg1.tobytes() == bg2.tobytes()


def test_identity_is_frozen() -> None:
    ident = sample_identity(np.random.default_rng(0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ident.build = 1.0  # type: ignore[misc]
    assert ident.lower_kind in {"pants", "shorts", "skirt", "dress"}
    assert ident.upper_kind in {"tshirt", "longsleeve", "coat", "dress"}
    assert (ident.upper_kind == "dress") == (ident.lower_kind == "dress")


@pytest.mark.parametrize("size", [(128, 64), (256, 128), (96, 48)])
def test_shapes_and_dtypes(size: tuple[int, int]) -> None:
    h, w = size
    ident, second = _identities(3, 2)
    img, par, info = render_person(ident, 0, np.random.default_rng(0), height=h, width=w, second_person=second)
    assert img.shape == (h, w, 3) and img.dtype == np.uint8
    assert par.shape == (h, w) and par.dtype == np.uint8
    assert info["keypoints"].shape == (17, 3) and info["keypoints"].dtype == np.float32
    assert info["other_parsing"].shape == (h, w) and info["other_parsing"].dtype == np.uint8
    assert len(info["box"]) == 4 and isinstance(info["occluded"], bool)
    bg = camera_background(2, h, w, np.random.default_rng(0))
    assert bg.shape == (h, w, 3) and bg.dtype == np.uint8


def test_labels_in_allowed_set(renders) -> None:
    seen: set[int] = set()
    for _, _, _, par, info in renders:
        labels = set(np.unique(par).tolist()) | set(np.unique(info["other_parsing"]).tolist())
        assert labels <= RENDERED_LABELS
        seen |= labels
    # A realistic variety of parts shows up over the batch.
    assert {0, 2, 5, 9, 13, 14, 15, 18, 19} <= seen


def test_single_blob_of_plausible_area(renders) -> None:
    checked = 0
    for _, _, _, par, info in renders:
        fg = par > 0
        frac = fg.mean()
        if info["occluded"]:
            assert 0.05 < frac < 0.7
            continue
        assert 0.15 < frac < 0.7, frac
        lab, n = ndimage.label(fg)
        sizes = np.bincount(lab.ravel())[1:]
        assert sizes.max() >= 0.97 * fg.sum(), sizes
        checked += 1
    assert checked >= 20


def test_upper_body_above_lower_body(renders) -> None:
    rows = np.arange(H)[:, None] * np.ones((1, W))
    for _, _, _, par, info in renders:
        up = np.isin(par, UPPER_LABELS)
        lo = np.isin(par, LOWER_LABELS)
        if up.sum() < 20 or lo.sum() < 20:
            assert info["occluded"]
            continue
        assert rows[up].mean() < rows[lo].mean()
        head = np.isin(par, [1, 2, 13])
        if head.any():
            assert rows[head].mean() < rows[up].mean()


def test_keypoints_inside_box_and_ordered(renders) -> None:
    for _, _, _, par, info in renders:
        kp = info["keypoints"]
        x0, y0, x1, y1 = info["box"]
        vis = kp[:, 2] > 0
        assert set(np.unique(kp[:, 2]).tolist()) <= {0.0, 1.0, 2.0}
        assert np.all((kp[vis, 0] >= x0) & (kp[vis, 0] <= x1))
        assert np.all((kp[vis, 1] >= y0) & (kp[vis, 1] <= y1))
        # shoulders above hips, hips above knees, knees above ankles, eyes above shoulders
        assert kp[5:7, 1].max() < kp[11:13, 1].min()
        assert kp[11:13, 1].max() < kp[13:15, 1].min()
        assert kp[13:15, 1].max() < kp[15:17, 1].min()
        assert kp[3:5, 1].max() < kp[5:7, 1].min()
        # box covers the parsing
        ys, xs = np.nonzero(par)
        assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1


def test_left_right_convention(renders) -> None:
    """Person's own left is on the image right when facing the camera, image left from the back."""
    cols = np.ones((H, 1)) * np.arange(W)[None, :]
    for _, _, _, par, info in renders:
        kp = info["keypoints"]
        sign = 1.0 if info["facing"] == "front" else -1.0
        assert sign * (kp[5, 0] - kp[6, 0]) > 0  # shoulders
        assert sign * (kp[11, 0] - kp[12, 0]) > 0  # hips
        if info["facing"] == "back":
            assert np.all(kp[0:3, 2] == 0)
        for left, right in ((16, 17), (18, 19)):
            ml, mr = par == left, par == right
            if ml.sum() > 5 and mr.sum() > 5 and not info["occluded"]:
                assert sign * (cols[ml].mean() - cols[mr].mean()) > 0


def test_second_person_does_not_leak(renders) -> None:
    n_with = 0
    for ident, _, _, par, info in renders:
        other = info["other_parsing"]
        assert not np.any((par > 0) & (other > 0))
        if other.any():
            n_with += 1
            # the other person is cut by a side border of the crop
            xs = np.nonzero(other)[1]
            assert xs.min() == 0 or xs.max() == W - 1
        lab, _ = ndimage.label(par > 0)
        if not info["occluded"]:
            sizes = np.bincount(lab.ravel())[1:]
            assert sizes.max() >= 0.97 * (par > 0).sum()
    assert n_with >= 10


def test_second_person_region_matches_render() -> None:
    ident, second = _identities(11, 2)
    for seed in range(10):
        img, par, info = render_person(ident, 1, np.random.default_rng(seed), second_person=second)
        other = info["other_parsing"]
        assert other.any()
        x0, y0, x1, y1 = info["box"]
        # the main person's box is around the centre of the crop
        assert abs(0.5 * (x0 + x1) - W / 2) < 0.25 * W


def test_occluder_is_background() -> None:
    ident = _identities(5, 1)[0]
    found = 0
    for seed in range(60):
        img, par, info = render_person(ident, 2, np.random.default_rng(seed))
        if not info["occluded"]:
            assert info["occluder_box"] is None
            continue
        found += 1
        x0, y0, x1, y1 = info["occluder_box"]
        assert not par[y0:y1, x0:x1].any()
        kp = info["keypoints"]
        inside = (kp[:, 0] >= x0) & (kp[:, 0] < x1) & (kp[:, 1] >= y0) & (kp[:, 1] < y1)
        assert np.all(kp[inside, 2] <= 1)
    assert found >= 5


def _mean_upper_color(ident: Identity, camid: int, seed: int, n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    acc = []
    for _ in range(n):
        img, par, _ = render_person(ident, camid, rng)
        m = np.isin(par, CLOTHING_UPPER)
        acc.append(img[m].astype(np.float64).mean(axis=0))
    return np.mean(acc, axis=0)


def test_identity_colours_distinguish_people() -> None:
    base = _identities(21, 1)[0]
    red = dataclasses.replace(base, upper_kind="longsleeve", lower_kind="pants", upper_pattern="plain",
                              upper_color=(200, 30, 30))
    blue = dataclasses.replace(red, upper_color=(30, 60, 200))
    red_c0 = _mean_upper_color(red, 0, 1)
    red_c3 = _mean_upper_color(red, 3, 2)
    blue_c0 = _mean_upper_color(blue, 0, 3)
    same = np.linalg.norm(red_c0 - red_c3)
    diff = np.linalg.norm(red_c0 - blue_c0)
    assert same < 45, same
    assert diff > 150, diff


def test_sampled_identities_separable_by_colour() -> None:
    ids = _identities(31, 10)
    same, diff = [], []
    means = {}
    for i, ident in enumerate(ids):
        means[i, 0] = _mean_upper_color(ident, 0, 100 + i, n=3)
        means[i, 1] = _mean_upper_color(ident, 4, 200 + i, n=3)
        same.append(np.linalg.norm(means[i, 0] - means[i, 1]))
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            diff.append(np.linalg.norm(means[i, 0] - means[j, 1]))
    assert np.mean(same) * 2.5 < np.mean(diff)


def test_camera_backgrounds_have_camera_style() -> None:
    rng = np.random.default_rng(0)
    means = np.array([[camera_background(c, H, W, rng).reshape(-1, 3).mean(0) for _ in range(8)] for c in range(6)])
    within = np.linalg.norm(means - means.mean(1, keepdims=True), axis=-1).mean()
    between = np.linalg.norm(means.mean(1)[:, None] - means.mean(1)[None], axis=-1).sum() / (6 * 5)
    assert within < between
    bg = camera_background(0, H, W, rng)
    assert bg.reshape(-1, 3).std(0).mean() > 8  # cluttered, not flat


def test_colorize_parsing() -> None:
    par = np.arange(20, dtype=np.uint8).reshape(4, 5)
    rgb = colorize_parsing(par)
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb.reshape(-1, 3), LIP_PALETTE)
    assert len({tuple(c) for c in LIP_PALETTE.tolist()}) == 20
    assert np.array_equal(rgb[0, 0], [0, 0, 0])
