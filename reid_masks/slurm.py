"""``reid-masks submit``: mask generation as a Slurm array job (one task per shard) + a merge job.

``submit`` writes two plain, commented sbatch scripts into a job folder (default
``<out>.slurm/``) so that what runs on the cluster can be read, kept and re-run by hand:

* ``generate.sbatch``: an array job ``--array=0-(N-1)``; task i runs
  ``reid-masks generate ... --shard i/N`` and writes ``<stem>.shard<i>of<N>.h5`` beside
  ``--out`` (a killed task resumes from ``<shard>.partial/`` when it runs again);
* ``merge.sbatch``: ``reid-masks merge <all shard files> --out CACHE``, submitted with
  ``--dependency=afterok:<array job id>`` so it runs only once every task succeeded.

The job ids, the shard files and each ``sbatch`` call go to ``jobs.json`` in the job folder.
``--resubmit-failed`` reads it back: a shard is done when its shard file exists, so the
tasks of the missing shards are resubmitted as a new array (``--array=1,3``) with a new
merge job depending on it; the old merge, left pending by Slurm because its dependency
can never be satisfied, is cancelled. ``slurm-status`` shows where a run stands.
"""
from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import click

from reid_masks.cliopts import dataset_flags, dataset_options_from_cli
from reid_masks.errors import UserError
from reid_masks.fileio import check_name_lengths, sibling_names, write_text_atomic

JOBS_FILE = "jobs.json"
JOBS_VERSION = 1
# Options of ``generate`` that submit sets itself (per task or from its own options).
OWN_GENERATE_OPTIONS = ("--shard", "--out", "--dataset", "--dataset-option", "--root", "--parsing-dir")


@dataclass
class Resources:
    """sbatch resource options shared by both scripts (None: the cluster's default).

    ``merge_partition``: the merge job's partition. Unset, it is ``partition`` when the generate
    tasks take no GPUs, and the cluster's default partition when they do (the merge is a CPU job:
    it must not wait for, or hold, a node of a GPU partition).
    """

    partition: str | None = None
    account: str | None = None
    time: str | None = None
    mem: str | None = None
    cpus_per_task: int | None = None
    gpus_per_task: int | None = None
    merge_partition: str | None = None

    def directives(self, gpus: bool) -> list[str]:
        """``--key=value`` options; GPUs (and a GPU partition) only for the generate tasks (merge needs none)."""
        partition = self.partition if gpus else self.merge_partition or (None if self.gpus_per_task else self.partition)
        pairs = [("partition", partition), ("account", self.account), ("time", self.time), ("mem", self.mem),
                 ("cpus-per-task", self.cpus_per_task), ("gpus-per-task", self.gpus_per_task if gpus and self.gpus_per_task else None)]
        return [f"--{k}={v}" for k, v in pairs if v is not None]


# --- small helpers ------------------------------------------------------------------------


