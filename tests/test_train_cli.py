"""``reid-train fit`` -> ``evaluate`` -> ``extract`` through the click CLI on a synthetic Market set."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cache_helpers import make_cache
from reid_masks.datasets import build_dataset
from reid_train.cli import main


pytestmark = pytest.mark.usefixtures("one_thread_and_clean_logging")


def test_fit_evaluate_extract(synth_dataset, tmp_path) -> None:
    root = synth_dataset("market1501", ids=4)
    out = tmp_path / "run"
    runner = CliRunner()
    sets = [
        "--set", f"data.root={root}", "--set", f"data.cache={make_cache(root)}", "--set", f"train.output_dir={out}",
        "--set", "solver.epochs=2", "--set", "data.height=64", "--set", "data.width=32",
    ]
    res = runner.invoke(main, ["fit", "--config", "tiny_synthetic", *sets])
    assert res.exit_code == 0, res.output
    assert "rank-1" in res.stdout and "mAP" in res.stdout
    assert "epoch 2/2" in res.stderr  # progress goes to stderr
    ckpt = out / "checkpoint.pth"
    assert ckpt.is_file() and (out / "metrics.jsonl").is_file() and (out / "config.yaml").is_file()

    res = runner.invoke(main, ["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output
    assert "rank-1" in res.stdout and "rank-5" in res.stdout and "rank-10" in res.stdout and "mAP" in res.stdout
    results = json.loads((tmp_path / "eval.json").read_text())
    ds = build_dataset("market1501", root)
    assert results["num_query"] == len(ds.query) and results["num_gallery"] == len(ds.gallery)
    for key in ("rank1", "rank5", "rank10", "mAP"):
        assert 0.0 <= results[key] <= 1.0
    assert results["rank1"] <= results["rank5"] <= results["rank10"]
    # the trainer's own final evaluation gives the same numbers
    (train_eval,) = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]
    assert train_eval["rank1"] == pytest.approx(results["rank1"]) and train_eval["mAP"] == pytest.approx(results["mAP"])

    # a re-ranked evaluation is appended next to the fit's, which stays as it was
    res = runner.invoke(main, ["evaluate", "--checkpoint", str(ckpt), "--set", "test.rerank=true", "--set", "test.k1=5", "--set", "test.k2=2"])
    assert res.exit_code == 0, res.output
    fit_line, reranked = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]
    assert fit_line == train_eval and fit_line["settings"]["rerank"] is False and fit_line["command"] == "fit"
    assert reranked["settings"]["rerank"] is True and (reranked["settings"]["k1"], reranked["settings"]["k2"]) == (5, 2)

    feats = tmp_path / "query.npz"
    res = runner.invoke(main, ["extract", "--checkpoint", str(ckpt), "--split", "query", "--out", str(feats)])
    assert res.exit_code == 0, res.output
    with np.load(feats) as z:
        assert z["features"].shape == (len(ds.query), 2048)
        assert np.allclose(np.linalg.norm(z["features"], axis=1), 1.0, atol=1e-5)
        assert list(z["paths"]) == [r.path for r in ds.query]
        assert list(z["pids"]) == [r.pid for r in ds.query]


def test_cli_user_errors_are_one_line(tmp_path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["fit", "--config", "tiny_synthetic", "--set", "solver.epoch=3"])
    assert res.exit_code == 2
    assert res.stderr.strip().count("\n") == 0 and "unknown config key 'solver.epoch'" in res.stderr
    res = runner.invoke(main, ["evaluate", "--checkpoint", str(tmp_path / "missing.pth")])
    assert res.exit_code == 2 and "checkpoint not found" in res.stderr
    res = runner.invoke(main, ["fit", "--config", "tiny_synthetic", "--set", f"data.root={tmp_path / 'nowhere'}",
                               "--set", f"train.output_dir={tmp_path / 'run'}"])
    assert res.exit_code == 2 and "dataset root not found" in res.stderr
