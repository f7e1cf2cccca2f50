"""Cost of the row digests (cache schemas 4-5): sealing rows, checking a cache on open, verifying the maps.

``reid_masks.cache.check_cache_rows`` runs when ``fit`` / ``evaluate`` / ``extract`` /
``visualize`` / ``inspect`` / ``merge`` open a cache: it reads every row's small columns and
24x8 masks block by block and recomputes ``row_digest`` (blake2b over the row's masks,
keypoints, status, fingerprint, ... and its four map digests) and the masks' range. The
full-size maps (person / regions / parts, 256x128 each, and the parsing labels' PNG) are
verified only where they are read in full (MGRAN's loader, ``export``, ``merge`` and the
assembly of ``generate``), since reading them is
most of the cost. This script writes a cache of ``--rows`` rows of plausible masks (a
person-shaped box, soft 24x8 masks, random keypoints) and times, per row and extrapolated to
MSMT17 (126,441 images): sealing (computing the digests), the row check on open, and the row
check plus the maps. It also writes the same rows as ``generate``'s chunk files and prints
the cache / chunks size ratio, the figure behind ``reid_masks.assemble.cache_estimate``.

Usage:  python benchmarks/bench_row_digest.py [--rows 4096] [--person-size 256x128]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe_machine  # noqa: E402
from reid_masks.cache import MAP_COLUMNS, CacheWriter, MaskCache, Rows, byte_rows, check_cache_rows, encode_parsing  # noqa: E402
from reid_masks.chunks import ChunkStore  # noqa: E402

MSMT17_IMAGES = 126_441


def synthetic_rows(start: int, stop: int, hw: tuple[int, int], rng: np.random.Generator) -> Rows:
    n, (h, w) = stop - start, hw
    yy, xx = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    half = rng.integers(w // 5, w // 2, (n, 1, 1))
    person = ((np.abs(xx - w // 2) < half) & (yy > h // 12) & (yy < h - h // 12)).astype(np.uint8)
    regions = person * np.where(yy < h // 4, 1, np.where(yy < h // 2, 2, 3)).astype(np.uint8)
    parts = regions.copy()
    masks = np.clip(rng.random((n, 3, 24, 8), dtype=np.float32) * 1.5 - 0.25, 0, 1)
    return Rows(index=np.arange(start, stop), path=np.asarray([f"bounding_box_train/{i:07d}.jpg" for i in range(start, stop)], dtype=object),
                pid=np.zeros(n, np.int32), camid=np.zeros(n, np.int16), fingerprint=np.asarray([b"%016x" % i for i in range(start, stop)], "S16"),
                status=np.zeros(n, np.uint8), score=rng.random(n, dtype=np.float32), box=rng.random((n, 4), dtype=np.float32),
                keypoints=rng.random((n, 17, 3), dtype=np.float32), image_size=np.full((n, 2), (128, 64), np.int32), masks=masks,
                person=person, regions=regions, cuts=np.ones((n, 2), np.uint8), parts=parts,
                inputs=np.asarray([f"parsing={i:016x}" for i in range(start, stop)], dtype=object),
                parsing=byte_rows(encode_parsing(LIP_OF_PART[p[::2, ::2]]) for p in parts))  # a parser's labels at the 128x64 image size


LIP_OF_PART = np.array([0, 13, 5, 9], np.uint8)  # background, face, upper-clothes, pants


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--person-size", default="256x128")
    args = ap.parse_args()
    hw = tuple(int(x) for x in args.person_size.split("x"))
    print(describe_machine("cpu"))
    rng = np.random.default_rng(0)
    per = lambda dt: f"{1e6 * dt / args.rows:7.0f} us/row -> MSMT17 ({MSMT17_IMAGES} rows): {dt * MSMT17_IMAGES / args.rows:6.1f} s"  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="bench-digest-") as tmp:
        path, store = Path(tmp) / "c.h5", ChunkStore(Path(tmp) / "chunks")
        store.folder.mkdir()
        seal = 0.0
        with CacheWriter(path, {"train": (args.rows, None)}, {}, hw) as writer:
            for g, a in enumerate(range(0, args.rows, 256)):
                rows = synthetic_rows(a, min(args.rows, a + 256), hw, rng)
                t = time.process_time()
                rows = rows.sealed()
                seal += time.process_time() - t
                store.save(g, {"train": rows})
                writer.write("train", rows)
        print(f"seal (compute the digests, CPU)      : {per(seal)}")
        with MaskCache(path) as cache:
            for label, maps in (("check on open (rows + masks range)", ()), ("check incl. the four full maps    ", MAP_COLUMNS)):
                t, cpu = time.perf_counter(), time.process_time()
                check_cache_rows(cache, maps=maps)
                dt, cpu = time.perf_counter() - t, time.process_time() - cpu
                print(f"{label}: {per(dt)} wall, {1e6 * cpu / args.rows:.0f} us/row CPU")
        cache_bytes, chunk_bytes = path.stat().st_size, store.size()
        print(f"sizes: cache {cache_bytes / 2**20:.1f} MiB, chunk files {chunk_bytes / 2**20:.1f} MiB, ratio {cache_bytes / chunk_bytes:.2f} "
              f"({cache_bytes / args.rows:.0f} vs {chunk_bytes / args.rows:.0f} bytes/row)")


if __name__ == "__main__":
    main()
