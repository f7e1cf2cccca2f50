"""Training input pipeline per CPU core: ours (baseline, MMGA, MGRAN) vs torchreid's and fast-reid's transforms.

What one loading process delivers, in images per CPU-second (``time.process_time`` of the
process, one torch thread, ``num_workers=0`` so the process does nothing but load): JPEG
decode + training transform + collate of P x K batches (default 24 x 4 = 96) at 384x128
from a synthetic Market-1501 copy (``reid-masks synth``: 128x64 JPEGs as the real set) and
its mask cache. Nothing consumes the batches; normalisation on the device is not counted
(it is not the loading processes' work), for every row where it happens there.

Rows (all on the same files, in interleaved rounds so that load from other processes hits
every row; the median and the best round are printed):

* ``ours baseline`` / ``ours mmga`` / ``ours mgran``: the trainer's own ``ReIDImageDataset``
  with the training ``PairedTransform`` of the shipped configs (flip 0.5, no pad, random
  erasing 0.5): no masks, the 24x8 masks, the 4-channel region masks.
* ``torchreid``: its ``build_transforms(transforms=['random_flip', 'random_erase'])``
  chain, re-implemented from deep-person-reid's ``torchreid/data/transforms.py``: PIL
  decode, ``Resize((h, w))`` (PIL bilinear), ``RandomHorizontalFlip``, ``ToTensor``,
  ``Normalize`` and its own ``RandomErasing`` (python ``random``, up to 100 tries, the
  mean colour), float32 batches.
* ``fast-reid``: its ``build_transforms`` training chain (fastreid/data/transforms/build.py)
  with flip and REA on: PIL decode, ``Resize(size, interpolation=3)`` (bicubic),
  ``RandomHorizontalFlip``, its ``ToTensor`` (float32 in 0..255, not divided), torchvision's
  ``RandomErasing(value=mean x 255)``; float32 batches, normalised on the device.

``--before DIR`` also measures the ``ours`` rows with the reid_train package of another
checkout (e.g. the commit before a change), in a second process on the same files.

Usage:
  python benchmarks/bench_input.py --rounds 5 --batches 4 [--before /path/to/old/checkout]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _import_paths(code: str | None) -> Path:
    here = Path(__file__).resolve().parent
    repo = Path(code).resolve() if code else here.parent
    sys.path[:0] = [str(repo), str(here)]
    return repo


# ------------------------------------------------------------------ peers' chains (re-implemented)


class TorchreidRandomErasing:
    """torchreid's RandomErasing: with probability p, up to 100 tries of a rectangle of area in
    [sl, sh] x image and aspect in [r1, 1/r1], filled with ``mean`` per channel (python ``random``)."""

    def __init__(self, p: float = 0.5, sl: float = 0.02, sh: float = 0.4, r1: float = 0.3,
                 mean: tuple[float, ...] = (0.485, 0.456, 0.406)) -> None:
        self.p, self.sl, self.sh, self.r1, self.mean = p, sl, sh, r1, mean

    def __call__(self, img: Any) -> Any:
        if random.uniform(0, 1) > self.p:
            return img
        _, height, width = img.shape
        for _ in range(100):
            target = random.uniform(self.sl, self.sh) * height * width
            aspect = random.uniform(self.r1, 1 / self.r1)
            h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if w < width and h < height:
                top, left = random.randint(0, height - h), random.randint(0, width - w)
                for c in range(3):
                    img[c, top:top + h, left:left + w] = self.mean[c]
                return img
        return img


def fastreid_to_tensor(pic: Any) -> Any:
    """fast-reid's ToTensor: the PIL image as a float32 CHW tensor in 0..255 (no division)."""
    import torch

    a = np.array(pic, np.uint8, copy=True)
    return torch.from_numpy(a).permute(2, 0, 1).contiguous().to(torch.float32)


def peer_transform(name: str, size: tuple[int, int]) -> Callable[[Any], Any]:
    import torchvision.transforms as T

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if name == "torchreid":
        return T.Compose([T.Resize(size), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std),
                          TorchreidRandomErasing(mean=mean)])
    if name == "fast-reid":
        return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.RandomHorizontalFlip(p=0.5),
                          fastreid_to_tensor, T.RandomErasing(p=0.5, value=[m * 255 for m in mean])])
    raise ValueError(name)


