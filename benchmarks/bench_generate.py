"""Throughput of the torchvision backend (Mask R-CNN v2 + Keypoint R-CNN) on re-ID crops.

For each input size (``--min-sizes``, the short side torchvision resizes to) it times:

* ``naive``: the two torchvision models called on ONE image at a time (a Python loop,
  ``model([tensor])``, same weights, same settings), no numpy conversion or matching;
* ``batch B``: ``TorchvisionBackend.predict`` on batches of B images (one forward per
  model per batch), including the numpy conversion and keypoint matching.

Images are synthetic 128x64 crops from ``reid_masks.synth.render`` (numpy-rng based).
Without ``--mask-weights/--keypoint-weights`` the models have RANDOM weights: the
backbone, RPN and box head cost is the same as with trained weights, but the number of
persons found (which drives the mask/keypoint heads and mask pasting) is not, so with
random weights the score threshold is 0 and ``--dets`` (default 2) persons per crop are
kept, like a re-ID crop with its target and one bystander.

Where the time goes is measured with forward hooks (backbone+FPN, RPN, RoI heads) and a
wrapper around the transform's post-processing (box rescale + mask pasting), summed over
both models, for the ``batch 8`` run of each size (else the largest batch run); "other"
is the rest (resize/normalise/pad, numpy conversion, matching).

Usage:  python benchmarks/bench_generate.py [--device cpu|cuda] [--images N]
        [--batch-sizes 1,8,32] [--min-sizes 256,800] [--skip 800x32] [--amp]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_masks.backends.torchvision_backend import TorchvisionBackend  # noqa: E402
from reid_masks.synth.render import render_person, sample_identity  # noqa: E402
from machine import cpu_name

PARTS = ("backbone", "rpn", "roi_heads", "postprocess")


def make_crops(n: int, seed: int = 0, height: int = 128, width: int = 64) -> list[np.ndarray]:
    """``n`` synthetic Market-sized crops (deterministic)."""
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(n):
        image, _, _ = render_person(sample_identity(rng), camid=1 + i % 6, rng=rng, height=height, width=width)
        crops.append(image)
    return crops


class PartTimer:
    """Wall time per model part via forward pre/post hooks (synchronising CUDA when needed)."""

    def __init__(self, models: list[torch.nn.Module], device: torch.device) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.enabled = False
        self.device = device
        self._start: dict[int, float] = {}
        self._undo: list[Callable[[], None]] = []
        for model in models:
            for part in ("backbone", "rpn", "roi_heads"):
                mod = getattr(model, part)
                self._undo.append(mod.register_forward_pre_hook(self._pre(part)).remove)
                self._undo.append(mod.register_forward_hook(self._post(part)).remove)
            transform = model.transform
            original = transform.postprocess

            def wrapped(*args: Any, _orig: Callable = original, **kwargs: Any) -> Any:
                if not self.enabled:
                    return _orig(*args, **kwargs)
                self._sync()
                t = time.perf_counter()
                out = _orig(*args, **kwargs)
                self._sync()
                self.totals["postprocess"] += time.perf_counter() - t
                return out

            transform.postprocess = wrapped
            self._undo.append(lambda tr=transform: tr.__dict__.pop("postprocess", None))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _pre(self, part: str) -> Callable:
        def hook(mod: torch.nn.Module, inputs: Any) -> None:
            if self.enabled:
                self._sync()
                self._start[id(mod)] = time.perf_counter()

        return hook

    def _post(self, part: str) -> Callable:
        def hook(mod: torch.nn.Module, inputs: Any, output: Any) -> None:
            if self.enabled:
                self._sync()
                self.totals[part] += time.perf_counter() - self._start.pop(id(mod))

        return hook

    def remove(self) -> None:
        for undo in self._undo:
            undo()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_naive(backend: TorchvisionBackend, crops: list[np.ndarray]) -> tuple[float, float]:
    """Wall and process-CPU seconds for the one-image-at-a-time loop over the raw models."""
    models = [m for m in (backend.mask_model, backend.keypoint_model) if m is not None]
    sync(backend.device)
    t, c = time.perf_counter(), time.process_time()
    with torch.inference_mode(), backend._autocast():
        for img in crops:
            x = torch.from_numpy(img).to(backend.device).permute(2, 0, 1).float().div_(255.0)
            for m in models:
                out = m([x])
            # the loop a user would write pulls results back each time
            out[0]["boxes"].cpu()
    sync(backend.device)
    return time.perf_counter() - t, time.process_time() - c


def backend_options(device: str, min_size: int = 256, max_size: Optional[int] = None, dets: int = 2,
                    proposals: int = 1000, amp: bool = False, mask_weights: Optional[str] = None,
                    keypoint_weights: Optional[str] = None) -> dict[str, Any]:
    """``TorchvisionBackend`` keyword arguments as this benchmark runs it.

    Without weight files the models are random: score threshold 0 and ``dets`` persons
    kept per crop, so the mask/keypoint heads and mask pasting cost what a crop with its
    target and ``dets - 1`` bystanders costs with trained weights.
    """
    random_weights = mask_weights is None and keypoint_weights is None
    return dict(
        device=device,
        mask_weights=mask_weights,
        keypoint_weights=keypoint_weights,
        random_weights=random_weights,
        min_size=min_size,
        max_size=max_size or (1333 if min_size >= 800 else 3 * min_size),
        score_threshold=0.0 if random_weights else 0.5,
        detections_per_img=dets if random_weights else 100,
        rpn_post_nms_top_n=proposals,
        amp=amp,
    )


def time_batched(backend: TorchvisionBackend, crops: list[np.ndarray], batch: int) -> tuple[float, float, int]:
    """Wall and process-CPU seconds for ``predict`` over ``crops`` in batches, and the persons found."""
    found = 0
    sync(backend.device)
    t, c = time.perf_counter(), time.process_time()
    for i in range(0, len(crops), batch):
        found += sum(len(r) for r in backend.predict(crops[i : i + batch]))
    sync(backend.device)
    return time.perf_counter() - t, time.process_time() - c, found




def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=16, help="crops per run (a batch larger than this runs one full batch)")
    ap.add_argument("--large-images", type=int, default=None, help="crops per run for min_size >= 600 (default: --images)")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--min-sizes", default="256,800")
    ap.add_argument("--max-size", type=int, default=None, help="cap on the long side (default: 3 x min_size, 1333 for 800)")
    ap.add_argument("--skip", default="", help="comma list of MINxBATCH runs to skip, e.g. 800x32")
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--mask-weights")
    ap.add_argument("--keypoint-weights")
    ap.add_argument("--dets", type=int, default=2, help="persons kept per crop with random weights")
    ap.add_argument("--proposals", type=int, default=1000, help="RPN proposals per image fed to the box head")
    ap.add_argument("--amp", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    random_weights = args.mask_weights is None and args.keypoint_weights is None
    batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    min_sizes = [int(s) for s in args.min_sizes.split(",") if s]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    n_max = max([args.images, args.large_images or 0] + batch_sizes)
    crops_all = make_crops(n_max, seed=args.seed)

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, device {device}, "
          f"{torch.get_num_threads()} threads, CPU: {cpu_name()} ({os.cpu_count()} cores)")
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}, amp={args.amp}")
    print(f"weights: {'RANDOM (threshold 0, %d persons/crop)' % args.dets if random_weights else 'from files'}; "
          f"crops 128x64; RPN proposals/image {args.proposals}")
    try:
        print(f"load average before: {os.getloadavg()}")
    except OSError:
        pass

    rows: list[tuple[str, str, int, float, float, float]] = []  # size, run, images, wall s, img/s, cpu s/img
    breakdowns: dict[int, tuple[str, dict[str, float], float]] = {}
    for min_size in min_sizes:
        n = args.large_images if (args.large_images and min_size >= 600) else args.images
        torch.manual_seed(args.seed)
        options = backend_options(args.device, min_size, args.max_size, args.dets, args.proposals, args.amp,
                                  args.mask_weights, args.keypoint_weights)
        max_size = options["max_size"]
        backend = TorchvisionBackend(**options)
        size = f"{min_size}/{max_size}"
        backend.predict(crops_all[:2])  # warm-up (allocator, lazy init, cudnn)
        if not args.no_naive:
            dt, cpu = time_naive(backend, crops_all[:n])
            rows.append((size, "naive loop", n, dt, n / dt, cpu / n))
            print(f"  min_size {size:9s} naive loop   {n:3d} imgs  {dt:7.2f} s  {n / dt:7.3f} img/s  cpu {cpu / n:6.2f} s/img", flush=True)
        timer = PartTimer([m for m in (backend.mask_model, backend.keypoint_model) if m is not None], backend.device)
        ran = [bs for bs in batch_sizes if f"{min_size}x{bs}" not in skip]
        probe = 8 if 8 in ran else max(ran, default=0)  # the run whose time is broken down
        for bs in batch_sizes:
            if f"{min_size}x{bs}" in skip:
                rows.append((size, f"batch {bs}", 0, float("nan"), float("nan"), float("nan")))
                print(f"  min_size {size:9s} batch {bs:<5d} skipped (--skip)", flush=True)
                continue
            m = max(n, bs)  # a batch is always full: batch 32 runs 32 crops
            crops = crops_all[:m]
            timer.enabled = bs == probe
            timer.totals.clear()
            dt, cpu, found = time_batched(backend, crops, bs)
            timer.enabled = False
            if bs == probe:
                breakdowns[min_size] = (f"batch {bs}", dict(timer.totals), dt)
            rows.append((size, f"batch {bs}", m, dt, m / dt, cpu / m))
            print(f"  min_size {size:9s} batch {bs:<5d} {m:3d} imgs  {dt:7.2f} s  {m / dt:7.3f} img/s  cpu {cpu / m:6.2f} s/img"
                  f"  ({found / m:.1f} persons/img)", flush=True)
        timer.remove()
        del backend

    print()
    print("| min/max size | run | images | wall s | images/s | process CPU s / image |")
    print("|---|---|---:|---:|---:|---:|")
    for size, run, n, dt, ips, cpu in rows:
        if n == 0:
            print(f"| {size} | {run} | - | skipped | - | - |")
        else:
            print(f"| {size} | {run} | {n} | {dt:.1f} | {ips:.3f} | {cpu:.2f} |")
    print()
    print("| min/max size | run | " + " | ".join(PARTS) + " | other | total s |")
    print("|---|---|" + "---:|" * (len(PARTS) + 2))
    for min_size, (run, totals, dt) in breakdowns.items():
        parts = [totals.get(p, 0.0) for p in PARTS]
        other = dt - sum(parts)
        cells = " | ".join(f"{v:.1f} ({100 * v / dt:.0f}%)" for v in parts + [other])
        print(f"| {min_size} | {run} | {cells} | {dt:.1f} |")
    try:
        print(f"\nload average after: {os.getloadavg()}")
    except OSError:
        pass


if __name__ == "__main__":
    main()
