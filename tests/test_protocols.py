"""MGRAN's evaluation protocols: CUHK03's classic splits (masks, metric, 20-split summary) and
Market-1501's multiple query."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cache_helpers import make_cache
from reid_masks.datasets import build_dataset
from reid_masks.errors import UserError
from reid_train.cli import main
from reid_train.config import load_config
from reid_train.data.dataset import load_split_masks
from reid_train.data.regions import load_split_region_masks
from reid_train.engine.evaluator import (
    build_test_loader, evaluate_features, evaluate_model, extract_features, pool_multi_query,
)
from reid_train.evaluation import evaluate_rank
from reid_train.models import build_model
from reid_train.summarize import summarize_evaluations

pytestmark = pytest.mark.usefixtures("one_thread_and_clean_logging")


@pytest.fixture(scope="module")
def cuhk03_root(synth_dataset):
    return synth_dataset("cuhk03")


@pytest.fixture(scope="module")
def np_cache(cuhk03_root):
    """A cache of the new protocol's splits: the classic splits regroup the same images."""
    return make_cache(cuhk03_root, "cuhk03_labeled")


def test_classic_splits_read_their_masks_from_a_new_protocol_cache(cuhk03_root, np_cache) -> None:
    new = build_dataset("cuhk03", cuhk03_root)
    classic = build_dataset("cuhk03", cuhk03_root, protocol="classic", split_id=5)
    by_path = {}
    for split in ("train", "query", "gallery"):
        masks = load_split_region_masks(np_cache, new, split)
        small = load_split_masks(np_cache, new, split)
        by_path.update({r.path: (masks[i], small[i]) for i, r in enumerate(new.split(split))})
    for split in ("train", "query"):
        recs = classic.split(split)
        assert {r.path for r in recs} - {r.path for r in new.split(split)}, "the classic split must cross the cache's split groups"
        masks = load_split_region_masks(np_cache, classic, split)
        small = load_split_masks(np_cache, classic, split)
        for i, r in enumerate(recs):
            assert torch.equal(masks[i], by_path[r.path][0]) and torch.equal(small[i], by_path[r.path][1])


def test_classic_evaluation_uses_the_seeded_cuhk03_metric(cuhk03_root, np_cache, tmp_path) -> None:
    cfg = load_config("tiny_synthetic_mgran", [
        "data.dataset=cuhk03", f"data.root={cuhk03_root}", f"data.cache={np_cache}", "data.options.protocol=classic",
        "data.options.split_id=2", "data.height=64", "data.width=32", f"train.output_dir={tmp_path}", "train.seed=7",
    ])
    dataset = build_dataset("cuhk03", cuhk03_root, **cfg.data.options)
    torch.manual_seed(0)
    model = build_model("mgran", dataset.num_train_pids, backbone="resnet18")
    results = evaluate_model(model, dataset, cfg, torch.device("cpu"))
    assert results["protocol"] == "cuhk03_classic" and results["split_id"] == 2
    feats = {s: extract_features(model, build_test_loader(dataset, s, cfg, region_masks="regions"), torch.device("cpu"))
             for s in ("query", "gallery")}
    (qf, qp, qc), (gf, gp, gc) = feats["query"], feats["gallery"]
    distmat = torch.cdist(qf.double(), gf.double()).pow(2).numpy()
    max_rank = len(gp)
    cmc, m_ap = evaluate_rank(distmat, qp, gp, qc, gc, max_rank, use_metric_cuhk03=True, seed=7)
    assert results["rank1"] == pytest.approx(float(cmc[0]), abs=1e-6)
    assert results["rank5"] == pytest.approx(float(cmc[4]), abs=1e-6)
    assert results["mAP"] == pytest.approx(m_ap, abs=1e-6)
    market_cmc, _ = evaluate_rank(distmat, qp, gp, qc, gc, max_rank)
    assert not np.allclose(cmc[:5], market_cmc[:5])  # a different metric, not the all-gallery CMC


def _evaluation(tmp_path, name, split_id, rank1, mAP, protocol="cuhk03_classic"):
    """A run folder with the evaluation record a fit of that classic split (or of CUHK03-NP) appends."""
    from reid_masks.fileio import append_json_line
    from reid_train.results import evaluation_record

    classic = protocol == "cuhk03_classic"
    cfg = load_config("mgran_cuhk03_labeled" if classic else "mgran_cuhk03np_labeled",
                      [f"data.options.split_id={split_id}"] if classic else [])
    result = {"rank1": rank1, "rank5": rank1 + 0.1, "rank10": rank1 + 0.15, "mAP": mAP, "num_query": 100, "num_gallery": 100,
              "dataset": "cuhk03_labeled", "protocol": protocol, "multi_query": "none", **({"split_id": split_id} if classic else {})}
    folder = tmp_path / name
    record = evaluation_record({**result, "test_sets": [result]}, cfg, cfg, command="fit", epoch=cfg.solver.epochs, checkpoint=None)
    append_json_line(folder / "evaluations.jsonl", record)
    return folder


