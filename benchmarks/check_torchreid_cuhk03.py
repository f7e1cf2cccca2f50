"""Check our CUHK03 metric against torchreid's own ``eval_cuhk03`` on random problems.

torchreid is not a dependency (and its package pulls in much more than the metric), so
this script loads ONE file, torchreid's ``metrics/rank.py`` (it needs only NumPy), from
a copy you point it at, e.g. the PyPI sdist::

    pip download --no-deps torchreid -d /tmp/tr && tar xzf /tmp/tr/torchreid-*.tar.gz -C /tmp/tr
    python benchmarks/check_torchreid_cuhk03.py /tmp/tr/torchreid-0.2.5/torchreid/reid/metrics/rank.py

For each problem it seeds ``np.random`` (torchreid draws from the global state), runs
``eval_cuhk03``, runs ``evaluate_rank(..., use_metric_cuhk03=True, seed=s)`` (a private
``RandomState(s)``), and requires bit-identical CMC curves; it prints the largest mAP
difference. ``max_rank`` stays below the number of gallery identities: torchreid's
curve is only as long as the sampled list.
"""
from __future__ import annotations

import argparse
import importlib.util
import warnings

import numpy as np

from reid_train.evaluation import evaluate_rank


def load_torchreid_rank(path: str):
    spec = importlib.util.spec_from_file_location("torchreid_rank", path)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():  # "Cython evaluation is unavailable"
        warnings.simplefilter("ignore")
        spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rank_py", help="path to torchreid's metrics/rank.py")
    parser.add_argument("--problems", type=int, default=30)
    args = parser.parse_args()
    torchreid_rank = load_torchreid_rank(args.rank_py)
    worst_map = 0.0
    for trial in range(args.problems):
        rng = np.random.default_rng(trial)
        num_q, num_g, ids = int(rng.integers(5, 60)), int(rng.integers(60, 300)), int(rng.integers(5, 30))
        g_pids, g_camids = rng.integers(0, ids, num_g), rng.integers(0, 3, num_g)
        q_pids, q_camids = rng.integers(0, ids, num_q), rng.integers(0, 3, num_q)
        distmat = rng.random((num_q, num_g)).astype(np.float32)
        max_rank = min(50, len(np.unique(g_pids)) - 1)
        np.random.seed(trial)
        ref_cmc, ref_map = torchreid_rank.eval_cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
        cmc, m_ap = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank,
                                  use_metric_cuhk03=True, seed=trial, chunk_bytes=24 * num_g * 7)
        if not np.array_equal(cmc, ref_cmc):
            raise SystemExit(f"problem {trial}: CMC differs by up to {np.abs(cmc - ref_cmc).max():.3g}")
        worst_map = max(worst_map, abs(m_ap - ref_map))
    print(f"{args.problems} random problems: CMC bit-identical to torchreid's eval_cuhk03; max |mAP diff| {worst_map:.2g}")


if __name__ == "__main__":
    main()
