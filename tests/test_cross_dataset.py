"""Train on one synthetic dataset, evaluate on others (data.test_sets): disk -> masks -> model -> scores."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from reid_masks.datasets import build_dataset
from reid_masks.errors import UserError
from reid_masks.generate import GenerateConfig, generate
from reid_train.cli import main
from reid_train.config import load_config
from reid_train.engine.test_sets import build_test_sets

pytestmark = pytest.mark.usefixtures("one_thread_and_clean_logging")


def mask_cache(name: str, root, out):
    """The real mask stage on the synthetic parsing PNGs (no detector)."""
    return generate(GenerateConfig(dataset=name, root=root, out=out, parsing_dir=root / "parsing", workers=0, backend="none")).path


def test_market_to_occluded_reid_and_partial_reid(synth_dataset, tmp_path):
    market, occ, partial = synth_dataset("market1501", ids=4), synth_dataset("occluded_reid"), synth_dataset("partial_reid")
    market_cache = mask_cache("market1501", market, tmp_path / "market.h5")
    occ_cache = mask_cache("occluded_reid", occ, tmp_path / "occ.h5")
    out = tmp_path / "run"
    test_sets = f"[{{dataset: occluded_reid, root: '{occ}', cache: '{occ_cache}'}}, {{dataset: partial_reid, root: '{partial}'}}]"
    sets = ["--set", f"data.root={market}", "--set", f"data.cache={market_cache}", "--set", f"train.output_dir={out}",
            "--set", "solver.epochs=1", "--set", "data.height=64", "--set", "data.width=32", "--set", f"data.test_sets={test_sets}"]
    runner = CliRunner()
    res = runner.invoke(main, ["fit", "--config", "tiny_synthetic", *sets])
    assert res.exit_code == 0, res.output
    fit_eval = json.loads((out / "evaluations.jsonl").read_text().splitlines()[-1])
    assert [r["dataset"] for r in fit_eval["test_sets"]] == ["occluded_reid", "partial_reid"]
    assert fit_eval["dataset"] == "occluded_reid" and fit_eval["rank1"] == fit_eval["test_sets"][0]["rank1"]
    for r, name, root in zip(fit_eval["test_sets"], ("occluded_reid", "partial_reid"), (occ, partial)):
        ds = build_dataset(name, root)
        assert (r["num_query"], r["num_gallery"]) == (len(ds.query), len(ds.gallery))

    ckpt = out / "checkpoint.pth"
    res = runner.invoke(main, ["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output
    lines = [line for line in res.stdout.splitlines() if "rank-1" in line]
    assert [line.split()[0] for line in lines] == ["occluded_reid", "partial_reid"]
    again = json.loads((tmp_path / "eval.json").read_text())
    for a, b in zip(again["test_sets"], fit_eval["test_sets"]):
        assert a["rank1"] == pytest.approx(b["rank1"]) and a["mAP"] == pytest.approx(b["mAP"])
    # the training set need not be on the machine that evaluates on the test sets
    res = runner.invoke(main, ["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "eval2.json"),
                               "--set", f"data.root={tmp_path / 'no-market-here'}"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "eval2.json").read_text())["test_sets"][0]["rank1"] == pytest.approx(fit_eval["test_sets"][0]["rank1"])

    # independent scoring of Occluded-REID from the extracted features: queries are camera 0 and the
    # gallery camera 1, so nothing is removed and rank-1 is the plain nearest neighbour's identity
    feats = {}
    for split in ("query", "gallery"):
        path = tmp_path / f"{split}.npz"
        res = runner.invoke(main, ["extract", "--checkpoint", str(ckpt), "--split", split, "--out", str(path),
                                   "--set", "data.dataset=occluded_reid", "--set", f"data.root={occ}", "--set", f"data.cache={occ_cache}"])
        assert res.exit_code == 0, res.output
        with np.load(path) as z:
            feats[split] = (z["features"], z["pids"])
    (qf, qp), (gf, gp) = feats["query"], feats["gallery"]
    dist = ((qf[:, None, :] - gf[None, :, :]) ** 2).sum(-1)
    rank1 = float(np.mean(gp[dist.argmin(1)] == qp))
    assert fit_eval["test_sets"][0]["rank1"] == pytest.approx(rank1)
    ap = []
    for i in range(len(qp)):
        hits = gp[np.argsort(dist[i], kind="stable")] == qp[i]
        ap.append(np.mean([hits[: k + 1].sum() / (k + 1) for k in np.flatnonzero(hits)]))
    assert fit_eval["test_sets"][0]["mAP"] == pytest.approx(float(np.mean(ap)), abs=1e-6)


def test_test_sets_config_checks_and_per_set_cache(synth_dataset, tmp_path):
    occ = synth_dataset("occluded_reid")
    cfg = load_config("tiny_synthetic", [f"data.test_sets=[{{dataset: occluded_reid, root: '{occ}', cache: /c.h5}}]"])
    (ts,) = build_test_sets(cfg)
    assert ts.dataset.name == "occluded_reid" and ts.cfg.data.cache == "/c.h5" and ts.cfg.data.root == str(occ)
    assert cfg.data.cache != "/c.h5"  # the training config is untouched
    with pytest.raises(UserError, match=r"data.test_sets\[0\]: unknown key\(s\) roots"):
        load_config("tiny_synthetic", ["data.test_sets=[{dataset: occluded_reid, roots: /x}]"])
    with pytest.raises(UserError, match=r"data.test_sets\[0\]: 'root' is required"):
        load_config("tiny_synthetic", ["data.test_sets=[{dataset: occluded_reid}]"])
    with pytest.raises(UserError, match=r"expected a list of mappings"):
        load_config("tiny_synthetic", ["data.test_sets=occluded_reid"])
    with pytest.raises(UserError, match=r"dataset root not found"):
        build_test_sets(load_config("tiny_synthetic", [f"data.test_sets=[{{dataset: partial_reid, root: '{tmp_path / 'no'}'}}]"]))


def test_packaged_occluded_configs():
    for model in ("mmga", "mgran"):
        cfg = load_config(f"{model}_occluded_duke")
        assert (cfg.model.name, cfg.data.dataset, cfg.data.test_sets) == (model, "occluded_duke", [])
        for target in ("occluded_reid", "partial_reid"):
            cfg = load_config(f"{model}_market1501_to_{target}")
            assert cfg.model.name == model and cfg.data.dataset == "market1501"
            assert [(t["dataset"], bool(t["cache"])) for t in cfg.data.test_sets] == [(target, True)]
            assert cfg.train.output_dir.endswith(f"{model}_market1501_to_{target}")
