"""Stream finished chunks (``generate``) or shard caches (``merge``) into one cache file.

The writing runs in a child process (``python -m reid_masks.assemble JOB``): when the disk
fills up, HDF5 fails on write and then again on close, and the process that held the file
crashes with a segmentation fault on exit (seen 3 of 3 times). In a child, that crash costs
nothing: the parent removes the temporary file and reports one line with the space needed,
and every finished chunk is still in place for the rerun. The child reads one chunk (or one
block of a shard) at a time, so memory does not grow with the dataset.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from reid_masks.errors import UserError
from reid_masks.fileio import is_disk_full, temp_name
from reid_masks.workers import detached_worker_init

DISK_FULL_EXIT = 28
BLOCK_ROWS = 1024


def write_from_sources(job: dict[str, Any]) -> None:
    """The child's work: create the file at ``job['out']`` and fill it from ``job['sources']``."""
    from reid_masks.cache import CacheWriter, MaskCache
    from reid_masks.chunks import ChunkStore

    layout = {s: (n, None if idx is None else np.asarray(idx, np.int64)) for s, (n, idx) in job["layout"].items()}
    with CacheWriter(job["out"], layout, job["attrs"], tuple(job["person_hw"])) as writer:
        for src in job["sources"]:
            if src["kind"] == "chunk":
                store = ChunkStore(Path(src["folder"]))
                for s, rows in store.load(src["chunk"]).items():
                    writer.write(s, rows.take(np.argsort(rows.index, kind="stable")))
            else:
                with MaskCache(src["path"]) as cache:
                    for s in cache.splits:
                        if s not in layout:
                            continue
                        n = cache.num_stored(s)
                        for a in range(0, n, BLOCK_ROWS):
                            writer.write(s, cache.block(s, a, min(n, a + BLOCK_ROWS)))


def child_main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    detached_worker_init()  # signals are the parent's to handle; die with it, even on kill -9
    if os.getppid() != job["parent"]:  # the parent died before the kernel was told
        os._exit(1)
    try:
        write_from_sources(job)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as one line
        sys.stderr.write(f"{type(exc).__name__}: {exc}\n")
        sys.stderr.flush()
        # skip interpreter shutdown: HDF5's exit handlers crash on a file whose writes failed
        os._exit(DISK_FULL_EXIT if is_disk_full(exc) else 1)


CHUNKS_TO_CACHE = 1.75  # cache size / chunk files size, with a margin (cache_estimate)
SHARDS_TO_CACHE = 1.1  # a shard is a cache already: the merged file is about their sum


def cache_estimate(source_bytes: float, ratio: float = CHUNKS_TO_CACHE) -> int:
    """Expected size of a cache assembled from chunk or shard files of ``source_bytes`` in all.

    The HDF5 file (gzip 4 in chunks of 64 rows for the maps) compresses worse than the
    chunk files (deflate 3 over whole 256-row columns): measured 1.32x (8-row chunks) to
    1.61x (256-row chunks) their size on the synthetic Market, 1.50x on random masks
    (docs/benchmarks.md, "Row digests and cache sizes"); 1.75x plus a MiB of HDF5 metadata
    leaves a margin. ``merge`` passes :data:`SHARDS_TO_CACHE` (its sources are caches already).
    """
    return int(source_bytes * ratio) + (1 << 20)


def assemble(out: Path, layout: dict[str, tuple[int, list[int] | None]], attrs: dict[str, Any], person_hw: tuple[int, int],
             sources: list[dict[str, Any]], estimate_bytes: int, kept_note: str) -> None:
    """Write the cache at ``out`` (through a temporary file renamed into place) in a child process.

    ``estimate_bytes`` is the expected size of the cache (from the sizes of its sources): a
    folder with less free space than that is refused before writing; ``kept_note`` says what
    a failure leaves intact, for the one-line message. The child dies with this process
    (``PR_SET_PDEATHSIG``, even on ``kill -9``); its temporary file and job file are named as
    :func:`reid_masks.fileio.temp_name` of ``out``, so the next run removes what a killed run
    left (:func:`reid_masks.fileio.remove_dead_temps`). Ctrl-C / SIGTERM here stop the child
    and remove both before the interrupt goes on.
    """
    free = shutil.disk_usage(out.parent).free
    if free < estimate_bytes:
        raise UserError(f"{out.parent}: {mib(free)} free, the cache needs about {mib(estimate_bytes, up=True)}; free space there and rerun the same command ({kept_note})")
    tmp = temp_name(out)
    job = {"out": str(tmp), "layout": layout, "attrs": attrs, "person_hw": list(person_hw), "sources": sources, "parent": os.getpid()}
    job_file = temp_name(out, ".json")
    job_file.write_text(json.dumps(job))
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_parent] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    try:
        proc = subprocess.run([sys.executable, "-m", "reid_masks.assemble", str(job_file)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode == 0:
            os.replace(tmp, out)
            return
        detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        full = proc.returncode == DISK_FULL_EXIT or "No space left" in proc.stderr or shutil.disk_usage(out.parent).free < (1 << 20)
        if full:
            raise UserError(f"{out.parent}: no space left on device while writing {out.name} (it needs about {mib(estimate_bytes)}); free space there and rerun the same command ({kept_note})")
        raise UserError(f"{out}: writing the cache failed ({detail[:300]}); {kept_note}")
    finally:
        job_file.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def mib(n: float, up: bool = False) -> str:
    """``n`` bytes as MiB (GiB from 1 GiB on); ``up`` rounds up, for space a user must free."""
    unit, digits, name = (2**20, 1, "MiB") if n < 2**30 else (2**30, 2, "GiB")
    value = math.ceil(n / unit * 10**digits) / 10**digits if up else n / unit
    return f"{value:.{digits}f} {name}"


if __name__ == "__main__":
    child_main(sys.argv[1])
