"""Benchmark of reid-train's training throughput: MMGA vs the plain baseline, and the data loader.

Two independent measurements, printed as tables:

1. **Model step** (images/s): forward (under autocast when ``--amp`` is on, CUDA only) +
   the model's loss (``build_loss``: :class:`reid_train.losses.MMGALoss`, or ``FSALoss`` for
   fsa*) + backward + SGD step, exactly the sequence of
   ``Trainer.train_epoch`` (same optimizer groups from ``build_optimizer``, same GradScaler,
   the same ``isfinite`` check on the loss that synchronises once per step), on synthetic
   tensors: random images, P x K identity labels (K=4) and soft 24x8 whole/upper/bottom
   masks. By default the batch is copied each step from pinned host memory to the device
   (``non_blocking``), as the trainer does; ``--no-h2d`` keeps it on the device. Warmup
   iterations are excluded; the models are timed in interleaved rounds (A B A B ...) so
   that a burst of load from other processes hits both, and the best round is reported
   (the median too). CUDA timings are bracketed by ``torch.cuda.synchronize()``.
   Attention overhead = ``time per image (model) / time per image (baseline) - 1``.
2. **Data pipeline alone** (images/s): a synthetic Market-1501 copy (``reid-masks synth``,
   same 128x64 JPEG crops as the real set) and its mask cache (``reid-masks generate
   --parsing-dir``) are written to a temporary folder; then the trainer's own pipeline is
   iterated with nothing consuming the batches: ``ReIDImageDataset`` (JPEG decode + the
   training ``PairedTransform``: resize to ``--height x --width``, flip, random erasing,
   masks moved along) + ``IdentitySampler`` (P x K) + ``DataLoader(num_workers=N,
   pin_memory on CUDA)``, for each ``--workers`` value. Steady-state rate is taken after
   the first ``2 * N + 1`` batches (the prefetched ones); the time to the first batch
   (worker start-up, paid once per epoch because the trainer uses
   ``persistent_workers=False``) is reported separately.

The loader "can feed the model" when its steady rate exceeds the slowest model's step rate.
Caveat: the loader is measured while the model is idle; in a real run both compete for
the host CPU (on GPU the model step needs one core for the Python/launch side).

Targets (GPU only, from the issue): MMGA at 384x128 with AMP >= 1,500 img/s on one H100,
attention overhead <= 10 %, loader never the bottleneck. The script prints a check of
these when run with ``--device cuda``.

Usage:
  python benchmarks/bench_train.py --device cuda --backbone resnet50 --amp bf16 --channels-last
  python benchmarks/bench_train.py --device cpu --backbone resnet18 --batch-size 8 --iters 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_train.config import Config  # noqa: E402
from reid_train.data import IdentitySampler, ReIDImageDataset, build_transforms  # noqa: E402
from reid_train.engine.trainer import build_optimizer, train_step  # noqa: E402
from reid_train.losses_mgran import build_loss  # noqa: E402
from reid_train.models import FSA_VARIANTS, build_model, model_names  # noqa: E402
from machine import describe_machine as machine

K = 4  # images per identity in a P x K batch (MMGA: P=24, K=4)
MARKET_TRAIN_IDS = 751
TARGET_MMGA_IPS = 1500.0
TARGET_OVERHEAD = 10.0


# ------------------------------------------------------------------ machine




def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------- model step


def synthetic_batch(batch: int, num_classes: int, height: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """CPU tensors of one P x K batch: images (normalised-like), pids, soft masks (N, 3, 24, 8)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=g)
    p = batch // K
    pids = torch.randperm(num_classes, generator=g)[:p].repeat_interleave(K)
    whole = torch.rand(batch, 24, 8, generator=g)
    cut = torch.randint(8, 16, (batch, 1, 1), generator=g)  # a hip row per image
    rows = torch.arange(24)[None, :, None]
    upper = torch.where(rows < cut, whole, torch.zeros_like(whole))
    masks = torch.stack([whole, upper, whole - upper], dim=1)
    return {"image": images, "pid": pids, "masks": masks}


