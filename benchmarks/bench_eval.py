"""Benchmark of reid_train.evaluation.evaluate_rank / evaluate_from_features.

1. Market-1501 size (3,368 x 15,913): our evaluate_rank against two per-query
   NumPy loops of the kind torchreid's python ``eval_market1501`` runs (argsort
   of the whole matrix, then one query at a time):
   * "torchreid-style": AP through a Python list comprehension, as torchreid;
   * "numpy-loop": the same loop with AP vectorised (a stronger baseline).
   Both loops are linear in the number of queries; ``--loop-queries`` times them
   on the first N queries and extrapolates to all 3,368 (the script says so).
2. MSMT17 size (11,659 x 82,161, float32 distance matrix = 3.83 GB): time and
   peak resident memory of evaluate_rank, reported as peak minus the resident
   size just before the call (which already holds the distance matrix); then the
   same for evaluate_from_features on random 2048-d features (no distance matrix).

Distances are random with a same-identity shift (so ranks are not trivial).
Peak memory: Linux VmHWM reset through /proc/self/clear_refs, falling back to
getrusage (lifetime peak) where that is not allowed.

Usage:  python benchmarks/bench_eval.py [--skip-msmt] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_train.evaluation import evaluate_from_features, evaluate_rank  # noqa: E402
from machine import describe_machine as machine

GB = 1e9
MiB = 2**20


# ------------------------------------------------------------------ problems


def make_ids(
    rng: np.random.Generator,
    num_q: int,
    num_g: int,
    num_ids: int,
    num_cams: int,
    num_distractors: int,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Query ids drawn from ``num_ids`` identities; gallery = same ids + pid-0 distractors."""
    ids = np.arange(1, num_ids + 1)
    q_pids = np.concatenate([ids, rng.choice(ids, num_q - num_ids)])  # every id queried
    g_pids = np.concatenate(
        [np.zeros(num_distractors, dtype=np.int64), ids, rng.choice(ids, num_g - num_distractors - num_ids)]
    )
    rng.shuffle(g_pids)
    return q_pids, g_pids, rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)


def fill_distances(
    distmat: torch.Tensor, q_pids: np.ndarray, g_pids: np.ndarray, shift: float = 0.35
) -> None:
    """Uniform(0, 1) distances, same-identity pairs moved closer by ``shift``.

    In place and without (query x gallery) temporaries, so that the resident
    memory after this is the matrix itself (no freed heap to hide allocations).
    """
    distmat.uniform_(0, 1, generator=torch.Generator(device=distmat.device).manual_seed(0))
    g_by_pid: Dict[int, np.ndarray] = {}
    order = np.argsort(g_pids, kind="stable")
    uniq, starts, counts = np.unique(g_pids[order], return_index=True, return_counts=True)
    for pid, s, c in zip(uniq.tolist(), starts.tolist(), counts.tolist()):
        g_by_pid[pid] = order[s : s + c]
    q_order = np.argsort(q_pids, kind="stable")
    q_uniq, q_starts, q_counts = np.unique(q_pids[q_order], return_index=True, return_counts=True)
    for pid, s, c in zip(q_uniq.tolist(), q_starts.tolist(), q_counts.tolist()):
        g = g_by_pid.get(pid)
        if g is None:
            continue
        qi = torch.from_numpy(q_order[s : s + c]).to(distmat.device)
        gi = torch.from_numpy(g).to(distmat.device)
        distmat[qi[:, None], gi[None, :]] -= shift


# ------------------------------------------------------------------ baselines


def loop_eval(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, python_ap=True):
    """Per-query loop, same computation as torchreid's python eval_market1501.

    ``python_ap`` computes precision@k with a Python list comprehension as torchreid
    does; otherwise with a vectorised division.
    """
    num_q, num_g = distmat.shape
    max_rank = min(max_rank, num_g)
    indices = np.argsort(distmat, axis=1)
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap = [], []
    for q in range(num_q):
        order = indices[q]
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        raw = matches[q][keep]
        if not raw.any():
            continue
        cmc = raw.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        hits = raw.cumsum()
        if python_ap:
            precision = np.asarray([x / (i + 1.0) for i, x in enumerate(hits)])
        else:
            precision = hits / np.arange(1.0, len(hits) + 1)
        all_ap.append((precision * raw).sum() / raw.sum())
    cmc = np.asarray(all_cmc, dtype=np.float32).sum(0) / len(all_cmc)
    return cmc, float(np.mean(all_ap))


