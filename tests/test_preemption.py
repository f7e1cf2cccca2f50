"""``fit`` stopped by SIGTERM / SIGUSR1 / Ctrl-C mid-epoch, then ``--resume``: the weights of an
uninterrupted run; one line and 128 + signal number from the CLI; dead checkpoint temps removed."""
from __future__ import annotations

import json
import os
import shlex
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cache_helpers import make_cache
from reid_masks.fileio import HOST
from reid_train.cli import main
from reid_train.config import Config, load_config
from reid_train.engine import trainer as trainer_mod
from reid_train.engine.preemption import StopSignals, Stopped
from reid_train.engine.trainer import CHECKPOINT_NAME, Trainer, load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread_and_clean_logging")

# P=2 of the 4 synthetic train ids: 2 iterations an epoch, 4 in 2 epochs; the signal comes
# during step 3, i.e. iteration 1 of epoch 2 (a stop in the middle of an epoch).
ARGS = ("data.height=64", "data.width=32", "data.num_ids=2", "data.num_instances=2", "train.log_period=50",
        "solver.epochs=2", "solver.step_size=1", "train.eval_period=0")
STOP_AT_STEP = 3


@pytest.fixture(scope="module")
def market_root(synth_dataset) -> Path:
    return synth_dataset("market1501", ids=4)


def cfg_args(root: Path, out: Path, workers: int) -> list[str]:
    return [f"data.root={root}", f"data.cache={make_cache(root)}", f"train.output_dir={out}",
            f"data.num_workers={workers}", *ARGS]


def cfg(root: Path, out: Path, workers: int = 0) -> Config:
    return load_config("tiny_synthetic", cfg_args(root, out, workers))


@pytest.fixture(scope="module")
def straight(market_root, tmp_path_factory) -> dict[int, dict[str, torch.Tensor]]:
    """Final weights of uninterrupted runs, by data.num_workers (computed on first use)."""
    weights: dict[int, dict[str, torch.Tensor]] = {}

    class Lazy(dict):
        def __missing__(self, workers: int) -> dict[str, torch.Tensor]:
            t = Trainer(cfg(market_root, tmp_path_factory.mktemp(f"straight{workers}"), workers))
            t.fit()
            self[workers] = {k: v.clone() for k, v in t.model.state_dict().items()}
            return self[workers]

    return Lazy(weights)


def signal_during_step(monkeypatch, signum: int, step: int = STOP_AT_STEP) -> None:
    """Send ``signum`` to this process while training step ``step`` (1-based) runs."""
    real = trainer_mod.train_step
    calls = {"n": 0}

    def step_then_signal(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_step", step_then_signal)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_mid_epoch_then_resume_equals_uninterrupted(signum, market_root, straight, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    signal_during_step(monkeypatch, signum)
    with pytest.raises(Stopped) as stopped:
        Trainer(cfg(market_root, out)).fit()
    assert stopped.value.exit_status == 128 + signum
    assert signal.getsignal(signum) is signal.SIG_DFL  # handlers put back after fit
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert (ckpt["epoch"], ckpt["iteration"]) == (1, 1)  # epoch 1 done + iteration 1 of epoch 2
    assert str(stopped.value) == f"stopped by {signal.Signals(signum).name} after iteration 1/2 of epoch 2: {out / CHECKPOINT_NAME} keeps the run up to there"
    monkeypatch.undo()

    # a temp file of a killed checkpoint write goes at the next start; a live writer's stays
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    dead = out / f".{CHECKPOINT_NAME}.tmp-{HOST}-{dead_pid}"
    live = out / f".{CHECKPOINT_NAME}.tmp-{HOST}-{os.getppid()}"
    dead.write_bytes(b"x" * 100)
    live.write_bytes(b"y")
    resumed = Trainer(cfg(market_root, out), resume=True)
    assert not dead.exists() and live.exists()
    live.unlink()
    assert (resumed.start_epoch, resumed.start_iter) == (1, 1)
    resumed.fit()
    assert_same_weights(resumed.model.state_dict(), straight[0])
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]


