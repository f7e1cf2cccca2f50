"""Results that are kept and comparable, errors that name the right key (issue 23, first half):
evaluation records appended with their settings, summarize grouping runs, test sets in visualize,
keys a command ignores refused, the test set's cache key named, null caches, configs checked
before torch is imported, MGRAN's learning rates under their config names, load_model as an nn.Module."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cache_helpers import make_cache
from reid_masks.datasets import build_dataset
from reid_masks.errors import UserError
from reid_masks.fileio import append_json_line
from reid_train.cli import main
from reid_train.config import config_from_dict, load_config
from reid_train.results import evaluation_record, read_evaluations

pytestmark = pytest.mark.usefixtures("one_thread_and_clean_logging")
HW = (64, 32)


@pytest.fixture(scope="module")
def runs(synth_dataset, tmp_path_factory) -> dict:
    """One-epoch MMGA and MGRAN runs on a synthetic Market-1501 (random resnet18), through 'reid-train fit'."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    market = synth_dataset("market1501", ids=4)
    base = tmp_path_factory.mktemp("i23runs")
    out = {"market": market, "duke": synth_dataset("dukemtmc", ids=4)}
    for name, config in (("mmga", "tiny_synthetic"), ("mgran", "tiny_synthetic_mgran")):
        args = [f"data.root={market}", f"data.cache={make_cache(market)}", f"train.output_dir={base / name}",
                "solver.epochs=1", f"data.height={HW[0]}", f"data.width={HW[1]}"]
        res = CliRunner().invoke(main, ["fit", "--config", config, *[x for a in args for x in ("--set", a)]])
        assert res.exit_code == 0, res.output
        out[name] = {"dir": base / name, "ckpt": base / name / "checkpoint.pth", "log": res.stderr}
    torch.set_num_threads(threads)
    return out


def _invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


# --------------------------------------------------------------------------- 1. records kept, with their settings


def test_every_evaluation_is_kept_with_what_decides_its_numbers(runs, tmp_path) -> None:
    run, ckpt = runs["mmga"]["dir"], runs["mmga"]["ckpt"]
    (fit,) = read_evaluations(run)  # the fit's own evaluation
    assert fit["command"] == "fit" and fit["epoch"] == 1 and fit["seed"] == 0
    assert fit["settings"] == {"metric": "euclidean", "flip": True, "rerank": False, "k1": None, "k2": None,
                               "lambda_value": None, "multi_query": "none", "precision": "float32", "input_size": list(HW)}
    assert fit["checkpoint"]["epoch"] == 1
    assert fit["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert fit["config"]["model"]["name"] == "mmga" and fit["test_sets"][0]["dataset"] == fit["dataset"] == "market1501"
    assert (fit["protocol"], fit["multi_query"]) == ("standard", "none")

    before = (run / "evaluations.jsonl").read_bytes()
    res = _invoke("evaluate", "--checkpoint", ckpt, "--set", "test.rerank=true", "--set", "test.k1=5", "--set", "test.k2=2",
                  "--set", "test.metric=cosine")
    assert res.exit_code == 0, res.output
    assert f"record appended to {run / 'evaluations.jsonl'}" in res.stdout
    assert (run / "evaluations.jsonl").read_bytes().startswith(before)  # the fit's line is untouched
    kept, reranked = read_evaluations(run)
    assert {k: v for k, v in kept.items() if k != "source"} == {k: v for k, v in fit.items() if k != "source"}
    assert reranked["command"] == "evaluate" and reranked["checkpoint"]["sha256"] == fit["checkpoint"]["sha256"]
    assert {k: reranked["settings"][k] for k in ("metric", "rerank", "k1", "k2", "lambda_value")} == \
        {"metric": "cosine", "rerank": True, "k1": 5, "k2": 2, "lambda_value": 0.3}

    # --out: a .json file is a new file (an existing one is refused, unchanged); a .jsonl file is appended to
    one = tmp_path / "one.json"
    assert _invoke("evaluate", "--checkpoint", ckpt, "--out", one).exit_code == 0
    first = one.read_bytes()
    res = _invoke("evaluate", "--checkpoint", ckpt, "--out", one)
    assert res.exit_code == 2 and "never overwritten" in res.stderr and one.read_bytes() == first
    assert json.loads(first)["rank1"] == pytest.approx(fit["rank1"])
    log = tmp_path / "all.jsonl"
    log.write_text('{"rank1": 0.5, "torn by a cr')  # a line torn by a crash: skipped, and the next record starts its own line
    append_json_line(log, {k: v for k, v in reranked.items() if k not in ("source", "source_file")})
    (rec,) = read_evaluations(log)
    assert rec["mAP"] == reranked["mAP"] and rec["source"].endswith(":2")


# --------------------------------------------------------------------------- 2. summarize averages only repeats


def _record(folder: Path, config: str, seed: int, rank1: float, *sets: str, epoch: int = 1) -> Path:
    """Append the record a fit of ``config`` (seed, --set ``sets``) would append to ``folder``."""
    cfg = load_config(config, [f"train.seed={seed}", *sets])
    result = {"rank1": rank1, "rank5": rank1, "rank10": rank1, "mAP": rank1 / 2, "num_query": 4, "num_gallery": 20,
              "dataset": "market1501", "protocol": "standard", "multi_query": "none"}
    append_json_line(folder / "evaluations.jsonl", evaluation_record({**result, "test_sets": [result]}, cfg, cfg,
                                                                     command="fit", epoch=epoch, checkpoint=None))
    return folder


def test_summarize_averages_only_runs_that_differ_in_seed_or_split(tmp_path) -> None:
    from reid_train.summarize import summarize_evaluations

    a = _record(tmp_path / "mmga_s0", "tiny_synthetic", 0, 0.2, epoch=1)
    _record(a, "tiny_synthetic", 0, 0.5, epoch=2)  # a later epoch of the same run: it counts, not epoch 1
    b = _record(tmp_path / "mmga_s1", "tiny_synthetic", 1, 0.7, epoch=2)
    c = _record(tmp_path / "mgran_rr", "tiny_synthetic_mgran", 0, 0.9, "test.rerank=true", epoch=2)
    res = _invoke("summarize", a, b)
    assert res.exit_code == 0, res.output
    assert "2 run(s)" in res.stdout and "rank1   60.00 +- 14.14" in res.stdout and "not averaged" not in res.stdout

    res = _invoke("summarize", a, b, c)
    assert res.exit_code == 0, res.output
    first = res.stdout.splitlines()[0]
    assert first.startswith("not averaged together: the runs differ in model.name (mmga | mgran)")
    assert "settings.rerank (false | true)" in first and "2 groups below" in first
    assert "2 run(s)" in res.stdout and "1 run(s)" in res.stdout and "60.00 +- 14.14" in res.stdout
    with pytest.raises(UserError, match=r"differ in model.name \(mmga \| mgran\).*settings.rerank"):
        summarize_evaluations(read_evaluations(b) + read_evaluations(c))
    # a file from before records (no settings) is refused: what it measured cannot be compared
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "evaluation.json").write_text(json.dumps({"rank1": 0.5, "rank5": 0.6, "rank10": 0.7, "mAP": 0.4}))
    res = _invoke("summarize", tmp_path / "old")
    assert res.exit_code == 2 and "does not record how it was scored" in res.stderr


