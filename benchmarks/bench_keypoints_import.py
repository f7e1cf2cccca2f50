"""How long ``generate --keypoints`` takes to read and check its source, at MSMT17 size.

Every run (each shard too) reads the whole source before any image is processed. This writes
synthetic sources for ``--images`` image paths with ``--people`` people each -- a COCO
keypoints file, a COCO results list with a separate images file, and (``--pifpaf-images``
of them) an OpenPifPaf folder -- then times (one load) :func:`reid_masks.keypoints_import.load_keypoints`
on each and prints the seconds, the images per second and the Python memory the loaded table
holds (tracemalloc, in a second load; the peak while loading is printed too).

Usage:  python benchmarks/bench_keypoints_import.py [--images 126441] [--people 2] [--pifpaf-images 20000] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from machine import describe_machine  # noqa: E402
from reid_masks.keypoints_import import PIFPAF_SUFFIX, load_keypoints  # noqa: E402


def fake_people(rng: np.random.Generator, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        kps = np.column_stack([rng.uniform(0, 64, 17), rng.uniform(0, 128, 17), rng.uniform(0, 1, 17)])
        out.append({"keypoints": np.round(kps, 2).reshape(-1).tolist(), "bbox": [4.0, 6.0, 50.0, 118.0], "score": 0.9, "category_id": 1})
    return out


def timed(label: str, n: int, call) -> None:
    """Seconds of one load (untraced), then the memory of a second, traced load."""
    t0 = time.perf_counter()
    table = call()
    dt = time.perf_counter() - t0
    assert table.num_images == n
    del table
    tracemalloc.start()
    table = call()
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del table
    print(f"| {label} | {n:,} | {dt:.2f} s | {n / dt:,.0f} | {held / 2**20:.0f} MiB | {peak / 2**20:.0f} MiB |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=126_441)
    ap.add_argument("--people", type=int, default=2)
    ap.add_argument("--pifpaf-images", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    paths = [f"train/{i // 10:04d}/{i:07d}_c1_0001.jpg" for i in range(args.images)]
    print(describe_machine())
    print(f"command: python benchmarks/bench_keypoints_import.py --images {args.images} --people {args.people} --pifpaf-images {args.pifpaf_images} --workers {args.workers}\n")
    print("| source | images | load + check | images/s | table held | peak while loading |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        people = [fake_people(rng, args.people) for _ in range(min(args.images, 1000))]
        images = [{"id": i + 1, "file_name": p, "width": 64, "height": 128} for i, p in enumerate(paths)]
        anns = [dict(person, id=len(paths) * k + i + 1, image_id=i + 1) for i in range(len(paths)) for k, person in enumerate(people[i % len(people)])]
        coco = root / "coco.json"
        coco.write_text(json.dumps({"images": images, "annotations": anns}))
        results = root / "results.json"
        results.write_text(json.dumps([{k: v for k, v in a.items() if k != "id"} for a in anns]))
        del anns
        print(f"(COCO file {coco.stat().st_size / 2**20:.0f} MiB, results list {results.stat().st_size / 2**20:.0f} MiB)", file=sys.stderr)
        timed("COCO keypoints file", len(paths), lambda: load_keypoints(coco, None, root, paths, "bench", args.workers))
        images_file = root / "images.json"
        images_file.write_text(json.dumps({"images": images}))
        timed("COCO results + images file", len(paths), lambda: load_keypoints(results, images_file, root, paths, "bench", args.workers))
        sub = paths[: args.pifpaf_images]
        folder = root / "pifpaf"
        for i, p in enumerate(sub):
            f = folder / f"{p}{PIFPAF_SUFFIX}"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(people[i % len(people)]))
        timed(f"OpenPifPaf folder ({args.workers} threads)", len(sub), lambda: load_keypoints(folder, None, root, sub, "bench", args.workers))


if __name__ == "__main__":
    main()
