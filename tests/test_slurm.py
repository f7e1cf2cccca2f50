"""``reid-masks submit``: scripts and errors without Slurm; array + merge, a failed shard and
``--resubmit-failed`` against a real single-node Slurm (tests/slurm_cluster.py)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner, Result

from cache_helpers import same_column
from reid_masks.cli import Group, main
from reid_masks.datasets import build_dataset
from reid_masks.slurm import array_spec, status_command, submit_command
from reid_masks.synth.layouts import synthesize
from slurm_cluster import SlurmCluster, slurm  # noqa: F401  (the session fixture)

# The commands as the main CLI will carry them: a UserError prints one line and exits 2.
cli = Group(commands={"submit": submit_command, "slurm-status": status_command})
# Small chunks so that 3 shards each get work (60 images: 8 chunks of 8 rows).
GENERATE_OPTS = ("--workers", "0", "--chunk-rows", "8")
SHARDS = 3


def run(*args: object) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def submit(root: Path, out: Path, *extra: object) -> Result:
    return run("submit", "--dataset", "market1501", "--root", root, "--parsing-dir", root / "parsing", "--out", out,
               "--shards", SHARDS, *extra, "--", *GENERATE_OPTS)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slurm-market")
    synthesize("market1501", root, ids=4, seed=0, workers=1)
    return root


@pytest.fixture(scope="module")
def reference(market: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same data through one plain ``reid-masks generate`` process."""
    out = tmp_path_factory.mktemp("slurm-ref") / "market.h5"
    result = CliRunner().invoke(main, ["generate", "--dataset", "market1501", "--root", str(market), "--parsing-dir",
                                       str(market / "parsing"), "--out", str(out), *GENERATE_OPTS])
    assert result.exit_code == 0, result.output
    return out


def comparable_attrs(attrs: h5py.AttributeManager) -> dict:
    out = {}
    for key, value in attrs.items():
        if key == "merged_from":
            continue
        if key == "provenance":
            value = {k: v for k, v in json.loads(value).items() if k not in ("command", "created")}
        out[key] = value.tolist() if isinstance(value, np.ndarray) else value
    return out


