"""Parity of the detector backends with the libraries' own inference, on the same seeded weights.

* torchvision (always run): :class:`TorchvisionBackend` on a batch vs torchvision's own
  builders (``maskrcnn_resnet50_fpn_v2`` / ``keypointrcnn_resnet50_fpn`` with their COCO_V1
  weights enum, so torchvision itself picks FrozenBatchNorm2d and eps 0 for the keypoint
  model) called one image at a time, ``model([image])``, as a user would.
* detectron2 (run only when the REAL detectron2 is importable; docs/detectron2.md says how to
  build it offline): :class:`Detectron2Backend` vs ``DefaultPredictor`` on the same model.

Random weights score every class alike, so the seeded class logits are shrunk and a
person-class bias is added (for detectron2, whose random features are larger, the box
regressions are shrunk too, so boxes stay near their anchors): persons then pass the 0.5
threshold and nothing else does, which is what trained
weights do on a re-ID crop and what makes torchvision's all-class top-k and the backend's
person-only post-processing pick the same instances ("parity where the rule allows").
Compared: person boxes and scores, masks (equal after the 0.5 threshold, and to 1e-4),
keypoints of every mask instance (x, y and sigmoid(logit) within 1e-3; the keypoint model's
instance is paired greedily by box IoU, written here independently) and the target person.
Random models' boxes barely overlap, so keypoints are attached down to IoU 0.01. Images:
synthetic crops, two sizes mixed in one batch. Small input (``min_size=64``) and few RoIs keep
the test at a few CPU-seconds.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torchvision

from reid_masks.backends.base import Instances
from reid_masks.derive import select_target
from reid_masks.synth.render import render_person, sample_identity

SIZES = [(128, 64), (160, 64), (128, 64)]  # 160x64 pads differently from 128x64 in a batch
PERSON_BIAS = 6.0


def crops(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [render_person(sample_identity(rng), camid=1 + i, rng=rng, height=h, width=w)[0] for i, (h, w) in enumerate(SIZES)]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return torchvision.ops.box_iou(torch.as_tensor(a, dtype=torch.float64).reshape(-1, 4), torch.as_tensor(b, dtype=torch.float64).reshape(-1, 4)).numpy()


def greedy_pairs(a: np.ndarray, b: np.ndarray, min_iou: float) -> dict[int, int]:
    """Pairs (i in a, j in b), highest IoU first, each used once, IoU >= min_iou (and > 0)."""
    iou = box_iou(a, b)
    pairs: dict[int, int] = {}
    cands = sorted(((iou[i, j], i, j) for i in range(iou.shape[0]) for j in range(iou.shape[1])), key=lambda t: (-t[0], t[1], t[2]))
    used_b: set[int] = set()
    for v, i, j in cands:
        if v < min_iou or v <= 0:
            break
        if i not in pairs and j not in used_b:
            pairs[i] = j
            used_b.add(j)
    return pairs


def favour_persons(cls_score: torch.nn.Linear, person: int, background: int, shrink: float = 0.1) -> None:
    """Shrink the random class logits (to a few units) and lift the person's: persons score ~0.8, every other class < 0.05."""
    cls_score.weight.mul_(shrink)
    cls_score.bias.mul_(shrink)
    cls_score.bias[person] += PERSON_BIAS
    cls_score.bias[background] -= PERSON_BIAS


def assert_parity(ours: list[Instances], expected: list[dict[str, np.ndarray]], images: list[np.ndarray], kp_atol: float = 1e-3) -> None:
    """``expected[i]``: person ``boxes``, ``scores``, soft ``masks`` (n, H, W) and ``keypoints`` (n, 17, 3), score-sorted."""
    found = 0
    for inst, exp, image in zip(ours, expected, images):
        h, w = image.shape[:2]
        n = len(exp["scores"])
        found += n
        assert len(inst) == n
        np.testing.assert_allclose(inst.boxes, exp["boxes"], atol=1e-3)
        np.testing.assert_allclose(inst.scores, exp["scores"], atol=1e-5)
        assert inst.masks is not None and inst.masks.shape == (n, h, w)
        assert np.array_equal(inst.masks >= 0.5, exp["masks"] >= 0.5)
        np.testing.assert_allclose(inst.masks, exp["masks"], atol=1e-4)
        assert inst.keypoints is not None
        np.testing.assert_allclose(inst.keypoints, exp["keypoints"], atol=kp_atol)
        assert select_target(inst, h, w) == select_target(Instances(exp["boxes"], exp["scores"], exp["masks"], exp["keypoints"]), h, w)
    assert found >= len(images), "the person bias should make every crop yield persons"
    assert sum(1 for e in expected for row in e["keypoints"] if row[:, 2].any()) >= 2, "some mask instances must carry keypoints"