# ------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def current_rss() -> int:
    try:
        return _status_kib("VmRSS") * 1024
    except (OSError, KeyError):
        return 0


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) for this process, if allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss(reset_ok: bool) -> int:
    if reset_ok:
        try:
            return _status_kib("VmHWM") * 1024
        except (OSError, KeyError):
            pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def numpy_peak(fn: Callable[[], object]) -> int:
    """Peak bytes of numpy buffers (numpy reports them to tracemalloc; torch does not)."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(fn: Callable[[], object], device: str) -> Dict[str, float]:
    """Run fn once; wall time and the peak memory it added above the current level."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    base = current_rss()
    ok = reset_peak()
    t0 = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    out = {
        "seconds": elapsed,
        "base_rss": base,
        "peak_rss": peak_rss(ok),
        "peak_exact": float(ok),
        "result": result,
    }
    out["extra_rss"] = out["peak_rss"] - base
    if device == "cuda":
        out["extra_gpu"] = torch.cuda.max_memory_allocated() - base_gpu
    return out


def timed(fn: Callable[[], object]) -> Tuple[float, object]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


# ---------------------------------------------------------------------- runs




def bench_market(args: argparse.Namespace) -> None:
    num_q, num_g = 3368, 15913
    rng = np.random.default_rng(args.seed)
    q_pids, g_pids, q_cams, g_cams = make_ids(rng, num_q, num_g, 750, 6, 2793)
    d = torch.empty(num_q, num_g, device=args.device)
    fill_distances(d, q_pids, g_pids)
    d_np = d.cpu().numpy()
    ids = (q_pids, g_pids, q_cams, g_cams)
    print(f"\n== Market-1501 size: {num_q} x {num_g} (750 query ids, 6 cameras, 2793 distractors)")

    evaluate_rank(d[:64], q_pids[:64], g_pids, q_cams[:64], g_cams)  # warm-up
    ours = []
    for _ in range(args.repeats):
        t, (cmc, m_ap) = timed(lambda: evaluate_rank(d, *ids))
        ours.append(t)
    t_ours = min(ours)
    print(f"evaluate_rank ({args.device}): {t_ours:.3f} s (best of {args.repeats})  "
          f"rank-1 {cmc[0]:.4f}  mAP {m_ap:.4f}")
    if args.device == "cpu":
        t_sort, _ = timed(lambda: evaluate_rank(d, *ids, algorithm="sort"))
        print(f"evaluate_rank (cpu, algorithm='sort', stable torch.sort of every row): {t_sort:.3f} s")

    n = min(args.loop_queries, num_q)
    sub = (d_np[:n], q_pids[:n], g_pids, q_cams[:n], g_cams)
    scale = num_q / n
    note = "" if n == num_q else f" (timed on first {n} queries, x{scale:.2f} extrapolated)"
    for name, python_ap in (("torchreid-style loop", True), ("numpy loop", False)):
        t_loop, (l_cmc, l_map) = timed(lambda: loop_eval(*sub, python_ap=python_ap))
        c_cmc, c_map = evaluate_rank(*sub)
        assert abs(l_map - c_map) < 1e-6 and np.abs(l_cmc - c_cmc).max() < 1e-6, "results differ"
        total = t_loop * scale
        print(f"{name}: {total:.2f} s{note} -> evaluate_rank is {total / t_ours:.1f}x faster")

    if args.features:
        qf = torch.randn(num_q, args.feat_dim, device=args.device)
        gf = torch.randn(num_g, args.feat_dim, device=args.device)
        t, _ = timed(lambda: evaluate_from_features(qf, gf, *ids))
        print(f"evaluate_from_features ({args.feat_dim}-d, euclidean): {t:.2f} s")


