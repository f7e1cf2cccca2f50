"""reid_train.engine + config: exact resume, learning on synthetic data, atomic checkpoints, config errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from cache_helpers import make_cache
from reid_masks.errors import UserError
from reid_train.config import (
    Config,
    apply_overrides,
    config_from_dict,
    load_config,
    packaged_configs,
)
from reid_train.engine import trainer as trainer_mod
from reid_train.engine.trainer import CHECKPOINT_NAME, Trainer, WarmupStepLR, load_checkpoint


def tiny_cfg(root: Path, out: Path, epochs: int, *extra: str) -> Config:
    """tiny_synthetic at 64x32, P=4 K=2, no workers: ~0.2 s per iteration on 2 cores."""
    return load_config("tiny_synthetic", [
        f"data.root={root}", f"data.cache={make_cache(root)}", f"train.output_dir={out}",
        f"solver.epochs={epochs}", "data.height=64", "data.width=32", "data.num_workers=0",
        "data.num_ids=4", "data.num_instances=2", "train.log_period=50", *extra,
    ])


pytestmark = pytest.mark.usefixtures("one_thread_and_clean_logging")


@pytest.fixture(scope="module")
def market_root(synth_dataset) -> Path:
    return synth_dataset("market1501", ids=4)


# --------------------------------------------------------------------------- resume


def test_two_plus_two_epochs_resumed_equals_four_straight(market_root, tmp_path) -> None:
    # warmup and a decay inside the 4 epochs: the schedule must also resume exactly
    extra = ("solver.warmup_epochs=1", "solver.step_size=3", "train.eval_period=0")
    straight = Trainer(tiny_cfg(market_root, tmp_path / "straight", 4, *extra))
    straight.fit()

    first = Trainer(tiny_cfg(market_root, tmp_path / "resumed", 2, *extra))
    first.fit()  # evaluates at its last epoch (2): must not change what follows
    resumed = Trainer(tiny_cfg(market_root, tmp_path / "resumed", 4, *extra), resume=True)
    assert resumed.start_epoch == 2
    resumed.fit()

    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)

    log_a = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log_b] == [1, 2, 3, 4]
    for ra, rb in zip(log_a, log_b):
        assert ra["total"] == rb["total"] and ra["lr_backbone"] == rb["lr_backbone"]
    # JSONL fields: every loss term of MMGA, both lrs, throughput; rank-1/mAP when evaluated
    for key in ("total", "ce_whole", "ce_local", "triplet", "att", "att_m1_whole", "att_m2_upper",
                "lr_backbone", "lr_head", "images_per_s", "time_s"):
        assert key in log_a[0], key
    assert [r["lr_head"] for r in log_a] == pytest.approx([0.0005, 0.005, 0.005, 0.0025])
    assert "rank1" in log_a[-1] and "mAP" in log_a[-1] and "rank1" not in log_a[0]


def test_loss_decreases_on_the_synthetic_set(market_root, tmp_path) -> None:
    t = Trainer(tiny_cfg(market_root, tmp_path / "run", 6, "train.eval_period=0", "solver.step_size=100"))
    t.fit()
    totals = [json.loads(x)["total"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(totals) == 6
    assert sum(totals[-2:]) / 2 < 0.9 * totals[0], totals


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_contents_and_atomic_write(market_root, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    Trainer(tiny_cfg(market_root, out, 1, "model.name=baseline", "data.cache=")).fit()
    path = out / CHECKPOINT_NAME
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "sampler", "rng", "epoch", "config", "num_classes"):
        assert key in ckpt, key
    assert ckpt["epoch"] == 1 and ckpt["sampler"] == {"seed": 0, "epoch": 0}
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch"}
    assert ckpt["config"]["model"]["name"] == "baseline"
    before = path.read_bytes()

    # a crash in the middle of writing the next checkpoint leaves the previous one intact
    real_save = torch.save

    def crash(obj, f, *a, **k):
        real_save({"partial": torch.zeros(3)}, f)
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(trainer_mod.torch, "save", crash)
    t = Trainer(tiny_cfg(market_root, out, 2, "model.name=baseline", "data.cache="), resume=True)
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    monkeypatch.setattr(trainer_mod.torch, "save", real_save)
    assert path.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pth", "config.yaml", "evaluation.json", "metrics.jsonl"]
    assert load_checkpoint(path)["epoch"] == 1


def test_existing_run_needs_resume_and_resume_needs_a_checkpoint(market_root, tmp_path) -> None:
    with pytest.raises(UserError, match="--resume: no checkpoint"):
        Trainer(tiny_cfg(market_root, tmp_path / "none", 1), resume=True)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / CHECKPOINT_NAME).write_bytes(b"x")
    with pytest.raises(UserError, match="exists: pass --resume"):
        Trainer(tiny_cfg(market_root, tmp_path / "run", 1))


def test_mask_variant_without_cache_is_a_user_error(market_root, tmp_path) -> None:
    with pytest.raises(UserError, match="data.cache"):
        Trainer(tiny_cfg(market_root, tmp_path / "run", 1, "data.cache="))


def test_warmup_step_lr_is_step_lr_without_warmup() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    o1, o2 = torch.optim.SGD([p], lr=0.1), torch.optim.SGD([p], lr=0.1)
    ours, ref = WarmupStepLR(o1, step_size=3, gamma=0.5), torch.optim.lr_scheduler.StepLR(o2, step_size=3, gamma=0.5)
    for _ in range(10):
        assert o1.param_groups[0]["lr"] == pytest.approx(o2.param_groups[0]["lr"])
        o1.step(), o2.step(), ours.step(), ref.step()


# --------------------------------------------------------------------------- config


def test_paper_recipes_load_with_the_paper_hyper_parameters() -> None:
    names = packaged_configs()
    for n in ("mmga_market1501", "mmga_dukemtmc", "baseline_market1501", "baseline_att_market1501",
              "wmga_market1501", "dmga_market1501", "tiny_synthetic"):
        assert n in names
    for n in names:
        cfg = load_config(n)
        if n.startswith(("mgran", "fsa", "tiny_synthetic_fsa")):  # MGRAN / FSA recipes: tests/test_mgran.py, tests/test_fsa.py
            continue
        if n.startswith("tiny_synthetic"):
            assert cfg.model.backbone == "resnet18" and cfg.model.pretrained == "none"
            continue
        d, s, l = cfg.data, cfg.solver, cfg.loss
        assert (d.height, d.width, d.num_ids, d.num_instances) == (384, 128, 24, 4)
        assert (s.backbone_lr, s.lr, s.step_size, s.gamma, s.epochs, s.weight_decay) == (0.05, 0.1, 90, 0.5, 900, 5e-4)
        assert (l.margin, l.lambda0, l.lambda1, l.lambda2) == (0.3, 0.5, 2.0, 0.1)
        assert cfg.model.backbone == "resnet50" and cfg.model.pretrained == "imagenet"
    assert load_config("mmga_dukemtmc").data.dataset == "dukemtmc"
    assert load_config("dmga_market1501").model.name == "dmga"


def test_set_overrides_are_typed() -> None:
    cfg = apply_overrides(Config(), ["solver.epochs=12", "solver.weight_decay=1e-4", "test.rerank=true",
                                     "data.mean=[0.5, 0.5, 0.5]", "model.pretrained=none", "data.dataset=cuhk03", "data.options.variant=detected"])
    assert cfg.solver.epochs == 12 and cfg.solver.weight_decay == 1e-4 and cfg.test.rerank is True
    assert cfg.data.mean == [0.5, 0.5, 0.5] and cfg.model.pretrained == "none"
    assert cfg.data.options == {"variant": "detected"}
    assert Config().solver.epochs == 900  # overrides copy


@pytest.mark.parametrize("override, message", [
    ("solver.epoch=3", "unknown config key 'solver.epoch'; allowed: solver.backbone_lr, solver.epochs"),
    ("optim.lr=3", "unknown config key 'optim.lr'; allowed: data.*, loss.*, model.*, solver.*, test.*, train.*"),
    ("solver.epochs=abc", "solver.epochs: expected an integer, got 'abc'"),
    ("solver.epochs=0", "solver.epochs: 0 must be >= 1"),
    ("train.amp=fp8", "train.amp: 'fp8' is not allowed; allowed values: none, bf16, fp16"),
    ("model.name=resnet", "model.name: 'resnet' is not allowed; allowed values: baseline, baseline_att, wmga, dmga, mmga"),
    ("test.rerank=maybe", "test.rerank: expected true or false"),
    ("solver.epochs", "expected section.key=value"),
])
def test_bad_overrides_are_one_line_user_errors(override: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        apply_overrides(Config(), [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_yaml_base_chain_and_errors_name_the_file(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text("_base_: mmga_market1501\nsolver:\n  epochs: 10\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nmodel:\n  name: wmga\n")
    cfg = load_config(tmp_path / "child.yaml", ["solver.lr=0.2"])
    assert (cfg.solver.epochs, cfg.model.name, cfg.solver.lr, cfg.loss.lambda1) == (10, "wmga", 0.2, 2.0)
    (tmp_path / "typo.yaml").write_text("_base_: base.yaml\nsolver:\n  epoch: 10\n")
    with pytest.raises(UserError, match=r"typo.yaml: unknown config key 'solver.epoch'"):
        load_config(tmp_path / "typo.yaml")
    with pytest.raises(UserError, match="not a file and not a packaged config"):
        load_config("no_such_config")
    cfg2 = config_from_dict(yaml.safe_load(yaml.safe_dump({"solver": {"epochs": 3}})))
    assert cfg2.solver.epochs == 3
