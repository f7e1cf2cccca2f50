"""The torchvision backend with explicitly random weights (no pretrained weights offline).

Random Mask R-CNN scores persons far below 0.5, so the shape tests use threshold 0.0,
a small input size, few proposals and few detections to stay fast on a 2-core CPU.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from reid_masks.backends.base import Instances
from reid_masks.backends.torchvision_backend import (
    DEFAULT_MAX_SIZE,
    DEFAULT_MIN_SIZE,
    TorchvisionBackend,
    box_iou_np,
    build_keypoint_model,
    build_mask_model,
    expected_weights_path,
    match_instances,
    MASK_WEIGHTS,
)
from reid_masks.errors import UserError

FAST = dict(min_size=128, max_size=256, score_threshold=0.0, detections_per_img=3, rpn_post_nms_top_n=50)
SIZES = [(128, 64), (128, 64), (128, 64), (160, 72)]


def _images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


@pytest.fixture(scope="module")
def random_backend() -> TorchvisionBackend:
    torch.manual_seed(0)
    return TorchvisionBackend(random_weights=True, match_iou=1e-6, **FAST)


@pytest.fixture(scope="module")
def batch_result(random_backend: TorchvisionBackend) -> list[Instances]:
    return random_backend.predict(_images())


@pytest.fixture
def empty_hub_dir(tmp_path: Path) -> Iterator[Path]:
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        yield tmp_path / "hub"
    finally:
        torch.hub.set_dir(old)


def test_batch_shapes_dtypes_scores(batch_result: list[Instances]) -> None:
    assert len(batch_result) == len(SIZES)
    total = 0
    for inst, (h, w) in zip(batch_result, SIZES):
        n = len(inst)
        total += n
        assert 0 <= n <= FAST["detections_per_img"]
        assert inst.boxes.shape == (n, 4) and inst.boxes.dtype == np.float32
        assert inst.scores.shape == (n,) and inst.scores.dtype == np.float32
        assert inst.masks is not None and inst.masks.shape == (n, h, w) and inst.masks.dtype == np.float32
        assert inst.keypoints is not None and inst.keypoints.shape == (n, 17, 3) and inst.keypoints.dtype == np.float32
        assert np.all((inst.scores >= 0) & (inst.scores <= 1))
        assert np.all(np.diff(inst.scores) <= 0), "scores must be sorted, best first"
        assert np.all((inst.masks >= 0) & (inst.masks <= 1))
        assert np.all((inst.keypoints[..., 2] >= 0) & (inst.keypoints[..., 2] <= 1))
        assert np.all(inst.boxes[:, 2] >= inst.boxes[:, 0]) and np.all(inst.boxes[:, 3] >= inst.boxes[:, 1])
        assert np.all(inst.boxes[:, [0, 2]] <= w + 1e-3) and np.all(inst.boxes[:, [1, 3]] <= h + 1e-3)
    assert total > 0, "threshold 0.0 should let random-weight instances through"


def test_keypoints_attached_when_boxes_overlap(batch_result: list[Instances]) -> None:
    # match_iou is ~0 here, so any keypoint instance overlapping a mask instance is attached.
    attached = [inst.keypoints[i] for inst in batch_result for i in range(len(inst)) if inst.keypoints[i, :, 2].any()]
    assert attached, "expected at least one matched keypoint instance"
    for kp in attached:
        assert np.all(kp[:, 2] > 0) and np.all(kp[:, 2] <= 1)  # sigmoid of the heatmap logit
    for inst, (h, w) in zip(batch_result, SIZES):
        xy = inst.keypoints[..., :2]
        assert np.all(xy >= -1) and np.all(xy[..., 0] <= w + 1) and np.all(xy[..., 1] <= h + 1)


def test_provenance(random_backend: TorchvisionBackend) -> None:
    p = random_backend.provenance()
    assert p["backend"] == "torchvision"
    assert p["random_weights"] is True
    assert p["models"] == {"mask": "maskrcnn_resnet50_fpn_v2", "keypoint": "keypointrcnn_resnet50_fpn"}
    assert p["weights"]["mask"]["sha256"] is None and p["weights"]["mask"]["path"] is None
    assert p["weights"]["mask"]["url"] is None and p["weights"]["mask"]["weights"] is None  # nothing was loaded
    assert p["score_threshold"] == 0.0 and p["min_size"] == 128 and p["max_size"] == 256
    assert p["device"] == "cpu" and p["amp"] is False
    assert p["torchvision_version"]
    import json

    json.dumps(p)  # goes into the cache's attributes


def test_random_weights_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="reid_masks.backends.torchvision_backend"):
        TorchvisionBackend(random_weights=True, with_keypoints=False, **FAST)
    assert any("RANDOM" in r.getMessage() for r in caplog.records)


def test_empty_batch(random_backend: TorchvisionBackend) -> None:
    assert random_backend.predict([]) == []


def test_defaults_documented() -> None:
    assert DEFAULT_MIN_SIZE == 256 and DEFAULT_MAX_SIZE >= 2 * DEFAULT_MIN_SIZE


def test_long_side_cap_follows_min_size() -> None:
    """--min-size 800 alone (torchvision's own evaluation size) must work: the cap is 3x the short side."""
    b = TorchvisionBackend(random_weights=True, with_keypoints=False, min_size=800)
    assert b.max_size == 2400 and b.provenance()["max_size"] == 2400
    assert TorchvisionBackend(random_weights=True, with_keypoints=False).max_size == DEFAULT_MAX_SIZE == 768


def test_missing_weights_in_hub_cache(empty_hub_dir: Path) -> None:
    with pytest.raises(UserError) as ei:
        TorchvisionBackend()
    msg = str(ei.value)
    assert "\n" not in msg
    assert "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth" in msg
    assert str(empty_hub_dir / "checkpoints") in msg
    assert MASK_WEIGHTS.url in msg
    # both missing files are named at once, still on one line
    assert "keypointrcnn_resnet50_fpn_coco-fc266e95.pth" in msg
    assert expected_weights_path(MASK_WEIGHTS) == empty_hub_dir / "checkpoints" / "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"


def test_missing_keypoint_weights_in_hub_cache(empty_hub_dir: Path) -> None:
    with pytest.raises(UserError, match=r"keypointrcnn_resnet50_fpn_coco-fc266e95\.pth"):
        TorchvisionBackend(with_masks=False)


def test_missing_weights_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(UserError, match="nope.pth"):
        TorchvisionBackend(mask_weights=missing, with_keypoints=False)


def test_bad_weights_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="bad.pth"):
        TorchvisionBackend(mask_weights=bad, with_keypoints=False)
    wrong = tmp_path / "wrong.pth"
    torch.save({"foo": torch.zeros(1)}, wrong)
    with pytest.raises(UserError, match="wrong.pth"):
        TorchvisionBackend(keypoint_weights=wrong, with_masks=False)