# --------------------------------------------------------------------------- 3. test sets in visualize; ignored keys refused


def test_visualize_draws_each_test_set_and_commands_refuse_keys_they_ignore(runs, tmp_path) -> None:
    duke, ckpt = runs["duke"], runs["mmga"]["ckpt"]
    out = tmp_path / "vis"
    res = _invoke("visualize", "--checkpoint", ckpt, "--n", "2", "--topk", "3", "--tile-height", "32", "--out", out,
                  "--set", f"data.test_sets=[{{dataset: dukemtmc, root: '{duke}'}}]")
    assert res.exit_code == 0, res.output
    assert not (out / "rankings.json").exists() and f"to {out / 'dukemtmc'} (dukemtmc:" in res.stdout
    shown = json.loads((out / "dukemtmc" / "rankings.json").read_text())
    ds = build_dataset("dukemtmc", duke)
    assert shown["dataset"] == "dukemtmc" and len(shown["queries"]) == 2
    assert all(q["path"] == ds.query[q["index"]].path for q in shown["queries"])
    assert all(t["path"] == ds.gallery[t["index"]].path for q in shown["queries"] for t in q["top"])

    res = _invoke("extract", "--checkpoint", ckpt, "--split", "query", "--out", tmp_path / "q.npz",
                  "--set", f"data.test_sets=[{{dataset: dukemtmc, root: '{duke}'}}]")
    assert res.exit_code == 2 and "data.test_sets is not read by 'reid-train extract'" in res.stderr
    for key in ("solver.lr=0.1", "model.name=mgran", "data.height=128", "train.output_dir=/tmp/x"):
        res = _invoke("evaluate", "--checkpoint", ckpt, "--set", key)
        assert res.exit_code == 2 and f"{key.split('=')[0]} is not read by 'reid-train evaluate'" in res.stderr, key
        assert res.stderr.strip().count("\n") == 0
    res = _invoke("visualize", "--checkpoint", ckpt, "--out", tmp_path / "v2", "--set", "test.multi_query=mean")
    assert res.exit_code == 2 and "test.multi_query is not read by 'reid-train visualize'" in res.stderr
    res = _invoke("evaluate", "--checkpoint", ckpt, "--set", "data.test_sets[0].cache=/x.h5")
    assert res.exit_code == 2 and "data.test_sets has 0 entries" in res.stderr


