"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification
with k-reciprocal Encoding", CVPR 2017).

Same inputs, outputs and semantics as ``torchreid.utils.rerank.re_ranking``
(three distance matrices in, re-ranked (num_query, num_gallery) distance out),
written from the definition:

1. ``D`` = squared distances over all query+gallery items, each column divided
   by its maximum; row ``i`` of ``D.T`` ("orig") is item i's distance profile;
   ``rank`` = its neighbours by increasing distance (stable: ties by index).
2. R(i, k)  = k-reciprocal neighbours of i: j in top-(k+1) of i and i in
   top-(k+1) of j. R*(i) = R(i, k1) expanded with R(c, round(k1/2)) for every
   c in R(i, k1) that shares more than 2/3 of its set with R(i, k1).
3. V[i, j] = exp(-orig[i, j]) normalised over j in R*(i) (0 elsewhere);
   query expansion: V[i] <- mean of V over the k2 nearest neighbours of i.
4. Jaccard distance ``1 - m / (2 - m)`` with ``m = sum_k min(V[q, k], V[g, k])``;
   final = (1 - lambda) * jaccard + lambda * orig.

Unlike the reference code, nothing of size (N, N) is allocated (N = num_query +
num_gallery) besides the caller's inputs: neighbours come from column blocks,
``V`` is sparse, and the Jaccard term is computed from its non-zeros.
"""

from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch

__all__ = ["re_ranking"]

Matrix = Union[np.ndarray, torch.Tensor]

# Working-memory targets (elements) for the blocked passes.
_COLUMN_BLOCK_ELEMENTS = 16 * 2**20
_NEIGHBOUR_BLOCK_ELEMENTS = 8 * 2**20
_JACCARD_BLOCK_PAIRS = 4 * 2**20


def _as_numpy(x: Matrix, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {arr.shape}")
    return arr


def _sq32(x: np.ndarray) -> np.ndarray:
    """Square in float64 and round once to float32 (= float32 ``x * x``)."""
    x = np.asarray(x, dtype=np.float64)
    return (x * x).astype(np.float32)


class _Joint:
    """Squared (N, N) matrix [[qq, qg], [qg^T, gg]] served in pieces."""

    def __init__(self, qg: np.ndarray, qq: np.ndarray, gg: np.ndarray) -> None:
        self.qg, self.qq, self.gg = qg, qq, gg
        self.nq = qg.shape[0]
        self.n = qg.shape[0] + qg.shape[1]

    def columns(self, a: int, b: int) -> np.ndarray:
        """Squared D[:, a:b] as float32 (N, b - a)."""
        nq = self.nq
        parts = []
        if a < nq:  # query columns: [qq[:, c]; qg[c, :]]
            qa, qb = a, min(b, nq)
            parts.append(np.vstack([_sq32(self.qq[:, qa:qb]), _sq32(self.qg[qa:qb, :].T)]))
        if b > nq:  # gallery columns: [qg[:, c]; gg[:, c]]
            ga, gb = max(a, nq) - nq, b - nq
            parts.append(np.vstack([_sq32(self.qg[:, ga:gb]), _sq32(self.gg[:, ga:gb])]))
        return parts[0] if len(parts) == 1 else np.hstack(parts)

    def entries(self, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Squared D[r, c] for index arrays r, c (float32)."""
        nq = self.nq
        out = np.empty(len(r), dtype=np.float32)
        rq, cq = r < nq, c < nq
        for mask, mat, ri, ci in (
            (rq & cq, self.qq, r, c),
            (rq & ~cq, self.qg, r, c - nq),
            (~rq & cq, self.qg, c, r - nq),  # D[r, c] = qg^T[r - nq, c] = qg[c, r - nq]
            (~rq & ~cq, self.gg, r - nq, c - nq),
        ):
            if mask.any():
                out[mask] = _sq32(mat[ri[mask], ci[mask]])
        return out


