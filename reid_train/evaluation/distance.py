"""Distance matrices between feature sets (torchreid-compatible definitions).

``euclidean`` is the *squared* euclidean distance, exactly like torchreid's
``euclidean_squared_distance`` (ranking is the same as for the plain euclidean
distance and the square root is skipped); ``cosine`` is ``1 - <a/|a|, b/|b|>``.
"""

from __future__ import annotations

from typing import Iterator, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "compute_distance_matrix",
    "euclidean_squared_distance",
    "cosine_distance",
    "METRICS",
]

METRICS = ("euclidean", "cosine")

# Rows per chunk when reducing feature norms: bounds the temporary ``x ** 2``.
_NORM_CHUNK_ROWS = 8192


def _check_pair(input1: torch.Tensor, input2: torch.Tensor) -> None:
    if not isinstance(input1, torch.Tensor) or not isinstance(input2, torch.Tensor):
        raise TypeError("features must be torch.Tensor")
    if input1.dim() != 2 or input2.dim() != 2:
        raise ValueError(
            f"expected 2-D feature matrices, got {input1.dim()}-D and {input2.dim()}-D"
        )
    if input1.size(1) != input2.size(1):
        raise ValueError(
            f"feature dimensions differ: {input1.size(1)} vs {input2.size(1)}"
        )


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown distance metric {metric!r}; choose one of {METRICS}")


def _squared_norms(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ``sum(x ** 2)``, chunked so no full-size temporary is created."""
    if x.size(0) <= _NORM_CHUNK_ROWS:
        return x.pow(2).sum(dim=1)
    return torch.cat(
        [x[s : s + _NORM_CHUNK_ROWS].pow(2).sum(dim=1) for s in range(0, x.size(0), _NORM_CHUNK_ROWS)]
    )


def _row_norms(x: torch.Tensor) -> torch.Tensor:
    """Row-wise L2 norms clamped like ``F.normalize`` (eps=1e-12)."""
    return _squared_norms(x).sqrt_().clamp_min_(1e-12)


def euclidean_squared_distance(input1: torch.Tensor, input2: torch.Tensor) -> torch.Tensor:
    """``|a|^2 + |b|^2 - 2 a.b`` for every pair of rows (torchreid's definition)."""
    _check_pair(input1, input2)
    distmat = _squared_norms(input1)[:, None] + _squared_norms(input2)[None, :]
    return distmat.addmm_(input1, input2.t(), beta=1, alpha=-2)


def cosine_distance(input1: torch.Tensor, input2: torch.Tensor) -> torch.Tensor:
    """``1 - cos(a, b)`` for every pair of rows."""
    _check_pair(input1, input2)
    a = F.normalize(input1, p=2, dim=1)
    b = F.normalize(input2, p=2, dim=1)
    return 1 - torch.mm(a, b.t())


def compute_distance_matrix(
    input1: torch.Tensor, input2: torch.Tensor, metric: str = "euclidean"
) -> torch.Tensor:
    """(m, n) distance matrix between the rows of ``input1`` and ``input2``.

    Same contract as ``torchreid.metrics.compute_distance_matrix``: tensors in,
    tensor out (on the inputs' device), ``metric`` is ``"euclidean"`` (squared)
    or ``"cosine"``.
    """
    _check_pair(input1, input2)
    _check_metric(metric)
    if metric == "euclidean":
        return euclidean_squared_distance(input1, input2)
    return cosine_distance(input1, input2)


def iter_distance_blocks(
    qf: torch.Tensor, gf: torch.Tensor, metric: str, rows_per_block: int
) -> Iterator[Tuple[int, torch.Tensor]]:
    """Yield ``(start, distmat[start:start + rows])`` without building the full matrix.

    Gallery norms are computed once; each block costs one matmul. No normalised
    copy of the gallery is made (cosine divides the dot products by the gallery
    norms instead), so extra memory is one block plus O(num_gallery).
    """
    _check_pair(qf, gf)
    _check_metric(metric)
    if rows_per_block < 1:
        raise ValueError("rows_per_block must be >= 1")
    if metric == "euclidean":
        g_sq = _squared_norms(gf)
        for start in range(0, qf.size(0), rows_per_block):
            q = qf[start : start + rows_per_block]
            block = _squared_norms(q)[:, None] + g_sq[None, :]
            yield start, block.addmm_(q, gf.t(), beta=1, alpha=-2)
    else:
        g_inv_norm = _row_norms(gf).reciprocal_()
        for start in range(0, qf.size(0), rows_per_block):
            q = F.normalize(qf[start : start + rows_per_block], p=2, dim=1)
            block = torch.mm(q, gf.t()).mul_(g_inv_norm[None, :])
            yield start, block.neg_().add_(1)
