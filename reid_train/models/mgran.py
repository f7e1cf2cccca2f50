"""MGRAN: Mask-Guided Region Attention Network (Zhou & Yu, PAKDD 2020), and its ablations.

Space Alignment (paper Sec. 3.3, eq. 2) happens on the *input*: the pedestrian region is
the image (x) the pedestrian mask, and the head / upper-body / lower-body regions are the
image (x) each region mask (Hadamard products on the image itself, before any
convolution). :func:`region_inputs` builds them from a batch of images and the
``(N, C, H, W)`` 0/1 masks the data side produces (channel 0 the pedestrian mask,
channels 1-3 head / upper / lower; MGRAN-PL: channels 1-4 head / torso / arms / legs; see
``reid_train/data/regions.py``).

Multi-feature Fusion (eq. 3): ONE backbone (the paper's four ResNet-50 networks "share the
same parameters") runs on the four inputs as a single batched forward: the inputs are
stacked along the batch dimension, branch-major (``[global x N, head x N, upper x N,
lower x N]``), so a step is one ``4N``-image call, not four calls. Each branch's stage-4
map is globally average-pooled (the paper does not name its pooling) to ``f_g, f_l1, f_l2, f_l3`` and
``F = concat(f_g, f_l1, f_l2, f_l3)`` (in that order).

Dimensions (``C`` = stage-4 channels: 2048 for resnet50, 512 for resnet18/34):

=========  =======================  ===================  ===========================
variant    inputs through the CNN   F                    resnet50 (no reduction)
=========  =======================  ===================  ===========================
mgran      global + 3 regions (4N)  4 x C                8192
mgran_gf   3 regions (3N)           3 x C                6144
mgran_pl   global + 4 parts (5N)    5 x C                10240
=========  =======================  ===================  ===========================

With ``reduction_dim = d > 0`` (an addition, off by default) one shared
``Linear(C, d, bias=False) + BatchNorm1d(d)`` maps every branch's pooled feature to ``d``
before the concatenation, so F has ``branches x d`` dimensions.

Outputs: training mode returns a dict with ``features`` (the raw F, N x D), ``feat``
(``F`` L2-normalised *after* the concatenation, float32) and, when ``id_head=True`` (an
addition, off by default), ``logits`` of a Linear identity classifier on the raw F.
Eval mode returns ``feat``: the L2-normalised concatenation. Normalising the concatenated
vector (not each branch) keeps the paper's "F" as the descriptor, only rescaled.

Notes on choices the paper leaves open:

* **Batch statistics**: with one batched call, BatchNorm normalises over all 4N images
  (global and region inputs together) in training, and its running statistics -- used at
  test time -- are those same pooled statistics. Four separate calls would train each
  branch with its own batch statistics but test all of them with one mixed running
  average; the batched call keeps training and testing consistent.
* **Last stride**: the paper names ResNet-50 [He et al.] and no change to it, so the MGRAN
  configs keep the stride-2 ``layer4`` (``model.last_stride: 2``); ``last_stride=1`` is available.
* **MGRAN-PL** ("part-level instead of region-level", Table 6; the alignment the paper
  argues against: "matching two pedestrians with their heads, arms, legs, and other body
  parts") replaces the three regions by four body-part masks -- head, torso, arms, legs,
  the cache's ``parts`` column -- keeping the global input: five inputs, F = 5 x C.
* Masks are needed at inference too: query and gallery images go through the same
  Hadamard products (``evaluate`` / ``extract`` read them from the mask cache).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from reid_masks.errors import UserError

from .backbone import ResNetBackbone

__all__ = ["MGRAN", "MGRANSpec", "MGRAN_VARIANTS", "INPUT_NAMES", "region_inputs"]

INPUT_NAMES: dict[str, tuple[str, ...]] = {  # mask kind -> the inputs its channels give, in order
    "regions": ("global", "head", "upper", "lower"),
    "parts": ("global", "head", "torso", "arms", "legs"),
}


@dataclass(frozen=True)
class MGRANSpec:
    """What an MGRAN variant feeds the network."""

    branches: tuple[int, ...]  # which inputs (INPUT_NAMES[region_masks] order) go through the CNN
    region_masks: str  # "regions" (head / upper / lower) or "parts" (head / torso / arms / legs), from the cache


MGRAN_VARIANTS: dict[str, MGRANSpec] = {
    "mgran": MGRANSpec(branches=(0, 1, 2, 3), region_masks="regions"),
    "mgran_gf": MGRANSpec(branches=(1, 2, 3), region_masks="regions"),  # no global feature
    "mgran_pl": MGRANSpec(branches=(0, 1, 2, 3, 4), region_masks="parts"),  # part-level: body parts
}


def region_inputs(images: Tensor, region_masks: Tensor) -> Tensor:
    """The MGRAN inputs: ``images[:, None] * region_masks[:, :, None]``.

    Args:
        images: (N, 3, H, W) network-ready images (normalised).
        region_masks: (N, C, H, W) 0/1 masks (any dtype): pedestrian, head, upper, lower
            (C = 4), or pedestrian, head, torso, arms, legs for MGRAN-PL (C = 5), at the
            images' resolution and transformed with them.

    Returns (N, C, 3, H, W): every input equals the image inside its mask and is exactly 0
    outside. The product is taken on the normalised tensor, so a masked-out pixel is 0 at
    the network input: with the paper's 1/256 scaling (no mean subtraction) that is the
    raw image x mask; with ImageNet normalisation it is the mean colour (the value random
    erasing and zero-padding also use). Flipping the result along the last dimension is
    the same as building it from flipped images and masks.
    """
    if images.dim() != 4 or region_masks.dim() != 4:
        raise ValueError(
            f"expected images (N, 3, H, W) and region masks (N, C, H, W), got {tuple(images.shape)} and {tuple(region_masks.shape)}"
        )
    if images.shape[0] != region_masks.shape[0] or images.shape[-2:] != region_masks.shape[-2:]:
        raise ValueError(f"images {tuple(images.shape)} and region masks {tuple(region_masks.shape)} do not match")
    return images[:, None] * region_masks[:, :, None].to(images.dtype)


class MGRAN(nn.Module):
    """MGRAN and its ablations ``mgran_gf`` / ``mgran_pl`` (see the module docstring).

    ``forward(x)`` takes ``x`` of shape (N, C, 3, H, W) (:func:`region_inputs`; C = 4, or 5
    for ``mgran_pl``).

    Attributes the engine reads: ``backbone`` (its parameters get ``solver.backbone_lr``),
    ``feature_dim``, ``required_masks`` (always empty: no 24x8 MMGA masks) and
    ``region_masks`` (``"regions"`` or ``"parts"``: which (N, C, H, W) masks the data side
    must deliver with every image, in training *and* inference).
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "mgran",
        backbone: str = "resnet50",
        pretrained: str | None = None,
        *,
        last_stride: int = 2,
        reduction_dim: int = 0,
        id_head: bool = False,
    ) -> None:
        super().__init__()
        if variant not in MGRAN_VARIANTS:
            raise UserError(f"unknown MGRAN variant {variant!r}; allowed: {', '.join(MGRAN_VARIANTS)}")
        if num_classes < 1:
            raise UserError(f"num_classes must be >= 1, got {num_classes}")
        if reduction_dim < 0:
            raise UserError(f"reduction_dim must be >= 0 (0: no reduction layer), got {reduction_dim}")
        self.variant = variant
        self.spec = MGRAN_VARIANTS[variant]
        self.num_classes = num_classes
        self.inputs: tuple[str, ...] = INPUT_NAMES[self.spec.region_masks]
        self.branches: tuple[str, ...] = tuple(self.inputs[i] for i in self.spec.branches)

        self.backbone = ResNetBackbone(backbone, pretrained=pretrained, last_stride=last_stride)
        c4 = self.backbone.channels[2]
        self.reduction: nn.Module | None = None
        if reduction_dim:
            fc = nn.Linear(c4, reduction_dim, bias=False)
            nn.init.kaiming_normal_(fc.weight, mode="fan_out")
            self.reduction = nn.Sequential(fc, nn.BatchNorm1d(reduction_dim))
        self.branch_dim: int = reduction_dim or c4
        self.feature_dim: int = self.branch_dim * len(self.branches)
        self.classifier: nn.Linear | None = None
        if id_head:
            self.classifier = nn.Linear(self.feature_dim, num_classes)
            nn.init.normal_(self.classifier.weight, std=0.001)
            nn.init.zeros_(self.classifier.bias)

    @property
    def required_masks(self) -> tuple[str, ...]:
        """MMGA's 24x8 masks: MGRAN needs none (it needs ``region_masks`` instead)."""
        return ()

    @property
    def region_masks(self) -> str:
        """Which (N, C, H, W) masks every input image needs: ``"regions"`` or ``"parts"``."""
        return self.spec.region_masks

    def _stack(self, x: Tensor) -> Tensor:
        """(N, C, 3, H, W) -> (B*N, 3, H, W), branch-major, only the variant's branches."""
        c = len(self.inputs)
        if x.dim() != 5 or x.shape[1] != c:
            raise ValueError(
                f"{self.variant} takes the {c} inputs (N, {c}, 3, H, W) built by region_inputs(images, region_masks), got {tuple(x.shape)}"
            )
        if len(self.spec.branches) != c:
            x = x[:, list(self.spec.branches)]
        stacked = x.transpose(0, 1).reshape(-1, *x.shape[2:])
        if self.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last):
            stacked = stacked.contiguous(memory_format=torch.channels_last)
        return stacked

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """Keys: ``features`` (N, feature_dim) raw F, ``feat`` L2-normalised F (float32),
        ``branch_features`` (B, N, branch_dim) per-branch features, [``logits``]."""
        n = x.shape[0]
        _, _, s4 = self.backbone(self._stack(x))  # the single batched backbone call
        f = s4.mean(dim=(2, 3))
        if self.reduction is not None:
            f = self.reduction(f)
        per_branch = f.view(len(self.branches), n, -1)
        features = per_branch.transpose(0, 1).reshape(n, -1)
        out = {
            "features": features,
            "feat": F.normalize(features.float(), dim=1),
            "branch_features": per_branch,
        }
        if self.classifier is not None:
            out["logits"] = self.classifier(features)
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor] | Tensor:
        """Training: the dict of :meth:`forward_features`. Eval: the L2-normalised F."""
        out = self.forward_features(x)
        if self.training:
            return out
        return out["feat"]