# --------------------------------------------------------------------------- 4. the test set's cache key is named


def test_mgran_without_a_test_set_cache_names_the_key_to_set(runs, tmp_path) -> None:
    duke, ckpt = runs["duke"], runs["mgran"]["ckpt"]
    duke_sets = f"data.test_sets=[{{dataset: dukemtmc, root: '{duke}'}}]"
    res = _invoke("evaluate", "--checkpoint", ckpt, "--set", duke_sets)
    assert res.exit_code == 2 and res.stderr.strip().count("\n") == 0, res.output
    assert f"image of dukemtmc at {duke}: set data.test_sets[0].cache to that dataset's HDF5 mask cache" in res.stderr
    # setting the key it names works
    res = _invoke("evaluate", "--checkpoint", ckpt, "--set", duke_sets, "--out", tmp_path / "e.json",
                  "--set", f"data.test_sets[0].cache={make_cache(duke, 'dukemtmc')}")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "e.json").read_text())["test_sets"][0]["dataset"] == "dukemtmc"
    # another dataset through data.dataset/data.root: the training cache is not that dataset's, so data.cache is named
    res = _invoke("evaluate", "--checkpoint", ckpt, "--set", "data.dataset=dukemtmc", "--set", f"data.root={duke}")
    assert res.exit_code == 2 and "set data.cache to that dataset's HDF5 mask cache" in res.stderr
    # fit refuses before training, not after it
    market = runs["market"]
    args = [f"data.root={market}", f"data.cache={make_cache(market)}", f"train.output_dir={tmp_path / 'run'}", duke_sets,
            f"data.height={HW[0]}", f"data.width={HW[1]}"]
    res = _invoke("fit", "--config", "tiny_synthetic_mgran", *[x for a in args for x in ("--set", a)])
    assert res.exit_code == 2 and "set data.test_sets[0].cache" in res.stderr and not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 5. null cache; mask-free models need none


def test_null_cache_and_a_mask_free_model_on_another_dataset(runs, tmp_path) -> None:
    for text in ("null", "none", "None", "~", ""):
        assert load_config("tiny_synthetic", [f"data.cache={text}"]).data.cache == ""
    cfg = config_from_dict({"data": {"cache": None, "test_sets": [{"dataset": "dukemtmc", "root": "/d", "cache": "none"}]}})
    assert cfg.data.cache == "" and cfg.data.test_sets[0]["cache"] == ""
    duke, ckpt = runs["duke"], runs["mmga"]["ckpt"]
    res = _invoke("evaluate", "--checkpoint", ckpt, "--set", "data.dataset=dukemtmc", "--set", f"data.root={duke}",
                  "--out", tmp_path / "duke.json")
    assert res.exit_code == 0, res.output
    assert "is the training set's mask cache" in res.stderr and "against the fingerprints" not in res.stderr
    rec = json.loads((tmp_path / "duke.json").read_text())
    assert rec["dataset"] == "dukemtmc" and rec["config"]["data"]["dataset"] == "market1501"  # tested on / trained on


# --------------------------------------------------------------------------- 6. configs checked before torch is imported


