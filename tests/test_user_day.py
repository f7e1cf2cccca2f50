"""A user's day without a traceback (issue 16): early one-line errors, resume from the run
folder, progress and one result line, ``-h`` everywhere, the shipped configs, the loading API."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from cache_helpers import make_cache
from reid_masks.cli import main as masks_main
from reid_masks.datasets import build_dataset
from reid_masks.errors import UserError
from reid_masks.fileio import check_writable
from reid_train.cli import main as train_main
from reid_train.config import CONFIG_DIR, config_to_dict, load_config, packaged_configs
from reid_train.engine.trainer import Trainer, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread_and_clean_logging")
HW = (64, 32)


def _sets(root: Path, out: Path | str, *extra: str) -> list[str]:
    cache = make_cache(root) if root.is_dir() else root / "x.h5"
    args = [f"data.root={root}", f"data.cache={cache}", f"train.output_dir={out}",
            f"data.height={HW[0]}", f"data.width={HW[1]}", *extra]
    return [x for a in args for x in ("--set", a)]


@pytest.fixture(scope="module")
def ckpt(synth_dataset, tmp_path_factory) -> Path:
    """An untrained (random resnet18) MMGA checkpoint in the trainer's format."""
    root = synth_dataset("market1501", ids=4)
    out = tmp_path_factory.mktemp("ckpt")
    cfg = load_config("tiny_synthetic", [f"data.root={root}", f"data.cache={make_cache(root)}", f"train.output_dir={out}",
                                         f"data.height={HW[0]}", f"data.width={HW[1]}"])
    trainer = Trainer(cfg)
    save_checkpoint(trainer.ckpt_path, trainer.checkpoint_state(1, {}))
    return trainer.ckpt_path


# --------------------------------------------------------------------------- help, start-up, configs


def test_h_on_every_command_of_both_clis() -> None:
    runner = CliRunner()
    for main in (masks_main, train_main):
        for name in [None, *main.commands]:
            res = runner.invoke(main, ([name] if name else []) + ["-h"])
            assert res.exit_code == 0 and "Usage:" in res.output, (main.name, name, res.output)
    assert "folder" in runner.invoke(masks_main, ["generate", "-h"]).output  # the dataset choices list it


def test_cli_start_up_does_not_import_torch() -> None:
    code = "import sys, reid_masks.cli, reid_train.cli; print(sorted(m for m in ('torch', 'h5py', 'cv2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_configs_lists_and_shows_the_shipped_configs(tmp_path) -> None:
    runner = CliRunner()
    res = runner.invoke(train_main, ["configs"])
    assert res.exit_code == 0
    lines = res.stdout.splitlines()
    assert lines[0].split()[:2] == ["config", "model/backbone"]  # a header row, then one row per config
    names = [line.split()[0] for line in lines[1:-1]]
    assert names == packaged_configs()
    mmga = next(line for line in lines if line.startswith("mmga_market1501 "))
    header = "MMGA on Market-1501 (Cai, Wang, Cheng, CVPRW 2019): the paper's recipe."
    assert mmga.split()[:8] == ["mmga_market1501", "mmga/resnet50", "market1501", "384x128", "P=24", "K=4", "900", "epochs"]
    assert mmga.endswith(header) and (CONFIG_DIR / "mmga_market1501.yaml").read_text().startswith(f"# {header}")
    col = lines[0].index("model/backbone")  # the columns aligned under the header
    assert all(line[col - 2:col] == "  " and line[col] != " " for line in lines[:-1])
    res = runner.invoke(train_main, ["configs", "mmga_market1501"])
    assert res.exit_code == 0 and res.stdout.startswith(f"# {header}\n")
    res = runner.invoke(train_main, ["configs", "tiny_synthetic"])
    assert res.exit_code == 0
    shown = tmp_path / "shown.yaml"
    shown.write_text(res.stdout)  # what it prints is a config that loads to the same thing
    assert config_to_dict(load_config(shown)) == config_to_dict(load_config("tiny_synthetic"))
    res = runner.invoke(train_main, ["configs", "nope"])
    assert res.exit_code == 2 and "config 'nope' not found" in res.stderr


# --------------------------------------------------------------------------- outputs checked first