def test_ctrl_c_with_loader_workers_via_cli(market_root, straight, tmp_path, monkeypatch) -> None:
    """Ctrl-C: one line on stderr and in log.txt, exit 130; workers replay the skipped batches exactly."""
    out = tmp_path / "run"
    args = ["fit", "--config", "tiny_synthetic"] + [a for kv in cfg_args(market_root, out, 1) for a in ("--set", kv)]
    signal_during_step(monkeypatch, signal.SIGINT)
    monkeypatch.setattr("sys.argv", ["/venv/bin/reid-train", *args])  # what the console script sees
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130, result.output
    monkeypatch.undo()
    line = (f"stopped by SIGINT after iteration 1/2 of epoch 2: {out / CHECKPOINT_NAME} keeps the run up to there; "
            f"continue with: {shlex.join(['reid-train', *args, '--resume'])}")
    stderr_lines = [x for x in result.output.splitlines() if "stopped by SIGINT" in x]
    log_lines = [x for x in (out / "log.txt").read_text().splitlines() if "stopped by SIGINT" in x]
    assert len(stderr_lines) == len(log_lines) == 1
    assert stderr_lines[0].endswith(line) and log_lines[0].endswith(line)

    result = CliRunner().invoke(main, args + ["--resume"])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert (ckpt["epoch"], ckpt["iteration"]) == (2, 0)
    assert_same_weights(ckpt["model"], straight[1])


def test_stop_signals_second_ctrl_c_stops_at_once() -> None:
    before = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # repeats (Slurm + torchrun) are ignored
        assert stop.signum == signal.SIGTERM and stop.name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


# --------------------------------------------------------------------------- the evaluation after an epoch; one fit per folder

# ``reid-train fit`` whose evaluation takes long (a sleep first): a real process to signal and to lock the folder
SLOW_EVALUATION = (
    "import sys, time\n"
    "import reid_train.engine.trainer as t\n"
    "real = t.evaluate_test_sets\n"
    "def slow(*args, **kwargs):\n"
    "    print('evaluation starts', file=sys.stderr, flush=True)\n"
    "    time.sleep(60)\n"
    "    return real(*args, **kwargs)\n"
    "t.evaluate_test_sets = slow\n"
    "from reid_train.cli import main\n"
    "main(prog_name='reid-train')\n"
)


