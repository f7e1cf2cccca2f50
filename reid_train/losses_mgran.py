"""MGRAN's metric loss, Margin Sample Mining Loss (MSML), and the trainer's loss dispatch.

MSML (Xiao, Luo, Zhang 2017, arXiv:1710.00478) mines ONE pair of each kind over the whole
batch -- unlike batch-hard triplet, which mines per anchor:

    L = relu( max_{a,p: same id, a != p} d(a, p) - min_{a,n: different ids} d(a, n) + margin )

with d the euclidean distance. MGRAN (Zhou & Yu 2020, Sec. 3.4) trains with MSML alone
"based on the four features extracted by ResNet-50"; it gives neither the margin, nor the
distance, nor the batch composition. Our reading and defaults (docs/mgran.md):

* MSML on F = concat(f_g, f_l1, f_l2, f_l3), the retrieval feature, L2-normalised
  (``loss.msml_normalize``, default true: the feature evaluation ranks with), euclidean
  distance, ``loss.margin`` = 0.3;
* P x K identity batches (the sampler of the engine), so every batch has positives and
  negatives;
* an identity softmax on F is *our addition*, off by default (``model.id_head``); when
  the model has it, its cross-entropy is added with weight 1.

Losses are computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from reid_train.losses import CrossEntropyLabelSmooth, MMGALoss, pairwise_euclidean
from reid_train.losses_fsa import FSALoss
from reid_train.models.fsa import FSA_VARIANTS
from reid_train.models.mgran import MGRAN_VARIANTS

__all__ = ["msml_loss", "MSMLLoss", "MGRANLoss", "build_loss", "LOSS_BUILDERS"]


def msml_loss(features: Tensor, labels: Tensor, margin: float = 0.3, normalize: bool = False,
              return_pair: bool = False) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """Margin Sample Mining Loss over the batch (see the module docstring).

    Args:
        features: (N, D) features; ``normalize=True`` L2-normalises them first.
        labels: (N,) identities.
        margin: the margin.
        return_pair: also return the hardest positive and negative distances (detached).

    A batch without any positive pair (two different images of one id) or without any
    negative pair gives 0 (with a graph, so ``backward`` still works). Self-pairs are
    not positives.
    """
    if features.dim() != 2 or labels.dim() != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(f"expected features (N, D) and labels (N,), got {tuple(features.shape)} and {tuple(labels.shape)}")
    feats = features.float()
    if normalize:
        feats = F.normalize(feats, dim=1)
    dist = pairwise_euclidean(feats)
    n = labels.shape[0]
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=labels.device)
    pos = same & ~eye
    neg = ~same
    if not bool(pos.any()) or not bool(neg.any()):
        zero = feats.sum() * 0.0
        return (zero, zero.detach(), zero.detach()) if return_pair else zero
    hardest_pos = dist.masked_fill(~pos, float("-inf")).amax()
    hardest_neg = dist.masked_fill(~neg, float("inf")).amin()
    loss = F.relu(hardest_pos - hardest_neg + margin)
    if return_pair:
        return loss, hardest_pos.detach(), hardest_neg.detach()
    return loss


class MSMLLoss(nn.Module):
    """Module form of :func:`msml_loss`."""

    def __init__(self, margin: float = 0.3, normalize: bool = False) -> None:
        super().__init__()
        self.margin = margin
        self.normalize = normalize

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return msml_loss(features, labels, self.margin, self.normalize)


class MGRANLoss(nn.Module):
    """``Loss = MSML(F) [+ CE(logits)]``; ``forward(outputs, labels, masks=None) -> (total, terms)``.

    ``outputs``: the dict of :meth:`MGRAN.forward_features`. MSML uses ``feat`` (the
    L2-normalised F) when ``normalize`` else ``features`` (the raw F). The cross-entropy
    term is added when the model has an identity head (``logits`` in the outputs).
    ``masks`` is accepted for the engine's uniform call and ignored. ``terms`` holds
    detached floats for logging: ``msml``, ``msml_pos`` / ``msml_neg`` (the mined
    hardest positive / negative distances), [``ce``], ``total``.
    """

    def __init__(self, margin: float = 0.3, normalize: bool = True, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.margin = margin
        self.normalize = normalize
        self.ce = CrossEntropyLabelSmooth(label_smoothing)

    def forward(self, outputs: Mapping[str, Any], labels: Tensor, masks: Any = None) -> tuple[Tensor, dict[str, float]]:
        feats = outputs["feat"] if self.normalize else outputs["features"]
        msml, d_pos, d_neg = msml_loss(feats, labels, self.margin, normalize=False, return_pair=True)
        terms: dict[str, Tensor] = {"msml": msml, "msml_pos": d_pos, "msml_neg": d_neg}
        total = msml
        if outputs.get("logits") is not None:
            terms["ce"] = self.ce(outputs["logits"], labels)
            total = total + terms["ce"]
        terms["total"] = total
        values = torch.stack([t.detach().float() for t in terms.values()]).tolist()  # one device sync
        return total, dict(zip(terms, values))


def _mmga_loss(model_name: str, cfg: Any) -> nn.Module:
    return MMGALoss(model_name, cfg.lambda0, cfg.lambda1, cfg.lambda2, cfg.margin, cfg.label_smoothing)


def _mgran_loss(model_name: str, cfg: Any) -> nn.Module:
    return MGRANLoss(cfg.margin, getattr(cfg, "msml_normalize", True), cfg.label_smoothing)


def _fsa_loss(model_name: str, cfg: Any) -> nn.Module:
    return FSALoss(model_name, cfg.lambda1, cfg.lambda2, cfg.margin, cfg.label_smoothing)


# model name -> loss builder(model_name, loss config); names not listed get MMGALoss.
LOSS_BUILDERS: dict[str, Callable[[str, Any], nn.Module]] = {name: _mgran_loss for name in MGRAN_VARIANTS}
LOSS_BUILDERS.update({name: _fsa_loss for name in FSA_VARIANTS})


def build_loss(model_name: str, cfg: Any) -> nn.Module:
    """The training criterion of ``model_name`` from the ``loss`` config section.

    MGRAN variants: :class:`MGRANLoss` (MSML [+ CE]); FSA variants: ``FSALoss``
    (reid_train/losses_fsa.py); every other model (MMGA and its ablations): :class:`MMGALoss`.
    """
    return LOSS_BUILDERS.get(model_name, _mmga_loss)(model_name, cfg)
