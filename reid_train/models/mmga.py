"""MMGA: multi-scale body-part mask guided attention network (Cai, Wang, Cheng, CVPRW 2019).

One class, :class:`MMGA`; the paper's ablations are option settings of it, not copies:

=============  =========  ===========  ============  =======================  ===========
variant        attention  part heads   mask loss     masks the trainer feeds  infer. dim
=============  =========  ===========  ============  =======================  ===========
baseline       no         no           no            none                     1024
baseline_att   yes        no           no            none                     1024
wmga           yes        no           whole only    whole                    1024
dmga           yes        yes          all 4 maps    whole + middle split     2048
mmga           yes        yes          all 4 maps    whole, upper, bottom     2048
=============  =========  ===========  ============  =======================  ===========

Data flow for 384x128 input (resnet50; resnet18/34 have 128/256/512 channels)::

    stage2 (512x48x16) --att1 (pool 2)--> A1 (1024x24x8)
    stage3 (1024x24x8) * A1 = x3                     (module 1 guided by the whole mask)
    stage4 = layer4(x3) (2048x24x8)
    for b in whole[, upper, bottom]:  A2_b = att2_b(x3);  f_b = GAP(stage4 * A2_b)
    emb_whole = BN(Linear(f_whole)) 1024;  emb_upper, emb_bottom = 512 each
    logits_whole = W_w emb_whole;  logits_local = W_l concat(emb_upper, emb_bottom)
    feat = L2norm(concat(emb_whole, emb_upper, emb_bottom))  (2048; triplet + inference)

Decisions the paper leaves open (documented here, see also ``attention.py``):

* **stage4 input**: layer4 consumes the attended product ``stage3 * A1`` (residual-
  attention style: module 1 "filters background" for everything after it). The paper
  only says the product feeds module 2; ``stage4_input="raw"`` gives the other reading.
* **heads**: GAP + Linear + BatchNorm1d (``head_bn=True``; the Linear then has no bias).
  The paper says "GAP and linear layer"; the BN keeps the scale of the 1024/512 embeddings
  comparable, which matters because their concat is L2-normalised as one vector for the
  triplet loss and retrieval. The same embedding feeds softmax and triplet.
* **whole-branch-only variants** (baseline, baseline_att, wmga) have no upper/bottom heads
  and no local classifier: their training and inference feature is the 1024-d whole
  embedding, L2-normalised (the paper's baseline feature is 1024-d; Baseline+Att is
  described as "only whole-body attention branch in the second attention module").
* **attention maps** returned for the loss are the sigmoid spatial maps (S - 1, in [0, 1]);
  the loss min-max normalises them, which removes the +1.
* Masks are needed only for training; inference takes images only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from reid_masks.errors import UserError

from .attention import MaskGuidedAttention
from .backbone import ResNetBackbone

__all__ = ["MMGA", "VariantSpec", "VARIANTS", "ATT_MAP_MASK", "middle_split"]


@dataclass(frozen=True)
class VariantSpec:
    """What an MMGA ablation switches on, and which masks its training step needs."""

    attention: bool
    parts: bool
    mask_guided: bool
    masks: tuple[str, ...]  # subset of ("whole", "upper", "bottom") the loss consumes
    part_masks_from_middle_split: bool = False  # DMGA: upper/bottom = middle_split(whole)


VARIANTS: dict[str, VariantSpec] = {
    "baseline": VariantSpec(attention=False, parts=False, mask_guided=False, masks=()),
    "baseline_att": VariantSpec(attention=True, parts=False, mask_guided=False, masks=()),
    "wmga": VariantSpec(attention=True, parts=False, mask_guided=True, masks=("whole",)),
    "dmga": VariantSpec(
        attention=True, parts=True, mask_guided=True, masks=("whole", "upper", "bottom"),
        part_masks_from_middle_split=True,
    ),
    "mmga": VariantSpec(attention=True, parts=True, mask_guided=True, masks=("whole", "upper", "bottom")),
}

# Which mask guides which spatial map (keys of ``outputs["att_maps"]``).
ATT_MAP_MASK: dict[str, str] = {
    "m1_whole": "whole",
    "m2_whole": "whole",
    "m2_upper": "upper",
    "m2_bottom": "bottom",
}


def middle_split(whole_masks: Tensor) -> tuple[Tensor, Tensor]:
    """Split whole-body masks at the middle row into (upper, bottom) halves (DMGA).

    Works on any (..., H, W) tensor, e.g. (N, 24, 8). Rows ``[0, H // 2)`` go to the upper
    mask and rows ``[H // 2, H)`` to the bottom mask; the other half is zero, so both keep
    the full H x W size that the attention maps have.
    """
    if whole_masks.dim() < 2:
        raise ValueError(f"middle_split expects (..., H, W) masks, got shape {tuple(whole_masks.shape)}")
    mid = whole_masks.shape[-2] // 2
    upper = whole_masks.clone()
    bottom = whole_masks.clone()
    upper[..., mid:, :] = 0
    bottom[..., :mid, :] = 0
    return upper, bottom


class _EmbeddingHead(nn.Module):
    """GAP + Linear (+ BatchNorm1d): reduces a stage4 map to a 1024/512-d embedding."""

    def __init__(self, in_channels: int, dim: int, bn: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, dim, bias=not bn)
        self.bn = nn.BatchNorm1d(dim) if bn else nn.Identity()
        nn.init.kaiming_normal_(self.fc.weight, mode="fan_out")
        if self.fc.bias is not None:
            nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.fc(x.mean(dim=(2, 3))))


class MMGA(nn.Module):
    """MMGA network and its ablations (see the module docstring for the variant table).

    ``forward`` in training mode returns a dict (see :meth:`forward_features`); in eval
    mode it returns the L2-normalised inference feature (N, ``feature_dim``), float32.
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "mmga",
        backbone: str = "resnet50",
        pretrained: str | None = None,
        *,
        spatial_reduction: int = 8,
        channel_reduction: int = 8,
        whole_dim: int = 1024,
        part_dim: int = 512,
        head_bn: bool = True,
        last_stride: int = 1,
        stage4_input: str = "attended",
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise UserError(f"unknown MMGA variant {variant!r}; allowed: {', '.join(VARIANTS)}")
        if num_classes < 1:
            raise UserError(f"num_classes must be >= 1, got {num_classes}")
        if stage4_input not in ("attended", "raw"):
            raise UserError(f"stage4_input must be 'attended' or 'raw', got {stage4_input!r}")
        spec = VARIANTS[variant]
        self.variant = variant
        self.spec = spec
        self.num_classes = num_classes
        self.stage4_input = stage4_input

        self.backbone = ResNetBackbone(backbone, pretrained=pretrained, last_stride=last_stride)
        c2, c3, c4 = self.backbone.channels

        self.branches: tuple[str, ...] = ("whole", "upper", "bottom") if spec.parts else ("whole",)
        if spec.attention:
            # Module 1: stage2 -> 24x8 map that multiplies stage3 (pool brings 48x16 to 24x8).
            self.att1 = MaskGuidedAttention(c2, c3, spatial_reduction, channel_reduction, pool=2)
            # Module 2: one branch per body part, each multiplying stage4.
            self.att2 = nn.ModuleDict(
                {b: MaskGuidedAttention(c3, c4, spatial_reduction, channel_reduction) for b in self.branches}
            )
        dims = {"whole": whole_dim, "upper": part_dim, "bottom": part_dim}
        self.heads = nn.ModuleDict({b: _EmbeddingHead(c4, dims[b], head_bn) for b in self.branches})
        self.classifier_whole = nn.Linear(whole_dim, num_classes)
        self.classifier_local = nn.Linear(2 * part_dim, num_classes) if spec.parts else None
        for clf in (self.classifier_whole, self.classifier_local):
            if clf is not None:
                nn.init.normal_(clf.weight, std=0.001)
                nn.init.zeros_(clf.bias)
        self.feature_dim: int = sum(dims[b] for b in self.branches)

    @property
    def required_masks(self) -> tuple[str, ...]:
        """Masks the training loss of this variant consumes (empty: images only)."""
        return self.spec.masks

    def forward_features(self, x: Tensor) -> dict[str, Tensor | dict[str, Tensor]]:
        """Run the network in any mode and return every intermediate the losses need.

        Keys: ``emb_whole`` (N, 1024) [+ ``emb_upper``, ``emb_bottom`` (N, 512)],
        ``feat`` (N, feature_dim) L2-normalised float32 concat, ``att_maps`` dict of
        (N, h, w) spatial maps in [0, 1] (``m1_whole``, ``m2_whole`` [+ ``m2_upper``,
        ``m2_bottom``]; empty for the baseline), ``logits_whole`` (N, num_classes)
        [+ ``logits_local``].
        """
        att_maps: dict[str, Tensor] = {}
        x2 = self.backbone.forward_stage2(x)
        x3 = self.backbone.layer3(x2)
        if self.spec.attention:
            a1, s1 = self.att1(x2)
            att_maps["m1_whole"] = s1.squeeze(1)
            x3_raw, x3 = x3, x3 * a1
            x4 = self.backbone.layer4(x3 if self.stage4_input == "attended" else x3_raw)
        else:
            x4 = self.backbone.layer4(x3)

        out: dict[str, Tensor | dict[str, Tensor]] = {}
        for branch in self.branches:
            fmap = x4
            if self.spec.attention:
                a2, s2 = self.att2[branch](x3)
                att_maps[f"m2_{branch}"] = s2.squeeze(1)
                fmap = x4 * a2
            out[f"emb_{branch}"] = self.heads[branch](fmap)

        embeddings = [out[f"emb_{b}"] for b in self.branches]
        out["feat"] = F.normalize(torch.cat(embeddings, dim=1).float(), dim=1)
        out["logits_whole"] = self.classifier_whole(out["emb_whole"])
        if self.classifier_local is not None:
            local = torch.cat([out["emb_upper"], out["emb_bottom"]], dim=1)
            out["logits_local"] = self.classifier_local(local)
        out["att_maps"] = att_maps
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor | dict[str, Tensor]] | Tensor:
        """Training: the dict of :meth:`forward_features`. Eval: the normalised feature."""
        out = self.forward_features(x)
        if self.training:
            return out
        return out["feat"]