# --------------------------------------------------------------------------- torchvision


TV = dict(min_size=64, max_size=256, score_threshold=0.5, detections_per_img=2, rpn_post_nms_top_n=10)  # small: the heads run on few RoIs


@pytest.fixture(scope="module")
def tv_backend() -> Any:
    from reid_masks.backends.torchvision_backend import TorchvisionBackend

    torch.manual_seed(0)
    backend = TorchvisionBackend(random_weights=True, match_iou=0.01, **TV)
    with torch.no_grad():
        for model in (backend.mask_model, backend.keypoint_model):
            favour_persons(model.roi_heads.box_predictor.cls_score, person=1, background=0)
    return backend


def torchvision_own(builder: Callable[..., torch.nn.Module], weights: Any, state: dict, monkeypatch: pytest.MonkeyPatch, score_thresh: float) -> torch.nn.Module:
    """torchvision's builder with its COCO weights enum, the 'download' answered with ``state``."""
    import torchvision.models._api as api

    def fake_download(url: str, *args: Any, **kwargs: Any) -> dict:
        assert url == weights.url
        return state

    with monkeypatch.context() as m:
        m.setattr(api, "load_state_dict_from_url", fake_download)
        for name in ("uniform_", "normal_", "kaiming_uniform_", "kaiming_normal_", "constant_", "zeros_", "ones_", "trunc_normal_"):
            m.setattr(torch.nn.init, name, lambda t, *a, **k: t)  # the builder loads ``state`` over any init: skip the work
        model = builder(weights=weights, min_size=TV["min_size"], max_size=TV["max_size"], box_score_thresh=score_thresh,
                        box_detections_per_img=TV["detections_per_img"], rpn_post_nms_top_n_test=TV["rpn_post_nms_top_n"])
    return model.eval()


def test_torchvision_backend_matches_per_image_torchvision(tv_backend: Any, monkeypatch: pytest.MonkeyPatch, one_thread_and_clean_logging: None) -> None:
    from torchvision.models.detection import (
        KeypointRCNN_ResNet50_FPN_Weights,
        MaskRCNN_ResNet50_FPN_V2_Weights,
        keypointrcnn_resnet50_fpn,
        maskrcnn_resnet50_fpn_v2,
    )

    mask_model = torchvision_own(maskrcnn_resnet50_fpn_v2, MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1, tv_backend.mask_model.state_dict(), monkeypatch, 0.5)
    kp_model = torchvision_own(keypointrcnn_resnet50_fpn, KeypointRCNN_ResNet50_FPN_Weights.COCO_V1, tv_backend.keypoint_model.state_dict(), monkeypatch, 0.25)
    images = crops()
    ours = tv_backend.predict(images)

    expected = []
    with torch.inference_mode():
        for image in images:
            t = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
            m, k = mask_model([t])[0], kp_model([t])[0]
            assert set(m["labels"].tolist()) <= {1}  # nothing but persons passes: top-k picks the same instances
            boxes, scores = m["boxes"].numpy(), m["scores"].numpy()
            keypoints = np.zeros((len(scores), 17, 3), np.float32)
            kp_person = (k["labels"] == 1).numpy()
            kb = k["boxes"].numpy()[kp_person]
            kxy = k["keypoints"].numpy()[kp_person]
            ks = torch.sigmoid(k["keypoints_scores"][torch.from_numpy(kp_person)]).numpy()
            for i, j in greedy_pairs(boxes, kb, tv_backend.match_iou).items():
                keypoints[i, :, :2] = kxy[j, :, :2]
                keypoints[i, :, 2] = ks[j]
            expected.append({"boxes": boxes, "scores": scores, "masks": m["masks"][:, 0].numpy(), "keypoints": keypoints})
    assert_parity(ours, expected, images)