def test_summarize_reports_mean_and_sample_std_over_splits(tmp_path) -> None:
    from reid_train.results import read_evaluations

    runs = [_evaluation(tmp_path, f"s{k}", k, r, m) for k, (r, m) in enumerate([(0.80, 0.70), (0.84, 0.74), (0.86, 0.72)])]
    res = CliRunner().invoke(main, ["summarize", *map(str, runs)])
    assert res.exit_code == 0, res.output
    # by hand: mean 0.8333.., deviations -.0333 .0067 .0267 -> sample variance (.001111+.0000444+.000711)/2
    assert "rank1   83.33 +- 3.06  (min 80.00, max 86.00)" in res.stdout
    assert "mAP     72.00 +- 2.00" in res.stdout and "3 run(s) (of the protocol's 20)" in res.stdout
    stats = summarize_evaluations([r for run in runs for r in read_evaluations(run)])
    assert stats["rank1"]["std"] == pytest.approx(np.std([0.80, 0.84, 0.86], ddof=1))
    twice = _evaluation(tmp_path, "again", 1, 0.9, 0.8)
    res = CliRunner().invoke(main, ["summarize", str(runs[1]), str(twice)])
    assert res.exit_code == 2 and "classic split 1 twice" in res.stderr
    other = _evaluation(tmp_path, "np", 0, 0.9, 0.8, protocol="standard")
    with pytest.raises(UserError, match="differ in .*protocol"):
        summarize_evaluations([r for p in (runs[0], other) for r in read_evaluations(p)])
    res = CliRunner().invoke(main, ["summarize", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "evaluation file not found" in res.stderr


# --------------------------------------------------------------------------- Market-1501 multiple query


def test_multi_query_pooling_by_hand() -> None:
    qf = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    q_pids, q_cams = np.array([5, 5, 9]), np.array([0, 1, 0])
    mf = torch.tensor([[0.6, 0.8, 0.0], [1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 1.0], [0.8, 0.0, 0.6]])
    m_pids, m_cams = np.array([5, 5, 5, 7, 5]), np.array([0, 0, 1, 0, 2])
    mean = pool_multi_query(qf, q_pids, q_cams, mf, m_pids, m_cams, "mean")
    # query 0 (id 5, cam 0): rows 0 and 1 -> (0.8, 0.4, 0) / |.| ; query 1 (id 5, cam 1): row 2 only;
    # query 2 (id 9): no gt_bbox image -> its own feature
    expected = torch.tensor([[0.8, 0.4, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(mean, expected / expected.norm(dim=1, keepdim=True))
    top = pool_multi_query(qf, q_pids, q_cams, mf, m_pids, m_cams, "max")
    expected = torch.tensor([[1.0, 0.8, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(top, expected / expected.norm(dim=1, keepdim=True))


@pytest.fixture(scope="module")
def market_root(synth_dataset):
    return synth_dataset("market1501")


def test_market_gt_bbox_is_the_multi_query_set(market_root, cuhk03_root) -> None:
    ds = build_dataset("market1501", market_root)
    manifest = json.loads((market_root / "manifest.json").read_text())
    assert len(ds.multi_query) == manifest["multi_query"]["images"] > 0
    assert all(r.path.startswith("gt_bbox/") and r.split == "multi_query" for r in ds.multi_query)
    assert {(r.pid, r.camid) for r in ds.query} == {(r.pid, r.camid) for r in ds.multi_query}
    assert ds.split("multi_query") is ds.multi_query
    assert build_dataset("cuhk03", cuhk03_root).multi_query == []  # no gt_bbox: none


def test_multi_query_evaluation_pools_the_query_features(market_root, cuhk03_root, tmp_path) -> None:
    sets = [f"data.root={market_root}", "data.cache=", "model.name=baseline", "data.height=64", "data.width=32",
            f"train.output_dir={tmp_path}"]
    dataset = build_dataset("market1501", market_root)
    torch.manual_seed(0)
    model = build_model("baseline", dataset.num_train_pids, backbone="resnet18")
    single = evaluate_model(model, dataset, load_config("tiny_synthetic", sets), torch.device("cpu"))
    cfg = load_config("tiny_synthetic", [*sets, "test.multi_query=max"])
    multi = evaluate_model(model, dataset, cfg, torch.device("cpu"))
    assert (single["multi_query"], multi["multi_query"]) == ("none", "max")
    feats = {s: extract_features(model, build_test_loader(dataset, s, cfg), torch.device("cpu"))
             for s in ("query", "gallery", "multi_query")}
    (qf, qp, qc), (gf, gp, gc) = feats["query"], feats["gallery"]
    pooled = pool_multi_query(qf, qp, qc, *feats["multi_query"], mode="max")
    expected = evaluate_features(pooled, gf, qp, gp, qc, gc)
    assert {k: multi[k] for k in expected} == pytest.approx(expected)
    assert multi["rank1"] != single["rank1"] or multi["mAP"] != pytest.approx(single["mAP"])
    with pytest.raises(UserError, match=r"test.multi_query=max: cuhk03_labeled .* has no multi-query images"):
        evaluate_model(model, build_dataset("cuhk03", cuhk03_root), cfg, torch.device("cpu"))


def test_mgran_multi_query_reads_gt_bbox_masks_from_a_generated_cache(market_root, tmp_path) -> None:
    """``reid-masks generate`` writes a ``multi_query`` group for gt_bbox/, so MGRAN (masks at
    inference) can pool the multi-query images too."""
    from reid_masks.cache import MaskCache
    from reid_masks.generate import GenerateConfig, generate

    cache = tmp_path / "market.h5"
    generate(GenerateConfig(dataset="market1501", root=market_root, out=cache, parsing_dir=market_root / "parsing", backend="none", workers=0))
    dataset = build_dataset("market1501", market_root)
    with MaskCache(cache) as c:
        assert c.splits == ["train", "query", "gallery", "multi_query"]
        assert list(c.column("multi_query", "path")) == [r.path for r in dataset.multi_query]
    cfg = load_config("tiny_synthetic_mgran", [f"data.root={market_root}", f"data.cache={cache}", "data.height=64", "data.width=32",
                                                f"train.output_dir={tmp_path}", "test.multi_query=mean"])
    torch.manual_seed(0)
    model = build_model("mgran", dataset.num_train_pids, backbone="resnet18")
    result = evaluate_model(model, dataset, cfg, torch.device("cpu"))
    assert result["multi_query"] == "mean" and result["num_query"] == len(dataset.query)