def test_typos_are_refused_before_torch_is_imported(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # with torch made unimportable, every command still refuses its typo (one line, exit 2): nothing imports it first
    child = ("import sys; sys.modules['torch'] = None\n"
             "from click.testing import CliRunner\nfrom reid_train.cli import main\n"
             "for args in ([\"fit\", \"--config\", \"tiny_synthetic\", \"--set\", \"solver.epoch=3\"],\n"
             "             [\"fit\", \"--config\", \"tiny_synthetic\", \"--set\", \"model.name=mmgaa\"],\n"
             "             [\"evaluate\", \"--checkpoint\", \"c.pth\", \"--set\", \"test.rerankk=true\"],\n"
             "             [\"extract\", \"--checkpoint\", \"c.pth\", \"--split\", \"query\", \"--out\", \"q.npz\", \"--set\", \"test.flip=maybe\"],\n"
             "             [\"visualize\", \"--checkpoint\", \"c.pth\", \"--out\", \"v\", \"--set\", \"solver.lr=1\"],\n"
             "             [\"export\", \"--checkpoint\", \"c.pth\", \"--set\", \"test.flip=true\"]):\n"
             "    r = CliRunner().invoke(main, args)\n"
             "    print(r.exit_code, r.stderr.strip().replace(chr(10), ' | '))\n")
    proc = subprocess.run([sys.executable, "-c", child], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    expected = ["unknown config key 'solver.epoch'", "'mmgaa' is not allowed", "unknown config key 'test.rerankk'",
                "test.flip: expected true or false", "solver.lr is not read by 'reid-train visualize'",
                "test.flip is not read by 'reid-train export'"]
    assert len(lines) == len(expected), proc.stdout
    for line, text in zip(lines, expected):
        assert line.startswith("2 error: ") and text in line and " | " not in line, line
    # and it is quick: the real command, measured after a warm-up run (file caches), well under the 11 s torch costs here
    cmd = [sys.executable, "-m", "reid_train.cli", "fit", "--config", "tiny_synthetic", "--set", "solver.epoch=3"]
    subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, timeout=60)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    took = time.perf_counter() - start
    assert proc.returncode == 2 and "unknown config key 'solver.epoch'" in proc.stderr
    assert took < 3.0, f"a config typo took {took:.1f}s to be refused"


# --------------------------------------------------------------------------- 7. learning rates under the config's names


def test_learning_rates_are_logged_for_the_groups_that_exist_under_config_names(runs) -> None:
    mgran = [json.loads(x) for x in (runs["mgran"]["dir"] / "metrics.jsonl").read_text().splitlines()]
    mmga = [json.loads(x) for x in (runs["mmga"]["dir"] / "metrics.jsonl").read_text().splitlines()]
    assert mgran[0]["backbone_lr"] == pytest.approx(0.0025) and "lr" not in mgran[0]  # no non-backbone weights
    assert not any(k.startswith("lr_") for k in (*mgran[0], *mmga[0]))
    assert (mmga[0]["backbone_lr"], mmga[0]["lr"]) == pytest.approx((0.0025, 0.005))
    from reid_train.curves import loss_keys

    assert "ce_whole" in loss_keys(mmga) and "msml" in loss_keys(mgran)  # curves: no lr plotted as a loss
    assert not {"lr", "backbone_lr"} & set(loss_keys(mmga) + loss_keys(mgran))
    for name, lrs in (("mgran", "backbone_lr 0.0025"), ("mmga", "backbone_lr 0.0025 lr 0.005")):
        line = next(x for x in runs[name]["log"].splitlines() if "epoch 1/1 [" in x)
        assert re.search(rf"\) {lrs} [\d.]+ img/s", line), line  # was "lr 0.0025/0.1" for MGRAN


# --------------------------------------------------------------------------- 8. load_model is an nn.Module


def test_load_model_is_an_nn_module_whose_forward_is_the_evaluation_forward(runs) -> None:
    from reid_train import extract_features, load_model
    from reid_train.engine.evaluator import build_test_loader
    from reid_train.engine.evaluator import extract_features as evaluation_features

    loaded = load_model(runs["mmga"]["ckpt"])
    assert isinstance(loaded, torch.nn.Module) and loaded.training is False and loaded.model.training is False
    assert loaded.config.model.name == "mmga" and loaded.device == torch.device("cpu") and loaded.transform.size == HW
    assert set(loaded.state_dict()) == {f"model.{k}" for k in loaded.model.state_dict()}
    ds = build_dataset("market1501", runs["market"])
    expected, _, _ = evaluation_features(loaded.model, build_test_loader(ds, "query", loaded.config), torch.device("cpu"))
    from reid_masks.imageio import read_image

    batch = torch.stack([torch.from_numpy(np.array(read_image(ds.abspath(r)))).permute(2, 0, 1) for r in ds.query])  # uint8
    with torch.no_grad():
        feats = loaded(batch)
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(extract_features(loaded, [ds.abspath(r) for r in ds.query], batch_size=3), expected, atol=1e-5, rtol=0)
    assert loaded.to("cpu") is loaded
    loaded.train()
    assert loaded.model.training
    with pytest.raises(RuntimeError, match="call .eval"):
        loaded(batch)
    loaded.eval()
    with pytest.raises(UserError, match="needs the regions masks"):
        load_model(runs["mgran"]["ckpt"])(batch)


def test_the_torch_free_model_catalog_matches_the_model_zoo() -> None:
    from reid_train.catalog import BACKBONES, FSA_FAMILY, MGRAN_FAMILY, MMGA_FAMILY, MODEL_NAMES
    from reid_train.models import ARCH_CHANNELS, FSA_VARIANTS, MGRAN_VARIANTS, VARIANTS, model_names

    assert list(MODEL_NAMES) == model_names() and set(BACKBONES) == set(ARCH_CHANNELS)
    assert (set(MMGA_FAMILY), set(MGRAN_FAMILY), set(FSA_FAMILY)) == (set(VARIANTS), set(MGRAN_VARIANTS), set(FSA_VARIANTS))
