"""CMC and mAP for person re-ID, numerically identical to torchreid, at MSMT17 scale.

Definitions (``torchreid.metrics.rank.evaluate_rank``, python path):

* per query, gallery items with the query's pid *and* camera are removed
  ("junk"); the remaining gallery is ranked by increasing distance;
* queries whose pid has no remaining gallery item are skipped (``ValueError``
  if every query is skipped);
* CMC(k) = fraction of valid queries whose first correct match is within the
  top k; AP = non-interpolated average precision,
  ``sum_hits (#hits so far / rank) / #hits``; mAP is the mean over valid queries.

Differences from torchreid, all deliberate:

* Ties: distances are ordered by a *stable* sort, so equal distances are broken
  by gallery order (torchreid uses ``np.argsort``'s unstable quicksort, whose
  tie order is unspecified). Without ties the results are the same.
* If a query keeps fewer than ``max_rank`` gallery items, its CMC is padded with
  its final value (1) instead of crashing (python path) or reading stale memory
  (cython path).
* NaN distances raise ``ValueError``.
* Nothing is printed; a small gallery gives a ``UserWarning``.

How it scales: only the ranks of *same-pid* gallery items are needed for CMC and
AP. On CPU each such rank is counted directly, ``#{i < j: d_i <= t} +
#{i > j: d_i < t}`` for the item j at distance t (= its stable-sort position),
one vectorised pass over the gallery row; that is ~20x cheaper than sorting the
row when a query has few matches (MSMT17: ~27 per query). Rows with very many matches, and
accelerator inputs, use a stable ``torch.sort`` instead. Queries are processed
in blocks, so extra memory is bounded by ``chunk_bytes`` however large the
distance matrix is.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Iterable, Iterator, Sequence, Tuple, Union

import numpy as np
import torch

from .distance import iter_distance_blocks

__all__ = ["evaluate_rank", "evaluate_from_features", "DEFAULT_CHUNK_BYTES"]

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[int]]
DistMat = Union[np.ndarray, torch.Tensor]
DeviceLike = Union[str, torch.device, None]

DEFAULT_CHUNK_BYTES = 256 * 2**20
"""Default working-memory budget for one block of queries (256 MiB)."""

CUHK03_REPEATS = 10
"""Gallery resamplings averaged by the CUHK03 protocol (as in torchreid)."""

# Peak bytes per (query, gallery) element of the sort path: sorted values
# (<= 8), indices (8), inverse permutation (8). Counting needs only O(gallery).
_SORT_BYTES_PER_ELEMENT = 24
# Cost model for choosing between counting and sorting a row on CPU, in ns:
# counting costs per match ~(_COUNT_NS_PER_ITEM * G + _COUNT_NS_PER_CALL),
# sorting costs ~_SORT_NS_PER_ITEM * G.
_COUNT_NS_PER_ITEM = 0.12
_COUNT_NS_PER_CALL = 4000.0
_SORT_NS_PER_ITEM = 45.0

_ALGORITHMS = ("auto", "count", "sort")


# --------------------------------------------------------------------------- inputs


def _to_numpy_ids(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.dtype.kind not in "iub":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _check_ids(
    num_q: int,
    num_g: int,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    qp = _to_numpy_ids(q_pids, "q_pids")
    gp = _to_numpy_ids(g_pids, "g_pids")
    qc = _to_numpy_ids(q_camids, "q_camids")
    gc = _to_numpy_ids(g_camids, "g_camids")
    if len(qp) != num_q or len(qc) != num_q:
        raise ValueError(f"expected {num_q} query pids/camids, got {len(qp)}/{len(qc)}")
    if len(gp) != num_g or len(gc) != num_g:
        raise ValueError(f"expected {num_g} gallery pids/camids, got {len(gp)}/{len(gc)}")
    return qp, gp, qc, gc


def _clip_max_rank(max_rank: int, num_g: int) -> int:
    if max_rank < 1:
        raise ValueError("max_rank must be >= 1")
    if num_g < max_rank:
        warnings.warn(
            f"number of gallery samples ({num_g}) is smaller than max_rank ({max_rank}); "
            f"using max_rank={num_g}",
            stacklevel=3,
        )
        return num_g
    return max_rank


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"algorithm must be one of {_ALGORITHMS}, got {algorithm!r}")


def _rows_per_block(chunk_bytes: int, num_g: int, bytes_per_element: int) -> int:
    if chunk_bytes <= 0:
        raise ValueError("chunk_bytes must be positive")
    return max(1, int(chunk_bytes) // (max(num_g, 1) * bytes_per_element))


# ------------------------------------------------------------------- gallery index


class _GalleryIndex:
    """Gallery items grouped by pid, to list every query's same-pid items fast."""

    def __init__(self, g_pids: np.ndarray) -> None:
        self.order = np.argsort(g_pids, kind="stable")  # within a pid: gallery order
        sorted_pids = g_pids[self.order]
        self.uniq, self.starts, self.counts = np.unique(
            sorted_pids, return_index=True, return_counts=True
        )

    def matches(self, q_pids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(row, gallery index) of every same-pid pair, sorted by row then index."""
        if len(self.uniq) == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        slot = np.minimum(np.searchsorted(self.uniq, q_pids), len(self.uniq) - 1)
        found = self.uniq[slot] == q_pids
        cnt = np.where(found, self.counts[slot], 0)
        rows = np.repeat(np.arange(len(q_pids), dtype=np.int64), cnt)
        first = np.cumsum(cnt) - cnt
        offsets = np.arange(len(rows), dtype=np.int64) - np.repeat(first, cnt)
        offsets += np.repeat(self.starts[slot], cnt)
        return rows, self.order[offsets]


# ------------------------------------------------------------ ranks of the matches


def _positions_by_counting(
    block: np.ndarray, rows: np.ndarray, cols: np.ndarray, out: np.ndarray
) -> None:
    """out[e] = stable-sort position of block[rows[e], cols[e]] within its row.

    position = #{i < j: d_i <= t} + #{i > j: d_i < t}, i.e. items closer than t
    plus equal items earlier in the gallery: exactly what a stable sort gives.
    """
    thresholds = block[rows, cols]
    last_row = -1
    row = block[0]
    for e, (r, j, t) in enumerate(zip(rows.tolist(), cols.tolist(), thresholds.tolist())):
        if r != last_row:
            row = block[r]
            last_row = r
        out[e] = np.count_nonzero(row[:j] <= t) + np.count_nonzero(row[j:] < t)


def _positions_by_sorting(block: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Stable-sort positions of block[rows, cols] via a full row sort (any device)."""
    order = torch.sort(block, dim=1, stable=True)[1]
    inverse = torch.empty_like(order)
    ranks = torch.arange(order.size(1), device=order.device).expand_as(order)
    inverse.scatter_(1, order, ranks)
    del order
    r = torch.from_numpy(rows).to(block.device)
    c = torch.from_numpy(cols).to(block.device)
    return inverse[r, c].cpu().numpy()


def _match_positions_cpu(
    block: np.ndarray, rows: np.ndarray, cols: np.ndarray, algorithm: str
) -> np.ndarray:
    """Positions of the listed matches on CPU: count, or sort rows with many matches.

    Counting is single-threaded on purpose: the comparisons are memory-bound and
    measured slower with two threads (GIL hand-offs).
    """
    b, num_g = block.shape
    pos = np.empty(len(rows), dtype=np.int64)
    if len(rows) == 0:
        return pos
    if algorithm == "count":
        by_sort = np.zeros(len(rows), dtype=bool)
    else:  # "auto": per row, whichever the cost model says is cheaper
        per_row = np.bincount(rows, minlength=b)
        count_ns = per_row * (_COUNT_NS_PER_ITEM * num_g + _COUNT_NS_PER_CALL)
        sort_rows = count_ns > _SORT_NS_PER_ITEM * num_g
        by_sort = sort_rows[rows]
    if by_sort.any():
        which = np.flatnonzero(sort_rows)
        local = np.full(b, -1, dtype=np.int64)
        local[which] = np.arange(len(which))
        sub = torch.from_numpy(np.ascontiguousarray(block[which]))
        pos[by_sort] = _positions_by_sorting(sub, local[rows[by_sort]], cols[by_sort])
    if not by_sort.all():
        idx = np.flatnonzero(~by_sort)
        out = np.empty(len(idx), dtype=np.int64)
        _positions_by_counting(block, rows[idx], cols[idx], out)
        pos[idx] = out
    return pos


# ----------------------------------------------------------------- AP and CMC rank


def _ap_and_first_rank(
    rows: np.ndarray, pos: np.ndarray, junk: np.ndarray, num_rows: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per query: AP, 1-based rank of the first correct match, validity.

    Works on the same-pid items only: an item's rank in the *kept* list is its
    full rank minus the number of junk items before it.
    """
    order = np.lexsort((pos, rows))
    rows, pos, junk = rows[order], pos[order], junk[order]
    good = ~junk
    per_row = np.bincount(rows, minlength=num_rows)
    seg_start = (np.cumsum(per_row) - per_row)[rows]  # first entry of each item's row

    junk_before = np.cumsum(junk) - junk
    junk_before -= junk_before[seg_start]
    good_incl = np.cumsum(good)
    hits = good_incl - (good_incl - good)[seg_start]  # hits so far, this one included
    kept_rank = pos + 1 - junk_before

    g_rows, g_hits, g_rank = rows[good], hits[good], kept_rank[good]
    num_good = np.bincount(g_rows, minlength=num_rows)
    ap_sum = np.bincount(g_rows, weights=g_hits / g_rank, minlength=num_rows)
    valid = num_good > 0
    ap = np.zeros(num_rows, dtype=np.float64)
    ap[valid] = ap_sum[valid] / num_good[valid]
    first = np.zeros(num_rows, dtype=np.int64)
    is_first = g_hits == 1
    first[g_rows[is_first]] = g_rank[is_first]
    return ap, first, valid


def _cuhk03_cmc(
    order: np.ndarray,
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    g_pids: np.ndarray,
    g_camids: np.ndarray,
    valid: np.ndarray,
    max_rank: int,
    rng: Union[np.random.RandomState, ModuleType],
) -> np.ndarray:
    """CUHK03 protocol CMC for a block: one random gallery image per identity.

    For each valid query, in query order, ``CUHK03_REPEATS`` times: keep one uniformly drawn
    image of every gallery identity (same-pid same-camera items removed first) and find the
    rank of the query identity's drawn image among the kept ones; the query's CMC is the
    mean of the resulting step curves. The draws follow torchreid's ``eval_cuhk03`` call
    for call -- per repeat, identities in the order of their first appearance in the
    ranked list, one ``randint(0, #images)`` each (what ``np.random.choice`` draws) -- so
    with the same generator state the curves are identical.
    """
    cmc = np.zeros((len(q_pids), max_rank), dtype=np.float32)
    for i in np.flatnonzero(valid):
        ranked = order[i]
        pids = g_pids[ranked]
        keep = ~((pids == q_pids[i]) & (g_camids[ranked] == q_camids[i]))
        pids = pids[keep]
        uniq, first_pos, inverse, counts = np.unique(pids, return_index=True, return_inverse=True, return_counts=True)
        by_pid = np.argsort(inverse, kind="stable")  # kept positions grouped by pid, ranked order within
        starts = np.cumsum(counts) - counts
        appearance = np.argsort(first_pos, kind="stable")  # identities in first-appearance order
        draws = rng.randint(0, np.tile(counts[appearance], CUHK03_REPEATS)).reshape(CUHK03_REPEATS, -1)
        chosen = by_pid[starts[appearance] + draws]  # (repeats, identities): kept positions
        q_col = int(np.flatnonzero(uniq[appearance] == q_pids[i])[0])
        rank0 = np.count_nonzero(chosen < chosen[:, q_col : q_col + 1], axis=1)
        hits = np.bincount(np.minimum(rank0, max_rank), minlength=max_rank + 1)
        cmc[i] = np.cumsum(hits[:max_rank]).astype(np.float32) / np.float32(CUHK03_REPEATS)
    return cmc


# ------------------------------------------------------------------------- driver


def _evaluate_blocks(
    blocks: Iterable[Tuple[int, DistMat]],
    num_q: int,
    num_g: int,
    qp: np.ndarray,
    gp: np.ndarray,
    qc: np.ndarray,
    gc: np.ndarray,
    max_rank: int,
    use_metric_cuhk03: bool,
    algorithm: str,
    seed: Union[int, None] = None,
) -> Tuple[np.ndarray, float]:
    gallery = _GalleryIndex(gp)
    rng = np.random if seed is None else np.random.RandomState(seed)
    ap = np.zeros(num_q, dtype=np.float64)
    first = np.zeros(num_q, dtype=np.int64)
    valid = np.zeros(num_q, dtype=bool)
    cuhk_cmc = np.zeros((num_q, max_rank), dtype=np.float32) if use_metric_cuhk03 else None
    for start, block in blocks:
        stop = start + block.shape[0]
        _check_finite(block)
        rows, cols = gallery.matches(qp[start:stop])
        if isinstance(block, torch.Tensor):
            pos = _positions_by_sorting(block, rows, cols)
        else:
            pos = _match_positions_cpu(block, rows, cols, algorithm)
        junk = gc[cols] == qc[start:stop][rows]
        ap_b, first_b, valid_b = _ap_and_first_rank(rows, pos, junk, stop - start)
        ap[start:stop], first[start:stop], valid[start:stop] = ap_b, first_b, valid_b
        if cuhk_cmc is not None and valid_b.any():
            t = block if isinstance(block, torch.Tensor) else torch.from_numpy(block)
            order = torch.sort(t, dim=1, stable=True)[1].cpu().numpy()
            cuhk_cmc[start:stop] = _cuhk03_cmc(
                order, qp[start:stop], qc[start:stop], gp, gc, valid_b, max_rank, rng
            )

    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("no valid query: no query identity appears in the gallery")
    if cuhk_cmc is not None:
        cmc = cuhk_cmc[valid].sum(axis=0, dtype=np.float32) / np.float32(num_valid)
    else:
        hist = np.bincount(np.minimum(first[valid], max_rank + 1), minlength=max_rank + 2)
        cmc = np.cumsum(hist[1 : max_rank + 1]).astype(np.float32) / np.float32(num_valid)
    return cmc.astype(np.float32, copy=False), float(np.mean(ap[valid]))


def _check_finite(block: DistMat) -> None:
    if isinstance(block, torch.Tensor):
        bad = block.is_floating_point() and bool(torch.isnan(block).any())
    else:
        bad = block.dtype.kind == "f" and bool(np.isnan(block).any())
    if bad:
        raise ValueError("distance matrix contains NaN")


def _numpy_block(block: np.ndarray) -> np.ndarray:
    if block.dtype.kind not in "fiu":
        block = block.astype(np.float64)
    return np.ascontiguousarray(block)


def _use_tensors(device: torch.device, algorithm: str) -> bool:
    """Sort (torch, on ``device``) or count (numpy, on CPU)?"""
    return algorithm == "sort" or (device.type != "cpu" and algorithm == "auto")


def _tensor_block(block: DistMat, device: torch.device) -> torch.Tensor:
    if not isinstance(block, torch.Tensor):
        block = torch.from_numpy(_numpy_block(block))
    return block.detach().to(device)


def _cpu_block(block: DistMat) -> np.ndarray:
    if isinstance(block, torch.Tensor):
        block = block.detach().cpu()
        if block.dtype in (torch.bfloat16, torch.complex64, torch.complex128):
            block = block.float()
        block = block.numpy()
    return _numpy_block(block)


def _distmat_blocks(
    distmat: DistMat, rows: int, device: torch.device, as_tensors: bool
) -> Iterator[Tuple[int, DistMat]]:
    """Row blocks of ``distmat`` (views where possible): tensors or numpy arrays."""
    for start in range(0, distmat.shape[0], rows):
        block = distmat[start : start + rows]
        yield start, _tensor_block(block, device) if as_tensors else _cpu_block(block)


def _resolve_device(data: DistMat, device: DeviceLike) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(data, torch.Tensor):
        return data.device
    return torch.device("cpu")


# --------------------------------------------------------------------- public API


def evaluate_rank(
    distmat: DistMat,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    use_metric_cuhk03: bool = False,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    device: DeviceLike = None,
    algorithm: str = "auto",
    seed: Union[int, None] = None,
) -> Tuple[np.ndarray, float]:
    """CMC curve (float32, length ``max_rank``) and mAP of a query-gallery distance matrix.

    Same signature, meaning and numbers as ``torchreid.metrics.evaluate_rank``
    (see the module docstring for the definitions and the three deliberate
    differences: stable tie order, CMC padding, NaN check). ``distmat`` may be a
    numpy array (memory-mapped is fine) or a tensor on any device; it is read in
    blocks of queries whose working memory stays within ``chunk_bytes``.

    ``use_metric_cuhk03=True`` follows torchreid's CUHK03 protocol (``eval_cuhk03``):
    the CMC is averaged over ``CUHK03_REPEATS`` random draws of one gallery image per
    identity, mAP is unchanged. Seeding: ``seed=None`` draws from the global
    ``np.random`` state, as torchreid does (seed it with ``np.random.seed``); an int
    draws from a private ``np.random.RandomState(seed)``, which leaves the global state
    alone and gives exactly torchreid's curve after ``np.random.seed(seed)``.

    ``device``: where blocks are sorted (default: the tensor's device, or CPU
    for numpy). ``algorithm``: "sort" ranks every row with a stable
    ``torch.sort`` on ``device``; "count" counts the ranks of the same-pid items
    on CPU; "auto" sorts on an accelerator and on CPU counts (sorting only rows
    with very many same-pid items). All three give identical results.
    """
    _check_algorithm(algorithm)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D, got shape {tuple(distmat.shape)}")
    num_q, num_g = int(distmat.shape[0]), int(distmat.shape[1])
    qp, gp, qc, gc = _check_ids(num_q, num_g, q_pids, g_pids, q_camids, g_camids)
    max_rank = _clip_max_rank(max_rank, num_g)
    dev = _resolve_device(distmat, device)
    rows = _rows_per_block(chunk_bytes, num_g, _SORT_BYTES_PER_ELEMENT)
    return _evaluate_blocks(
        _distmat_blocks(distmat, rows, dev, _use_tensors(dev, algorithm)),
        num_q, num_g, qp, gp, qc, gc, max_rank, use_metric_cuhk03, algorithm, seed,
    )


def evaluate_from_features(
    qf: torch.Tensor,
    gf: torch.Tensor,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    metric: str = "euclidean",
    max_rank: int = 50,
    use_metric_cuhk03: bool = False,
    *,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    algorithm: str = "auto",
    seed: Union[int, None] = None,
) -> Tuple[np.ndarray, float]:
    """CMC and mAP straight from features, never holding the full distance matrix.

    Distances are those of ``compute_distance_matrix(qf, gf, metric)`` (squared
    euclidean or cosine), computed one block of queries at a time on the
    features' device; results equal ``evaluate_rank`` on the full matrix (up to
    float rounding of the matmul, which only matters for near-ties). Extra
    memory: one block of distances plus ``chunk_bytes``; ``algorithm`` and ``seed`` as
    in ``evaluate_rank``.
    """
    _check_algorithm(algorithm)
    if not isinstance(qf, torch.Tensor) or not isinstance(gf, torch.Tensor):
        raise TypeError("qf and gf must be torch.Tensor")
    if qf.dim() != 2 or gf.dim() != 2:
        raise ValueError("qf and gf must be 2-D (num_samples, feature_dim)")
    num_q, num_g = int(qf.size(0)), int(gf.size(0))
    qp, gp, qc, gc = _check_ids(num_q, num_g, q_pids, g_pids, q_camids, g_camids)
    max_rank = _clip_max_rank(max_rank, num_g)
    gf = gf.to(qf.device)
    rows = _rows_per_block(chunk_bytes, num_g, _SORT_BYTES_PER_ELEMENT + 4)
    as_tensors = _use_tensors(qf.device, algorithm)

    def blocks() -> Iterator[Tuple[int, DistMat]]:
        with torch.no_grad():
            for start, block in iter_distance_blocks(qf.detach(), gf.detach(), metric, rows):
                yield start, block if as_tensors else _cpu_block(block)

    return _evaluate_blocks(
        blocks(), num_q, num_g, qp, gp, qc, gc, max_rank, use_metric_cuhk03, algorithm, seed
    )
