"""pipelines/slurm/fit.sbatch.example on a real single-node Slurm (tests/slurm_cluster.py): a fit
job requeued mid-run (``scontrol requeue``) stops with a checkpoint, resumes by itself and
finishes with the weights of an uninterrupted run."""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cache_helpers import make_cache
from reid_train.config import load_config
from reid_train.engine.trainer import CHECKPOINT_NAME, Trainer, load_checkpoint
from slurm_cluster import SlurmCluster, slurm  # noqa: F401  (the session fixture)

TEMPLATE = Path(__file__).resolve().parents[1] / "pipelines" / "slurm" / "fit.sbatch.example"
# 8 synthetic train ids, P=2: 4 iterations an epoch, 8 in all; the requeue comes in iteration 3.
# One torch thread here and in the job (OMP_NUM_THREADS=1): bitwise equal CPU results.
SETTINGS = ["train.device=cpu", "data.height=64", "data.width=32", "data.num_ids=2", "data.num_instances=2",
            "data.num_workers=0", "solver.epochs=2", "solver.step_size=1", "train.eval_period=0", "train.log_period=1"]


def cpu_script(folder: Path) -> Path:
    """The template with its GPU-node resource lines swapped for the one-node CPU test cluster."""
    lines = []
    for line in TEMPLATE.read_text().splitlines():
        if re.match(r"#SBATCH --(gpus-per-node|cpus-per-task|mem|time|output)=", line):
            continue
        lines.append(line)
        if line.startswith("#SBATCH --job-name"):
            lines.append(f"#SBATCH --output={folder}/fit-%j.out")
    script = folder / "fit.sbatch"
    script.write_text("\n".join(lines) + "\n")
    return script


@pytest.mark.slurm
@pytest.mark.usefixtures("one_thread_and_clean_logging")
def test_requeued_fit_job_finishes_with_uninterrupted_weights(slurm: SlurmCluster, synth_dataset, tmp_path) -> None:
    root = synth_dataset("market1501", ids=8)
    cache = make_cache(root)
    run = tmp_path / "run"
    env = {**slurm.env, "CONFIG": "tiny_synthetic", "DATA": str(root), "CACHE": str(cache), "RUN": str(run),
           "VENV": str(Path(sys.executable).parent.parent), "GPUS": "1", "OMP_NUM_THREADS": "1",
           "EXTRA": " ".join(f"--set {s}" for s in SETTINGS)}
    job = subprocess.run(["sbatch", "--parsable", str(cpu_script(tmp_path))], env=env, capture_output=True,
                         text=True, check=True).stdout.strip()

    log = run / "log.txt"
    deadline = time.monotonic() + 90
    while not (log.is_file() and "epoch 1/2 [2/4]" in log.read_text()):  # training is under way
        assert time.monotonic() < deadline, f"the job did not start training; queue {slurm.queued()}"
        time.sleep(0.05)
    slurm.run("scontrol", "requeue", job)
    slurm.wait_until(lambda q: any(j["id"] == job and j["state"] == "PENDING" for j in q), 60, "the job to be requeued")
    # Slurm delays a requeued job's start by the credential lifetime (~2 min): start it now
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")
    slurm.wait_gone([job], timeout=120)

    text = log.read_text()
    out = (tmp_path / f"fit-{job}.out").read_text()
    assert "stopped by SIGTERM after" in text and "continue with:" in text, out
    assert "resumed from" in text and out.count("fit tiny_synthetic on") == 2, out
    ckpt = load_checkpoint(run / CHECKPOINT_NAME)
    assert (ckpt["epoch"], ckpt["iteration"]) == (2, 0)

    cfg = load_config("tiny_synthetic", [f"data.root={root}", f"data.cache={cache}", f"train.output_dir={tmp_path / 'straight'}", *SETTINGS])
    straight = Trainer(cfg)
    straight.fit()
    ref = straight.model.state_dict()
    assert ckpt["model"].keys() == ref.keys()
    for k in ref:
        assert torch.equal(ckpt["model"][k], ref[k]), k
