"""The detectron2 backend against a faithful fake of detectron2's API (tests/fake_detectron2).

detectron2 cannot be installed here; the fake reproduces the module paths and semantics
the backend relies on (config merging, model zoo, build_model + batched forward with
detector_postprocess to the original size, DetectionCheckpointer, ResizeShortestEdge).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np
import pytest
import torch

from reid_masks.backends.base import Instances
from reid_masks.errors import UserError

FAKE = Path(__file__).parent / "fake_detectron2"
MASK_URL = "https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"


def _drop_detectron2_modules() -> None:
    for name in [m for m in sys.modules if m == "detectron2" or m.startswith("detectron2.")]:
        sys.modules.pop(name, None)


@pytest.fixture
def d2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[SimpleNamespace]:
    """The fake detectron2 importable, an empty download cache, and checkpoints for both fake models."""
    _drop_detectron2_modules()
    monkeypatch.syspath_prepend(str(FAKE))
    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path / "cache"))
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    def checkpoint(config: str, name: str, fill: float) -> Path:
        cfg = get_cfg()
        cfg.merge_from_file(model_zoo.get_config_file(config))
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
        state = {k: torch.full_like(v, fill) for k, v in model.state_dict().items()}
        path = tmp_path / name
        torch.save({"model": state, "__author__": "test"}, path)
        return path

    ns = SimpleNamespace(
        mask=checkpoint("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", "mask.pth", 0.25),
        keypoint=checkpoint("COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml", "kp.pth", 0.5),
        cache=tmp_path / "cache",
    )
    yield ns
    _drop_detectron2_modules()


def make_backend(d2: SimpleNamespace, **kw: object):
    from reid_masks.backends.detectron2_backend import Detectron2Backend

    kw.setdefault("mask_weights", str(d2.mask))
    kw.setdefault("keypoint_weights", str(d2.keypoint))
    return Detectron2Backend(**kw)


def person_image(h: int, w: int, box: tuple[int, int, int, int], color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Dark image with a bright rectangle (x0, y0, x1, y1): the fake model's person."""
    im = np.full((h, w, 3), 20, np.uint8)
    x0, y0, x1, y1 = box
    im[y0:y1, x0:x1] = color
    return im


def shortest_edge_size(h: int, w: int, short: int, cap: int) -> tuple[int, int]:
    """ResizeShortestEdge's documented rule, written independently: short side -> short, long side <= cap, round half up."""
    s = short / min(h, w)
    if max(h, w) * s > cap:
        s = cap / max(h, w)
    return int(math.floor(h * s + 0.5)), int(math.floor(w * s + 0.5))


