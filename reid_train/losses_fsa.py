"""The FSA network's loss: the BoT recipe, plus the mask-guided attention term of ``fsa_mask``.

``Loss = CE_ls(logits) + lambda1 * triplet(features) [+ lambda2 * L_att(sa_whole, whole mask)]``

* CE with label smoothing (``loss.label_smoothing``, 0.1 in the FSA configs) on the BNNeck
  logits; batch-hard triplet (``loss.margin``) on the *pre-BN* GAP feature, as in Luo et al.'s
  BoT (the BN feature is the inference feature). The FSA paper names only "triplet loss and
  cross-entropy loss"; see ``reid_train/models/fsa.py`` for why this recipe.
* ``fsa_mask`` (ours): MMGA's :func:`mask_attention_loss` between the last MHSA block's
  spatial self-attention map and the whole-body mask, weighted by ``loss.lambda2``.

Computed in float32 whatever the autocast dtype (the helpers of ``losses.py``).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn as nn
from torch import Tensor

from reid_train.losses import CrossEntropyLabelSmooth, _split_masks, batch_hard_triplet_loss, mask_attention_loss
from reid_train.models.fsa import FSA_VARIANTS

__all__ = ["FSALoss"]


class FSALoss(nn.Module):
    """``forward(outputs, labels, masks=None) -> (total, terms)``; ``outputs`` of :meth:`FSA.forward_features`.

    ``terms`` (detached floats for logging): ``ce``, ``triplet``, [``att``], ``total``.
    """

    def __init__(self, variant: str = "fsa", lambda1: float = 1.0, lambda2: float = 0.1, margin: float = 0.3,
                 label_smoothing: float = 0.1, mask_eps: float = 1e-6) -> None:
        super().__init__()
        self.spec = FSA_VARIANTS[variant]
        self.lambda1, self.lambda2, self.margin, self.mask_eps = lambda1, lambda2, margin, mask_eps
        self.ce = CrossEntropyLabelSmooth(label_smoothing)

    def forward(self, outputs: Mapping[str, Any], labels: Tensor, masks: Tensor | Mapping[str, Tensor] | None = None
                ) -> tuple[Tensor, dict[str, float]]:
        terms: dict[str, Tensor] = {"ce": self.ce(outputs["logits_whole"], labels)}
        terms["triplet"] = batch_hard_triplet_loss(outputs["features"], labels, self.margin)
        total = terms["ce"] + self.lambda1 * terms["triplet"]
        if self.spec.masks:
            whole = _split_masks(masks).get("whole")
            if whole is None:
                raise ValueError("fsa_mask's attention loss needs the whole-body mask of every image (a mask cache)")
            terms["att"] = mask_attention_loss(outputs["att_maps"]["sa_whole"], whole, self.mask_eps)
            total = total + self.lambda2 * terms["att"]
        terms["total"] = total
        values = torch.stack([t.detach().float() for t in terms.values()]).tolist()  # one device sync
        return total, dict(zip(terms, values))
