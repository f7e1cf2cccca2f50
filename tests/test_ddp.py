"""DDP training and evaluation with real ``torchrun`` processes (gloo, CPU), plus the distributed sampler.

One tiny synthetic Market set (8 train ids, 13 query, 66 gallery) and the tiny config at
64x32, P=4 K=2 -> 2 steps per epoch, each rank 2 ids x 2 images. Every launch uses two
processes with one thread each. What is checked:

* the ranks' weights stay bitwise identical (``$REID_TRAIN_PARAM_CHECKSUM_DIR`` dumps) and
  equal the checkpoint; the loss goes down;
* only rank 0 writes: the output folder holds exactly the rank-0 files, logs have no
  duplicate lines, stdout has one result;
* resume under DDP (2 epochs + 1 resumed) gives the weights of 3 straight epochs;
* ``torchrun ... evaluate`` (sharded extraction, all_gather) equals the single-process
  evaluation and the trainer's own (sharded) evaluation, with a shard that is empty.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from reid_masks.generate import GenerateConfig, generate
from reid_masks.synth.layouts import synthesize
from reid_train.data import DistributedIdentitySampler, IdentitySampler
from reid_train.engine import distributed as ddp
from reid_train.engine.trainer import model_from_checkpoint

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed (torchrun) is not available")

EPOCHS = 3


# --------------------------------------------------------------------------- in-process units


def test_distributed_sampler_splits_the_p_ids_of_each_step_between_ranks() -> None:
    rng = np.random.default_rng(0)
    pids = [int(p) for p in rng.integers(0, 23, size=200)]  # 23 ids, uneven image counts
    for world, P, K in ((2, 4, 2), (3, 6, 3), (4, 4, 1)):
        single = IdentitySampler(pids, P, K, seed=5)
        ranks = [DistributedIdentitySampler(pids, P, K, seed=5, num_replicas=world, rank=r) for r in range(world)]
        epochs = []
        for epoch in range(3):
            single.set_epoch(epoch)
            for s in ranks:
                s.set_epoch(epoch)
            per_rank = [list(s) for s in ranks]
            assert {len(b) for b in per_rank} == {len(single)} == {-(-23 // P)}  # same steps on every rank
            for step, (whole, *shares) in enumerate(zip(list(single), *per_rank)):
                ids = [{pids[i] for i in share} for share in shares]
                assert all(len(x) == P // world for x in ids), (epoch, step, ids)
                assert sum(len(x) for x in ids) == len(set().union(*ids)) == P  # disjoint, together P ids
                for share in shares:
                    assert len(share) == P // world * K and set(Counter(pids[i] for i in share).values()) == {K}
                assert sorted(i for share in shares for i in share) == sorted(whole)  # the global P x K batch
            seen = {pids[i] for batches in per_rank for batch in batches for i in batch}
            assert seen == set(pids)  # an epoch visits every identity
            epochs.append(per_rank)
        assert epochs[0] != epochs[1]  # a new order every epoch
    with pytest.raises(Exception, match="not divisible by the world size"):
        DistributedIdentitySampler(pids, 5, 2, num_replicas=2, rank=0)


def test_shards_are_whole_batches_and_cover_the_split_in_order() -> None:
    loader = DataLoader(TensorDataset(torch.arange(66)), batch_size=16)
    for world in (1, 2, 3, 7):
        parts = [ddp.shard_loader(loader, r, world) for r in range(world)]
        got = [torch.cat([b[0] for b in p]) if len(p.dataset) else torch.zeros(0, dtype=torch.int64) for p in parts]
        assert torch.equal(torch.cat(got), torch.arange(66))
        assert all(len(p.dataset) % 16 == 0 for p in parts[:-1])  # batch boundaries as in one process


def test_sync_bn_converts_under_ddp_on_cuda_only(caplog) -> None:
    def net() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Sequential(torch.nn.BatchNorm2d(4)))

    m = net()
    weight = m[1].weight
    out = ddp.maybe_sync_bn(m, True, torch.device("cuda"), 2)  # conversion itself needs no GPU
    assert sum(isinstance(x, torch.nn.SyncBatchNorm) for x in out.modules()) == 2
    assert out[1].weight is weight  # same parameters: the optimizer may be built before or after
    assert not any(isinstance(x, torch.nn.SyncBatchNorm) for x in ddp.maybe_sync_bn(net(), True, torch.device("cuda"), 1).modules())
    assert not any(isinstance(x, torch.nn.SyncBatchNorm) for x in ddp.maybe_sync_bn(net(), False, torch.device("cuda"), 2).modules())
    with caplog.at_level("WARNING"):
        cpu = ddp.maybe_sync_bn(net(), True, torch.device("cpu"), 2)
    assert not any(isinstance(x, torch.nn.SyncBatchNorm) for x in cpu.modules())
    assert "train.sync_bn=true is ignored on cpu" in caplog.text


# --------------------------------------------------------------------------- torchrun


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(checksums: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", ddp.CHECKSUM_ENV)}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    if checksums is not None:
        env[ddp.CHECKSUM_ENV] = str(checksums)
    return env


def _run(args: list[str], nproc: int = 2, checksums: Path | None = None) -> subprocess.CompletedProcess:
    if nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
                  "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "reid_train.cli"]
    else:
        launch = [sys.executable, "-m", "reid_train.cli"]
    res = subprocess.run(launch + args, env=_env(checksums), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, f"{' '.join(args)}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return res


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("ddp-data")
    root = base / "market1501"
    synthesize("market1501", root, ids=8, seed=0, workers=1)
    cache = base / "market1501.h5"
    generate(GenerateConfig(dataset="market1501", root=root, out=cache, parsing_dir=root / "parsing", backend="none", workers=0))
    return root, cache


def _fit(data: tuple[Path, Path], out: Path, epochs: int, checksums: Path, *extra: str) -> subprocess.CompletedProcess:
    root, cache = data
    sets = [f"data.root={root}", f"data.cache={cache}", f"train.output_dir={out}", f"solver.epochs={epochs}",
            "data.height=64", "data.width=32", "data.num_ids=4", "data.num_instances=2", "data.num_workers=0",
            "test.batch_size=16", "train.log_period=1"]
    return _run(["fit", "--config", "tiny_synthetic", *[x for s in sets for x in ("--set", s)], *extra], checksums=checksums)


def _checksums(folder: Path) -> list[dict]:
    assert sorted(p.name for p in folder.iterdir()) == ["param_checksum_rank0.json", "param_checksum_rank1.json"]
    return [json.loads((folder / f"param_checksum_rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> dict:
    """One DDP run of EPOCHS epochs (evaluated at the end), shared by the tests below."""
    base = tmp_path_factory.mktemp("ddp-straight")
    res = _fit(data, base / "run", EPOCHS, base / "checksums")
    return {"out": base / "run", "res": res, "sums": _checksums(base / "checksums")}


def test_ddp_fit_keeps_ranks_identical_learns_and_only_rank0_writes(straight) -> None:
    out, res, (r0, r1) = straight["out"], straight["res"], straight["sums"]
    # (1) parameters (and, after the final evaluation's buffer sync, BN statistics) are identical
    assert (r0["rank"], r1["rank"], r0["world_size"], r0["epoch"]) == (0, 1, 2, EPOCHS)
    assert r0["params_sha256"] == r1["params_sha256"] and r0["param_sums"] == r1["param_sums"]
    assert r0["buffers_sha256"] == r1["buffers_sha256"]
    # ... and equal to the checkpoint rank 0 wrote
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == EPOCHS and len(ckpt["rng_per_rank"]) == 2
    saved = ddp.weight_checksums(model_from_checkpoint(ckpt)[0])
    assert (saved["params_sha256"], saved["buffers_sha256"]) == (r0["params_sha256"], r0["buffers_sha256"])
    assert ckpt["rng_per_rank"][0]["torch"].ne(ckpt["rng_per_rank"][1]["torch"]).any()  # ranks augment differently

    # (2) the loss goes down (metrics are the mean over both ranks' images)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    assert records[-1]["total"] < records[0]["total"], [r["total"] for r in records]
    assert "rank1" in records[-1] and "mAP" in records[-1]

    # (3) only rank 0 writes files, logs and results
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pth", "config.yaml", "evaluation.json", "log.txt", "metrics.jsonl"]
    log = (out / "log.txt").read_text()
    for text in (log, res.stderr):
        assert text.count(f"epoch {EPOCHS}/{EPOCHS} done") == 1
        assert text.count("epoch 1/3 [2/2]") == 1 and text.count("evaluation on market1501") == 1
        assert text.count("2 iterations/epoch") == 1
    assert "WARNING" not in res.stderr and "ERROR" not in res.stderr
    assert res.stdout.count("trained mmga") == 1 and res.stdout.count("mAP") == 1


def test_ddp_resume_continues_exactly(straight, data, tmp_path) -> None:
    _fit(data, tmp_path / "run", EPOCHS - 1, tmp_path / "first")
    res = _fit(data, tmp_path / "run", EPOCHS, tmp_path / "resumed", "--resume")
    assert res.stderr.count(f"continuing with epoch {EPOCHS} (") == 1  # "resumed from ...: continuing with epoch 3", once
    r0, r1 = _checksums(tmp_path / "resumed")
    assert r0["params_sha256"] == r1["params_sha256"] == straight["sums"][0]["params_sha256"]
    assert r0["buffers_sha256"] == straight["sums"][0]["buffers_sha256"]
    a = [json.loads(x)["total"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x)["total"] for x in (straight["out"] / "metrics.jsonl").read_text().splitlines()]
    assert a == b


def test_ddp_evaluation_equals_single_process(straight, tmp_path) -> None:
    ckpt = straight["out"] / "checkpoint.pth"
    # batch 16: query (13) is one batch, so rank 1's query shard is empty; gallery 66 -> 2 + 3 batches
    multi = _run(["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "ddp.json"), "--set", "test.batch_size=16"])
    single = _run(["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "one.json")], nproc=1)
    assert multi.stdout.count("mAP") == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["ddp.json", "one.json"]
    a, b = json.loads((tmp_path / "ddp.json").read_text()), json.loads((tmp_path / "one.json").read_text())
    trained = json.loads((straight["out"] / "evaluation.json").read_text())  # the trainer's sharded evaluation
    assert (a["num_query"], a["num_gallery"]) == (b["num_query"], b["num_gallery"]) == (13, 66)
    for key in ("rank1", "rank5", "rank10", "mAP"):
        assert a[key] == pytest.approx(b[key], abs=1e-6) and trained[key] == pytest.approx(b[key], abs=1e-6), key