def test_bad_options() -> None:
    with pytest.raises(UserError):
        TorchvisionBackend(random_weights=True, with_masks=False, with_keypoints=False)
    with pytest.raises(UserError):
        TorchvisionBackend(random_weights=True, amp=True)  # AMP needs CUDA
    with pytest.raises(UserError):
        TorchvisionBackend(random_weights=True, min_size=300, max_size=200)


def test_weights_round_trip_through_path(tmp_path: Path, empty_hub_dir: Path, random_backend: TorchvisionBackend,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Saved weights load back to the same outputs; the provenance names the file loaded: the cache file
    with torchvision's URL, a file given (typed relative) by absolute path and hash only."""
    mpath, kpath = expected_weights_path(MASK_WEIGHTS), tmp_path / "kp.pth"
    mpath.parent.mkdir(parents=True)
    torch.save(random_backend.mask_model.state_dict(), mpath)
    torch.save(random_backend.keypoint_model.state_dict(), kpath)
    monkeypatch.chdir(tmp_path)
    loaded = TorchvisionBackend(keypoint_weights="kp.pth", match_iou=1e-6, **FAST)
    images = _images()[:1]
    (got,) = loaded.predict(images)
    (want,) = random_backend.predict(images)
    assert len(got) == len(want) > 0
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-4)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
    np.testing.assert_allclose(got.masks, want.masks, atol=1e-4)
    np.testing.assert_allclose(got.keypoints, want.keypoints, atol=1e-3)
    p = loaded.provenance()
    assert p["random_weights"] is False
    import hashlib

    assert p["weights"]["mask"]["url"] == MASK_WEIGHTS.url and p["weights"]["mask"]["source"] == "zoo"
    assert p["weights"]["mask"]["path"] == str(mpath.resolve()) and p["weights"]["mask"]["weights"] == "MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1"
    assert p["weights"]["mask"]["sha256"] == hashlib.sha256(mpath.read_bytes()).hexdigest()
    assert p["weights"]["keypoint"] == {"model": "keypointrcnn_resnet50_fpn", "weights": None, "url": None, "source": "file",
                                        "path": str(kpath.resolve()), "sha256": hashlib.sha256(kpath.read_bytes()).hexdigest()}
    assert loaded.provenance() == p


def test_keypoint_only_mode(random_backend: TorchvisionBackend) -> None:
    kp_only = TorchvisionBackend(random_weights=True, with_masks=False, **FAST)
    (inst,) = kp_only.predict(_images()[3:])
    assert inst.masks is None and inst.keypoints is not None
    assert inst.keypoints.shape == (len(inst), 17, 3)