def test_batched_outputs_at_image_resolution(d2: SimpleNamespace) -> None:
    backend = make_backend(d2, min_size=200, max_size=333)
    boxes = [(16, 8, 48, 120), (60, 20, 100, 90), (10, 30, 110, 280)]
    images = [person_image(128, 64, boxes[0]), person_image(100, 150, boxes[1]), person_image(300, 120, boxes[2])]
    out = backend.predict(images)

    # one forward per model and padded size (the fake pads nothing: per resized size), not one per image
    assert len(backend.mask.model.calls) == 3 and len(backend.keypoint.model.calls) == 3
    for rec, im in zip([c[0] for c in backend.mask.model.calls], images):
        h, w = im.shape[:2]
        assert rec["shape"][1:] == shortest_edge_size(h, w, 200, 333)
        assert (rec["height"], rec["width"]) == (h, w)
        assert rec["dtype"] == torch.float32

    assert len(out) == 3
    for inst, im, box in zip(out, images, boxes):
        h, w = im.shape[:2]
        assert isinstance(inst, Instances)
        assert len(inst) == 1  # the 0.3 person is below the threshold, the car is not a person
        assert inst.boxes.shape == (1, 4) and inst.boxes.dtype == np.float32
        np.testing.assert_allclose(inst.boxes[0], box, atol=2.5)
        assert inst.masks.shape == (1, h, w) and inst.masks.dtype == np.float32
        assert set(np.unique(inst.masks)) <= {0.0, 1.0}
        x0, y0, x1, y1 = box
        inside = inst.masks[0][y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
        assert inside.mean() == 1.0 and inst.masks[0].sum() < (y1 - y0 + 4) * (x1 - x0 + 4)
        # keypoints: matched from the keypoint model, in image coordinates, sigmoid(peak logit) scores
        assert inst.keypoints.shape == (1, 17, 3)
        kp = inst.keypoints[0]
        assert (kp[:, 0] >= x0 - 3).all() and (kp[:, 0] <= x1 + 3).all()
        assert (kp[:, 1] >= y0 - 3).all() and (kp[:, 1] <= y1 + 3).all()
        np.testing.assert_allclose(kp[:, 2], 1 / (1 + math.exp(-2.0)), rtol=1e-5)


def test_one_forward_per_padded_size(d2: SimpleNamespace) -> None:
    """Same-sized crops share one forward; another size gets its own (no padding beyond what it gets alone)."""
    backend = make_backend(d2, min_size=64, max_size=333)
    a, b = person_image(128, 64, (16, 8, 48, 120)), person_image(100, 150, (60, 20, 100, 90))
    out = backend.predict([a, b, a, a])
    for model in (backend.mask.model, backend.keypoint.model):
        assert [len(call) for call in model.calls] == [3, 1]
        assert [rec["shape"][1:] for call in model.calls for rec in call] == [(128, 64)] * 3 + [(64, 96)]
    assert [len(inst) for inst in out] == [1, 1, 1, 1]
    np.testing.assert_allclose(out[1].boxes[0], (60, 20, 100, 90), atol=2.5)  # results back in input order
    assert all(np.array_equal(out[0].masks, out[k].masks) for k in (2, 3))

    from reid_masks.backends.detectron2_backend import Detectron2Backend

    sizes = Detectron2Backend._padded_sizes(SimpleNamespace(backbone=SimpleNamespace(size_divisibility=32, padding_constraints={})),
                                            [{"image": torch.zeros(3, 100, 64)}, {"image": torch.zeros(3, 128, 33)}])
    assert sizes == [(128, 64), (128, 64)]  # ImageList.from_tensors pads both to 128x64: one group


def test_bgr_reaches_the_model_and_rgb_configs_are_respected(d2: SimpleNamespace, tmp_path: Path) -> None:
    red = person_image(64, 32, (4, 4, 28, 60), color=(255, 0, 0))  # RGB red
    backend = make_backend(d2, min_size=64)
    backend.predict([red])
    b, g, r = backend.mask.model.calls[0][0]["channel_means"]
    assert r > 150 and b < 60 and g < 60  # channel 2 is red: BGR, as cfg.INPUT.FORMAT says

    from detectron2 import model_zoo

    rgb_yaml = tmp_path / "rgb_mask.yaml"
    rgb_yaml.write_text(f'_BASE_: "{model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")}"\nINPUT:\n  FORMAT: "RGB"\n')
    backend = make_backend(d2, min_size=64, mask_config=str(rgb_yaml))
    backend.predict([red])
    r, g, b = backend.mask.model.calls[0][0]["channel_means"]
    assert r > 150 and b < 60
    assert backend.keypoint.model.calls[0][0]["channel_means"][2] > 150  # the keypoint model still gets BGR


def test_default_resize_and_config_values(d2: SimpleNamespace) -> None:
    backend = make_backend(d2)
    assert backend.mask.cfg.INPUT.MIN_SIZE_TEST == 800 and backend.mask.cfg.INPUT.MAX_SIZE_TEST == 1333
    assert backend.mask.cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.5
    assert backend.keypoint.cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.25
    assert backend.mask.cfg.MODEL.DEVICE == "cpu"
    assert backend.mask.cfg.MODEL.WEIGHTS == str(d2.mask)
    backend.predict([person_image(128, 64, (16, 8, 48, 120))])
    assert backend.mask.model.calls[0][0]["shape"][1:] == (1333, 667)  # short side 800 would make the long side 1600
    # the checkpoint's values are in the model (DetectionCheckpointer.load ran)
    assert torch.all(backend.mask.model.backbone.weight == 0.25)
    assert torch.all(backend.keypoint.model.roi_heads.keypoint_head.weight == 0.5)


def test_score_threshold_and_empty_images(d2: SimpleNamespace) -> None:
    backend = make_backend(d2, score_threshold=0.2, min_size=64)
    out = backend.predict([person_image(128, 64, (16, 8, 48, 120)), np.zeros((50, 40, 3), np.uint8)])
    assert len(out[0]) == 2 and out[0].scores[0] >= out[0].scores[1]  # the 0.3 person now passes, score-sorted
    empty = out[1]
    assert len(empty) == 0
    assert empty.boxes.shape == (0, 4) and empty.masks.shape == (0, 50, 40) and empty.keypoints.shape == (0, 17, 3)


def test_unmatched_instances_get_zero_keypoints(d2: SimpleNamespace) -> None:
    backend = make_backend(d2, min_size=64, match_iou=0.99)  # the keypoint box is shifted by 1 px: IoU < 0.99
    out = backend.predict([person_image(128, 64, (16, 8, 48, 120))])
    assert len(out[0]) == 1 and not out[0].keypoints.any()


def test_missing_detectron2(monkeypatch: pytest.MonkeyPatch) -> None:
    from reid_masks.backends.detectron2_backend import Detectron2Backend

    monkeypatch.setitem(sys.modules, "detectron2", None)  # not importable, even where it is installed
    with pytest.raises(UserError) as e:
        Detectron2Backend()
    assert str(e.value) == "detectron2 is not installed: install it from source: pip install 'git+https://github.com/facebookresearch/detectron2.git'"


def test_missing_weights_messages(d2: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from reid_masks.backends.detectron2_backend import Detectron2Backend

    with pytest.raises(UserError) as e:
        Detectron2Backend(keypoint_weights=str(d2.keypoint))
    msg = str(e.value)
    assert "\n" not in msg and MASK_URL in msg and "model_final_f10217.pkl" in msg and str(d2.cache) in msg and "--mask-weights" in msg

    with pytest.raises(UserError, match="weights file not found: .*nope.pkl"):
        Detectron2Backend(mask_weights=str(tmp_path / "nope.pkl"), keypoint_weights=str(d2.keypoint))

    # the zoo file in detectron2's cache is found without a path
    cached = d2.cache / "detectron2/COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(d2.mask.read_bytes())
    backend = Detectron2Backend(keypoint_weights=str(d2.keypoint))
    prov = backend.provenance()
    assert prov["models"]["mask"]["weights"] == str(cached)
    assert prov["models"]["mask"]["url"] == MASK_URL
    import hashlib

    assert prov["models"]["mask"]["sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert prov["models"]["mask"]["source"] == "zoo"

    # --mask-weights FILE (typed relative) is recorded as the absolute file loaded with its hash, and no zoo URL
    monkeypatch.chdir(d2.mask.parent)
    prov = make_backend(d2, mask_weights=d2.mask.name, keypoint_weights=Path("kp.pth")).provenance()
    for key, path in (("mask", d2.mask), ("keypoint", d2.keypoint)):
        rec = prov["models"][key]
        assert rec["path"] == rec["weights"] == str(path.resolve()) and Path(rec["path"]).is_absolute()
        assert rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert rec["url"] is None and rec["source"] == "file"
    assert "dl.fbaipublicfiles.com" not in json.dumps(prov)


def test_wrong_checkpoint_and_options(d2: SimpleNamespace) -> None:
    with pytest.raises(UserError, match="do not fit.*mask_head"):
        make_backend(d2, mask_weights=str(d2.keypoint))
    with pytest.raises(UserError, match="unknown option.*bogus"):
        make_backend(d2, bogus=1)
    with pytest.raises(UserError, match="MASK_ON is off"):
        make_backend(d2, mask_config="COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml")
    with pytest.raises(UserError, match="not in detectron2's model zoo"):
        make_backend(d2, mask_config="COCO-InstanceSegmentation/nothing.yaml")
    with pytest.raises(UserError, match="choose one"):
        make_backend(d2, random_weights=True)


def test_random_weights_provenance_and_generate_hook(d2: SimpleNamespace) -> None:
    from reid_masks.generate import GenerateConfig, make_backend as generate_backend

    cfg = GenerateConfig(dataset="market1501", root=Path("."), out=Path("x.h5"), backend="detectron2",
                         backend_options={"device": "cpu", "random_weights": True, "min_size": 96, "score_threshold": 0.6})
    backend = generate_backend(cfg)
    assert backend.name == "detectron2"
    prov = backend.provenance()
    json.dumps(prov)
    assert prov["random_weights"] is True and prov["detectron2_version"] == "0.6+fake"
    assert prov["models"]["mask"]["weights"] is None and prov["models"]["mask"]["min_size_test"] == 96
    assert prov["score_threshold"] == 0.6 and prov["keypoint_score_threshold"] == 0.3
    out = backend.predict([person_image(96, 48, (10, 5, 38, 90))])
    assert len(out) == 1 and out[0].masks.shape == (1, 96, 48)


def _person_rows(instances) -> tuple[np.ndarray, np.ndarray]:
    """(boxes, scores) of the person instances of one detectron2 output, score-sorted."""
    inst = instances[instances.pred_classes == 0]
    order = torch.argsort(inst.scores, descending=True, stable=True)
    return inst.pred_boxes.tensor[order].numpy(), inst.scores[order].numpy()


def test_persons_are_kept_before_the_instance_budget(d2: SimpleNamespace) -> None:
    """TEST.DETECTIONS_PER_IMAGE counts persons only; below the budget the persons equal detectron2's own."""
    from detectron2.modeling import build_model

    images = [person_image(128, 64, (16, 8, 48, 120)), person_image(100, 150, (60, 20, 100, 90))]
    backend = make_backend(d2, min_size=64, score_threshold=0.2, detections_per_img=1)
    assert backend.mask.cfg.TEST.DETECTIONS_PER_IMAGE == 1 and backend.provenance()["detections_per_img"] == 1
    plain = build_model(backend.mask.cfg)  # detectron2 as DefaultPredictor runs it: top-1 over all classes
    plain.eval()
    for im, out in zip(images, backend.predict(images)):
        assert len(out) == 1 and out.scores[0] == pytest.approx(0.9, abs=1e-5)  # the person, not the 0.95 car
        raw = plain(backend._inputs(backend.mask, [im]))[0]["instances"]
        assert raw.pred_classes.tolist() == [2]  # the library itself keeps the car and no person

    wide = make_backend(d2, min_size=64, score_threshold=0.2)  # budget 100 > detections: same persons as the library
    plain = build_model(wide.mask.cfg)
    plain.eval()
    mask_out, _ = wide.forward_raw(images)
    for im, mine in zip(images, mask_out):
        theirs = plain(wide._inputs(wide.mask, [im]))[0]["instances"]
        (b0, s0), (b1, s1) = _person_rows(mine["instances"]), _person_rows(theirs)
        assert len(s0) == 2 and np.array_equal(b0, b1) and np.array_equal(s0, s1)
        assert len(theirs) == 3 and len(mine["instances"]) == 2  # the car is not even computed


def test_detector_rows_without_matched_keypoints_are_no_keypoints(d2: SimpleNamespace) -> None:
    from reid_masks.cache import CUT, STATUS
    from reid_masks.derive import Observation, derive

    im = person_image(128, 64, (16, 8, 48, 120))
    for match_iou, status, cut in ((0.5, "ok", "keypoints"), (0.99, "no_keypoints", "estimate")):
        inst = make_backend(d2, min_size=64, match_iou=match_iou).predict([im])[0]
        assert inst.keypoints.shape == (1, 17, 3)  # always an array, zero-filled when unmatched
        d = derive(Observation(128, 64, inst, None, None))
        assert d.status == STATUS[status] and tuple(d.cuts) == (CUT[cut], CUT[cut])


def test_both_backends_choose_the_same_target_from_the_same_detections(d2: SimpleNamespace) -> None:
    """The same proposals and class probabilities through each backend's post-processing keep the same persons."""
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes as D2Boxes, Instances as D2Instances
    from torchvision.models.detection.roi_heads import RoIHeads

    from reid_masks.backends.torchvision_backend import _person_only_postprocess
    from reid_masks.derive import select_target

    h, w, budget = 128, 64, 4
    rng = np.random.default_rng(0)
    boxes: list[list[float]] = []
    probs = []  # (person, car) probabilities per proposal
    for i in range(4):  # four cars scoring above every person, each in its own place
        x = 4.0 + 14 * i
        boxes.append([x, 2.0, x + 10, 20.0])
        probs.append((0.0, 0.99 - 0.01 * i))
    boxes.append([40.0, 10.0, 64.0, 110.0])  # a confident passer-by cut by the right border
    probs.append((0.95, 0.0))
    boxes.append([14.0, 6.0, 50.0, 124.0])  # the centred, tall target, less confident
    probs.append((0.7, 0.02))
    for _ in range(6):  # low persons and cars scattered below the threshold
        x0, y0 = rng.uniform(0, 40), rng.uniform(0, 90)
        boxes.append([x0, y0, x0 + 20, y0 + 30])
        probs.append((rng.uniform(0, 0.4), rng.uniform(0, 0.4)))
    props = torch.tensor(boxes, dtype=torch.float32)
    p = torch.tensor(probs, dtype=torch.float32)
    n = len(props)

    # torchvision: 91 columns, background 0, person 1, car 3
    tv_probs = torch.zeros(n, 91)
    tv_probs[:, 1], tv_probs[:, 3] = p[:, 0], p[:, 1]
    tv_probs[:, 0] = 1 - p.sum(1)
    heads = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, None, 0.5, 0.5, budget)
    tv_boxes, tv_scores, _ = _person_only_postprocess(heads, tv_probs.clamp_min(1e-12).log(), torch.zeros(n, 91 * 4), [props], [(h, w)])

    # detectron2: 81 columns, person 0, car 2, background last; through the backend's patched predictor
    d2_probs = torch.zeros(n, 81)
    d2_probs[:, 0], d2_probs[:, 2] = p[:, 0], p[:, 1]
    d2_probs[:, -1] = 1 - p.sum(1)
    proposals = D2Instances((h, w))
    proposals.proposal_boxes = D2Boxes(props)
    predictions = (d2_probs.clamp_min(1e-12).log(), torch.zeros(n, 4))
    backend = make_backend(d2, detections_per_img=budget)
    (mine,), _ = backend.mask.model.roi_heads.box_predictor.inference(predictions, [proposals])
    plain = build_model(backend.mask.cfg).roi_heads.box_predictor  # the library's cut: top-4 over all classes
    (theirs,), _ = plain.inference(predictions, [proposals])

    tv = Instances(tv_boxes[0].numpy(), tv_scores[0].numpy(), None, None)
    d2_boxes, d2_scores = _person_rows(mine)
    assert len(tv) == len(d2_scores) == 2
    np.testing.assert_allclose(d2_boxes, tv.boxes, atol=1e-4)
    np.testing.assert_allclose(d2_scores, tv.scores, atol=1e-5)
    target_tv = select_target(tv, h, w)
    target_d2 = select_target(Instances(d2_boxes, d2_scores, None, None), h, w)
    np.testing.assert_allclose(tv.boxes[target_tv], [14, 6, 50, 124], atol=1e-4)
    np.testing.assert_allclose(d2_boxes[target_d2], tv.boxes[target_tv], atol=1e-4)
    # detectron2's own cut keeps the four cars: no person at all, so the rule is what makes the backends agree
    assert theirs.pred_classes.tolist() == [2, 2, 2, 2]


def test_min_size_help_names_each_backends_default(d2: SimpleNamespace) -> None:
    from click.testing import CliRunner

    from reid_masks.backends.torchvision_backend import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE
    from reid_masks.cli import main

    result = CliRunner().invoke(main, ["generate", "--help"], terminal_width=1000)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    cfg = make_backend(d2).mask.cfg  # the zoo config's test size, what the backend uses without --min-size
    assert f"torchvision {DEFAULT_MIN_SIZE} (long side <= {DEFAULT_MAX_SIZE})" in text
    assert f"detectron2 the config's INPUT.MIN_SIZE_TEST ({cfg.INPUT.MIN_SIZE_TEST}, long side <= {cfg.INPUT.MAX_SIZE_TEST}" in text
    assert "default 256" not in text