def reid_masks_executable() -> list[str]:
    """The ``reid-masks`` running now, as an absolute command: a venv's copy works on the nodes too."""
    beside = Path(sys.executable).parent / "reid-masks"  # not resolved: a venv's python is a symlink
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside.absolute())]
    found = shutil.which("reid-masks")
    if found:
        return [str(Path(found).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "reid_masks.cli"]


def array_spec(tasks: Sequence[int]) -> str:
    """Task ids as Slurm writes them: ``[0, 1, 2, 5]`` -> ``0-2,5``."""
    parts: list[str] = []
    ts = sorted(set(tasks))
    i = 0
    while i < len(ts):
        j = i
        while j + 1 < len(ts) and ts[j + 1] == ts[j] + 1:
            j += 1
        parts.append(str(ts[i]) if i == j else f"{ts[i]}-{ts[j]}")
        i = j + 1
    return ",".join(parts)


def run_slurm(cmd: list[str]) -> str:
    """Run a Slurm client tool; its failure becomes a one-line UserError carrying its stderr."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise UserError(f"Slurm's {cmd[0]} is not on PATH (run this on a Slurm login node, or use --dry-run to only write the scripts)") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"{cmd[0]} did not answer in 120 s (is slurmctld up?)") from None
    if proc.returncode != 0:
        err = " ".join((proc.stderr or proc.stdout).split()) or f"exit status {proc.returncode}"
        raise UserError(f"{cmd[0]} failed: {err}")
    return proc.stdout


def sbatch(args: list[str]) -> str:
    """``sbatch --parsable ...`` -> the job id (``123`` from ``123`` or ``123;cluster``)."""
    out = run_slurm(["sbatch", "--parsable", *args]).strip()
    job_id = out.splitlines()[-1].split(";")[0].strip() if out else ""
    if not job_id.isdigit():
        raise UserError(f"sbatch answered {out!r}, expected a job id")
    return job_id


def queued_jobs(job_ids: Sequence[str]) -> list[dict[str, str]]:
    """Queue entries (one per array task) belonging to ``job_ids``: id, array_job, task, state, reason."""
    if not job_ids:
        return []
    # Query all of the user's jobs, not -j: squeue -j fails on ids already purged from slurmctld.
    out = run_slurm(["squeue", "-h", "--array", "-u", getpass.getuser(), "-o", "%i|%F|%K|%T|%r"])
    ids = set(job_ids)
    keys = ("id", "array_job", "task", "state", "reason")
    rows = [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line.count("|") == 4]
    return [r for r in rows if r["array_job"] in ids or r["id"] in ids]


def command_text(cmd: Sequence[str], head: int = 2, indent: str = "    ") -> str:
    """A long command as one shell-quoted argument (or option with its value) per line after the first ``head`` words."""
    words = [shlex.quote(str(w)) for w in cmd]
    lines: list[str] = [" ".join(words[:head])]
    i = head
    while i < len(words):
        w = words[i]
        if w.startswith("--") and "=" not in w and i + 1 < len(words) and not words[i + 1].startswith("-") and lines:
            lines.append(f"{w} {words[i + 1]}")
            i += 2
        else:
            lines.append(w)
            i += 1
    return " \\\n".join([lines[0]] + [indent + x for x in lines[1:]])


# --- the scripts ----------------------------------------------------------------------------


def generate_script(exe: list[str], generate_args: list[str], shards: int, logs: Path, workdir: Path,
                    resources: Resources, max_running: int | None) -> str:
    """generate.sbatch: one array task per shard, the task id picks the shard."""
    spec = f"0-{shards - 1}" + (f"%{max_running}" if max_running else "")
    directives = ["--job-name=reid-masks-generate", f"--array={spec}", "--ntasks=1",
                  f"--output={logs}/generate-%A_%a.out", f"--chdir={workdir}", *resources.directives(gpus=True)]
    cmd = command_text([*exe, "generate", *generate_args, "--shard"], head=len(exe) + 1)
    writes = f"<stem>.shard<i>of{shards}.h5 beside --out" if shards > 1 else "--out itself (one shard: no merge)"
    return f"""#!/bin/bash
# generate.sbatch: written by `reid-masks submit` on {time.strftime("%Y-%m-%d %H:%M:%S")}.
#
# One Slurm array task per shard: task i runs `reid-masks generate --shard i/{shards}` and writes
# {writes}. Shards are numbered 0..{shards - 1}, like the task ids.
# A task that dies (time limit, node failure) keeps its finished chunks in <shard file>.partial/;
# run it again and it resumes. `reid-masks submit --resubmit-failed --out ...` resubmits exactly
# the tasks whose shard file is missing, as in  sbatch --array=<failed task ids, e.g. 1,3> generate.sbatch
#
# Options given on the sbatch command line override the #SBATCH lines below (--array, --time, ...).
# The job inherits the submitting shell's environment (sbatch's default --export=ALL); PATH is
# extended below so that the same Python environment runs on the nodes.
{chr(10).join(f"#SBATCH {d}" for d in directives)}

set -euo pipefail
: "${{SLURM_ARRAY_TASK_ID:?submit this script as an array job: sbatch --array=0-{shards - 1} generate.sbatch}}"
export PATH={shlex.quote(str(Path(exe[0]).parent))}:"$PATH"

echo "reid-masks shard ${{SLURM_ARRAY_TASK_ID}}/{shards}: job ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} on $(hostname) at $(date)"
{cmd} "${{SLURM_ARRAY_TASK_ID}}/{shards}"
"""


def merge_script(exe: list[str], shard_files: list[Path], out: Path, logs: Path, workdir: Path, resources: Resources) -> str:
    """merge.sbatch: the shard files -> one cache (submitted with afterok on the array)."""
    directives = ["--job-name=reid-masks-merge", "--ntasks=1", f"--output={logs}/merge-%j.out", f"--chdir={workdir}",
                  *resources.directives(gpus=False)]
    cmd = command_text([*exe, "merge", *map(str, shard_files), "--out", str(out)], head=len(exe) + 1)
    return f"""#!/bin/bash
# merge.sbatch: written by `reid-masks submit` on {time.strftime("%Y-%m-%d %H:%M:%S")}.
#
# Merges the {len(shard_files)} shard caches of generate.sbatch into {out}.
# Submitted with --dependency=afterok:<generate array job id>: it starts only when every array
# task succeeded. When a task fails, Slurm leaves this job pending (reason
# DependencyNeverSatisfied) or cancels it; `reid-masks submit --resubmit-failed` cancels the
# old one and submits a new merge after the resubmitted tasks. `reid-masks merge` refuses
# missing or overlapping rows, so running it by hand early is safe.
{chr(10).join(f"#SBATCH {d}" for d in directives)}

set -euo pipefail
export PATH={shlex.quote(str(Path(exe[0]).parent))}:"$PATH"

echo "reid-masks merge: job ${{SLURM_JOB_ID}} on $(hostname) at $(date)"
{cmd}
"""


# --- the job folder -------------------------------------------------------------------------


def job_folder(out: Path, job_dir: Path | None) -> Path:
    return (job_dir or out.with_name(out.name + ".slurm")).absolute()


def read_jobs(folder: Path) -> dict[str, Any]:
    path = folder / JOBS_FILE
    if not path.is_file():
        raise UserError(f"{path}: not found; nothing was submitted with this --out/--job-dir yet (run 'reid-masks submit' without --resubmit-failed)")
    try:
        jobs = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if jobs.get("version") != JOBS_VERSION:
        raise UserError(f"{path}: jobs file version {jobs.get('version')!r}, this reid-masks reads version {JOBS_VERSION}")
    return jobs


def write_jobs(folder: Path, jobs: dict[str, Any]) -> None:
    write_text_atomic(folder / JOBS_FILE, json.dumps(jobs, indent=2) + "\n")


def last_submission(jobs: dict[str, Any], kind: str) -> dict[str, Any] | None:
    subs = [s for s in jobs.get("submissions", []) if s["kind"] == kind]
    return subs[-1] if subs else None


def task_submissions(jobs: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Each shard's latest generate submission."""
    latest: dict[int, dict[str, Any]] = {}
    for sub in jobs.get("submissions", []):
        if sub["kind"] == "generate":
            for t in sub["tasks"]:
                latest[t] = sub
    return latest


def record(jobs: dict[str, Any], kind: str, job_id: str | None, cmd: list[str], **extra: Any) -> dict[str, Any]:
    sub = {"kind": kind, "job_id": job_id, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sbatch": shlex.join(cmd), **extra}
    jobs.setdefault("submissions", []).append(sub)
    return sub


# --- submit / resubmit ----------------------------------------------------------------------


def check_generate_args(args: Sequence[str], gpus: int | None) -> list[str]:
    """The pass-through generate options, minus what submit sets; adds --device cuda when GPUs are asked for."""
    for a in args:
        name = a.split("=", 1)[0]
        if name in OWN_GENERATE_OPTIONS:
            raise UserError(f"{name} after '--': submit sets it itself (give --dataset/--dataset-option/--root/--out/--parsing-dir to submit, before '--'; --shard comes from the array task id)")
    out = list(args)
    if gpus and not any(a.split("=", 1)[0] == "--device" for a in out):
        out += ["--device", "cuda"]
    return out


def check_submit_names(out: Path, folder: Path, shard_files: Sequence[Path]) -> None:
    """Refuse (before any file or sbatch) an --out whose derived names would not fit NAME_MAX: each
    shard file with the lock, temporary and ``.partial`` folder its generate task writes beside
    it, the merged cache with merge's, and the default job folder ``<out>.slurm``. (Temporary
    names are sized with this host's name; a task's temporaries carry its compute node's.)"""
    names = [n for p in shard_files for n in sibling_names(p, also=[p.name + ".partial"])]
    names += sibling_names(out) + ([folder.name] if folder.parent == out.parent else [])
    check_name_lengths(out, names, "--out")


def submit_new(out: Path, folder: Path, logs: Path, dataset: str, root: Path, parsing_dir: Path | None, generate_args: list[str],
               shards: int, resources: Resources, max_running: int | None, dry_run: bool, dataset_options: Sequence[str] = ()) -> None:
    """Write both scripts, submit the array then the merge after it, record both in jobs.json."""
    from reid_masks.generate import shard_path  # imports torch: not at CLI start-up

    shard_files = [shard_path(out, (i, shards)) for i in range(shards)]  # [out] itself when N is 1
    check_submit_names(out, folder, shard_files)
    existing = [p for p in dict.fromkeys([*shard_files, out]) if p.exists()]
    if existing:
        raise UserError(f"{existing[0]}: exists already ({len(existing)} of the shard/merged files); use --resubmit-failed to finish that run, or remove them to start over")
    if (folder / JOBS_FILE).is_file() and not dry_run:
        old = read_jobs(folder)
        ids = [s["job_id"] for s in old.get("submissions", []) if s.get("job_id")]
        busy = queued_jobs(ids) if shutil.which("squeue") else []
        if busy:
            raise UserError(f"{folder / JOBS_FILE}: jobs of an earlier submit are still queued ({', '.join(sorted({b['id'] for b in busy}))}); wait, scancel them, or use another --job-dir")
    folder.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    exe = reid_masks_executable()
    gen_args = ["--dataset", dataset, *[a for pair in dataset_options for a in ("--dataset-option", pair)], "--root", str(root), "--out", str(out)]
    if parsing_dir is not None:
        gen_args += ["--parsing-dir", str(parsing_dir)]
    gen_args += generate_args
    workdir = Path.cwd()
    gen_path, merge_path = folder / "generate.sbatch", folder / "merge.sbatch"
    write_text_atomic(gen_path, generate_script(exe, gen_args, shards, logs, workdir, resources, max_running), 0o755)
    if shards > 1:
        write_text_atomic(merge_path, merge_script(exe, shard_files, out, logs, workdir, resources), 0o755)
        click.echo(f"wrote {gen_path} (array of {shards} shard tasks) and {merge_path}")
    else:
        click.echo(f"wrote {gen_path} (one task: shard 0/1 writes {out} itself, no merge needed)")

    array = f"0-{shards - 1}" + (f"%{max_running}" if max_running else "")
    gen_cmd = ["sbatch", "--parsable", f"--array={array}", str(gen_path)]
    jobs: dict[str, Any] = {
        "version": JOBS_VERSION, "out": str(out), "shards": shards, "shard_files": [str(p) for p in shard_files],
        "dataset": dataset, "dataset_options": list(dataset_options), "root": str(root), "parsing_dir": str(parsing_dir) if parsing_dir else None,
        "generate_args": generate_args, "generate_script": str(gen_path), "merge_script": str(merge_path) if shards > 1 else None,
        "logs": str(logs), "submissions": [],
    }
    if dry_run:
        click.echo("dry run, not submitted; would run:")
        click.echo("  " + shlex.join(gen_cmd))
        if shards > 1:
            click.echo("  " + shlex.join(["sbatch", "--parsable", "--dependency=afterok:<generate job id>", str(merge_path)]))
        return
    gen_id = sbatch(gen_cmd[2:])
    record(jobs, "generate", gen_id, gen_cmd, tasks=list(range(shards)), array=array)
    write_jobs(folder, jobs)
    click.echo(f"submitted generate array job {gen_id}: {shards} task(s) (--array={array}); logs: {logs}/generate-{gen_id}_<task>.out")
    if shards > 1:
        submit_merge(jobs, folder, gen_id, resources=None)
    click.echo(f"job ids recorded in {folder / JOBS_FILE}; follow with: squeue -u {getpass.getuser()}  (or reid-masks slurm-status --out {out})")


def submit_merge(jobs: dict[str, Any], folder: Path, after: str | None, resources: Resources | None) -> str:
    """Submit merge.sbatch (after job ``after`` succeeds, when given) and record it."""
    extra = [] if resources is None else resources.directives(gpus=False)
    cmd = ["sbatch", "--parsable", *([f"--dependency=afterok:{after}"] if after else []), *extra, jobs["merge_script"]]
    try:
        merge_id = sbatch(cmd[2:])
    except UserError as exc:
        write_jobs(folder, jobs)
        raise UserError(f"{exc} (the generate array was submitted and recorded in {folder / JOBS_FILE}; 'reid-masks submit --out {jobs['out']} --resubmit-failed' submits the merge again)") from None
    record(jobs, "merge", merge_id, cmd, after=after)
    write_jobs(folder, jobs)
    when = f"runs after job {after} succeeds" if after else "runs now"
    click.echo(f"submitted merge job {merge_id} ({when}): writes {jobs['out']}; log: {jobs['logs']}/merge-{merge_id}.out")
    return merge_id


def resubmit_missing(folder: Path, resources: Resources, max_running: int | None, dry_run: bool) -> None:
    """Resubmit the tasks whose shard file is missing, then a new merge after them."""
    jobs = read_jobs(folder)
    shard_files = [Path(p) for p in jobs["shard_files"]]
    out = Path(jobs["out"])
    missing = [i for i, p in enumerate(shard_files) if not p.is_file()]
    if not missing and out.is_file():
        click.echo(f"nothing to resubmit: all {len(shard_files)} shard file(s) and the cache {out} exist")
        return
    ids = [s["job_id"] for s in jobs.get("submissions", []) if s.get("job_id")]
    queue = [] if dry_run and not shutil.which("squeue") else queued_jobs(ids)
    merge = last_submission(jobs, "merge")
    gen_ids = {s["job_id"] for s in jobs["submissions"] if s["kind"] == "generate"}
    running = sorted({q["id"] for q in queue if q["array_job"] in gen_ids})
    if running:
        raise UserError(f"generate task(s) {', '.join(running)} are still queued or running; wait for them to end (squeue -u {getpass.getuser()}) or scancel them first")
    merge_queued = [q for q in queue if merge is not None and q["id"] == merge["job_id"]]
    if merge_queued and not missing:
        click.echo(f"nothing to resubmit: every shard file exists and merge job {merge['job_id']} is {merge_queued[0]['state'].lower()}")
        return
    to_cancel = [q["id"] for q in merge_queued if q["state"] == "PENDING"]
    if any(q["state"] != "PENDING" for q in merge_queued):
        raise UserError(f"merge job {merge['job_id']} is {merge_queued[0]['state'].lower()} although shard(s) {array_spec(missing)} are missing; scancel it first")

    gen_cmd = None
    if missing:
        array = array_spec(missing) + (f"%{max_running}" if max_running else "")
        gen_cmd = ["sbatch", "--parsable", f"--array={array}", *resources.directives(gpus=True), jobs["generate_script"]]
    if dry_run:
        click.echo(f"dry run: shard(s) missing: {array_spec(missing) or 'none'}; would run:")
        for job in to_cancel:
            click.echo(f"  scancel {job}")
        if gen_cmd:
            click.echo("  " + shlex.join(gen_cmd))
        if jobs["merge_script"]:
            click.echo("  " + shlex.join(["sbatch", "--parsable", *(["--dependency=afterok:<generate job id>"] if gen_cmd else []), jobs["merge_script"]]))
        return
    for job in to_cancel:  # pending forever: its dependency failed
        run_slurm(["scancel", job])
        click.echo(f"cancelled the old merge job {job} (its dependency can never be satisfied)")
    after = None
    if gen_cmd:
        partial = [i for i in missing if shard_files[i].with_name(shard_files[i].name + ".partial").is_dir()]
        gen_id = sbatch(gen_cmd[2:])
        record(jobs, "generate", gen_id, gen_cmd, tasks=missing, array=gen_cmd[2].split("=", 1)[1])
        write_jobs(folder, jobs)
        resumed = f"; {len(partial)} resume from their .partial/ chunks" if partial else ""
        click.echo(f"resubmitted shard task(s) {array_spec(missing)} of {jobs['shards']} as array job {gen_id}{resumed}; logs: {jobs['logs']}/generate-{gen_id}_<task>.out")
        after = gen_id
    if jobs["shards"] > 1:
        submit_merge(jobs, folder, after, resources)


# --- commands -------------------------------------------------------------------------------


@click.command("submit", context_settings={"help_option_names": ["-h", "--help"]})
@dataset_flags(required=False)
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="Dataset root folder (as seen from the compute nodes).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Merged cache to write (.h5); shard files go beside it.")
@click.option("--parsing-dir", type=click.Path(file_okay=False, path_type=Path), help="Precomputed LIP parsing PNGs (passed to generate).")
@click.option("--shards", type=click.IntRange(1, 100000), help="Number of shards = array tasks (numbered 0..N-1).")
@click.option("--partition", help="sbatch --partition (of the generate tasks; of the merge too unless they take GPUs).")
@click.option("--merge-partition", help="sbatch --partition of the merge job [default: --partition, or the cluster's default when --gpus-per-task is given].")
@click.option("--account", help="sbatch --account.")
@click.option("--time", "time_limit", help="sbatch --time per task, e.g. 4:00:00.")
@click.option("--mem", help="sbatch --mem per task, e.g. 16G.")
@click.option("--cpus-per-task", type=click.IntRange(1, 4096), help="sbatch --cpus-per-task (match generate's --workers).")
@click.option("--gpus-per-task", type=click.IntRange(0, 64), help="sbatch --gpus-per-task for the generate tasks (adds generate --device cuda unless given).")
@click.option("--max-running", type=click.IntRange(1, 100000), help="At most this many tasks at once (--array=...%K).")
@click.option("--logs", type=click.Path(file_okay=False, path_type=Path), help="Folder for the jobs' logs [default: <job dir>/logs].")
@click.option("--job-dir", type=click.Path(file_okay=False, path_type=Path), help="Where the scripts and jobs.json go [default: <out>.slurm/].")
@click.option("--dry-run", is_flag=True, help="Write the scripts and print the sbatch commands without submitting.")
@click.option("--resubmit-failed", is_flag=True, help="Resubmit only the shards whose file is missing, and a new merge after them.")
@click.argument("generate_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- GENERATE OPTIONS...]")
def submit_command(dataset: str | None, dataset_option: tuple[str, ...], root: Path | None, out: Path, parsing_dir: Path | None, shards: int | None, partition: str | None,
                   merge_partition: str | None, account: str | None, time_limit: str | None, mem: str | None, cpus_per_task: int | None, gpus_per_task: int | None,
                   max_running: int | None, logs: Path | None, job_dir: Path | None, dry_run: bool, resubmit_failed: bool,
                   generate_args: tuple[str, ...]) -> None:
    """Run 'generate' as a Slurm array job (one task per shard), then 'merge' after it.

    Options after '--' go to every 'reid-masks generate' task, e.g.
    '-- --backend torchvision --batch-size 16 --workers 4'.
    """
    resources = Resources(partition, account, time_limit, mem, cpus_per_task, gpus_per_task, merge_partition)
    out = out.absolute()
    folder = job_folder(out, job_dir)
    if resubmit_failed:
        jobs = read_jobs(folder)
        given = {"out": str(out), "dataset": dataset, "dataset_options": list(dataset_option) or None, "root": str(root.absolute()) if root else None, "shards": shards,
                 "parsing_dir": str(parsing_dir.absolute()) if parsing_dir else None,
                 "generate_args": check_generate_args(generate_args, gpus_per_task) if generate_args else None}
        differ = [k for k, v in given.items() if v is not None and v != jobs.get(k)]
        if differ:
            raise UserError(f"--resubmit-failed reruns what {folder / JOBS_FILE} records; {', '.join(differ)} differ(s) from it (start a new run with another --out instead)")
        if logs is not None:
            raise UserError("--logs: the log folder is written into generate.sbatch at the first submit; edit the scripts to change it")
        resubmit_missing(folder, resources, max_running, dry_run)
        return
    if shards is None:
        raise UserError("--shards N is required (the number of array tasks; or --resubmit-failed to finish an earlier run)")
    for name, value in (("--dataset", dataset), ("--root", root)):
        if value is None:
            raise UserError(f"{name} is required (or --resubmit-failed to finish an earlier run)")
    dataset_options_from_cli(dataset, dataset_option)  # refused here, not in every array task
    gen = check_generate_args(generate_args, gpus_per_task)
    logs = (logs or folder / "logs").absolute()
    submit_new(out, folder, logs, dataset, root.absolute(), parsing_dir.absolute() if parsing_dir else None, gen,
               shards, resources, max_running, dry_run, dataset_option)


@click.command("slurm-status")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The --out given to 'reid-masks submit'.")
@click.option("--job-dir", type=click.Path(file_okay=False, path_type=Path), help="The job folder [default: <out>.slurm/].")
def status_command(out: Path, job_dir: Path | None) -> None:
    """Where a submitted run stands: each shard (done, queued, failed), the merge, the cache."""
    folder = job_folder(out.absolute(), job_dir)
    jobs = read_jobs(folder)
    ids = [s["job_id"] for s in jobs.get("submissions", []) if s.get("job_id")]
    try:
        queue = queued_jobs(ids)
        queue_known = True
    except UserError as exc:
        click.echo(f"(queue unknown: {exc})")
        queue, queue_known = [], False
    latest = task_submissions(jobs)
    failed = []
    for i, path in enumerate(Path(p) for p in jobs["shard_files"]):
        sub = latest.get(i)
        mine = [q for q in queue if sub and q["array_job"] == sub["job_id"] and q["task"] == str(i)]
        if path.is_file():
            what = "done"
        elif mine:
            what = f"{mine[0]['state'].lower()} as job {mine[0]['id']}" + (f" ({mine[0]['reason']})" if mine[0]["reason"] not in ("None", "") else "")
        elif sub and queue_known:
            what = f"FAILED or cancelled, see {jobs['logs']}/generate-{sub['job_id']}_{i}.out"
            failed.append(i)
        else:
            what = "missing"
        click.echo(f"shard {i}/{jobs['shards']}: {what}  ({path.name})")
    merge = last_submission(jobs, "merge")
    if merge is not None:
        mq = [q for q in queue if q["id"] == merge["job_id"]]
        if mq and mq[0]["reason"] == "DependencyNeverSatisfied":
            state = ("will never run (a generate task it waits for failed); --resubmit-failed cancels it and submits a new "
                     "merge after the rerun shards")
        elif mq and mq[0]["state"] == "PENDING" and mq[0]["reason"] == "Dependency":
            state = "waiting for the generate tasks to finish"
        elif mq:
            state = f"{mq[0]['state'].lower()} ({mq[0]['reason']})"
        else:
            state = "finished" if Path(jobs["out"]).is_file() else "ended without writing the cache"
        click.echo(f"merge job {merge['job_id']}: {state}; log {jobs['logs']}/merge-{merge['job_id']}.out")
    click.echo(f"merged cache {jobs['out']}: {'exists' if Path(jobs['out']).is_file() else 'not written yet'}")
    if failed:
        click.echo(f"to rerun the failed shard(s) {array_spec(failed)}: reid-masks submit --out {jobs['out']} --resubmit-failed")