def test_sigterm_during_evaluation_keeps_the_epoch_and_a_second_fit_is_refused(market_root, straight, tmp_path) -> None:
    """SIGTERM while the epoch's evaluation runs, SIGKILL 5 s later (Slurm's KillWait): the epoch is
    saved before the evaluation, which ends at once with one line; meanwhile a second fit, evaluate
    and extract on the folder are refused naming the running fit; --resume goes on with epoch 2."""
    import subprocess
    import sys
    import threading
    import time

    out = tmp_path / "run"
    args = ["fit", "--config", "tiny_synthetic"] + [a for kv in cfg_args(market_root, out, 0) + ["train.eval_period=1"] for a in ("--set", kv)]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EVALUATION, *args], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        lines = []
        while not lines or lines[-1] != "evaluation starts\n":
            lines.append(proc.stderr.readline())
            assert lines[-1], "".join(lines)  # the fit ended before its evaluation
        ckpt = load_checkpoint(out / CHECKPOINT_NAME)
        assert (ckpt["epoch"], ckpt["iteration"]) == (1, 0)  # saved before the evaluation starts
        files = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in out.iterdir()}

        runner = CliRunner()
        refusals = [
            runner.invoke(main, args),
            runner.invoke(main, ["evaluate", "--checkpoint", str(out / CHECKPOINT_NAME)]),
            runner.invoke(main, ["extract", "--checkpoint", str(out / CHECKPOINT_NAME), "--split", "query", "--out", str(out / "q.npz")]),
        ]
        for res in refusals:
            assert res.exit_code == 2, res.output
            assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"error: {out}: another run is writing it (pid {proc.pid} on "), res.stderr
            assert shlex.join(["reid-train", *args]) in res.stderr  # the holder's command
        assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in out.iterdir()} == files  # nothing touched

        heard: list[tuple[float, str]] = []
        reader = threading.Thread(target=lambda: heard.extend((time.monotonic(), x) for x in iter(proc.stderr.readline, "")))
        reader.start()
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)  # the interpreter's own exit can take seconds on a loaded machine
        reader.join()
        rest = "".join(x for _, x in heard)
        stopped_after = next((t for t, x in heard if "stopped by" in x), float("inf")) - sent
        assert stopped_after < 5, f"the evaluation ended {stopped_after:.1f} s after SIGTERM (Slurm's SIGKILL comes after KillWait)"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143
    ck = out / CHECKPOINT_NAME
    line = (f"stopped by SIGTERM during the evaluation after epoch 1: {ck} keeps the run up to there; evaluate it with: "
            f"reid-train evaluate --checkpoint {ck}; continue with: {shlex.join(['reid-train', *args, '--resume'])}")
    said = [x for x in rest.splitlines() if "stopped by" in x]
    logged = [x for x in (out / "log.txt").read_text().splitlines() if "stopped by" in x]
    assert len(said) == len(logged) == 1 and said[0].endswith(line) and logged[0].endswith(line), rest
    assert "Traceback" not in rest
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert load_checkpoint(ck)["epoch"] == 1

    resumed = Trainer(cfg(market_root, out), resume=True)
    assert (resumed.start_epoch, resumed.start_iter) == (1, 0)  # the next epoch, not the saved one again
    resumed.fit()
    assert_same_weights(resumed.model.state_dict(), straight[0])
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_second_ctrl_c_keeps_the_last_checkpoint_and_says_how_to_continue(market_root, straight, tmp_path, monkeypatch) -> None:
    """Ctrl-C twice in an iteration of epoch 2: exit 130 with one line (stderr and log.txt) naming the
    checkpoint of epoch 1 and the command that continues; that command ends with the weights of an
    uninterrupted run."""
    out = tmp_path / "run"
    args = ["fit", "--config", "tiny_synthetic"] + [a for kv in cfg_args(market_root, out, 0) for a in ("--set", kv)]
    real = trainer_mod.train_step
    calls = {"n": 0}

    def step_then_two_ctrl_c(*a, **k):
        calls["n"] += 1
        if calls["n"] == STOP_AT_STEP:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # the user insists: stop at once
        return real(*a, **k)

    monkeypatch.setattr(trainer_mod, "train_step", step_then_two_ctrl_c)
    monkeypatch.setattr("sys.argv", ["/venv/bin/reid-train", *args])
    res = CliRunner().invoke(main, args)
    monkeypatch.undo()
    assert res.exit_code == 130, res.output
    assert "Aborted!" not in res.output and "Traceback" not in res.output
    command = shlex.join(["reid-train", *args, "--resume"])
    line = (f"interrupted by a second Ctrl-C before the stop was done: {out / CHECKPOINT_NAME} keeps the run "
            f"up to epoch 1; continue with: {command}")
    said = [x for x in res.stderr.splitlines() if "interrupted" in x]
    logged = [x for x in (out / "log.txt").read_text().splitlines() if "interrupted" in x]
    assert len(said) == len(logged) == 1 and said[0].endswith(line) and logged[0].endswith(line), res.stderr
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert (ckpt["epoch"], ckpt["iteration"]) == (1, 0)

    res = CliRunner().invoke(main, shlex.split(command)[1:])
    assert res.exit_code == 0, res.output
    assert_same_weights(load_checkpoint(out / CHECKPOINT_NAME)["model"], straight[0])


def test_a_stopped_final_evaluation_is_redone_by_resume(market_root, tmp_path, monkeypatch) -> None:
    """SIGTERM as the last epoch's evaluation starts: exit as stopped (so Slurm requeues); the
    requeued ``--resume`` has nothing to train but runs the evaluation that was cut short."""
    out = tmp_path / "run"
    one_epoch = load_config("tiny_synthetic", [*cfg_args(market_root, out, 0), "solver.epochs=1"])

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the evaluation went on after SIGTERM")

    monkeypatch.setattr(trainer_mod, "evaluate_test_sets", signalled)
    with pytest.raises(Stopped, match="^stopped by SIGTERM during the evaluation after epoch 1: .*; evaluate it with: reid-train evaluate --checkpoint "):
        Trainer(one_epoch).fit()
    monkeypatch.undo()
    assert load_checkpoint(out / CHECKPOINT_NAME)["epoch"] == 1 and not (out / "evaluation.json").exists()
    record = Trainer(one_epoch, resume=True).fit()
    assert json.loads((out / "evaluation.json").read_text())["epoch"] == 1
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1] and lines[0]["mAP"] == record["mAP"]
