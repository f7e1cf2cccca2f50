"""Training throughput of MGRAN vs MMGA on the same backbone (images/s).

One "image" is one pedestrian crop of the batch: MGRAN runs its backbone on 4 inputs per
crop (pedestrian region + head / upper / lower; one batched 4N call), MMGA on 1 crop with
its attention modules, so MGRAN is expected at roughly 1/4 of MMGA's rate or less at equal
stride. Each model is timed with its own packaged recipe (``mgran_market1501`` /
``mmga_market1501``): MGRAN keeps ResNet's stride-2 ``layer4`` (plain ResNet-50 as in the
paper), MMGA removes it (stride 1: 4x the ``layer4`` work). ``--last-stride 1|2`` forces
the same stride on both.

A step is what ``Trainer.train_epoch`` does: host -> device copy of the batch from pinned
memory (images, labels and MMGA's 24x8 masks / MGRAN's (N, 4, H, W) uint8 region masks),
``region_inputs`` (MGRAN), forward under autocast (``--amp``, CUDA only), the model's
loss (``build_loss``: MMGALoss, or MSML for MGRAN), backward, SGD step with the trainer's
parameter groups, and the ``isfinite`` check that synchronises once per step. Inputs are
synthetic (random images, P x K labels with K=4, a pedestrian ellipse cut in three
stripes for the region masks); random weights. Warmup steps are excluded; the models
are timed in interleaved rounds (A B A B ...) so that load from other processes hits
both; the best round and the median are reported.

Results are written to ``docs/benchmarks_mgran.md`` (the section of the device is
replaced, the others are kept) with the machine, the command and the load average.

Usage:
  python benchmarks/bench_mgran.py --device cpu --iters 2 --rounds 1
  python benchmarks/bench_mgran.py --device cuda --amp bf16 --channels-last --batch-size 64 --iters 20 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_train.config import load_config  # noqa: E402
from reid_train.engine.trainer import build_model_from_config, build_optimizer, train_step  # noqa: E402
from reid_train.losses_mgran import build_loss  # noqa: E402
from reid_train.models import region_inputs  # noqa: E402
from machine import describe_machine as machine

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks_mgran.md"
RECIPES = {"mgran": "mgran_market1501", "mmga": "mmga_market1501"}






def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_batch(batch: int, height: int, width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Host tensors (pinned on CUDA hosts) of one P x 4 batch."""
    g = torch.Generator().manual_seed(seed)
    k = 4
    labels = torch.arange(max(1, batch // k)).repeat_interleave(k)[:batch]
    labels = torch.cat([labels, torch.zeros(batch - len(labels), dtype=torch.long)])
    ys = (torch.arange(height).float()[:, None] + 0.5) / height
    xs = (torch.arange(width).float()[None, :] + 0.5) / width
    person = ((ys - 0.5) / 0.45) ** 2 + ((xs - 0.5) / 0.3) ** 2 <= 1.0
    head, upper, lower = person & (ys < 0.2), person & (ys >= 0.2) & (ys < 0.55), person & (ys >= 0.55)
    region = torch.stack([person, head, upper, lower]).to(torch.uint8)
    whole = torch.nn.functional.interpolate(person.float()[None, None], size=(24, 8), mode="area")[0, 0]
    out = {
        "image": torch.randn(batch, 3, height, width, generator=g),
        "pid": labels,
        "masks": torch.stack([whole, whole * (torch.arange(24)[:, None] < 12), whole * (torch.arange(24)[:, None] >= 12)])[None].repeat(batch, 1, 1, 1),
        "region_masks": region[None].repeat(batch, 1, 1, 1),
    }
    if torch.cuda.is_available():
        out = {k: v.pin_memory() for k, v in out.items()}
    return out


class Runner:
    """One model's training step on a fixed synthetic batch."""

    def __init__(self, model_name: str, backbone: str, size: tuple[int, int], args: argparse.Namespace, device: torch.device) -> None:
        sets = [f"model.backbone={backbone}", "model.pretrained=none", f"data.height={size[0]}", f"data.width={size[1]}"]
        if args.last_stride:
            sets.append(f"model.last_stride={args.last_stride}")
        self.cfg = cfg = load_config(RECIPES[model_name], sets)
        self.name = model_name
        self.last_stride = cfg.model.last_stride
        self.device = device
        torch.manual_seed(0)
        num_classes = max(1, args.batch_size // 4)
        self.model = build_model_from_config(cfg, num_classes).to(device).train()
        self.channels_last = args.channels_last and device.type == "cuda"
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.criterion = build_loss(cfg.model.name, cfg.loss)
        self.optimizer = build_optimizer(self.model, cfg)
        self.amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp) if device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.host = synthetic_batch(args.batch_size, size[0], size[1])
        self.region = getattr(self.model, "region_masks", None) is not None
        self.batch = args.batch_size

    def step(self) -> None:
        dev, nb = self.device, True
        images = self.host["image"].to(dev, non_blocking=nb)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        pids = self.host["pid"].to(dev, non_blocking=nb)
        masks = None
        if self.region:
            images = region_inputs(images, self.host["region_masks"].to(dev, non_blocking=nb))
        else:
            masks = self.host["masks"].to(dev, non_blocking=nb)
        train_step(self.model, self.criterion, self.optimizer, self.scaler, images, pids, masks, self.amp, where=f"{self.name}: ")

    def run(self, iters: int) -> float:
        """Seconds per step over ``iters`` steps."""
        sync(self.device)
        start = time.perf_counter()
        for _ in range(iters):
            self.step()
        sync(self.device)
        return (time.perf_counter() - start) / iters


def bench(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    for backbone in args.backbones:
        for size in args.sizes:
            runners = [Runner(m, backbone, size, args, device) for m in args.models]
            for r in runners:
                for _ in range(args.warmup):
                    r.step()
            times: dict[str, list[float]] = {r.name: [] for r in runners}
            for _ in range(args.rounds):
                for r in runners:
                    times[r.name].append(r.run(args.iters))
            for r in runners:
                best, median = min(times[r.name]), statistics.median(times[r.name])
                row = {
                    "model": r.name, "backbone": backbone, "size": f"{size[0]}x{size[1]}", "last_stride": r.last_stride,
                    "batch": args.batch_size, "cnn_images": args.batch_size * (len(r.model.branches) if r.region else 1),
                    "feature_dim": r.model.feature_dim, "best_s": best, "median_s": median,
                    "img_s": args.batch_size / best, "img_s_median": args.batch_size / median,
                }
                rows.append(row)
                print(f"{r.name:6s} {backbone:9s} {row['size']:8s} stride {r.last_stride}  batch {args.batch_size} "
                      f"({row['cnn_images']} CNN inputs): {row['img_s']:.2f} img/s (median {row['img_s_median']:.2f}), "
                      f"{best:.3f} s/step", flush=True)
            del runners
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| backbone | input | model | last stride | CNN inputs / step | feature dim | img/s (best) | img/s (median) | s/step | MGRAN / MMGA |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        peer = next((p for p in rows if p["model"] == "mmga" and p["backbone"] == r["backbone"] and p["size"] == r["size"]), None)
        ratio = f"{r['img_s'] / peer['img_s']:.2f}" if r["model"] == "mgran" and peer else ""
        out.append(f"| {r['backbone']} | {r['size']} | {r['model']} | {r['last_stride']} | {r['cnn_images']} | {r['feature_dim']} | "
                   f"{r['img_s']:.2f} | {r['img_s_median']:.2f} | {r['best_s']:.3f} | {ratio} |")
    return "\n".join(out)


def write_section(path: Path, tag: str, section: str) -> None:
    begin, end = f"<!-- section: {tag} -->", "<!-- end -->"
    text = path.read_text() if path.exists() else (
        "# MGRAN vs MMGA training throughput\n\nWritten by `benchmarks/bench_mgran.py` (see its docstring for what a step is); "
        "each device's section is replaced when the script runs on that device, the others are kept.\n")
    block = f"{begin}\n{section}\n{end}"
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def parse_size(text: str) -> tuple[int, int]:
    h, w = (int(v) for v in text.lower().split("x"))
    return h, w


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--backbones", nargs="+", default=["resnet50", "resnet18"])
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(256, 128), (384, 128)], help="HxW, e.g. 256x128 384x128")
    p.add_argument("--models", nargs="+", default=["mgran", "mmga"], choices=sorted(RECIPES))
    p.add_argument("--batch-size", type=int, default=16, help="pedestrian crops per step (P x 4)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=2, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=1, help="interleaved timed rounds per model")
    p.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"], help="CUDA only")
    p.add_argument("--channels-last", action="store_true", help="CUDA only")
    p.add_argument("--last-stride", type=int, choices=[1, 2], default=0, help="force this stride on both models (default: each recipe's)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-write", action="store_true", help=f"print only, do not update {DOC.name}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = bench(args, device)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    command = "python benchmarks/bench_mgran.py " + " ".join(argv if argv is not None else sys.argv[1:])
    tag = device.type + (f" {args.amp}" if device.type == "cuda" else "")
    section = "\n".join([
        f"## {device.type.upper()}" + (f", amp {args.amp}" if device.type == "cuda" else ""),
        "",
        f"`{command.strip()}`",
        "",
        f"* machine: {machine(device)}",
        f"* batch {args.batch_size} pedestrian crops (P x 4), random weights, {'fp32' if args.amp == 'none' or device.type != 'cuda' else args.amp}"
        f"{', channels_last' if args.channels_last and device.type == 'cuda' else ''}; {args.warmup} warm-up step(s), "
        f"{args.rounds} interleaved round(s) of {args.iters} step(s) per model",
        f"* 1-minute load average before / after: {load_before:.1f} / {load_after:.1f}",
        "",
        table(rows),
    ])
    print(table(rows))
    if not args.no_write:
        write_section(DOC, tag, section)
        print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