def bench_msmt(args: argparse.Namespace) -> None:
    num_q, num_g = 11659, 82161
    rng = np.random.default_rng(args.seed)
    q_pids, g_pids, q_cams, g_cams = make_ids(rng, num_q, num_g, 3060, 15, 0)
    ids = (q_pids, g_pids, q_cams, g_cams)
    print(f"\n== MSMT17 size: {num_q} x {num_g} (3060 ids, 15 cameras)")
    d = torch.empty(num_q, num_g, device=args.device)
    fill_distances(d, q_pids, g_pids)
    size = d.numel() * d.element_size()
    print(f"distance matrix: {size / GB:.2f} GB float32 on {args.device}")
    distmat = d if args.device == "cuda" else d.numpy()
    m = measure(lambda: evaluate_rank(distmat, *ids), args.device)
    cmc, m_ap = m["result"]
    exact = "" if m["peak_exact"] else " (getrusage lifetime peak: upper bound)"
    print(f"evaluate_rank: {m['seconds']:.2f} s  rank-1 {cmc[0]:.4f}  mAP {m_ap:.4f}")
    print(f"  RSS before {m['base_rss'] / GB:.2f} GB, peak {m['peak_rss'] / GB:.2f} GB{exact}")
    print(f"  peak extra memory beyond the distance matrix: {m['extra_rss'] / MiB:.0f} MiB (RSS)")
    if args.device == "cpu":
        peak = numpy_peak(lambda: evaluate_rank(distmat, *ids))
        print(f"  peak numpy allocations during the call (tracemalloc): {peak / MiB:.0f} MiB")
    if args.device == "cuda":
        print(f"  peak extra GPU memory: {m['extra_gpu'] / MiB:.0f} MiB")
    else:  # the sort path (what an accelerator runs), on a subset: it is ~50x slower on CPU
        n = min(args.sort_queries, num_q)
        m = measure(
            lambda: evaluate_rank(distmat[:n], q_pids[:n], g_pids, q_cams[:n], g_cams, algorithm="sort"),
            args.device,
        )
        print(f"evaluate_rank(algorithm='sort') on the first {n} queries: {m['seconds']:.2f} s "
              f"(x{num_q / n:.1f} -> ~{m['seconds'] * num_q / n:.0f} s for all), "
              f"peak extra memory {m['extra_rss'] / MiB:.0f} MiB")
    del d, distmat
    gc.collect()

    if args.features:
        gen = torch.Generator(device=args.device).manual_seed(1)
        qf = torch.randn(num_q, args.feat_dim, device=args.device, generator=gen)
        gf = torch.randn(num_g, args.feat_dim, device=args.device, generator=gen)
        feat_bytes = (qf.numel() + gf.numel()) * 4
        m = measure(lambda: evaluate_from_features(qf, gf, *ids), args.device)
        print(f"evaluate_from_features ({args.feat_dim}-d features = {feat_bytes / GB:.2f} GB, "
              f"euclidean): {m['seconds']:.2f} s, peak extra memory {m['extra_rss'] / MiB:.0f} MiB"
              + (f", GPU {m['extra_gpu'] / MiB:.0f} MiB" if args.device == "cuda" else ""))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--skip-msmt", action="store_true", help="only the Market-size benchmark")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--loop-queries", type=int, default=1000,
                   help="queries timed for the loop baselines (extrapolated to all 3368)")
    p.add_argument("--sort-queries", type=int, default=1000,
                   help="MSMT queries timed with algorithm='sort' on CPU (extrapolated)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-features", dest="features", action="store_false",
                   help="skip evaluate_from_features")
    p.add_argument("--feat-dim", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("CUDA is not available")
    print(machine())
    print("load average before start: %.2f %.2f %.2f" % os.getloadavg())
    bench_market(args)
    if not args.skip_msmt:
        bench_msmt(args)


if __name__ == "__main__":
    main()