# --------------------------------------------------------------------------- detectron2


def real_detectron2_available() -> bool:
    """True when a real detectron2 (not tests/fake_detectron2) with its compiled ops imports."""
    fake = (Path(__file__).parent / "fake_detectron2").resolve()
    for name in [m for m in sys.modules if m == "detectron2" or m.startswith("detectron2.")]:
        if Path(getattr(sys.modules[name], "__file__", "") or "").resolve().is_relative_to(fake):
            sys.modules.pop(name, None)  # a fake left imported by another test module
    spec = importlib.util.find_spec("detectron2")
    if spec is None or spec.origin is None or Path(spec.origin).resolve().is_relative_to(fake):
        return False
    try:
        from detectron2 import _C  # noqa: F401  (the compiled extension of a source build)
        from detectron2.engine import DefaultPredictor  # noqa: F401
    except ImportError:
        return False
    return True


D2 = dict(min_size=64, max_size=256, score_threshold=0.5)


@pytest.mark.skipif(not real_detectron2_available(), reason="real detectron2 not importable (docs/detectron2.md: build it from source)")
def test_detectron2_backend_matches_default_predictor(one_thread_and_clean_logging: None) -> None:
    from detectron2.engine import DefaultPredictor

    from reid_masks.backends.detectron2_backend import Detectron2Backend

    torch.manual_seed(0)
    backend = Detectron2Backend(random_weights=True, match_iou=0.01, **D2)
    with torch.no_grad():
        for m in (backend.mask, backend.keypoint):  # contiguous id 0 = person, the last logit is background
            favour_persons(m.model.roi_heads.box_predictor.cls_score, person=0, background=-1, shrink=0.001)
            # random features are large: shrink the box regressions so boxes stay near their anchors, not clipped to slivers
            m.model.proposal_generator.rpn_head.anchor_deltas.weight.mul_(0.01)
            m.model.roi_heads.box_predictor.bbox_pred.weight.mul_(0.01)
            m.model.roi_heads.box_predictor.test_topk_per_image = 2  # few RoIs for the mask/keypoint heads (CPU time)
            m.model.proposal_generator.post_nms_topk = {True: 10, False: 10}
        # random heatmap logits are large enough for detectron2's keypoint decoding to overflow exp(); shrink them
        backend.keypoint.model.roi_heads.keypoint_head.score_lowres.weight.mul_(0.01)
    images = crops()
    ours = backend.predict(images)

    def predictor(m: Any) -> Any:
        cfg = m.cfg.clone()
        cfg.defrost()
        cfg.MODEL.WEIGHTS = ""  # nothing to load: the model is swapped for the backend's below
        p = DefaultPredictor(cfg)
        p.model = m.model
        return p

    mask_pred, kp_pred = predictor(backend.mask), predictor(backend.keypoint)
    expected = []
    for image in images:
        bgr = np.ascontiguousarray(image[:, :, ::-1])  # DefaultPredictor takes BGR
        mi = mask_pred(bgr)["instances"].to("cpu")
        ki = kp_pred(bgr)["instances"].to("cpu")
        mi = mi[mi.pred_classes == 0]
        ki = ki[ki.pred_classes == 0]
        mi = mi[torch.argsort(mi.scores, descending=True, stable=True)]
        ki = ki[torch.argsort(ki.scores, descending=True, stable=True)]
        boxes, scores = mi.pred_boxes.tensor.numpy(), mi.scores.numpy()
        keypoints = np.zeros((len(scores), 17, 3), np.float32)
        kxy = ki.pred_keypoints.numpy()
        ks = torch.sigmoid(ki.pred_keypoint_heatmaps.flatten(2).max(-1).values).numpy()
        for i, j in greedy_pairs(boxes, ki.pred_boxes.tensor.numpy(), backend.match_iou).items():
            keypoints[i, :, :2] = kxy[j, :, :2]
            keypoints[i, :, 2] = ks[j]
        expected.append({"boxes": boxes, "scores": scores, "masks": mi.pred_masks.float().numpy(), "keypoints": keypoints})
    assert_parity(ours, expected, images)
