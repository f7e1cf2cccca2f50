"""MMGA model tests: backbone, attention module, variants, weights loading (CPU, random init)."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision

from reid_masks.errors import UserError
from reid_train.models import (
    MMGA,
    MaskGuidedAttention,
    ResNetBackbone,
    build_model,
    imagenet_weights_file,
    middle_split,
    model_names,
)

H, W = 384, 128  # paper input size -> 24x8 attention maps
SMALL = (128, 64)  # fast input for variant tests -> 8x4 maps

EXPECTED = {
    # variant: (inference dim, has local classifier, number of attention maps, required masks)
    "baseline": (1024, False, 0, ()),
    "baseline_att": (1024, False, 2, ()),
    "wmga": (1024, False, 2, ("whole",)),
    "dmga": (2048, True, 4, ("whole", "upper", "bottom")),
    "mmga": (2048, True, 4, ("whole", "upper", "bottom")),
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --------------------------------------------------------------------------- backbone


def test_backbone_resnet18_stages_and_last_stride() -> None:
    bb = ResNetBackbone("resnet18").eval()
    assert bb.channels == (128, 256, 512)
    assert bb.layer4[0].conv1.stride == (1, 1)
    assert bb.layer4[0].downsample[0].stride == (1, 1)
    assert not hasattr(bb, "fc") and not hasattr(bb, "avgpool")
    with torch.no_grad():
        s2, s3, s4 = bb(torch.randn(1, 3, H, W))
    assert s2.shape == (1, 128, 48, 16)
    assert s3.shape == (1, 256, 24, 8)
    assert s4.shape == (1, 512, 24, 8)


def test_backbone_last_stride_2_keeps_torchvision_downsampling() -> None:
    bb = ResNetBackbone("resnet18", last_stride=2).eval()
    with torch.no_grad():
        _, _, s4 = bb(torch.randn(1, 3, *SMALL))
    assert s4.shape[-2:] == (SMALL[0] // 32, SMALL[1] // 32)


def test_resnet50_mmga_full_size_shapes() -> None:
    """One resnet50 forward at 384x128: stage shapes, 24x8 maps, 1024/512/512 and 2048 features."""
    model = build_model("mmga", num_classes=5, backbone="resnet50", pretrained=None)
    bb = model.backbone
    assert bb.channels == (512, 1024, 2048)
    assert bb.layer4[0].conv2.stride == (1, 1) and bb.layer4[0].downsample[0].stride == (1, 1)
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        getattr(bb, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
        for name in ("layer2", "layer3", "layer4")
    ]
    model.train()
    out = model(torch.randn(2, 3, H, W))
    for h in hooks:
        h.remove()
    assert shapes == {"layer2": (2, 512, 48, 16), "layer3": (2, 1024, 24, 8), "layer4": (2, 2048, 24, 8)}
    assert set(out["att_maps"]) == {"m1_whole", "m2_whole", "m2_upper", "m2_bottom"}
    for spatial in out["att_maps"].values():
        assert spatial.shape == (2, 24, 8)
    assert out["emb_whole"].shape == (2, 1024)
    assert out["emb_upper"].shape == (2, 512)
    assert out["emb_bottom"].shape == (2, 512)
    assert out["feat"].shape == (2, 2048)
    assert out["logits_whole"].shape == (2, 5) and out["logits_local"].shape == (2, 5)
    # Inference feature = the same normalised concat, from images only.
    model.eval()
    with torch.no_grad():
        feat = model(torch.randn(2, 3, H, W))
    assert feat.shape == (2, 2048) and model.feature_dim == 2048
    torch.testing.assert_close(feat.norm(dim=1), torch.ones(2))


# --------------------------------------------------------------------------- attention module


def test_attention_plus_one_and_broadcast() -> None:
    att = MaskGuidedAttention(64, 96).eval()
    x = torch.randn(3, 64, 12, 6)
    with torch.no_grad():
        a, spatial = att(x)
        c = att.channel(x)
    assert a.shape == (3, 96, 12, 6)
    assert spatial.shape == (3, 1, 12, 6)
    assert c.shape == (3, 96, 1, 1)
    assert torch.all((spatial >= 0) & (spatial <= 1))
    # A = (sigmoid + 1) * C, so C <= A <= 2C.
    assert torch.all(a >= c * 1.0 - 1e-6)
    assert torch.all(a <= c * 2.0 + 1e-6)
    torch.testing.assert_close(a, (spatial + 1.0) * c)


def test_attention_layer_sizes_follow_reductions() -> None:
    att = MaskGuidedAttention(512, 1024, spatial_reduction=8, channel_reduction=8, pool=2)
    assert att.spatial_conv1[0].out_channels == 64  # c_in / s
    assert att.spatial_conv2[0].out_channels == 8  # c_in / s^2
    assert att.spatial_conv3.out_channels == 1
    assert att.channel_fc[0].out_features == 64  # c_in / r
    assert att.channel_fc[2].out_features == 1024  # c_out


def test_attention_pool_brings_48x16_to_24x8() -> None:
    att = MaskGuidedAttention(32, 48, pool=2).eval()
    with torch.no_grad():
        a, spatial = att(torch.randn(2, 32, 48, 16))
    assert a.shape == (2, 48, 24, 8)
    assert spatial.shape == (2, 1, 24, 8)


def test_module1_map_matches_stage3_in_model() -> None:
    model = build_model("baseline_att", num_classes=3, backbone="resnet18").eval()
    assert model.att1.pool == 2
    with torch.no_grad():
        s2, s3, _ = model.backbone(torch.randn(1, 3, H, W))
        a1, spatial = model.att1(s2)
    assert s2.shape[-2:] == (48, 16)
    assert a1.shape == s3.shape == (1, 256, 24, 8)
    assert spatial.shape == (1, 1, 24, 8)


# --------------------------------------------------------------------------- variants


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_variant_builds_and_runs(name: str) -> None:
    dim, has_local, n_maps, masks = EXPECTED[name]
    model = build_model(name, num_classes=4, backbone="resnet18")
    assert isinstance(model, MMGA) and model.variant == name
    assert model.required_masks == masks
    model.train()
    out = model(torch.randn(4, 3, *SMALL))
    assert out["logits_whole"].shape == (4, 4)
    assert ("logits_local" in out) == has_local
    assert out["feat"].shape == (4, dim)
    assert len(out["att_maps"]) == n_maps
    for spatial in out["att_maps"].values():
        assert spatial.shape == (4, SMALL[0] // 16, SMALL[1] // 16)
    model.eval()
    with torch.no_grad():
        feat = model(torch.randn(2, 3, *SMALL))
    assert feat.shape == (2, dim) and model.feature_dim == dim
    torch.testing.assert_close(feat.norm(dim=1), torch.ones(2))


def test_variants_are_one_class_with_options() -> None:
    base = build_model("baseline", num_classes=2, backbone="resnet18")
    assert not hasattr(base, "att1")
    wmga = build_model("wmga", num_classes=2, backbone="resnet18")
    assert list(wmga.att2.keys()) == ["whole"] and list(wmga.heads.keys()) == ["whole"]
    mmga = build_model("mmga", num_classes=2, backbone="resnet18")
    assert list(mmga.att2.keys()) == ["whole", "upper", "bottom"]
    assert type(base) is type(wmga) is type(mmga)


def test_stage4_raw_option_runs_and_differs() -> None:
    x = torch.randn(2, 3, *SMALL)
    torch.manual_seed(1)
    a = build_model("mmga", num_classes=2, backbone="resnet18").eval()
    torch.manual_seed(1)
    b = build_model("mmga", num_classes=2, backbone="resnet18", stage4_input="raw").eval()
    with torch.no_grad():
        fa, fb = a(x), b(x)
    assert fa.shape == fb.shape and not torch.allclose(fa, fb)


def test_unknown_model_name_and_option_are_user_errors() -> None:
    with pytest.raises(UserError) as err:
        build_model("mmgaa", num_classes=2)
    for name in ("baseline", "baseline_att", "wmga", "dmga", "mmga"):
        assert name in str(err.value)
        assert name in model_names()
    with pytest.raises(UserError, match="spatial_reductoin"):
        build_model("mmga", num_classes=2, backbone="resnet18", spatial_reductoin=4)
    with pytest.raises(UserError, match="resnet50"):
        build_model("mmga", num_classes=2, backbone="resnet101x")


def test_middle_split() -> None:
    whole = torch.ones(2, 24, 8)
    upper, bottom = middle_split(whole)
    assert upper.shape == bottom.shape == (2, 24, 8)
    assert upper[:, :12].eq(1).all() and upper[:, 12:].eq(0).all()
    assert bottom[:, :12].eq(0).all() and bottom[:, 12:].eq(1).all()
    torch.testing.assert_close(upper + bottom, whole)
    assert whole.eq(1).all()  # input untouched


def test_channels_last_and_bf16_autocast() -> None:
    model = build_model("mmga", num_classes=3, backbone="resnet18").to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, *SMALL).contiguous(memory_format=torch.channels_last)
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out["feat"].dtype == torch.float32 and torch.isfinite(out["feat"]).all()
    assert all(torch.isfinite(m.float()).all() for m in out["att_maps"].values())
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        feat = model(x)
    assert feat.dtype == torch.float32 and feat.shape == (2, 2048)


# --------------------------------------------------------------------------- weights


@pytest.fixture
def tmp_hub(tmp_path):
    """Point torch hub (torchvision's weight cache) at an empty temp dir."""
    old = torch.hub.get_dir()
    hub = tmp_path / "hub"
    torch.hub.set_dir(str(hub))
    yield hub
    torch.hub.set_dir(old)


def test_missing_imagenet_weights_is_one_line_user_error(tmp_hub) -> None:
    path, url = imagenet_weights_file("resnet50")
    assert path == os.path.join(str(tmp_hub), "checkpoints", "resnet50-0676ba61.pth")
    assert url == torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    with pytest.raises(UserError) as err:
        build_model("mmga", num_classes=2, backbone="resnet50", pretrained="imagenet")
    msg = str(err.value)
    assert "\n" not in msg
    assert path in msg and url in msg
    assert not os.path.exists(path)  # nothing downloaded


def test_imagenet_weights_load_from_local_cache(tmp_hub) -> None:
    path, _ = imagenet_weights_file("resnet18")
    os.makedirs(os.path.dirname(path))
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), path)  # includes fc.*, which must be ignored
    bb = ResNetBackbone("resnet18", pretrained="imagenet")
    torch.testing.assert_close(bb.conv1.weight, ref.conv1.weight)
    torch.testing.assert_close(bb.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)


def test_weights_file_round_trip_with_module_prefix(tmp_path) -> None:
    src = ResNetBackbone("resnet18")
    with torch.no_grad():
        src.layer3[0].bn1.running_mean.uniform_()
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(10, 512)
    path = tmp_path / "bb.pth"
    torch.save({"state_dict": state}, path)
    dst = build_model("wmga", num_classes=2, backbone="resnet18", pretrained=str(path)).backbone
    for key, value in src.state_dict().items():
        torch.testing.assert_close(dst.state_dict()[key], value)


def test_bad_weights_files_are_user_errors(tmp_path) -> None:
    with pytest.raises(UserError, match="not found"):
        ResNetBackbone("resnet18", pretrained=str(tmp_path / "nope.pth"))
    r18 = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), r18)
    with pytest.raises(UserError, match="do not match resnet34"):
        ResNetBackbone("resnet34", pretrained=str(r18))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        ResNetBackbone("resnet18", pretrained=str(junk))