class PeerDataset:
    """PIL decode (``Image.open(path).convert('RGB')``, both peers' ``read_image``) + the peer's chain."""

    def __init__(self, dataset: Any, transform: Callable[[Any], Any]) -> None:
        self.dataset, self.records, self.transform = dataset, dataset.train, transform
        self.pids = [r.pid for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from PIL import Image

        rec = self.records[i]
        with Image.open(self.dataset.abspath(rec)) as im:
            img = im.convert("RGB")
        return {"image": self.transform(img), "pid": rec.pid, "camid": rec.camid}


# ------------------------------------------------------------------ measurement


def build_rows(names: list[str], data: Path, cache: Path, size: tuple[int, int]) -> dict[str, Any]:
    from reid_masks.datasets import build_dataset
    from reid_train.data import ReIDImageDataset, build_transforms

    dataset = build_dataset("market1501", data)
    train_tf, _ = build_transforms(size, flip_prob=0.5, pad=0, erasing_prob=0.5)
    out: dict[str, Any] = {}
    for name in names:
        if name == "ours baseline":
            out[name] = ReIDImageDataset(dataset, "train", train_tf)
        elif name == "ours mmga":
            out[name] = ReIDImageDataset(dataset, "train", train_tf, cache=cache)
        elif name == "ours mgran":
            out[name] = ReIDImageDataset(dataset, "train", train_tf, cache=cache, region_masks="regions")
        else:
            out[name] = PeerDataset(dataset, peer_transform(name, size))
    return out


def cpu_rate(ds: Any, batch: int, batches: int, seed: int) -> tuple[float, int]:
    """(images per CPU-second, bytes per batch) of loading ``batches`` P x K batches after one untimed one."""
    import torch
    from torch.utils.data import DataLoader

    from bench_train import ManyEpochs
    from reid_train.data import IdentitySampler

    sampler = ManyEpochs(IdentitySampler(ds.pids, batch // 4, 4, seed=seed), batches + 1)
    loader = iter(DataLoader(ds, batch_sampler=sampler, num_workers=0))
    first = next(loader)
    nbytes = sum(v.numel() * v.element_size() for v in first.values() if isinstance(v, torch.Tensor))
    t0, n = time.process_time(), 0
    for _ in range(batches):
        n += len(next(loader)["pid"])
    return n / (time.process_time() - t0), nbytes


def measure(names: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    import torch

    torch.set_num_threads(1)
    rows = build_rows(names, Path(args.data), Path(args.cache), (args.height, args.width))
    rates: dict[str, list[float]] = {n: [] for n in names}
    sizes: dict[str, int] = {}
    for r in range(args.rounds):
        for n in names:
            random.seed(r)
            torch.manual_seed(r)
            rate, sizes[n] = cpu_rate(rows[n], args.batch_size, args.batches, seed=r)
            rates[n].append(rate)
        print(f"  round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {rates[n][-1]:.0f}" for n in names), file=sys.stderr, flush=True)
    return {n: {"median": statistics.median(v), "best": max(v), "rounds": v, "batch_mb": sizes[n] / 1e6} for n, v in rates.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=96, help="P x K images per batch (K=4)")
    p.add_argument("--batches", type=int, default=4, help="timed batches per row and round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--ids", type=int, default=64, help="identities of the synthetic Market copy")
    p.add_argument("--rows", default="ours baseline,ours mmga,ours mgran,torchreid,fast-reid")
    p.add_argument("--before", default=None, help="another checkout: its 'ours' rows are measured too")
    p.add_argument("--code", default=None, help=argparse.SUPPRESS)  # the checkout to import (for --before)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.rows.split(",") if n.strip()]
    _import_paths(args.code)
    if args.data:  # a child run (--before): print JSON only
        print(json.dumps(measure(names, args)))
        return

    from bench_train import prepare_synthetic_market
    from machine import describe_machine

    root = Path(tempfile.mkdtemp(prefix="bench_input_"))
    try:
        data, cache = prepare_synthetic_market(root, args.ids)
        args.data, args.cache = str(data), str(cache)
        results = measure(names, args)
        if args.before:
            ours = [n for n in names if n.startswith("ours")]
            child = [sys.executable, str(Path(__file__).resolve()), "--code", args.before, "--data", args.data, "--cache", args.cache,
                     "--rows", ",".join(ours), "--rounds", str(args.rounds), "--batches", str(args.batches),
                     "--batch-size", str(args.batch_size), "--height", str(args.height), "--width", str(args.width)]
            env = dict(os.environ, PYTHONPATH=args.before)
            before = json.loads(subprocess.run(child, check=True, capture_output=True, text=True, env=env).stdout)
            results.update({f"{n} (before)": v for n, v in before.items()})
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"machine: {describe_machine()}")
    print(f"{args.height}x{args.width}, batches of {args.batch_size}, {args.batches} timed batches x {args.rounds} rounds per row, "
          f"one thread, num_workers=0 (images per CPU-second of the loading process)")
    ref = results.get("fast-reid", {}).get("median")
    mmga = results.get("ours mmga", {}).get("median")
    print("| pipeline | img / CPU-s (median) | best round | batch MB | vs fast-reid | vs ours mmga |")
    print("|---|---:|---:|---:|---:|---:|")
    for n, v in results.items():
        vs_ref = f"{v['median'] / ref:.2f}x" if ref else "-"
        vs_mmga = f"{v['median'] / mmga:.2f}x" if mmga else "-"
        print(f"| {n} | {v['median']:.0f} | {v['best']:.0f} | {v['batch_mb']:.1f} | {vs_ref} | {vs_mmga} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": describe_machine(), "args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
