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
    BatchNormAct2d,
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


def test_published_layout_loads_strictly(net: torch.nn.Module, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(checkpoint.parent)
    parser = SCHPParser(weights=checkpoint.name, input_size=(65, 65), flip=False)  # typed relative: recorded absolute
    for (k, v), (k2, v2) in zip(net.state_dict().items(), parser.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2.cpu())
    prov = parser.provenance()
    assert prov["weights"]["path"] == str(checkpoint.resolve()) and len(prov["weights"]["sha256"]) == 64
    assert prov["weights"]["source"] == "file" and prov["weights"]["file"] is None  # not claimed to be the LIP release
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


def test_provenance_names_the_release_only_for_the_cache_file(checkpoint: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The default (hub cache) file is named as the LIP release; a copy given by path is not (see the layout test)."""
    import shutil

    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, hub / "checkpoints" / "exp-schp-201908261155-lip.pth")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    zoo = SCHPParser(input_size=(65, 65), flip=False).provenance()["weights"]
    assert zoo["source"] == "zoo" and zoo["file"] == "exp-schp-201908261155-lip.pth" and zoo["url"] is None
    assert zoo["path"] == str((hub / "checkpoints" / "exp-schp-201908261155-lip.pth").resolve())


def meta_net() -> torch.nn.Module:
    """The network's keys and shapes without the cost of a random init (nothing is loaded into it)."""
    with torch.device("meta"):
        return schp_resnet101()


def test_key_mapping_is_one_to_one(net: torch.nn.Module, tmp_path: Path) -> None:
    """A key and its first-release '.bn.' twin (or its 'module.'-less twin) land on one parameter: refused, naming both."""
    base = {f"module.{k}": v for k, v in net.state_dict().items()}
    for twin, original in (("module.decoder.conv1.1.bn.weight", "module.decoder.conv1.1.weight"), ("decoder.conv1.1.weight", "module.decoder.conv1.1.weight")):
        state = dict(base)
        state[twin] = torch.zeros_like(state[original])
        path = tmp_path / "twins.pth"
        torch.save({"state_dict": state}, path)
        with pytest.raises(UserError) as e:
            load_schp_checkpoint(meta_net(), path)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and twin in msg and original in msg and "decoder.conv1.1.weight" in msg
    # a 'bn' component anywhere but just before the parameter name is not a first-release wrapper
    state = dict(base)
    state["module.decoder.bn.conv4.weight"] = state.pop("module.decoder.conv4.weight")
    path = tmp_path / "inner_bn.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(UserError, match="1 missing keys .decoder.conv4.weight.*1 unexpected keys .decoder.bn.conv4.weight"):
        load_schp_checkpoint(meta_net(), path)


# --------------------------------------------------------------------------- InPlaceABN semantics


class KernelABN(torch.nn.Module):
    """InPlaceABN's eval forward as its CPU kernel writes it (SCHP ``modules/src/inplace_abn_cpu.cpp``,
    ``forward_cpu``): ``gamma = |weight| + eps; mul = rsqrt(var + eps) * gamma; x = (x - mean) * mul + bias``,
    then ``leaky_relu(slope)`` in place (``functions.py: _act_forward``). Written from the formula, not from
    reid_masks' module."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, leaky: bool, eps: float = 1e-5, slope: float = 0.01) -> None:
        super().__init__()
        self.weight, self.bias, self.mean, self.var = weight, bias, mean, var
        self.leaky, self.eps, self.slope = leaky, eps, slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        gamma = self.weight.abs() + self.eps
        mul = torch.rsqrt(self.var + self.eps) * gamma
        y = (x - self.mean.view(shape)) * mul.view(shape) + self.bias.view(shape)
        return torch.where(y >= 0, y, y * self.slope) if self.leaky else y


def signed_norm_checkpoint(net: torch.nn.Module, path: Path, negative: float = 0.3) -> tuple[dict, int]:
    """SCHP's layout with random norm statistics and ``negative`` of the norm weights below zero (one exactly 0)."""
    g = torch.Generator().manual_seed(1)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    n_neg = 0
    for k in list(state):
        if k.endswith(".running_mean"):
            p = k[: -len("running_mean")]
            c = state[k].numel()
            sign = torch.where(torch.rand(c, generator=g) < negative, -1.0, 1.0)
            state[p + "weight"] = sign * (0.5 + torch.rand(c, generator=g))
            state[p + "bias"] = 0.1 * torch.randn(c, generator=g)
            state[p + "running_mean"] = 0.1 * torch.randn(c, generator=g)
            state[p + "running_var"] = 0.5 + torch.rand(c, generator=g)
            n_neg += int((sign < 0).sum())
    state["bn1.weight"][0] = 0.0  # InPlaceABN scales a zero weight by eps, not by 0
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    return state, n_neg


def test_norm_layer_matches_inplace_abn_formula() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 4)
    w = torch.tensor([1.5, -0.7, 0.0, -2.0, 0.3, -1e-3])
    b, m, v = torch.randn(6), torch.randn(6), torch.rand(6) + 0.2
    for activation in (None, "leaky_relu"):
        layer = BatchNormAct2d(6, activation=activation).eval()
        layer.load_state_dict({"weight": w, "bias": b, "running_mean": m, "running_var": v})
        ref = KernelABN(w, b, m, v, leaky=activation is not None)(x)
        torch.testing.assert_close(layer(x.clone()), ref, rtol=1e-6, atol=1e-6)
        layer.norm = "batchnorm"  # torch's BatchNorm2d with the signed weight
        bn = torch.nn.BatchNorm2d(6).eval()
        bn.load_state_dict({"weight": w, "bias": b, "running_mean": m, "running_var": v, "num_batches_tracked": torch.tensor(0)})
        expected = bn(x) if activation is None else torch.nn.functional.leaky_relu(bn(x), 0.01)
        torch.testing.assert_close(layer(x.clone()), expected, rtol=1e-6, atol=1e-6)
        assert not torch.allclose(layer(x.clone()), ref, atol=1e-2)  # the rules differ on negative weights


def test_network_with_negative_norm_weights_matches_inplace_abn(net: torch.nn.Module, tmp_path: Path) -> None:
    """A checkpoint with negative norm weights: the parser's fusion logits equal a network whose every norm layer is
    InPlaceABN's kernel formula on the checkpoint's tensors; signed BatchNorm (the CPU forks' shim) is far off."""
    path = tmp_path / "negative.pth"
    state, n_neg = signed_norm_checkpoint(net, path)
    parser = SCHPParser(weights=str(path), input_size=(65, 65))
    assert parser.flip is False  # SCHP's simple_extractor: one forward
    rng = np.random.default_rng(0)
    x, _ = parser.preprocess([rng.integers(0, 256, (64, 32, 3), dtype=np.uint8), rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)])

    reference = meta_net()
    reference.load_state_dict(state, assign=True)  # plain torch loading, then every norm layer swapped for the kernel formula
    for name, module in list(reference.named_modules()):
        if isinstance(module, BatchNormAct2d):
            parent_name, _, child = name.rpartition(".")
            parent = reference.get_submodule(parent_name) if parent_name else reference
            setattr(parent, child, KernelABN(state[f"{name}.weight"], state[f"{name}.bias"], state[f"{name}.running_mean"],
                                             state[f"{name}.running_var"], leaky=module.activation == "leaky_relu"))
    assert not any(isinstance(m, BatchNormAct2d) for m in reference.modules())
    with torch.inference_mode():
        ours = parser.model(x)[0][-1]
        ref = reference.eval()(x)[0][-1]
        parser.model.set_norm("batchnorm")
        signed = parser.model(x)[0][-1]
        parser.model.set_norm("inplace_abn")
    scale = float(ref.abs().max())
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * scale)
    assert float((signed - ref).abs().max()) > 0.1 * scale  # the checkpoint does tell the two rules apart
    assert (signed.argmax(1) == ref.argmax(1)).float().mean() < 0.9

    norm = parser.provenance()["norm"]
    assert norm["rule"] == "inplace_abn" and "|weight| + eps" in norm["formula"] and norm["eps"] == 1e-5
    assert norm["negative_weights"] == n_neg > 0
    assert norm["layers"] == sum(k.endswith(".running_mean") for k in state)
    parser.model.set_norm("batchnorm")
    assert parser.norm_summary()["rule"] == "batchnorm" and parser.norm_summary()["negative_weights"] == n_neg
    with pytest.raises(UserError, match="norm 'abs'"):
        SCHPParser(random_weights=True, input_size=(65, 65), norm="abs")


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
    with pytest.raises(UserError, match="--parser-flip is only used with --parser schp"):
        make_parser_source("none", flip=True)
    assert make_parser_source("none", flip=False) is None
    src = make_parser_source("schp", random_weights=True, input_size=(65, 65), flip=False, min_height=96, norm="batchnorm")
    assert src is not None and src.parse_batch([]) == []
    out = src.parse_batch([np.zeros((48, 24, 3), np.uint8)])
    assert out[0].shape == (48, 24)
    assert src.provenance()["parser"] == "schp" and src.provenance()["min_height"] == 96
    assert src.provenance()["flip"] is False and src.provenance()["norm"]["rule"] == "batchnorm"