def test_checkpoint_layouts_match_torchvision_builders() -> None:
    """The pretrained checkpoints' key sets load strictly into our models.

    COCO_V1 Keypoint R-CNN comes from a FrozenBatchNorm2d backbone (no num_batches_tracked);
    the Mask R-CNN v2 one from torchvision's own BatchNorm2d build.
    """
    from torchvision.models.detection import keypointrcnn_resnet50_fpn, maskrcnn_resnet50_fpn_v2

    sd = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    frozen_style = {k: v for k, v in sd.items() if not (k.startswith("backbone.body.") and k.endswith("num_batches_tracked"))}
    build_keypoint_model().load_state_dict(frozen_style, strict=True)
    build_mask_model().load_state_dict(maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None).state_dict(), strict=True)


# ------------------------------------------------------------------ matching (unit)


def test_box_iou_np() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    iou = box_iou_np(a, b)
    np.testing.assert_allclose(iou[0], [1.0, 50 / 150, 0.0])
    np.testing.assert_allclose(iou[1], [0.0, 0.0, 0.0])


def test_match_instances_greedy_one_to_one() -> None:
    mask_boxes = np.array([[0, 0, 40, 100], [30, 0, 70, 100], [100, 100, 110, 110]], np.float32)
    # keypoint instances in another order, slightly shifted, plus an extra one
    kp_boxes = np.array([[32, 2, 71, 99], [200, 0, 240, 100], [1, 1, 41, 101]], np.float32)
    np.testing.assert_array_equal(match_instances(mask_boxes, kp_boxes), [2, 0, -1])


def test_match_instances_each_used_once_and_threshold() -> None:
    mask_boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    kp_boxes = np.array([[0, 0, 10, 10]], np.float32)
    # duplicates: the first (higher scoring) mask instance gets it, the second none
    np.testing.assert_array_equal(match_instances(mask_boxes, kp_boxes), [0, -1])
    # IoU 1/3 is below the default 0.5 but above 0.3
    shifted = np.array([[5, 0, 15, 10]], np.float32)
    np.testing.assert_array_equal(match_instances(mask_boxes[:1], shifted), [-1])
    np.testing.assert_array_equal(match_instances(mask_boxes[:1], shifted, min_iou=0.3), [0])


def test_match_instances_prefers_higher_iou_pair() -> None:
    # mask 0 overlaps kp 0 a bit and kp 1 well; mask 1 overlaps only kp 0 well
    mask_boxes = np.array([[0, 0, 10, 10], [6, 0, 16, 10]], np.float32)
    kp_boxes = np.array([[6, 0, 16, 10], [1, 0, 11, 10]], np.float32)
    np.testing.assert_array_equal(match_instances(mask_boxes, kp_boxes, min_iou=0.1), [1, 0])


def test_match_instances_empty() -> None:
    assert match_instances(np.zeros((0, 4)), np.zeros((3, 4))).shape == (0,)
    np.testing.assert_array_equal(match_instances(np.zeros((2, 4)) + [0, 0, 5, 5], np.zeros((0, 4))), [-1, -1])


def test_unmatched_targets_are_no_keypoints_rows(random_backend: TorchvisionBackend, batch_result: list[Instances], monkeypatch: pytest.MonkeyPatch) -> None:
    """A target without a matched keypoint instance gets zero keypoints from the backend and status no_keypoints."""
    from reid_masks.cache import STATUS
    from reid_masks.derive import KEYPOINT_MIN_SCORE, Observation, derive, select_target

    def rows(results: list[Instances]) -> list[tuple[int, np.ndarray]]:
        out = []
        for im, inst in zip(_images(), results):
            if len(inst):
                assert inst.keypoints is not None and inst.keypoints.shape == (len(inst), 17, 3)
                h, w = im.shape[:2]
                out.append((derive(Observation(h, w, inst, None, None)).status, inst.keypoints[select_target(inst, h, w)]))
        return out

    matched = rows(batch_result)  # match_iou ~0: targets overlapping a keypoint instance get its keypoints
    assert [s for s, _ in matched] == [STATUS["ok"] if (kp[:, 2] >= KEYPOINT_MIN_SCORE).any() else STATUS["no_keypoints"] for _, kp in matched]
    assert STATUS["ok"] in [s for s, _ in matched]
    monkeypatch.setattr(random_backend, "match_iou", 1.01)  # IoU never reaches it: nothing matches
    unmatched = rows(random_backend.predict(_images()))
    assert len(unmatched) == len(matched)
    assert all(s == STATUS["no_keypoints"] and not kp.any() for s, kp in unmatched)
