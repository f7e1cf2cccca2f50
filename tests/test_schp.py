"""SCHP parser: state-dict layout vs SCHP's definition, checkpoint loading, geometry, flip, batching.

The network is ResNet-101 sized; tests that run it use a small input size (65x65) so
the whole file stays within a few seconds of CPU per test.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reid_masks.errors import UserError
from reid_masks.parsing.schp import (
    INPUT_MEAN_BGR,
    INPUT_STD_BGR,
    SCHPParser,
    affine_sample,
    box_center_scale,
    get_affine_transform,
    load_schp_checkpoint,
    schp_geometry,
    schp_resnet101,
    state_dict_signature,
    swap_flipped_channels,
    write_state_dict_keys,
)

KEYS_FILE = Path(__file__).parent / "data" / "schp_lip_state_dict_keys.json"


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return schp_resnet101()


@pytest.fixture(scope="module")
def checkpoint(net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weights checkpoint in SCHP's published layout: {'state_dict': {'module.<key>': ...}}."""
    path = tmp_path_factory.mktemp("schp") / "exp-schp-random-lip.pth"
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "cycle_n": 3}, path)
    return path


# --------------------------------------------------------------------------- state dict


def test_state_dict_matches_schp_definition(net: torch.nn.Module, tmp_path: Path) -> None:
    reference = [(k, list(s)) for k, s in json.loads(KEYS_FILE.read_text())]
    ours = state_dict_signature(net)
    assert [k for k, _ in ours] == [k for k, _ in reference]  # same keys, same order
    assert ours == reference  # same shapes
    assert not any(k.endswith("num_batches_tracked") for k, _ in ours)  # InPlaceABN has no counter
    written = write_state_dict_keys(tmp_path / "keys.json", net)
    assert [(k, s) for k, s in json.loads((tmp_path / "keys.json").read_text())] == written == ours


def test_published_layout_loads_strictly(net: torch.nn.Module, checkpoint: Path) -> None:
    parser = SCHPParser(weights=str(checkpoint), input_size=(65, 65), flip=False)
    for (k, v), (k2, v2) in zip(net.state_dict().items(), parser.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2.cpu())
    prov = parser.provenance()
    assert prov["weights"]["path"] == str(checkpoint) and len(prov["weights"]["sha256"]) == 64
    assert prov["random_weights"] is False


def test_legacy_and_batchnorm_layouts_load(net: torch.nn.Module, tmp_path: Path) -> None:
    """The first release's '<abn>.bn.<param>' keys and nn.BatchNorm2d's num_batches_tracked are accepted."""
    legacy = {}
    for k, v in net.state_dict().items():
        parts = k.split(".")
        if parts[0] in ("context_encoding", "edge", "decoder", "fushion") and parts[-1] in ("weight", "bias", "running_mean", "running_var") and v.dim() == 1 and not k.endswith(("conv4.bias", "conv5.bias", "fushion.3.bias")):
            k = ".".join(parts[:-1] + ["bn", parts[-1]])
        legacy[f"module.{k}"] = v
        if k.endswith("running_var"):
            legacy[f"module.{k[: -len('running_var')]}num_batches_tracked"] = torch.tensor(7)
    path = tmp_path / "legacy.pth"
    torch.save(legacy, path)  # the first release saved a bare state dict
    model = schp_resnet101()
    load_schp_checkpoint(model, path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), model.state_dict().values()))