def _stable_smallest(rows: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest entries of each row, ordered as a stable argsort."""
    n = rows.shape[1]
    if k >= n:
        return np.argsort(rows, axis=1, kind="stable")
    t = torch.from_numpy(rows)
    kth = torch.topk(t, k, dim=1, largest=False, sorted=True).values[:, -1:]
    r, c = torch.nonzero(t <= kth, as_tuple=True)  # k or more per row (ties at the cut)
    r, c = r.numpy(), c.numpy()
    order = np.lexsort((c, rows[r, c], r))
    r, c = r[order], c[order]
    per_row = np.bincount(r, minlength=rows.shape[0])
    within = np.arange(len(r)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    keep = within < k
    return c[keep].reshape(rows.shape[0], k)


def _column_max_and_ranks(joint: _Joint, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Column maxima of D and the first k entries of argsort(orig, axis=1)."""
    n = joint.n
    width = max(1, _COLUMN_BLOCK_ELEMENTS // n)
    col_max = np.empty(n, dtype=np.float32)
    ranks = np.empty((n, min(k, n)), dtype=np.int64)
    for a in range(0, n, width):
        b = min(a + width, n)
        cols = joint.columns(a, b)
        col_max[a:b] = cols.max(axis=0)
        orig_rows = np.ascontiguousarray((cols / col_max[a:b]).T)  # rows a..b of orig
        ranks[a:b] = _stable_smallest(orig_rows, min(k, n))
    return col_max, ranks


def _reciprocal_mask(ranks: np.ndarray, k: int) -> np.ndarray:
    """mask[i, p]: ranks[i, p] is a k-reciprocal neighbour of i."""
    n = ranks.shape[0]
    top = ranks[:, : k + 1]
    width = top.shape[1]
    mask = np.empty(top.shape, dtype=bool)
    step = max(1, _NEIGHBOUR_BLOCK_ELEMENTS // (width * width))
    for a in range(0, n, step):
        b = min(a + step, n)
        back = top[top[a:b]]  # (rows, width, width): neighbours of the neighbours
        mask[a:b] = (back == np.arange(a, b)[:, None, None]).any(axis=2)
    return mask


def _expanded_sets(ranks: np.ndarray, k1: int) -> Tuple[np.ndarray, np.ndarray]:
    """(row, col) pairs of R*(i) for all i, unique and sorted."""
    n = ranks.shape[0]
    half = int(np.around(k1 / 2.0))
    top = ranks[:, : k1 + 1]
    top_half = ranks[:, : half + 1]
    recip = _reciprocal_mask(ranks, k1)
    recip_half = _reciprocal_mask(ranks, half)
    p, h = top.shape[1], top_half.shape[1]
    keys = []
    step = max(1, _NEIGHBOUR_BLOCK_ELEMENTS // (p * h * p))
    for a in range(0, n, step):
        b = min(a + step, n)
        rows = np.arange(a, b)
        cand = top[a:b]  # (m, p) forward neighbours of i
        cand_ok = recip[a:b]  # which are k1-reciprocal
        sets = top_half[cand]  # (m, p, h) candidates' half neighbours
        sets_ok = recip_half[cand]  # which are half-reciprocal to the candidate
        in_r = ((sets[..., None] == cand[:, None, None, :]) & cand_ok[:, None, None, :]).any(-1)
        overlap = np.count_nonzero(in_r & sets_ok, axis=2)
        size = np.count_nonzero(sets_ok, axis=2)
        accept = cand_ok & (overlap > (2.0 / 3.0) * size)
        r1 = np.broadcast_to(rows[:, None], cand.shape)[cand_ok]
        take = accept[..., None] & sets_ok
        r2 = np.broadcast_to(rows[:, None, None], sets.shape)[take]
        keys.append(r1 * n + cand[cand_ok])
        keys.append(r2 * n + sets[take])
    flat = np.unique(np.concatenate(keys))
    return flat // n, flat % n


def _jaccard_min_sums(v: sp.csr_matrix, nq: int) -> np.ndarray:
    """m[q, g] = sum_k min(V[q, k], V[nq + g, k]) for all query/gallery pairs (float32)."""
    n = v.shape[0]
    ng = n - nq
    vq = v[:nq].tocsr()
    vg = v[nq:].tocsc()  # column k -> the gallery rows having k in their support
    col_len = np.diff(vg.indptr)
    lens_all = col_len[vq.indices]  # pairs generated by each non-zero of V[:nq]
    cum = np.concatenate([[0], np.cumsum(lens_all)])
    pairs_per_q = cum[vq.indptr[1:]] - cum[vq.indptr[:-1]]
    max_rows = max(1, _JACCARD_BLOCK_PAIRS // max(ng, 1))  # bounds the dense block
    out = np.zeros((nq, ng), dtype=np.float32)
    a = 0
    while a < nq:
        b, budget = a + 1, int(pairs_per_q[a])
        while b < nq and b - a < max_rows and budget + pairs_per_q[b] <= _JACCARD_BLOCK_PAIRS:
            budget += int(pairs_per_q[b])
            b += 1
        lo, hi = vq.indptr[a], vq.indptr[b]
        if budget:
            q_rows = np.repeat(np.arange(b - a), np.diff(vq.indptr[a : b + 1]))
            ks, q_vals, lens = vq.indices[lo:hi], vq.data[lo:hi], lens_all[lo:hi]
            src = np.repeat(vg.indptr[ks] - (np.cumsum(lens) - lens), lens) + np.arange(budget)
            contrib = np.minimum(np.repeat(q_vals, lens), vg.data[src])
            flat = np.repeat(q_rows, lens) * ng + vg.indices[src]
            block = np.bincount(flat, weights=contrib, minlength=(b - a) * ng)
            out[a:b] = block.reshape(b - a, ng)
        a = b
    return out


def re_ranking(
    q_g_dist: Matrix,
    q_q_dist: Matrix,
    g_g_dist: Matrix,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Re-ranked query-gallery distance, float32 (num_query, num_gallery).

    Inputs are plain (not squared) distance matrices as numpy arrays or tensors;
    defaults are the paper's (k1=20, k2=6, lambda=0.3). See the module docstring
    for the algorithm; ties in the neighbour lists are broken by index.
    """
    qg = _as_numpy(q_g_dist, "q_g_dist")
    qq = _as_numpy(q_q_dist, "q_q_dist")
    gg = _as_numpy(g_g_dist, "g_g_dist")
    nq, ng = qg.shape
    if qq.shape != (nq, nq) or gg.shape != (ng, ng):
        raise ValueError(
            f"shape mismatch: q_g {qg.shape}, q_q {qq.shape}, g_g {gg.shape}"
        )
    if k1 < 1 or k2 < 1:
        raise ValueError("k1 and k2 must be >= 1")
    joint = _Joint(qg, qq, gg)
    n = joint.n

    col_max, ranks = _column_max_and_ranks(joint, max(k1 + 1, k2))

    # V: weights exp(-orig[i, j]) on R*(i), normalised per row
    rows, cols = _expanded_sets(ranks, k1)
    orig = joint.entries(cols, rows) / col_max[rows]  # orig[i, j] = D[j, i] / max_col(i)
    weight = np.exp(-orig)
    row_sum = np.bincount(rows, weights=weight, minlength=n).astype(np.float32)
    v = sp.csr_matrix((weight / row_sum[rows], (rows, cols)), shape=(n, n), dtype=np.float32)

    if k2 != 1:  # local query expansion: average over the k2 nearest neighbours
        nn = ranks[:, :k2]
        avg = sp.csr_matrix(
            (np.ones(nn.size, dtype=np.float32), (np.repeat(np.arange(n), nn.shape[1]), nn.ravel())),
            shape=(n, n),
        )
        v = (avg @ v).tocsr()
        v.data /= np.float32(nn.shape[1])

    m = _jaccard_min_sums(v, nq)
    jaccard = 1 - m / (2.0 - m)
    orig_qg = _sq32(qg) / col_max[:nq, None]  # orig[q, nq + g] = qg[q, g]^2 / max_col(q)
    return (jaccard * (1 - lambda_value) + orig_qg * lambda_value).astype(np.float32)
