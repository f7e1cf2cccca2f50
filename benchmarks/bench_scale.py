"""Does the mask stage hold at dataset scale? Peak memory, disk and speed at two dataset sizes.

Runs ``reid-masks generate`` from parsing PNGs (no detector: the stage's own I/O, derivation,
chunking and assembly are what is measured) over synthetic Market-1501 copies of about
``--sizes`` images, each as a separate process, and prints per size:

* images/s end to end (wall clock of the whole command, start-up and assembly included);
* peak RSS of the whole process tree (the command, its DataLoader workers and the assembly
  child), sampled from /proc every 50 ms and summed over the tree, plus the largest single
  process (``getrusage(RUSAGE_CHILDREN)``);
* the largest size the ``<out>.partial/`` folder reached, and the final cache size.

The larger sets replicate a rendered base set with hard links under new, valid Market names
(the last two digits of the file name), so they cost no rendering time; every image is still
decoded, derived and written on its own. Targets (issue 11): peak RSS of the largest run within
15% of the smallest; partial folder <= 2x the final cache; images/s not lower than 169-200.

Usage:  python benchmarks/bench_scale.py [--sizes 2000,20000] [--workers 2] [--chunk-rows 256]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe_machine  # noqa: E402
from reid_masks.synth.layouts import synthesize  # noqa: E402

IMAGES_PER_ID = 11.2  # what the synthetic Market layout renders per identity (train + test)
FOLDERS = ("bounding_box_train", "query", "bounding_box_test")
NAME = re.compile(r"^(?P<head>.+_\d{6}_)(?P<bb>\d{2})\.jpg$")


def replicate(base: Path, out: Path, copies: int) -> int:
    """``out`` = ``base`` with every image (and parsing PNG) linked ``copies`` times under new names."""
    n = 0
    for folder in FOLDERS:
        for sub in (Path(folder), Path("parsing") / folder):
            (out / sub).mkdir(parents=True, exist_ok=True)
        for img in sorted((base / folder).glob("*.jpg")):
            m = NAME.match(img.name)
            for c in range(copies):
                name = f"{m['head']}{10 * c + int(m['bb']) % 10:02d}.jpg" if c else img.name
                os.link(img, out / folder / name)
                os.link((base / "parsing" / folder / img.name).with_suffix(".png"), (out / "parsing" / folder / name).with_suffix(".png"))
                n += 1
    return n


def tree_rss(root_pid: int) -> int:
    """Resident bytes of ``root_pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def folder_bytes(folder: Path) -> int:
    try:
        return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    except OSError:
        return 0


def run_generate(root: Path, out: Path, workers: int, chunk_rows: int) -> dict:
    cmd = [sys.executable, "-m", "reid_masks.cli", "generate", "--dataset", "market1501", "--root", str(root),
           "--parsing-dir", str(root / "parsing"), "--out", str(out), "--workers", str(workers), "--chunk-rows", str(chunk_rows)]
    partial = out.with_name(out.name + ".partial")
    peak = {"rss": 0, "partial": 0}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["rss"] = max(peak["rss"], tree_rss(proc.pid))
            peak["partial"] = max(peak["partial"], folder_bytes(partial))
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    stdout, stderr = proc.communicate()
    wall = time.monotonic() - start
    done.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"generate failed ({proc.returncode}): {stderr[-2000:]}")
    return {"wall_s": wall, "peak_tree_rss": peak["rss"], "peak_partial": peak["partial"], "cache": out.stat().st_size,
            "max_single_rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, "stdout": stdout.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="2000,20000", help="approximate image counts, the smallest first")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--chunk-rows", type=int, default=256)
    ap.add_argument("--work-dir", type=Path, help="where to write the datasets and caches (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-scale-"))
    print(describe_machine("cpu"))
    base = work / "base"
    if not (base / "manifest.json").is_file():
        t = time.monotonic()
        synthesize("market1501", base, ids=max(2, round(sizes[0] / IMAGES_PER_ID)), seed=0, workers=2, overwrite=True)
        print(f"rendered the base set in {time.monotonic() - t:.0f} s")
    base_n = sum(len(list((base / f).glob("*.jpg"))) for f in FOLDERS)
    results = []
    for size in sizes:
        copies = max(1, round(size / base_n))
        root = work / f"x{copies}"
        if not root.is_dir():
            replicate(base, root, copies)
        n = sum(len(list((root / f).glob("*.jpg"))) for f in FOLDERS)
        out = work / f"cache-x{copies}.h5"
        out.unlink(missing_ok=True)
        r = run_generate(root, out, args.workers, args.chunk_rows)
        r.update(files=n, img_per_s=n / r["wall_s"])
        results.append(r)
        print(f"{n:>7} files: {r['img_per_s']:7.1f} img/s ({r['wall_s']:.1f} s), peak RSS tree {r['peak_tree_rss'] / 2**20:7.1f} MiB "
              f"(largest process {r['max_single_rss'] / 2**20:.1f} MiB), partial folder peak {r['peak_partial'] / 2**20:7.2f} MiB, "
              f"cache {r['cache'] / 2**20:7.2f} MiB (partial/cache {r['peak_partial'] / r['cache']:.2f}x)", flush=True)
    if len(results) > 1:
        growth = results[-1]["peak_tree_rss"] / results[0]["peak_tree_rss"] - 1
        print(f"peak RSS growth from {results[0]['files']} to {results[-1]['files']} files: {growth:+.1%} (target within 15%)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
