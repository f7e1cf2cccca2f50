"""Faults a run meets on its way (issue 25): a full disk at the checkpoint write (a real small
tmpfs), a torn metrics.jsonl line, a corrupted gzip chunk in the mask cache, checkpoints
without weights / config / optimizer or of another backbone, an export killed halfway.
Each gives one line saying what to do, and loses nothing that was finished."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch
from click.testing import CliRunner

from cache_helpers import make_cache
from reid_masks.errors import UserError
from reid_masks.fileio import HOST
from reid_train.cli import main
from reid_train.config import load_config
from reid_train.engine.trainer import CHECKPOINT_NAME, Trainer, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread_and_clean_logging")

TINY = ("data.height=64", "data.width=32", "data.num_ids=2", "data.num_instances=2", "train.log_period=50", "solver.step_size=1")


@pytest.fixture(scope="module")
def market_root(synth_dataset) -> Path:
    return synth_dataset("market1501", ids=4)


def fit_args(root: Path, out: Path, *extra: str, cache: Path | None = None) -> list[str]:
    sets = [f"data.root={root}", f"data.cache={cache or make_cache(root)}", f"train.output_dir={out}", *TINY, *extra]
    return ["fit", "--config", "tiny_synthetic"] + [x for kv in sets for x in ("--set", kv)]


def error_line(stderr: str) -> str:
    """The CLI's error: exactly one line starting with 'error:' and no traceback."""
    errors = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def small_disk(tmp_path):
    """A real tmpfs mounted at tmp_path/disk (root only): ``mount(bytes)`` mounts or resizes it."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()

    def mount(size: int) -> Path:
        opts = f"size={size}" if not os.path.ismount(mnt) else f"remount,size={size}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], check=True)
        return mnt

    yield mount
    if os.path.ismount(mnt):
        subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_at_the_checkpoint_then_a_torn_metrics_line(market_root, small_disk, tmp_path, monkeypatch) -> None:
    """The checkpoint write of epoch 2 runs out of space on a real tmpfs: one line naming the folder
    and the space needed, epoch 1's checkpoint kept byte for byte, no temporary left. Then the last
    line of metrics.jsonl is torn (a write cut short): --resume repairs it from the checkpoint."""
    runner = CliRunner()
    first = tmp_path / "first"
    res = runner.invoke(main, fit_args(market_root, first, "solver.epochs=1"))
    assert res.exit_code == 0, res.output
    size = (first / CHECKPOINT_NAME).stat().st_size
    disk = small_disk((size * 3 // 2) // 4096 * 4096)  # one checkpoint and half another
    run = disk / "run"
    shutil.copytree(first, run)
    before = sha(run / CHECKPOINT_NAME)
    line1 = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])

    resume = ["fit", "--resume", str(run), "--set", "solver.epochs=2"]
    monkeypatch.setattr("sys.argv", ["/venv/bin/reid-train", *resume])  # what the console script sees
    res = runner.invoke(main, resume)
    assert res.exit_code == 2, res.output
    line = error_line(res.stderr)
    assert line.startswith(f"error: {run}: no space left on the device to write {CHECKPOINT_NAME} (needs about ")
    needed, free = (float(x.split()[0]) for x in line.split("(needs about ")[1].split(");")[0].split(", "))
    assert needed * 2**20 >= 0.95 * size and free * 2**20 < size  # the figures are the real ones
    assert line.endswith(f"{run / CHECKPOINT_NAME} keeps the previous state; free some space there; continue with: reid-train {' '.join(resume)}")
    assert sha(run / CHECKPOINT_NAME) == before and load_checkpoint(run / CHECKPOINT_NAME)["epoch"] == 1
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name]
    assert "no space left on the device" in (run / "log.txt").read_text()

    text = (run / "metrics.jsonl").read_text()  # epoch 1's line, then epoch 2's (never checkpointed)
    (run / "metrics.jsonl").write_text(text[: len(text.splitlines()[0]) // 2])  # torn inside epoch 1's line
    small_disk(size * 3)
    res = runner.invoke(main, resume)
    assert res.exit_code == 0, res.output
    said = [x for x in res.stderr.splitlines() if "torn" in x]
    assert len(said) == 1 and said[0].endswith(f"{run / 'metrics.jsonl'}: line 1 was torn (a write cut short) and is dropped; "
                                               f"epoch 1's line restored from {CHECKPOINT_NAME}"), res.stderr
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines[0] == line1  # scores from evaluation.json
    assert load_checkpoint(run / CHECKPOINT_NAME)["epoch"] == 2


def test_corrupted_gzip_chunk_in_the_cache_is_one_line_and_leaves_no_run_folder(market_root, tmp_path) -> None:
    bad = tmp_path / "bad.h5"
    shutil.copy(make_cache(market_root), bad)
    with h5py.File(bad) as f:
        info = f["train/masks"].id.get_chunk_info(0)
        rows = f["train/masks"].chunks[0]
    with open(bad, "r+b") as fh:  # bytes in the middle of a gzip chunk: the chunk no longer inflates
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(b"\xff" * 64)
    res = CliRunner().invoke(main, fit_args(market_root, tmp_path / "runs" / "a", cache=bad))
    assert res.exit_code == 2, res.output
    assert error_line(res.stderr).startswith(f"error: {bad}: damaged data in train/masks rows 0-{rows - 1} (")
    assert "regenerate it with 'reid-masks generate'" in res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.h5"]  # no run folder, no lock file


@pytest.fixture(scope="module")
def run_dir(market_root, tmp_path_factory) -> Path:
    """A run folder with an untrained (random resnet18) checkpoint and its config.yaml."""
    out = tmp_path_factory.mktemp("faults") / "run"
    cfg = load_config("tiny_synthetic", [f"data.root={market_root}", f"data.cache={make_cache(market_root)}",
                                         f"train.output_dir={out}", *TINY])
    trainer = Trainer(cfg)
    save_checkpoint(trainer.ckpt_path, trainer.checkpoint_state(1, {}))
    return out


def _edited(run_dir: Path, dest: Path, edit) -> Path:
    """A copy of the run folder whose checkpoint went through ``edit(dict)``."""
    shutil.copytree(run_dir, dest)
    ckpt = torch.load(dest / CHECKPOINT_NAME, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dest / CHECKPOINT_NAME)
    return dest / CHECKPOINT_NAME


def test_incomplete_or_foreign_checkpoints_are_one_line_everywhere(run_dir, tmp_path) -> None:
    from reid_train import load_model

    def other_backbone(c):
        c["config"]["model"]["backbone"] = "resnet34"

    cases = {
        "no weights": (lambda c: c.pop("model"), "incomplete checkpoint (no model); use a checkpoint.pth written by 'reid-train fit'"),
        "empty weights": (lambda c: c.update(model={}), "the checkpoint holds no model weights"),
        "no config": (lambda c: c.pop("config"), "incomplete checkpoint (no config)"),
        "another backbone": (other_backbone, "its weights do not fit model.name=mmga model.backbone=resnet34 ("),
    }
    runner = CliRunner()
    for i, (name, (edit, says)) in enumerate(cases.items()):
        ckpt = _edited(run_dir, tmp_path / f"case{i}", edit)
        commands = [
            ["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "e.json")],
            ["extract", "--checkpoint", str(ckpt), "--split", "query", "--out", str(tmp_path / "q.npz")],
            ["export", "--checkpoint", str(ckpt), "--format", "torchscript", "--out", str(tmp_path / "m.ts")],
        ]
        if name == "no weights":  # (one case: fit --resume reads checkpoints with the same load_checkpoint)
            commands.append(["fit", "--resume", str(ckpt.parent)])
        for args in commands:
            res = runner.invoke(main, args)
            assert res.exit_code == 2, (name, args, res.output)
            line = error_line(res.stderr)
            assert line.startswith(f"error: {ckpt}: ") and says in line, (name, args, line)
        with pytest.raises(UserError, match="^" + str(ckpt)) as err:
            load_model(ckpt)
        assert says in str(err.value) and "\n" not in str(err.value)
        assert not (tmp_path / "e.json").exists() and not (tmp_path / "q.npz").exists() and not (tmp_path / "m.ts").exists()

    ckpt = run_dir / CHECKPOINT_NAME  # fit --resume asked to change the architecture
    copy = tmp_path / "resume"
    shutil.copytree(run_dir, copy)
    res = runner.invoke(main, ["fit", "--resume", str(copy), "--set", "model.backbone=resnet34"])
    assert res.exit_code == 2
    assert error_line(res.stderr).startswith(f"error: {copy / CHECKPOINT_NAME}: its weights do not fit model.name=mmga model.backbone=resnet34")
    weights_only = _edited(run_dir, tmp_path / "weights_only", lambda c: [c.pop(k) for k in ("optimizer", "scheduler", "sampler", "rng")])
    res = runner.invoke(main, ["fit", "--resume", str(weights_only.parent)])
    assert res.exit_code == 2
    assert error_line(res.stderr) == (f"error: {weights_only}: no optimizer, scheduler, sampler, rng state to continue training from "
                                      f"(a weights-only checkpoint: it can be evaluated and exported, not resumed)")
    assert sha(ckpt) == sha(copy / CHECKPOINT_NAME)  # the refused runs changed nothing


def test_export_removes_a_killed_exports_temporaries_and_writes_through_a_temp_name(run_dir, tmp_path, monkeypatch) -> None:
    pytest.importorskip("onnx")
    import reid_train.export as export_mod

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead = int(gone.stdout)  # a process that has ended: what a kill -9 leaves
    out = tmp_path / "exp" / "m.onnx"
    out.parent.mkdir()
    leftovers = [out.parent / f".m.onnx.tmp-{HOST}-{dead}", out.parent / f".m.onnx.json.tmp-{HOST}-{dead}"]
    for p in leftovers:
        p.write_bytes(b"x" * 1000)
    live = out.parent / f".m.onnx.tmp-{HOST}-{os.getppid()}"  # a running writer's: kept
    live.write_bytes(b"y")

    real = export_mod._embed_onnx_metadata
    written = []

    def embed(path, metadata):
        written.append((Path(path).name, out.exists()))
        real(path, metadata)

    monkeypatch.setattr(export_mod, "_embed_onnx_metadata", embed)
    res = CliRunner().invoke(main, ["export", "--checkpoint", str(run_dir / CHECKPOINT_NAME), "--out", str(out), "--no-check"])
    assert res.exit_code == 0, res.output
    assert written == [(f".m.onnx.tmp-{HOST}-{os.getpid()}", False)]  # the final name appears complete, at the end
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([live.name, "m.onnx", "m.onnx.json"])
