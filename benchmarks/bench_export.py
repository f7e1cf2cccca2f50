"""``reid-masks export`` at scale: images/s and peak RSS per format, at two cache sizes.

A small cache with keypoints is made from rendered crops (``reid_masks.synth.keypoint_cache``),
then repeated under new image names up to ``--sizes`` rows (the images need not exist: every
export writes with ``--out``). Each export runs as its own process under ``/usr/bin/time -v``:
images/s is rows over the wall clock of the whole command (start-up included), peak RSS is
time's "Maximum resident set size". A second run of the same command (every file already
complete: the resume check alone) is timed too. Memory must not grow with the rows: the cache
is read ``--block-rows`` rows at a time.

The repeated cache's provenance names a precomputed parser, and its ``parsing`` column holds
the crops' true LIP labels, so that ``lip-png`` runs as on a cache made with ``--parsing-dir``.

Usage:  python benchmarks/bench_export.py [--sizes 2000,20000] [--formats bpbreid,seg-png,lip-png,npz]
"""
from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe_machine  # noqa: E402
from reid_masks.synth.keypoint_cache import keypoint_dataset, repeat_cache  # noqa: E402

BASE_CROPS = 32
PROVENANCE = {"backend": {"name": "synthetic truth (bench_export.py)"},
              "parser": {"name": "precomputed", "note": "benchmark only: the synthetic truth's LIP labels"}}


def timed(cmd: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in bytes, stdout) of ``cmd`` under /usr/bin/time -v."""
    start = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1)) * 1024
    return wall, rss, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2000,20000")
    ap.add_argument("--formats", default="bpbreid,seg-png,lip-png,npz")
    ap.add_argument("--block-rows", type=int, default=512)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    formats = args.formats.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    print(f"machine: {describe_machine('cpu')}")
    small = keypoint_dataset(tmp / "base", n=BASE_CROPS, provenance=PROVENANCE)
    print("| rows | format | images/s | peak RSS | resume check (all complete) | output |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        cache = tmp / f"cache-{size}.h5"
        rows = repeat_cache(small, cache, math.ceil(size / BASE_CROPS), provenance=PROVENANCE)
        for fmt in formats:
            out = tmp / f"out-{size}-{fmt}"
            cmd = [sys.executable, "-m", "reid_masks.cli", "export", str(cache), "--format", fmt, "--out", str(out), "--block-rows", str(args.block_rows)]
            wall, rss, _ = timed(cmd)
            again, _, stdout = timed(cmd)
            assert "0 file(s) written" in stdout, stdout
            du = subprocess.run(["du", "-sh", str(out)], capture_output=True, text=True).stdout.split()[0]
            print(f"| {rows:,} | {fmt} | {rows / wall:,.0f} ({wall:.1f} s) | {rss / 2**20:,.0f} MiB | {rows / again:,.0f} img/s ({again:.1f} s) | {du} |", flush=True)
    if args.keep:
        print(f"kept {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