def test_mismatched_checkpoint_names_keys(net: torch.nn.Module, tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    state.pop("module.decoder.conv4.weight")
    state["module.aux_head.weight"] = torch.zeros(3)
    state["module.fushion.3.weight"] = torch.zeros(18, 256, 1, 1)  # an ATR-sized classifier
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(UserError) as e:
        SCHPParser(weights=str(path))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert "decoder.conv4.weight" in msg and "aux_head.weight" in msg and "fushion.3.weight [18, 256, 1, 1] vs [20, 256, 1, 1]" in msg
    assert "18 classes" in msg

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read SCHP checkpoint"):
        SCHPParser(weights=str(garbage))
    with pytest.raises(UserError, match="SCHP weights file not found: .*missing.pth"):
        SCHPParser(weights=str(tmp_path / "missing.pth"))


def test_no_weights_is_an_error_not_random(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(UserError) as e:
        SCHPParser()
    msg = str(e.value)
    assert "exp-schp-201908261155-lip.pth" in msg and str(tmp_path / "hub" / "checkpoints") in msg and "--parser-weights" in msg
    with pytest.raises(UserError, match="choose one"):
        SCHPParser(weights="x.pth", random_weights=True)


# --------------------------------------------------------------------------- geometry


def test_affine_matches_schp_three_point_construction() -> None:
    """Our closed form equals SCHP's get_affine_transform (three points -> cv2.getAffineTransform)."""
    for w, h, size in [(64, 128, (473, 473)), (150, 60, (473, 473)), (64, 128, (512, 384))]:
        center, scale = box_center_scale(w, h, size)
        src_w, (dst_h, dst_w) = scale[0], size
        src = np.array([center, center + [0, -0.5 * src_w], center + [-0.5 * src_w, -0.5 * src_w]])
        d0 = np.array([(dst_w - 1) * 0.5, (dst_h - 1) * 0.5])
        half = (dst_w - 1) * 0.5
        dst = np.array([d0, d0 + [0, -half], d0 + [-half, -half]])
        # solve dst = M @ [src, 1] exactly, as cv2.getAffineTransform does
        A = np.hstack([src, np.ones((3, 1))])
        M = np.linalg.solve(A, dst).T
        np.testing.assert_allclose(get_affine_transform(center, scale, size), M, atol=1e-9)
        np.testing.assert_allclose(get_affine_transform(center, scale, size, inv=True), np.linalg.inv(np.vstack([M, [0, 0, 1]]))[:2], atol=1e-9)


def synthetic_parsing(h: int, w: int) -> np.ndarray:
    """A person-like LIP map: hair, face, upper clothes, arms, pants, legs, shoes on background."""
    lab = np.zeros((h, w), np.uint8)
    cx = w // 2

    def rect(y0: float, y1: float, x0: float, x1: float, v: int) -> None:
        lab[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)] = v

    rect(0.05, 0.12, 0.35, 0.65, 2)
    rect(0.12, 0.22, 0.38, 0.62, 13)
    rect(0.22, 0.52, 0.28, 0.72, 5)
    rect(0.24, 0.50, 0.12, 0.28, 14)
    rect(0.24, 0.50, 0.72, 0.88, 15)
    rect(0.52, 0.70, 0.30, 0.70, 9)
    lab[int(0.70 * h) : int(0.88 * h), int(0.30 * w) : cx] = 16
    lab[int(0.70 * h) : int(0.88 * h), cx : int(0.70 * w)] = 17
    rect(0.88, 0.96, 0.28, 0.48, 18)
    rect(0.88, 0.96, 0.52, 0.72, 19)
    return lab


@pytest.mark.parametrize("hw,min_height", [((128, 64), None), ((90, 200), None), ((128, 64), 256)])
def test_warp_round_trip_keeps_geometry(hw: tuple[int, int], min_height: int | None) -> None:
    """One-hot labels warped to 473x473 and back with the inverse affine land where they started."""
    h, w = hw
    lab = synthetic_parsing(h, w)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(lab).long(), 20).permute(2, 0, 1)[None].float()
    up, fwd, to_input = schp_geometry(h, w, (473, 473), min_height)
    src = onehot
    if up is not None:  # the parser pre-upscales the image; labels are a stand-in for its pixels
        src = torch.nn.functional.interpolate(onehot, size=up, mode="bilinear", align_corners=False)
    warped = affine_sample(src, np.linalg.inv(np.vstack([fwd, [0, 0, 1]]))[:2], (473, 473))
    # the long side fills the input, the short side is centred with zero padding
    cols = torch.nonzero(warped[0].sum(0).sum(0) > 0.5).flatten()
    rows = torch.nonzero(warped[0].sum(0).sum(1) > 0.5).flatten()
    long_in = rows if h >= w else cols
    assert long_in[0] <= 1 and long_in[-1] >= 471
    back = affine_sample(warped, to_input, (h, w))[0].argmax(0).numpy()
    for v in np.unique(lab):
        a, b = lab == v, back == v
        iou = (a & b).sum() / (a | b).sum()
        assert iou > 0.95, (v, iou)


def test_preprocess_is_bgr_normalised_and_zero_padded() -> None:
    torch.manual_seed(0)
    parser = SCHPParser(random_weights=True, input_size=(65, 65), flip=False)
    red = np.zeros((64, 32, 3), np.uint8)
    red[..., 0] = 255  # RGB red
    x, back = parser.preprocess([red])
    assert x.shape == (1, 3, 65, 65)
    centre = x[0, :, 32, 32].numpy()
    expected = [(0 - INPUT_MEAN_BGR[0]) / INPUT_STD_BGR[0], (0 - INPUT_MEAN_BGR[1]) / INPUT_STD_BGR[1], (1 - INPUT_MEAN_BGR[2]) / INPUT_STD_BGR[2]]
    np.testing.assert_allclose(centre, expected, rtol=1e-5)  # channel 2 is red: BGR
    pad = x[0, :, 32, 2].numpy()  # left of a centred tall image: OpenCV's border value 0
    np.testing.assert_allclose(pad, [-m / s for m, s in zip(INPUT_MEAN_BGR, INPUT_STD_BGR)], rtol=1e-5)
    np.testing.assert_allclose(back[0], get_affine_transform(*box_center_scale(32, 64, (65, 65)), (65, 65)))