class StepBench:
    """One model + loss + optimizer, stepping like ``Trainer.train_epoch``."""

    def __init__(self, name: str, args: argparse.Namespace, device: torch.device, **options: Any) -> None:
        self.name = name
        self.device = device
        if name in FSA_VARIANTS:  # FSA's attention is sized for the input
            options.setdefault("input_size", (args.height, args.width))
        self.model = build_model(name, args.num_classes, backbone=args.backbone, pretrained=None, **options).to(device)
        self.channels_last = args.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.model.train()
        cfg = Config()  # the paper's solver: SGD momentum 0.9, wd 5e-4, lr 0.05 / 0.1
        self.criterion = build_loss(name, cfg.loss)  # MMGALoss (its defaults), or FSALoss for fsa*
        self.optimizer = build_optimizer(self.model, cfg)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp) if device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.needs_masks = bool(self.model.required_masks)
        self.h2d = args.h2d and device.type == "cuda"
        host = synthetic_batch(args.batch_size, args.num_classes, args.height, args.width)
        if self.h2d:
            self.host = {k: v.pin_memory() for k, v in host.items()}
            self.batch = None
        else:
            self.host = None
            self.batch = self._to_device(host)
        self.times: list[float] = []  # seconds per timed round
        self.peak_gib: float | None = None
        self.params_m = sum(p.numel() for p in self.model.parameters()) / 1e6

    def _to_device(self, host: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images = host["image"].to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        out = {"image": images, "pid": host["pid"].to(self.device, non_blocking=True)}
        out["masks"] = host["masks"].to(self.device, non_blocking=True) if self.needs_masks else None
        return out

    def step(self) -> float:
        b = self._to_device(self.host) if self.h2d else self.batch
        terms = train_step(self.model, self.criterion, self.optimizer, self.scaler, b["image"], b["pid"], b["masks"],
                           self.amp_dtype, where=f"{self.name}: ")
        return terms["total"]

    def run(self, iters: int) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(iters):
            self.step()
        sync(self.device)
        return time.perf_counter() - t0


def bench_models(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # trainer default (train.cudnn_benchmark)
    benches = []
    for name in args.models:
        torch.manual_seed(0)
        b = StepBench(name, args, device)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            b.step()
        sync(device)
        print(f"  {name}: built ({b.params_m:.1f} M params), {args.warmup} warmup step(s) in {time.perf_counter() - t0:.1f} s",
              flush=True)
        benches.append(b)
    for r in range(args.repeats):
        for b in benches:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            b.times.append(b.run(args.iters))
            if device.type == "cuda":
                b.peak_gib = max(b.peak_gib or 0.0, torch.cuda.max_memory_allocated(device) / 2**30)
        print(f"  round {r + 1}/{args.repeats}: " + ", ".join(
            f"{b.name} {args.iters * args.batch_size / b.times[-1]:.1f} img/s" for b in benches), flush=True)
    rows = []
    for b in benches:
        best = min(b.times)
        rows.append({
            "model": b.name,
            "params_m": b.params_m,
            "best_ips": args.iters * args.batch_size / best,
            "median_ips": args.iters * args.batch_size / statistics.median(b.times),
            "ms_per_step": 1000 * best / args.iters,
            "peak_gib": b.peak_gib,
        })
    return rows


# -------------------------------------------------------------- data loader


class ManyEpochs(Sampler[list[int]]):
    """Batches of consecutive epochs of an IdentitySampler, ``total`` batches in all (one worker start-up)."""

    def __init__(self, sampler: IdentitySampler, total: int) -> None:
        self.sampler = sampler
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[list[int]]:
        n, epoch = 0, 0
        while True:
            self.sampler.set_epoch(epoch)
            for batch in self.sampler:
                if n == self.total:
                    return
                yield batch
                n += 1
            epoch += 1


def prepare_synthetic_market(root: Path, ids: int) -> tuple[Path, Path]:
    """``reid-masks synth`` + ``reid-masks generate --parsing-dir`` into ``root`` (reused when present)."""
    data, cache = root / "market1501", root / "market1501.h5"
    cli = [sys.executable, "-m", "reid_masks.cli"]
    if not (data / "manifest.json").is_file():
        subprocess.run(cli + ["synth", "--layout", "market1501", "--out", str(data), "--ids", str(ids), "--seed", "0",
                              "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    if not cache.is_file():
        subprocess.run(cli + ["generate", "--dataset", "market1501", "--root", str(data), "--parsing-dir",
                              str(data / "parsing"), "--out", str(cache), "--workers", "2"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return data, cache


def bench_loader(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    from reid_masks.datasets import build_dataset

    own_tmp = args.loader_root is None
    root = Path(tempfile.mkdtemp(prefix="bench_train_")) if own_tmp else Path(args.loader_root)
    try:
        t0 = time.perf_counter()
        data, cache = prepare_synthetic_market(root, args.loader_ids)
        dataset = build_dataset("market1501", data)
        # the training pipeline of mmga_market1501.yaml: flip 0.5, no pad, random erasing 0.5
        train_tf, _ = build_transforms((args.height, args.width), flip_prob=0.5, pad=0, erasing_prob=0.5)
        ds = ReIDImageDataset(dataset, "train", train_tf, cache=cache)
        print(f"  synthetic Market-1501: {len(ds)} train images, {dataset.num_train_pids} ids "
              f"({time.perf_counter() - t0:.1f} s to synthesise + cache)", flush=True)
        p = args.loader_batch_size // K
        rows = []
        for workers in args.workers:
            skip = 2 * workers + 1  # prefetched batches (prefetch_factor 2 per worker) + the first one
            total = skip + args.loader_batches
            sampler = IdentitySampler(ds.pids, p, K, seed=0)
            loader = DataLoader(ds, batch_sampler=ManyEpochs(sampler, total), num_workers=workers,
                                pin_memory=device.type == "cuda", persistent_workers=False)
            start = time.perf_counter()
            t_first = t_skip = None
            n_images = 0
            for i, batch in enumerate(loader):
                if i == 0:
                    t_first = time.perf_counter() - start
                if i == skip - 1:
                    t_skip = time.perf_counter()
                elif i >= skip:
                    n_images += batch["image"].shape[0]
            elapsed = time.perf_counter() - t_skip
            rows.append({
                "workers": workers,
                "ips": n_images / elapsed,
                "first_batch_s": t_first,
                "batches": args.loader_batches,
            })
            print(f"  workers={workers}: {n_images / elapsed:.1f} img/s steady over {args.loader_batches} batches, "
                  f"first batch after {t_first:.2f} s", flush=True)
        return rows
    finally:
        if own_tmp:
            shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", choices=["resnet50", "resnet18", "resnet34", "resnet50_ibn_a"], default="resnet50")
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per step, a multiple of 4 (P x K, K=4) [96 on cuda, 8 on cpu]")
    p.add_argument("--amp", choices=["bf16", "fp16", "none"], default=None,
                   help="autocast dtype on cuda [bf16 on cuda; ignored on cpu, as in the trainer]")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last model and input [on for cuda, off for cpu, as in the trainer]")
    p.add_argument("--h2d", action=argparse.BooleanOptionalAction, default=True,
                   help="copy the batch from pinned host memory every step, as the trainer (cuda only)")
    p.add_argument("--models", default="baseline,mmga",
                   help=f"comma-separated; the first is the reference of the overhead ({', '.join(model_names())})")
    p.add_argument("--num-classes", type=int, default=MARKET_TRAIN_IDS)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per model [10 on cuda, 1 on cpu]")
    p.add_argument("--iters", type=int, default=None, help="timed steps per round [30 on cuda, 3 on cpu]")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per model (interleaved); best reported")
    p.add_argument("--workers", default=None, help="comma-separated DataLoader worker counts [8,16 on cuda, 0,2 on cpu]")
    p.add_argument("--loader-batch-size", type=int, default=None,
                   help="images per loader batch, a multiple of 4 [--batch-size]; e.g. 96 on a CPU-only host "
                        "to see what one core delivers at the GPU batch size")
    p.add_argument("--loader-ids", type=int, default=None,
                   help="identities of the synthetic Market copy [max(32, 2 x P)]")
    p.add_argument("--loader-batches", type=int, default=None, help="timed loader batches per worker count [40 cuda, 20 cpu]")
    p.add_argument("--loader-root", default=None, help="reuse/keep the synthetic set and cache in this folder")
    p.add_argument("--skip-model", action="store_true")
    p.add_argument("--skip-loader", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (cpu)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available")
    args.batch_size = args.batch_size or (96 if cuda else 8)
    if args.batch_size % K or args.batch_size < 2 * K:
        p.error(f"--batch-size must be a multiple of {K} and >= {2 * K} (P x K batches, K={K}, P >= 2)")
    args.amp = args.amp or ("bf16" if cuda else "none")
    if args.channels_last is None:
        args.channels_last = cuda
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in model_names()]
    if unknown:
        p.error(f"unknown model(s) {unknown}; allowed: {', '.join(model_names())}")
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    args.iters = args.iters or (30 if cuda else 3)
    args.workers = [int(w) for w in (args.workers or ("8,16" if cuda else "0,2")).split(",")]
    args.loader_batch_size = args.loader_batch_size or args.batch_size
    if args.loader_batch_size % K or args.loader_batch_size < 2 * K:
        p.error(f"--loader-batch-size must be a multiple of {K} and >= {2 * K}")
    args.loader_ids = args.loader_ids or max(32, 2 * (args.loader_batch_size // K))
    args.loader_batches = args.loader_batches or (40 if cuda else 20)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp_note = args.amp if device.type == "cuda" else "none (autocast is CUDA-only in the trainer)"
    print(machine())
    print("load average before start: %.2f %.2f %.2f" % os.getloadavg())
    print(f"config: {args.backbone} (random init, last stride 1), {args.height}x{args.width}, batch {args.batch_size} "
          f"(P={args.batch_size // K} x K={K}), {args.num_classes} classes, amp {amp_note}, "
          f"channels_last {args.channels_last}, h2d copy {args.h2d and device.type == 'cuda'}; "
          f"{args.warmup} warmup + {args.repeats} x {args.iters} timed steps per model", flush=True)
    results: dict[str, Any] = {"machine": machine(), "args": {k: v for k, v in vars(args).items()}}

    model_rows: list[dict[str, Any]] = []
    if not args.skip_model:
        print("\n== model step (forward + loss + backward + SGD step) on synthetic tensors", flush=True)
        t0 = time.perf_counter()
        model_rows = bench_models(args, device)
        print(f"  ({time.perf_counter() - t0:.0f} s)")
        ref = model_rows[0]["best_ips"]
        print(f"\n| model | params (M) | img/s (best of {args.repeats}) | img/s (median) | ms/step | overhead vs {args.models[0]} |"
              + (" peak GPU GiB |" if device.type == "cuda" else ""))
        print("|---|---:|---:|---:|---:|---:|" + ("---:|" if device.type == "cuda" else ""))
        for r in model_rows:
            r["overhead_pct"] = 100.0 * (ref / r["best_ips"] - 1.0)
            line = (f"| {r['model']} | {r['params_m']:.1f} | {r['best_ips']:.1f} | {r['median_ips']:.1f} | "
                    f"{r['ms_per_step']:.0f} | {r['overhead_pct']:+.1f} % |")
            if device.type == "cuda":
                line += f" {r['peak_gib']:.2f} |"
            print(line)
        results["model"] = model_rows

    loader_rows: list[dict[str, Any]] = []
    if not args.skip_loader:
        print(f"\n== data pipeline alone (decode + train transforms at {args.height}x{args.width} + masks, "
              f"P x K batches of {args.loader_batch_size})", flush=True)
        loader_rows = bench_loader(args, device)
        slowest = min((r["best_ips"] for r in model_rows), default=None)
        print("\n| workers | img/s (steady) | first batch (s) | vs slowest model step |")
        print("|---:|---:|---:|---|")
        for r in loader_rows:
            if slowest is None:
                verdict = "-"
            else:
                ratio = r["ips"] / slowest
                verdict = f"{ratio:.1f}x ({'can feed it' if ratio >= 1.0 else 'BOTTLENECK'})"
            r["vs_model"] = None if slowest is None else r["ips"] / slowest
            print(f"| {r['workers']} | {r['ips']:.1f} | {r['first_batch_s']:.2f} | {verdict} |")
        epoch_batches = -(-MARKET_TRAIN_IDS // (args.loader_batch_size // K))
        print(f"(a Market-1501 epoch has {epoch_batches} batches of {args.loader_batch_size}: the first-batch latency is "
              f"paid once per epoch since the trainer does not keep workers alive)")
        results["loader"] = loader_rows

    if device.type == "cuda" and model_rows:
        print("\n== targets (one H100, 384x128, AMP)")
        mm = next((r for r in model_rows if r["model"] == "mmga"), None)
        if mm is not None:
            ok = mm["best_ips"] >= TARGET_MMGA_IPS
            print(f"  MMGA >= {TARGET_MMGA_IPS:.0f} img/s: {mm['best_ips']:.0f} -> {'PASS' if ok else 'FAIL'}")
            ok = mm["overhead_pct"] <= TARGET_OVERHEAD
            print(f"  attention overhead <= {TARGET_OVERHEAD:.0f} %: {mm['overhead_pct']:.1f} % -> {'PASS' if ok else 'FAIL'}")
        if loader_rows:
            best = max(loader_rows, key=lambda r: r["ips"])
            ok = best["vs_model"] is not None and best["vs_model"] >= 1.0
            print(f"  loader not the bottleneck: best {best['ips']:.0f} img/s with {best['workers']} workers -> "
                  f"{'PASS' if ok else 'FAIL'} (measured with the model idle)")
        if args.height != 384 or args.width != 128 or args.amp == "none" or args.backbone != "resnet50":
            print("  (note: the targets are defined for resnet50 at 384x128 with AMP; this run differs)")
    elif model_rows:
        print("\n(targets: MMGA >= 1,500 img/s, overhead <= 10 %, loader never the bottleneck -- "
              "defined for one H100 at 384x128 with AMP; not applicable to this CPU run)")
    print("load average at the end: %.2f %.2f %.2f" % os.getloadavg())
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