def test_check_writable_refuses_and_leaves_nothing(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"file: output folder is not writable \(it is a file; --out .*file/sub/x.png\)"):
        check_writable(blocker / "sub" / "x.png")
    with pytest.raises(UserError, match="is a folder, expected a file name"):
        check_writable(tmp_path)
    assert check_writable(tmp_path / "a" / "b" / "x.png") == tmp_path / "a" / "b" / "x.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe's folders are gone again
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(UserError, match="Permission denied"):
            check_writable(ro / "x.png")


def test_unwritable_outputs_refused_before_any_work(ckpt, monkeypatch, tmp_path) -> None:
    """Every writing command: one line naming the output, exit 2, and nothing loaded or computed first."""
    import reid_masks.preview
    import reid_train.curves
    import reid_train.engine.trainer
    import reid_train.export
    import reid_train.inference
    import reid_train.visualize

    def computed(*args, **kwargs):
        raise AssertionError("work started before the output check")

    for module, name in ((reid_masks.preview, "MaskCache"), (reid_train.curves, "read_metrics"),
                         (reid_train.engine.trainer, "Trainer"), (reid_train.export, "export_model"),
                         (reid_train.inference, "load_model"), (reid_train.visualize, "visualize")):
        monkeypatch.setattr(module, name, computed)
    bad = tmp_path / "file"
    bad.write_text("x")
    runner = CliRunner()
    cases = [
        (masks_main, ["preview", str(ckpt), "--out", str(bad / "sheet.png")]),
        (train_main, ["fit", "--config", "tiny_synthetic", "--set", f"train.output_dir={bad / 'run'}"]),
        (train_main, ["evaluate", "--checkpoint", str(ckpt), "--out", str(bad / "e.json")]),
        (train_main, ["extract", "--checkpoint", str(ckpt), "--split", "query", "--out", str(bad / "q.npz")]),
        (train_main, ["export", "--checkpoint", str(ckpt), "--out", str(bad / "m.onnx")]),
        (train_main, ["visualize", "--checkpoint", str(ckpt), "--out", str(bad / "vis")]),
        (train_main, ["curves", str(ckpt), "--out", str(bad / "c.png")]),
    ]
    for main, args in cases:
        res = runner.invoke(main, args)
        assert res.exit_code == 2, (args, res.output, res.exception)
        assert res.stderr.count("\n") == 1 and f"error: {bad}: output folder is not writable (it is a file;" in res.stderr, res.stderr


# --------------------------------------------------------------------------- fit: refusals, resume, failures


def test_refused_fit_leaves_no_run_folder(synth_dataset, tmp_path) -> None:
    root = synth_dataset("market1501", ids=4)
    runner = CliRunner()
    res = runner.invoke(train_main, ["fit", "--config", "tiny_synthetic", *_sets(tmp_path / "nowhere", tmp_path / "a" / "run")])
    assert res.exit_code == 2 and "dataset root not found" in res.stderr
    res = runner.invoke(train_main, ["fit", "--config", "tiny_synthetic", *_sets(root, tmp_path / "a" / "run", "data.num_ids=1")])
    assert res.exit_code == 2 and "data.num_ids=1: the triplet loss needs at least 2 identities per batch (P >= 2)" in res.stderr
    assert not (tmp_path / "a").exists()
    (tmp_path / "empty").mkdir()  # a folder that exists already stays, without a log of the refused run
    res = runner.invoke(train_main, ["fit", "--config", "tiny_synthetic", *_sets(tmp_path / "nowhere", tmp_path / "empty")])
    assert res.exit_code == 2 and list((tmp_path / "empty").iterdir()) == []
    res = runner.invoke(train_main, ["fit", "--resume", str(tmp_path / "a")])
    assert res.exit_code == 2 and "not a folder (expected the train.output_dir of a fit run)" in res.stderr
    res = runner.invoke(train_main, ["fit"])
    assert res.exit_code == 2 and "pass --config NAME (a new run) or --resume RUN_DIR" in res.stderr