# --------------------------------------------------------------------------- flip


def test_swap_flipped_channels() -> None:
    logits = torch.zeros(1, 20, 4, 6)
    logits[:, 14, :, :3] = 5.0  # "left arm" on the left of the flipped image
    logits[:, 17, :, 3:] = 2.0
    logits[:, 5] = 1.0
    swapped = swap_flipped_channels(logits)
    back = swapped.flip(-1)  # the flip path: swap channels, flip back
    assert torch.all(back[:, 15, :, 3:] == 5.0) and torch.all(back[:, 14] == 0)  # comes back as channel 15, mirrored
    assert torch.all(back[:, 16, :, :3] == 2.0) and torch.all(back[:, 17] == 0)
    assert torch.equal(back[:, 5], logits[:, 5])
    assert torch.equal(swap_flipped_channels(swapped), logits)  # an involution
    for a, b in ((14, 15), (16, 17), (18, 19)):
        assert torch.equal(swapped[:, a], logits[:, b]) and torch.equal(swapped[:, b], logits[:, a])


class PositionalArmNet(torch.nn.Module):
    """Stub network: a bright spot is 'left arm' (14, logit 2) in the left half, 'right arm' (15, logit 3) in the right half."""

    def forward(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        n, _, h, w = x.shape
        spot = (x.max(1).values > 0).float()
        left = torch.zeros(w)
        left[: w // 2] = 1
        out = torch.zeros(n, 20, h, w)
        out[:, 0] = 1.0
        out[:, 14] = 2.0 * spot * left
        out[:, 15] = 3.0 * spot * (1 - left)
        return [[out, out], [out[:, :2]]]


def test_flip_averaging_swaps_left_and_right() -> None:
    parser = SCHPParser(random_weights=True, input_size=(65, 65), flip=True)
    parser.model = PositionalArmNet()
    image = np.zeros((64, 64, 3), np.uint8)
    image[20:40, 5:20] = 255  # a spot on the left
    lab = parser.parse([image])[0]
    # plain pass: 14 with logit 2; flipped pass: the spot is on the right -> 15 (logit 3) -> swapped to 14, flipped back
    assert (lab[22:38, 7:18] == 14).all()
    parser.flip = False
    assert (parser.parse([image])[0][22:38, 7:18] == 14).all()


# --------------------------------------------------------------------------- batched parsing


def test_batched_parse_random_weights() -> None:
    torch.manual_seed(0)
    parser = SCHPParser(random_weights=True, input_size=(65, 65), flip=True, batch_size=2)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (128, 64, 3), dtype=np.uint8), rng.integers(0, 256, (40, 100, 3), dtype=np.uint8), rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)]
    out = parser.parse(images)
    assert len(out) == 3
    for lab, im in zip(out, images):
        assert lab.shape == im.shape[:2] and lab.dtype == np.uint8
        assert lab.min() >= 0 and lab.max() <= 19
    single = parser.parse(images[1:2])[0]
    assert (single == out[1]).mean() > 0.99  # eval-mode batch norm: results do not depend on the batch
    prov = parser.provenance()
    json.dumps(prov)
    assert prov["random_weights"] is True and prov["input_size"] == [65, 65] and prov["flip"] is True


def test_parser_source_glue() -> None:
    from reid_masks.parsing.source import make_parser_source

    assert make_parser_source("none") is None and make_parser_source("precomputed") is None
    with pytest.raises(UserError, match="--parser 'jppnet'"):
        make_parser_source("jppnet")
    with pytest.raises(UserError, match="unknown option"):
        make_parser_source("schp", random_weights=True, colour=True)
    src = make_parser_source("schp", random_weights=True, input_size=(65, 65), flip=False, min_height=96)
    assert src is not None and src.parse_batch([]) == []
    out = src.parse_batch([np.zeros((48, 24, 3), np.uint8)])
    assert out[0].shape == (48, 24)
    assert src.provenance()["parser"] == "schp" and src.provenance()["min_height"] == 96
