"""Rate of the fingerprint check that fit / evaluate / extract / visualize run before computing.

``reid_train.data.cache_check.check_cache_images`` hashes every image it will use
(``reid_masks.generate.hash_files``: blake2b of the file, in threads) and compares with the
cache. This script writes ``--files`` files of ``--kb`` KiB of random bytes (JPEG-like: no
compression to exploit) to a temporary folder and times ``hash_files`` on them with 1, 2, 4,
8 and ``hash_threads()`` threads, on a warm page cache (the files were just written: what a
node sees once it has read the dataset once). It prints files/s, MB/s and the time the
check would take for MSMT17 (126,441 images) at that rate, and the CPU time per file (all
threads; the figure that does not depend on how busy the machine is). A cold cache or a network file
system is bound by its own read rate; the threads then overlap the reads' latency.

Usage:  python benchmarks/bench_fingerprint.py [--files 10000] [--kb 20]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe_machine  # noqa: E402
from reid_masks.generate import hash_files  # noqa: E402
from reid_train.data.cache_check import hash_threads  # noqa: E402

MSMT17_IMAGES = 126_441


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--kb", type=float, default=20.0, help="file size in KiB (MSMT17 JPEGs are mostly 10-30 KiB)")
    args = ap.parse_args()
    print(describe_machine("cpu"))
    size = int(args.kb * 1024)
    with tempfile.TemporaryDirectory(prefix="bench-fingerprint-") as tmp:
        paths = []
        for i in range(args.files):
            p = Path(tmp) / f"{i:07d}.jpg"
            p.write_bytes(os.urandom(size))
            paths.append(p)
        hash_files(paths, hash_threads())  # warm the page cache
        for threads in sorted({1, 2, 4, 8, hash_threads()}):
            start, cpu = time.perf_counter(), time.process_time()
            hash_files(paths, threads)
            dt, cpu = time.perf_counter() - start, time.process_time() - cpu
            rate = args.files / dt
            print(f"threads {threads:2d}: {rate:8.0f} files/s  {rate * size / 1e6:7.1f} MB/s  "
                  f"-> MSMT17 ({MSMT17_IMAGES} images of {args.kb:g} KiB): {MSMT17_IMAGES / rate:5.1f} s wall; "
                  f"CPU {1e6 * cpu / args.files:.0f} us/file ({MSMT17_IMAGES * cpu / args.files:.1f} CPU-s for MSMT17)")


if __name__ == "__main__":
    main()