def test_cli_parser_flip_option(synth_dataset, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``generate --parser-flip/--no-parser-flip`` reaches the parser (default off); flip without SCHP is refused."""
    from click.testing import CliRunner

    from reid_masks.cli import main
    from reid_masks.parsing import source

    root = synth_dataset("market1501", ids=2, seed=3)
    seen: list[dict] = []

    def fake_make_parser_source(name: str, **options: object) -> None:
        seen.append(dict(options, name=name))
        raise UserError("stop here")

    base = ["generate", "--dataset", "market1501", "--root", str(root), "--workers", "0"]
    with monkeypatch.context() as m:
        m.setattr(source, "make_parser_source", fake_make_parser_source)
        for extra, flip in (([], False), (["--parser-flip"], True), (["--no-parser-flip"], False)):
            result = CliRunner().invoke(main, base + ["--out", str(tmp_path / "x.h5"), "--parser", "schp", "--random-weights", *extra])
            assert result.exit_code == 2 and "stop here" in result.output, result.output
            assert seen[-1]["name"] == "schp" and seen[-1]["flip"] is flip
    result = CliRunner().invoke(main, base + ["--out", str(tmp_path / "y.h5"), "--parsing-dir", str(root / "parsing"), "--parser-flip"])
    assert result.exit_code == 2 and "--parser-flip is only used with --parser schp (got --parser precomputed)" in result.output
    assert not (tmp_path / "y.h5").exists()