def assert_same_cache(a: Path, b: Path) -> None:
    """Every dataset of every split group equal; attributes equal but for the volatile ones."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa.keys()) == sorted(fb.keys()) == ["gallery", "multi_query", "query", "train"]  # synthetic Market has gt_bbox/
        assert comparable_attrs(fa.attrs) == comparable_attrs(fb.attrs)
        for split in fa:
            ga, gb = fa[split], fb[split]
            assert sorted(ga.keys()) == sorted(gb.keys()), split
            assert dict(ga.attrs) == dict(gb.attrs), split
            for name in ga:
                x, y = ga[name][()], gb[name][()]
                assert x.dtype == y.dtype and x.shape == y.shape, (split, name)
                assert same_column(x, y), (split, name)


def jobs_of(out: Path) -> dict:
    return json.loads((out.with_name(out.name + ".slurm") / "jobs.json").read_text())


def ids_of(jobs: dict, kind: str) -> list[str]:
    return [s["job_id"] for s in jobs["submissions"] if s["kind"] == kind]


# --- without a cluster ------------------------------------------------------------------------


def test_array_spec():
    assert array_spec([1, 3]) == "1,3"
    assert array_spec([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert array_spec([4]) == "4"


def test_dry_run_writes_readable_scripts(market, tmp_path):
    out = tmp_path / "c.h5"
    result = submit(market, out, "--dry-run", "--partition", "gpu", "--time", "2:00:00", "--gpus-per-task", "1")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "c.h5.slurm"
    gen, merge = (folder / "generate.sbatch").read_text(), (folder / "merge.sbatch").read_text()
    exe = str(Path(sys.executable).parent / "reid-masks")
    assert "#SBATCH --array=0-2" in gen and "#SBATCH --partition=gpu" in gen and "#SBATCH --gpus-per-task=1" in gen
    assert f"#SBATCH --output={folder}/logs/generate-%A_%a.out" in gen
    assert f"{exe} generate" in gen and '--shard "${SLURM_ARRAY_TASK_ID}/3"' in gen
    assert "--chunk-rows 8" in gen and "--device cuda" in gen  # GPUs asked for: generate runs on them
    assert f"{exe} merge" in merge and "--gpus-per-task" not in merge
    assert "--partition" not in merge  # a CPU job: not the GPU partition, the cluster's default
    assert "#SBATCH --time=2:00:00" in merge
    again = submit(market, tmp_path / "m.h5", "--dry-run", "--partition", "gpu", "--gpus-per-task", "1", "--merge-partition", "cpu")
    assert again.exit_code == 0, again.output
    assert "#SBATCH --partition=cpu" in (tmp_path / "m.h5.slurm" / "merge.sbatch").read_text()
    assert "#SBATCH --partition=gpu" in (tmp_path / "m.h5.slurm" / "generate.sbatch").read_text()
    for i in range(SHARDS):
        assert str(tmp_path / f"c.shard{i}of3.h5") in merge
    assert f"--out {out}" in merge
    for script in (folder / "generate.sbatch", folder / "merge.sbatch"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert f"sbatch --parsable --array=0-2 {folder}/generate.sbatch" in result.output
    assert "--dependency=afterok:" in result.output
    assert not (folder / "jobs.json").exists()


def test_clear_errors(market, tmp_path, monkeypatch):
    out = tmp_path / "c.h5"
    result = submit(market, out, "--shards", "0")  # the later --shards wins
    assert result.exit_code == 2 and "Invalid value for '--shards': 0 is not in the range 1<=x<=100000" in result.output
    result = run("submit", "--dataset", "market1501", "--root", market, "--out", out, "--shards", 2, "--", "--shard", "0/2")
    assert result.exit_code == 2 and "--shard after '--'" in result.output

    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = submit(market, out)
    assert result.exit_code == 2, result.output
    assert "Slurm's sbatch is not on PATH" in result.output and result.output.count("\n") <= 3

    fake = empty / "sbatch"
    fake.write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2\nexit 1\n")
    fake.chmod(0o755)
    result = submit(market, tmp_path / "d.h5", "--partition", "nope")
    assert result.exit_code == 2
    assert "error: sbatch failed: sbatch: error: Batch job submission failed: Invalid partition name specified" in result.output

    result = run("submit", "--out", tmp_path / "never.h5", "--resubmit-failed")
    assert result.exit_code == 2 and "jobs.json: not found" in result.output


def test_out_whose_shard_names_are_too_long_refused_before_sbatch(tmp_path, monkeypatch):
    """--out fits generate's own temporary name, a shard file's (10 bytes longer) does not: refused
    in one line before any file or sbatch call; with one shard (no shard names) it is accepted."""
    from reid_masks.fileio import HOST

    work = tmp_path / "work"
    work.mkdir()
    calls = tmp_path / "sbatch-calls"
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho 7\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    stem = "c" * (255 - len(f"..h5.tmp-{HOST}-9999999"))
    out = work / f"{stem}.h5"  # its own temporary '.<name>.tmp-<host>-<pid>' has exactly 255 bytes
    result = submit(tmp_path / "root", out)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (f"error: --out {out}: name too long: '.{stem}.shard0of3.h5.tmp-{HOST}-9999999' (a name written "
                                     f"beside it) has 265 bytes and the file system takes at most 255 bytes per name; shorten it by 10 byte(s) or more")
    assert not calls.exists() and list(work.iterdir()) == []  # no sbatch, no job folder, no script
    result = run("submit", "--dataset", "market1501", "--root", tmp_path / "root", "--out", out, "--shards", 1, "--dry-run")
    assert result.exit_code == 0, result.output
    assert not calls.exists()


# --- a real single-node Slurm -----------------------------------------------------------------


@pytest.mark.slurm
def test_jobs_inherit_the_submit_environment(slurm: SlurmCluster, tmp_path, monkeypatch):
    """sbatch's default --export=ALL: the job sees our variables and can run this Python."""
    monkeypatch.setenv("REID_SLURM_MARK", "hello-from-pytest")
    log = tmp_path / "env.out"
    wrap = f'echo "mark=$REID_SLURM_MARK conf=$SLURM_CONF"; {sys.executable} -c "import reid_masks, sys; print(\'prefix=\' + sys.prefix)"'
    job = subprocess.run(["sbatch", "--parsable", f"--output={log}", "--wrap", wrap], capture_output=True, text=True, check=True).stdout.strip()
    slurm.wait_gone([job], timeout=60)
    text = log.read_text()
    assert f"mark=hello-from-pytest conf={slurm.conf}" in text
    assert f"prefix={sys.prefix}" in text


