"""MMGA loss tests: hand-computed mask loss, brute-force triplet, term weights per variant."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reid_masks.errors import UserError
from reid_train.losses import (
    CrossEntropyLabelSmooth,
    MMGALoss,
    batch_hard_triplet_loss,
    mask_attention_loss,
)
from reid_train.models import build_model, middle_split


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# --------------------------------------------------------------------------- mask attention loss


def test_mask_attention_loss_by_hand() -> None:
    # Sample 1: S = [[0.2, 0.6], [0.4, 1.0]] -> min 0.2, max 1.0 -> S_norm = [[0, .5], [.25, 1]]
    #           M = [[0, 1], [0, 1]]        -> squared errors 0, .25, .0625, 0 -> 0.3125
    # Sample 2: S = [[3, 3], [1, 2]]         -> min 1, max 3     -> S_norm = [[1, 1], [0, .5]]
    #           M = [[1, 1], [0, 0]]        -> squared errors 0, 0, 0, .25     -> 0.25
    # L = sqrt((0.3125 + 0.25) / n_batch) = sqrt(0.5625 / 2) = sqrt(0.28125)
    s = torch.tensor([[[0.2, 0.6], [0.4, 1.0]], [[3.0, 3.0], [1.0, 2.0]]])
    m = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.0]]])
    expected = math.sqrt(0.28125)
    assert mask_attention_loss(s, m).item() == pytest.approx(expected, rel=1e-5)
    # (N, 1, h, w) works too, and the +1.0 of the spatial attention does not change the loss.
    assert mask_attention_loss(s[:, None] + 1.0, m[:, None]).item() == pytest.approx(expected, rel=1e-5)


def test_mask_attention_loss_perfect_and_constant_maps_are_finite() -> None:
    m = (torch.rand(3, 24, 8) > 0.5).float()
    s = (m * 0.7 + 0.2).requires_grad_()  # min-max normalises exactly to m
    loss = mask_attention_loss(s, m)
    loss.backward()
    assert loss.item() < 1e-4 and torch.isfinite(s.grad).all()
    flat = torch.full((2, 24, 8), 0.5, requires_grad=True)
    loss = mask_attention_loss(flat, torch.ones(2, 24, 8))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(flat.grad).all()


def test_mask_attention_loss_resizes_mask_to_map() -> None:
    mask = torch.ones(2, 24, 8)
    mask[:, :, :4] = 0
    spatial = torch.rand(2, 8, 4)
    small = F.interpolate(mask[:, None], size=(8, 4), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(mask_attention_loss(spatial, mask), mask_attention_loss(spatial, small))


def test_mask_loss_gradients_reach_attention_parameters() -> None:
    model = build_model("mmga", num_classes=3, backbone="resnet18").train()
    out = model(torch.randn(2, 3, 128, 64))
    masks = (torch.rand(2, 3, 8, 4) > 0.5).float()
    loss = sum(
        mask_attention_loss(out["att_maps"][key], masks[:, i])
        for key, i in (("m1_whole", 0), ("m2_whole", 0), ("m2_upper", 1), ("m2_bottom", 2))
    )
    loss.backward()
    spatial_modules = [model.att1] + [model.att2[b] for b in ("whole", "upper", "bottom")]
    for att in spatial_modules:
        for conv in (att.spatial_conv1[0], att.spatial_conv2[0], att.spatial_conv3):
            assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    # The mask loss guides the spatial maps only: heads and classifiers get no gradient.
    assert model.heads["whole"].fc.weight.grad is None
    assert model.classifier_whole.weight.grad is None
    # ... but the backbone under the attention modules learns from it too.
    assert model.backbone.layer2[0].conv1.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- triplet


def _brute_force_triplet(feats: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    total = 0.0
    n = len(labels)
    for a in range(n):
        pos = [torch.dist(feats[a], feats[p]).item() for p in range(n) if labels[p] == labels[a]]
        neg = [torch.dist(feats[a], feats[q]).item() for q in range(n) if labels[q] != labels[a]]
        if neg:
            total += max(0.0, margin + max(pos) - min(neg))
    return total / n


@pytest.mark.parametrize("normalize", [False, True])
def test_batch_hard_triplet_matches_brute_force(normalize: bool) -> None:
    feats = torch.randn(12, 16)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    ref_feats = F.normalize(feats, dim=1) if normalize else feats
    for margin in (0.3, 5.0):
        got = batch_hard_triplet_loss(feats, labels, margin=margin, normalize=normalize).item()
        assert got == pytest.approx(_brute_force_triplet(ref_feats, labels, margin), rel=1e-4, abs=1e-5)


def test_triplet_edge_cases_are_finite() -> None:
    feats = torch.randn(4, 8, requires_grad=True)
    same = batch_hard_triplet_loss(feats, torch.zeros(4, dtype=torch.long))  # no negatives
    assert same.item() == 0.0
    dup = torch.cat([feats[:1], feats[:1], feats[2:]])  # identical rows: distance 0
    loss = batch_hard_triplet_loss(dup, torch.tensor([0, 0, 1, 1]), margin=0.3)
    loss.backward()
    assert torch.isfinite(feats.grad).all()


# --------------------------------------------------------------------------- MMGALoss


def _fake_outputs(n: int = 8, classes: int = 4, local: bool = True, maps: tuple[str, ...] = ()) -> dict:
    out = {
        "logits_whole": torch.randn(n, classes),
        "feat": F.normalize(torch.randn(n, 32), dim=1),
        "att_maps": {k: torch.rand(n, 24, 8) for k in maps},
    }
    if local:
        out["logits_local"] = torch.randn(n, classes)
    return out


ALL_MAPS = ("m1_whole", "m2_whole", "m2_upper", "m2_bottom")
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def test_mmga_loss_term_weights() -> None:
    out = _fake_outputs(maps=ALL_MAPS)
    masks = (torch.rand(8, 3, 24, 8) > 0.5).float()
    ce_w = F.cross_entropy(out["logits_whole"], LABELS)
    ce_l = F.cross_entropy(out["logits_local"], LABELS)
    trip = batch_hard_triplet_loss(out["feat"], LABELS, 0.3)
    att = {k: mask_attention_loss(out["att_maps"][k], masks[:, i]) for k, i in zip(ALL_MAPS, (0, 0, 1, 2))}
    for l0, l1, l2 in ((0.5, 2.0, 0.1), (0.25, 1.0, 3.0)):
        total, terms = MMGALoss("mmga", lambda0=l0, lambda1=l1, lambda2=l2)(out, LABELS, masks)
        l_att = att["m1_whole"] + att["m2_whole"] + l0 * att["m2_upper"] + l0 * att["m2_bottom"]
        expected = ce_w + ce_l + l1 * trip + l2 * l_att
        assert total.item() == pytest.approx(expected.item(), rel=1e-5)
        assert terms["total"] == pytest.approx(expected.item(), rel=1e-5)
        assert terms["att"] == pytest.approx(l_att.item(), rel=1e-5)
        assert terms["ce_whole"] == pytest.approx(ce_w.item(), rel=1e-5)
        assert terms["ce_local"] == pytest.approx(ce_l.item(), rel=1e-5)
        assert terms["triplet"] == pytest.approx(trip.item(), rel=1e-5)
        for k in ALL_MAPS:
            assert terms[f"att_{k}"] == pytest.approx(att[k].item(), rel=1e-5)
        assert all(isinstance(v, float) for v in terms.values())


def test_mmga_loss_defaults_are_the_paper_values() -> None:
    loss = MMGALoss()
    assert (loss.lambda0, loss.lambda1, loss.lambda2, loss.margin) == (0.5, 2.0, 0.1, 0.3)


def test_baseline_and_baseline_att_skip_mask_terms() -> None:
    out = _fake_outputs(local=False)
    total, terms = MMGALoss("baseline")(out, LABELS)
    assert set(terms) == {"ce_whole", "triplet", "total"}
    ce = F.cross_entropy(out["logits_whole"], LABELS)
    trip = batch_hard_triplet_loss(out["feat"], LABELS)
    assert total.item() == pytest.approx((ce + 2.0 * trip).item(), rel=1e-5)
    out = _fake_outputs(local=False, maps=("m1_whole", "m2_whole"))
    _, terms = MMGALoss("baseline_att")(out, LABELS)  # maps exist, no masks needed
    assert set(terms) == {"ce_whole", "triplet", "total"}


def test_wmga_uses_whole_masks_only() -> None:
    out = _fake_outputs(local=False, maps=("m1_whole", "m2_whole"))
    whole = (torch.rand(8, 24, 8) > 0.5).float()
    total, terms = MMGALoss("wmga")(out, LABELS, whole)
    assert set(terms) == {"ce_whole", "triplet", "att_m1_whole", "att_m2_whole", "att", "total"}
    l_att = mask_attention_loss(out["att_maps"]["m1_whole"], whole) + mask_attention_loss(
        out["att_maps"]["m2_whole"], whole
    )
    assert terms["att"] == pytest.approx(l_att.item(), rel=1e-5)
    # Cache layout (N, 3, 24, 8) gives the same result: only channel 0 is read.
    junk = torch.stack([whole, torch.rand(8, 24, 8), torch.rand(8, 24, 8)], dim=1)
    total3, _ = MMGALoss("wmga")(out, LABELS, junk)
    assert total3.item() == pytest.approx(total.item(), rel=1e-6)


def test_dmga_derives_part_masks_by_middle_split() -> None:
    out = _fake_outputs(maps=ALL_MAPS)
    whole = (torch.rand(8, 24, 8) > 0.5).float()
    upper, bottom = middle_split(whole)
    fed = torch.stack([whole, torch.rand(8, 24, 8), torch.rand(8, 24, 8)], dim=1)  # wrong parts on purpose
    _, terms = MMGALoss("dmga")(out, LABELS, fed)
    assert terms["att_m2_upper"] == pytest.approx(mask_attention_loss(out["att_maps"]["m2_upper"], upper).item())
    assert terms["att_m2_bottom"] == pytest.approx(mask_attention_loss(out["att_maps"]["m2_bottom"], bottom).item())


def test_missing_masks_and_unknown_variant() -> None:
    with pytest.raises(ValueError, match="upper"):
        MMGALoss("mmga")(_fake_outputs(maps=ALL_MAPS), LABELS, torch.rand(8, 24, 8))
    with pytest.raises(UserError, match="mmga"):
        MMGALoss("nope")


def test_mmga_loss_backward_through_model() -> None:
    model = build_model("mmga", num_classes=4, backbone="resnet18").train()
    out = model(torch.randn(8, 3, 128, 64))
    masks = (torch.rand(8, 3, 24, 8) > 0.5).float()  # resized to the 8x4 maps inside the loss
    total, terms = MMGALoss("mmga")(out, LABELS, masks)
    total.backward()
    assert math.isfinite(terms["total"])
    assert model.classifier_local.weight.grad is not None
    assert model.att2["bottom"].spatial_conv3.weight.grad.abs().sum() > 0


def test_label_smoothing_ce() -> None:
    logits, labels = torch.randn(5, 7), torch.randint(0, 7, (5,))
    for eps in (0.0, 0.1):
        got = CrossEntropyLabelSmooth(eps)(logits.bfloat16(), labels)
        assert got.dtype == torch.float32
        ref = F.cross_entropy(logits.bfloat16().float(), labels, label_smoothing=eps)
        torch.testing.assert_close(got, ref)
