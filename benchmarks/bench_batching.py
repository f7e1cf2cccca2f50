"""Batched vs one-image-at-a-time detector inference: does the batched path cost more than the loop?

For a detector backend (``--backend torchvision`` or ``detectron2``, random weights) it
times, on the same crops:

* ``loop``: ``backend.predict([image])`` for each image;
* ``batched``: ``backend.predict(images)`` (one forward per model and padded size);
* ``one padded batch``: the path before grouping by padded size: one forward per model for
  the whole batch, every image padded to the largest.

Two crop sets: ``same`` (all 128x64, Market/Duke) and ``mixed`` (heights 96-192 and widths
48-96, like CUHK03-detected or MSMT17 crops). Reported: wall seconds and process CPU seconds
per image (CPU seconds are the steadier figure on a shared machine). Random weights and
score threshold 0 with ``--dets`` persons kept per crop, as in bench_generate.py.

Usage:  python benchmarks/bench_batching.py [--backend torchvision] [--device cpu] [--images 8] [--repeats 2]
        [--min-size 256] [--proposals 300] [--threads 2]
Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_masks.synth.render import render_person, sample_identity  # noqa: E402


def make_crops(n: int, mixed: bool, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [(128, 64)] * n if not mixed else [(int(rng.integers(96, 193)), int(rng.integers(48, 97))) for _ in range(n)]
    return [render_person(sample_identity(rng), camid=1 + i % 6, rng=rng, height=h, width=w)[0] for i, (h, w) in enumerate(sizes)]


def build(name: str, args: argparse.Namespace) -> Any:
    torch.manual_seed(0)
    if name == "torchvision":
        from reid_masks.backends.torchvision_backend import TorchvisionBackend

        return TorchvisionBackend(random_weights=True, device=args.device, min_size=args.min_size, max_size=3 * args.min_size, score_threshold=0.0,
                                  detections_per_img=args.dets, rpn_post_nms_top_n=args.proposals)
    from reid_masks.backends.detectron2_backend import Detectron2Backend

    backend = Detectron2Backend(random_weights=True, device=args.device, min_size=args.min_size, max_size=3 * args.min_size, score_threshold=0.0)
    for m in (backend.mask, backend.keypoint):
        m.model.roi_heads.box_predictor.test_topk_per_image = args.dets
        m.model.proposal_generator.post_nms_topk[False] = args.proposals
    return backend


def one_padded_batch(backend: Any) -> Any:
    """The pre-grouping behaviour: every image in one group, padded to the largest."""
    if hasattr(backend, "_padded_size"):
        return mock.patch.object(backend, "_padded_size", lambda model, h, w: (0, 0))
    return mock.patch.object(type(backend), "_padded_sizes", staticmethod(lambda model, inputs: [(0, 0)] * len(inputs)))


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(wall, process CPU) seconds; predict() returns CPU numpy, so the device work is finished."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="torchvision", choices=["torchvision", "detectron2"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per mode (the best is reported)")
    ap.add_argument("--min-size", type=int, default=256)
    ap.add_argument("--proposals", type=int, default=300, help="RPN proposals per image fed to the box head")
    ap.add_argument("--dets", type=int, default=2, help="persons kept per crop")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    backend = build(args.backend, args)
    load0 = os.getloadavg()[0]
    print(f"{args.backend} on {args.device}: min_size {args.min_size}, {args.proposals} proposals, {args.dets} dets, {args.images} images, "
          f"torch threads {args.threads}, torch {torch.__version__}")
    print("\n| crops | mode | forwards per model | wall s/image | CPU s/image |\n|---|---|---:|---:|---:|")
    for label, mixed in (("same 128x64", False), ("mixed sizes", True)):
        crops = make_crops(args.images, mixed)
        backend.predict(crops[:2])  # warm-up
        modes: list[tuple[str, Callable[[], Any], Any]] = [
            ("loop", lambda: [backend.predict([c]) for c in crops], None),
            ("batched", lambda: backend.predict(crops), None),
            ("one padded batch", lambda: backend.predict(crops), one_padded_batch),
        ]
        for mode, fn, patch in modes:
            best = None
            for _ in range(args.repeats):
                if patch is None:
                    t = timed(fn)
                else:
                    with patch(backend):
                        t = timed(fn)
                best = t if best is None or t[0] < best[0] else best
            if mode == "loop":
                forwards = len(crops)
            elif mode == "batched":
                forwards = len(set(backend._padded_sizes(backend.mask.model, backend._inputs(backend.mask, crops)))) if args.backend == "detectron2" \
                    else len({backend._padded_size(backend.mask_model, c.shape[0], c.shape[1]) for c in crops})
            else:
                forwards = 1
            print(f"| {label} | {mode} | {forwards} | {best[0] / len(crops):.3f} | {best[1] / len(crops):.3f} |", flush=True)
    print(f"\n1-minute load average before / after: {load0:.1f} / {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