@pytest.mark.slurm
def test_array_then_merge_equals_one_process(slurm: SlurmCluster, market, reference, tmp_path):
    out = tmp_path / "run" / "market.h5"
    result = submit(market, out)
    assert result.exit_code == 0, result.output
    jobs = jobs_of(out)
    (gen_id,), (merge_id,) = ids_of(jobs, "generate"), ids_of(jobs, "merge")
    assert f"submitted generate array job {gen_id}" in result.output and f"submitted merge job {merge_id}" in result.output
    assert jobs["submissions"][0]["array"] == "0-2"
    assert jobs["submissions"][1]["sbatch"].endswith(f"--dependency=afterok:{gen_id} {jobs['merge_script']}")
    slurm.wait_gone([gen_id, merge_id], timeout=120)

    logs = Path(jobs["logs"])
    assert out.is_file(), "\n".join(p.read_text() for p in sorted(logs.glob("*.out")))
    assert sorted(p.name for p in logs.iterdir()) == [f"generate-{gen_id}_{i}.out" for i in range(SHARDS)] + [f"merge-{merge_id}.out"]
    assert_same_cache(out, reference)
    with h5py.File(out, "r") as f:
        assert json.loads(f.attrs["merged_from"]) == jobs["shard_files"]

    result = run("submit", "--out", out, "--resubmit-failed")
    assert result.exit_code == 0 and "nothing to resubmit" in result.output, result.output


@pytest.mark.slurm
def test_failed_shard_blocks_merge_until_resubmitted(slurm: SlurmCluster, market, reference, tmp_path):
    # Train row 8 is in chunk 1 (8 rows a chunk), which only shard 1 of 3 processes.
    rec = build_dataset("market1501", market).split("train")[8]
    png = (market / "parsing" / rec.path).with_suffix(".png")
    aside = tmp_path / "aside.png"
    out = tmp_path / "run" / "market.h5"
    shutil.move(png, aside)
    try:
        result = submit(market, out)
        assert result.exit_code == 0, result.output
        jobs = jobs_of(out)
        (gen_id,), (merge_id,) = ids_of(jobs, "generate"), ids_of(jobs, "merge")
        slurm.wait_gone([gen_id], timeout=120)
        # The merge never runs: Slurm leaves it pending (or a site's kill_invalid_depend cancels it).
        slurm.wait_until(lambda q: all(j["reason"] == "DependencyNeverSatisfied" for j in q if j["id"] == merge_id), 30,
                         "the merge to be marked DependencyNeverSatisfied")
    finally:
        shutil.move(aside, png)

    shard_files = [Path(p) for p in jobs["shard_files"]]
    assert [p.is_file() for p in shard_files] == [True, False, True]
    assert not out.exists()
    logs = Path(jobs["logs"])
    assert not (logs / f"merge-{merge_id}.out").exists()
    assert "parsing PNG not found" in (logs / f"generate-{gen_id}_1.out").read_text()
    status = run("slurm-status", "--out", out)
    assert status.exit_code == 0, status.output
    assert "shard 1/3: FAILED" in status.output and "shard 0/3: done" in status.output
    assert f"merge job {merge_id}: will never run" in status.output and "--resubmit-failed" in status.output

    result = run("submit", "--out", out, "--resubmit-failed")
    assert result.exit_code == 0, result.output
    jobs = jobs_of(out)
    gen_ids, merge_ids = ids_of(jobs, "generate"), ids_of(jobs, "merge")
    assert len(gen_ids) == 2 and len(merge_ids) == 2
    again = jobs["submissions"][-2]
    assert again["kind"] == "generate" and again["tasks"] == [1] and again["array"] == "1"
    assert "--array=1 " in again["sbatch"]
    assert jobs["submissions"][-1]["after"] == gen_ids[1]
    if any(j["id"] == merge_id for j in slurm.queued()):
        assert f"cancelled the old merge job {merge_id}" in result.output
    slurm.wait_until(lambda q: not any(j["id"] == merge_id and j["state"] == "PENDING" for j in q), 15, "the old merge to be cancelled")
    slurm.wait_gone([gen_ids[1], merge_ids[1]], timeout=120)

    assert out.is_file(), "\n".join(p.read_text() for p in sorted(logs.glob("*.out")))
    assert sorted(p.name for p in logs.glob(f"generate-{gen_ids[1]}_*.out")) == [f"generate-{gen_ids[1]}_1.out"]
    assert (logs / f"merge-{merge_ids[1]}.out").is_file() and not (logs / f"merge-{merge_id}.out").exists()
    assert_same_cache(out, reference)
