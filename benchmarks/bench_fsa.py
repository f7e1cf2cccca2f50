"""Cost of the FSA network's parts: parameters, GFLOPs and CPU training images/s of fsa_baseline,
fsa_sam and fsa against the ResNet-50 baseline, as ratios measured in one run.

* **Parameters**: every parameter of the model (trunk + BNNeck + classifier of ``--num-classes``).
* **GFLOPs**: one image's inference forward (eval mode) at ``--height x --width``, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls/einsums: 2 FLOPs per
  multiply-add; norms, pooling and activations are not counted).
* **Training images/s**: the trainer's own step (``bench_train.StepBench``: forward, the model's
  loss, backward, SGD step) on a synthetic P x K batch, models timed in interleaved rounds,
  best round reported. Random weights, float32 on CPU.

The reference ("resnet50 baseline") is the project's ``baseline`` (ResNet-50, GAP, 1024-d
embedding, CE + triplet) with a stride-2 layer4 like the FSA rows, so that the ratios show what
IBN-a, MHSA + ECA and the fusion add, not a different last stride.

    python benchmarks/bench_fsa.py --threads 2            # CPU, 256x128, batch 8
    python benchmarks/bench_fsa.py --device cuda          # GPU figures (bf16 + channels_last)
"""
from __future__ import annotations

import argparse
import copy
import shlex
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402
from machine import describe_machine  # noqa: E402
from reid_train.models import FSA_VARIANTS, build_model  # noqa: E402

ROWS = (("baseline", "resnet50"), ("fsa_baseline", "resnet50_ibn_a"), ("fsa_sam", "resnet50_ibn_a"), ("fsa", "resnet50_ibn_a"))


def gflops(name: str, backbone: str, height: int, width: int, num_classes: int) -> tuple[float, float]:
    """(GFLOPs of one image's eval forward, parameters in millions)."""
    options = {"input_size": (height, width)} if name in FSA_VARIANTS else {"last_stride": 2}
    model = build_model(name, num_classes, backbone=backbone, pretrained=None, **options).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, height, width))
    return counter.get_total_flops() / 1e9, params


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=None, help="images per step [8 on cpu, 64 on cuda]")
    p.add_argument("--iters", type=int, default=None, help="timed steps per round [2 on cpu, 30 on cuda]")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (cpu)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = a.device == "cuda"
    device = torch.device(a.device)
    print(f"command: python {shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])}")
    print(f"machine: {describe_machine(device)}")

    base = bench_train.parse_args(["--device", a.device, "--height", str(a.height), "--width", str(a.width),
                                   "--batch-size", str(a.batch_size or (64 if cuda else 8)), "--models", "baseline",
                                   "--iters", str(a.iters or (30 if cuda else 2)), "--repeats", str(a.repeats),
                                   "--warmup", "3" if cuda else "1"])
    benches = []
    for name, backbone in ROWS:
        args = copy.copy(base)
        args.backbone = backbone
        torch.manual_seed(0)
        b = bench_train.StepBench(name, args, device, **({"last_stride": 2} if name == "baseline" else {}))
        for _ in range(args.warmup):
            b.step()
        benches.append(b)
        print(f"  {name} ({backbone}): built, {args.warmup} warm-up step(s)", flush=True)
    for r in range(base.repeats):
        for b in benches:
            b.times.append(b.run(base.iters))
        print(f"  round {r + 1}/{base.repeats}: " + ", ".join(
            f"{b.name} {base.iters * base.batch_size / b.times[-1]:.2f} img/s" for b in benches), flush=True)

    rows = []
    for (name, backbone), b in zip(ROWS, benches):
        g, params = gflops(name, backbone, a.height, a.width, base.num_classes)
        rows.append((name, backbone, params, g, base.iters * base.batch_size / min(b.times)))
    ref = rows[0]
    where = f"{a.height}x{a.width}, batch {base.batch_size}, " + ("bf16 + channels_last" if cuda else "float32")
    print(f"\ntraining step on {a.device} ({where}), {base.num_classes} classes, best of {base.repeats} rounds of {base.iters} steps")
    print("| model | backbone | params (M) | x baseline | GFLOPs/image | x baseline | train img/s | x baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for name, backbone, params, g, ips in rows:
        print(f"| {name} | {backbone} | {params:.2f} | {params / ref[2]:.2f} | {g:.2f} | {g / ref[3]:.2f} | {ips:.2f} | {ips / ref[4]:.2f} |")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)")
