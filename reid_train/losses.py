"""Losses of MMGA (Cai et al., CVPRW 2019, Sec. 3.4): softmax, batch-hard triplet, mask-guided attention.

Every loss computes in float32 whatever the autocast dtype of its inputs: min-max
normalisation, squared distances and square roots lose too much in bf16/fp16.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from reid_masks.errors import UserError
from reid_train.models.mmga import ATT_MAP_MASK, VARIANTS, VariantSpec, middle_split

__all__ = [
    "CrossEntropyLabelSmooth",
    "pairwise_euclidean",
    "batch_hard_triplet_loss",
    "mask_attention_loss",
    "MMGALoss",
]

MASK_NAMES: tuple[str, ...] = ("whole", "upper", "bottom")


class CrossEntropyLabelSmooth(nn.Module):
    """Softmax cross-entropy with optional label smoothing (epsilon=0: the paper's plain softmax loss)."""

    def __init__(self, epsilon: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
        self.epsilon = epsilon

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.epsilon)


def pairwise_euclidean(x: Tensor, eps: float = 1e-12) -> Tensor:
    """(N, N) euclidean distances of the rows of ``x``.

    The squared distance is clamped at ``eps`` before the square root: the diagonal (and
    duplicates) would otherwise give sqrt(0) whose gradient is infinite -> NaN weights.
    """
    x = x.float()
    sq = x.pow(2).sum(dim=1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())
    return d2.clamp_min(eps).sqrt()


def batch_hard_triplet_loss(
    features: Tensor, labels: Tensor, margin: float = 0.3, normalize: bool = False
) -> Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017; MMGA eq. 8).

    For every anchor: relu(margin + max distance to a same-id sample - min distance to an
    other-id sample), averaged over all anchors. An anchor without any negative in the
    batch contributes 0. MMGA feeds features that are already L2-normalised (the model's
    ``feat``); ``normalize=True`` normalises here instead.
    """
    if features.dim() != 2 or labels.dim() != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected features (N, D) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    feats = features.float()
    if normalize:
        feats = F.normalize(feats, dim=1)
    dist = pairwise_euclidean(feats)
    same = labels[:, None] == labels[None, :]
    hardest_pos = dist.masked_fill(~same, float("-inf")).amax(dim=1)  # self is always a positive
    hardest_neg = dist.masked_fill(same, float("inf")).amin(dim=1)
    has_neg = (~same).any(dim=1)
    per_anchor = F.relu(margin + hardest_pos - hardest_neg)
    per_anchor = torch.where(has_neg, per_anchor, torch.zeros_like(per_anchor))
    return per_anchor.mean()


def mask_attention_loss(spatial_map: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Mask-guided attention loss (MMGA eqs. 3-4).

    Per sample, the map is min-max normalised, ``S_norm = (S - min S) / (max S - min S + eps)``
    (``eps`` keeps a constant map finite), then
    ``L = sqrt(sum_{n,i,j} (M - S_norm)^2 / n_batch)``: squared errors are summed over the
    pixels and the batch, divided by the batch size only (eq. 4 has no 1/(h w)).
    ``spatial_map`` and ``mask``: (N, h, w) or (N, 1, h, w). A mask of another size is
    resized to the map's size (bilinear), so non-384x128 inputs still work with 24x8 masks.
    """
    s = spatial_map.float()
    if s.dim() == 4:
        s = s.squeeze(1)
    m = mask.float()
    if m.dim() == 4:
        m = m.squeeze(1)
    if s.dim() != 3 or m.dim() != 3 or s.shape[0] != m.shape[0]:
        raise ValueError(
            f"expected spatial map and mask of shape (N, h, w), got {tuple(spatial_map.shape)} and {tuple(mask.shape)}"
        )
    if m.shape[-2:] != s.shape[-2:]:
        m = F.interpolate(m[:, None], size=s.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    n = s.shape[0]
    s = s.flatten(1)
    s_min = s.amin(dim=1, keepdim=True)
    s_max = s.amax(dim=1, keepdim=True)
    s_norm = (s - s_min) / (s_max - s_min + eps)
    mse_sum = (m.flatten(1) - s_norm).pow(2).sum() / n
    return mse_sum.clamp_min(1e-12).sqrt()  # clamp: finite gradient at a perfect match


def _split_masks(masks: Tensor | Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """Accept the cache layout (N, 3, h, w) = whole/upper/bottom, (N, h, w) / (N, 1, h, w) = whole, or a dict."""
    if masks is None:
        return {}
    if isinstance(masks, Mapping):
        return {k: v for k, v in masks.items() if v is not None}
    if masks.dim() == 3:
        return {"whole": masks}
    if masks.dim() == 4 and masks.shape[1] in (1, 3):
        return {name: masks[:, i] for i, name in enumerate(MASK_NAMES[: masks.shape[1]])}
    raise ValueError(f"masks must be (N, 3, h, w), (N, 1, h, w) or (N, h, w), got {tuple(masks.shape)}")


class MMGALoss(nn.Module):
    """``Loss = CE_w + CE_l + l1 * triplet + l2 * L_att``, ``L_att = L1w + L2w + l0 * L2u + l0 * L2b`` (eqs. 5, 9).

    Terms a variant does not have are skipped: ``CE_l`` needs ``logits_local`` in the
    outputs (dmga/mmga); ``L_att`` is computed only for mask-guided variants (wmga: the two
    whole maps; dmga/mmga: all four) -- baseline_att has attention maps but no mask loss.
    DMGA's upper/bottom masks are always re-derived here with :func:`middle_split` from the
    whole mask, so DMGA is right whatever the data side feeds in channels 1-2.

    ``forward(outputs, labels, masks)`` returns ``(total, terms)`` where ``terms`` holds
    detached floats for logging: ``ce_whole``, ``ce_local``, ``triplet``, ``att_m1_whole``,
    ``att_m2_whole``, ``att_m2_upper``, ``att_m2_bottom``, ``att`` (= L_att, unweighted by
    l2) and ``total`` -- only the terms present for the variant.
    """

    def __init__(
        self,
        variant: str | VariantSpec = "mmga",
        lambda0: float = 0.5,
        lambda1: float = 2.0,
        lambda2: float = 0.1,
        margin: float = 0.3,
        label_smoothing: float = 0.0,
        mask_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if isinstance(variant, str):
            if variant not in VARIANTS:
                raise UserError(f"unknown MMGA variant {variant!r}; allowed: {', '.join(VARIANTS)}")
            variant = VARIANTS[variant]
        self.spec = variant
        self.lambda0, self.lambda1, self.lambda2 = lambda0, lambda1, lambda2
        self.margin = margin
        self.mask_eps = mask_eps
        self.ce = CrossEntropyLabelSmooth(label_smoothing)

    def _masks_for_loss(self, masks: Tensor | Mapping[str, Tensor] | None) -> dict[str, Tensor]:
        found = _split_masks(masks)
        if "whole" in found and self.spec.part_masks_from_middle_split:
            found["upper"], found["bottom"] = middle_split(found["whole"])
        missing = [name for name in self.spec.masks if name not in found]
        if missing:
            raise ValueError(f"this variant's mask loss needs the {', '.join(missing)} mask(s); got {sorted(found)}")
        return found

    def forward(
        self,
        outputs: Mapping[str, Tensor | Mapping[str, Tensor]],
        labels: Tensor,
        masks: Tensor | Mapping[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        terms: dict[str, Tensor] = {}
        terms["ce_whole"] = self.ce(outputs["logits_whole"], labels)
        total = terms["ce_whole"]
        if "logits_local" in outputs:
            terms["ce_local"] = self.ce(outputs["logits_local"], labels)
            total = total + terms["ce_local"]
        terms["triplet"] = batch_hard_triplet_loss(outputs["feat"], labels, self.margin)
        total = total + self.lambda1 * terms["triplet"]

        att_maps = outputs.get("att_maps") or {}
        if self.spec.mask_guided and att_maps:
            mask_by_name = self._masks_for_loss(masks)
            l_att = None
            for key, spatial in att_maps.items():
                mask_name = ATT_MAP_MASK[key]
                if mask_name not in self.spec.masks:
                    continue
                term = mask_attention_loss(spatial, mask_by_name[mask_name], self.mask_eps)
                terms[f"att_{key}"] = term
                weight = 1.0 if mask_name == "whole" else self.lambda0
                l_att = weight * term if l_att is None else l_att + weight * term
            if l_att is not None:
                terms["att"] = l_att
                total = total + self.lambda2 * l_att
        terms["total"] = total

        values = torch.stack([t.detach().float() for t in terms.values()]).tolist()  # one device sync
        return total, dict(zip(terms, values))