def test_failed_evaluation_keeps_the_epoch_then_resume_from_the_run_folder_elsewhere(synth_dataset, tmp_path, monkeypatch) -> None:
    root = synth_dataset("market1501", ids=4)
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    runner = CliRunner()

    def broken(self):
        raise UserError("query/0001_c1s1_000001_00.jpg: unreadable image")

    monkeypatch.chdir(work)
    with monkeypatch.context() as m:
        m.setattr(Trainer, "evaluate", broken)
        res = runner.invoke(train_main, ["fit", "--config", "tiny_synthetic", *_sets(root, "run", "solver.epochs=1")])
    assert res.exit_code == 2 and "unreadable image" in res.stderr
    run = work / "run"
    assert load_checkpoint(run / "checkpoint.pth")["epoch"] == 1  # the trained epoch survived its evaluation
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    log = (run / "log.txt").read_text()
    assert "evaluation after epoch 1 failed" in log and f"reid-train fit --resume {run}" in log
    assert "tensorboard" not in log  # not asked for: not mentioned
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["output_dir"] == str(run) and saved["data"]["root"] == str(root)
    assert Path(saved["data"]["cache"]).is_absolute()

    monkeypatch.chdir(elsewhere)  # the run folder alone is enough, from anywhere
    res = runner.invoke(train_main, ["fit", "--resume", os.path.relpath(run, elsewhere), "--set", "solver.epochs=2"])
    assert res.exit_code == 0, res.output
    assert "resumed from" in res.stderr and "mAP" in res.stdout
    assert load_checkpoint(run / "checkpoint.pth")["epoch"] == 2
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert not (elsewhere / "runs").exists() and sorted(elsewhere.iterdir()) == []

    res = runner.invoke(train_main, ["evaluate", "--checkpoint", str(run / "checkpoint.pth")])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("market1501 (")  # the result, printed once
    assert "euclidean, flip-averaged, no re-ranking): rank-1" in lines[0]
    assert "rank-1" not in res.stderr
    ds = build_dataset("market1501", root)
    assert f"query features: {len(ds.query)}/{len(ds.query)} images" in res.stderr  # progress
    assert f"gallery features: {len(ds.gallery)}/{len(ds.gallery)} images" in res.stderr


# --------------------------------------------------------------------------- loading API


def test_load_model_and_extract_features_equal_the_extract_command(ckpt, tmp_path) -> None:
    from reid_train import extract_features, load_model

    res = CliRunner().invoke(train_main, ["extract", "--checkpoint", str(ckpt), "--split", "query", "--out", str(tmp_path / "q.npz")])
    assert res.exit_code == 0, res.output
    assert "query features:" in res.stderr
    with np.load(tmp_path / "q.npz") as z:
        expected, paths = z["features"], list(z["paths"])
    model = load_model(ckpt)
    assert not model.model.training and model.input_size == HW
    root = Path(model.config.data.root)
    files = [root / p for p in paths]
    feats = extract_features(model, files, batch_size=5)
    assert feats.shape == expected.shape
    np.testing.assert_allclose(feats.numpy(), expected, atol=1e-5)
    # arrays and PIL images give the same features as paths
    arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files[:3]]
    np.testing.assert_allclose(model.extract_features(arrays).numpy(), expected[:3], atol=1e-5)
    np.testing.assert_allclose(extract_features(model, [Image.open(f) for f in files[:2]]).numpy(), expected[:2], atol=1e-5)
    # no flip: a different (still unit-norm) feature
    nf = extract_features(model, files[:2], flip=False)
    assert torch.allclose(nf.norm(dim=1), torch.ones(2), atol=1e-5) and not torch.allclose(nf, feats[:2], atol=1e-4)
    assert extract_features(model, []).shape == (0, expected.shape[1])


# --------------------------------------------------------------------------- small rules


def test_num_workers_capped_at_available_cpus(monkeypatch) -> None:
    from reid_train.data import workers

    monkeypatch.setattr(workers, "available_cpus", lambda: 2)
    assert [workers.cap_workers(n) for n in (0, 1, 2, 8)] == [0, 1, 2, 2]
    assert workers.available_cpus() == 2


def test_missing_imagenet_weights_hint_names_the_option(tmp_path, monkeypatch) -> None:
    from reid_train.models import build_model

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"\(--set model.pretrained=none\)"):
        build_model("baseline", num_classes=4, backbone="resnet18", pretrained="imagenet")
