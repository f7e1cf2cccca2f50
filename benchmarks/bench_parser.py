"""Throughput of the SCHP parser (reid_masks.parsing.schp.SCHPParser) per batch size.

Random weights (the speed does not depend on the values), synthetic RGB crops of a
re-ID size (Market-1501: 128x64), SCHP's LIP setting (473x473 input, one scale; the flip
test is on here unless ``--no-flip``, although the parser's and ``generate``'s default is
off). For each batch size the parser runs one warm-up batch, then ``--batches`` timed batches; the time per stage is reported too:

* prep: RGB->BGR, affine warp to the input size, normalisation (on the device);
* net: the network forward(s) (two with the flip test), flip merge, upsampling;
* back: inverse warp of the logits to each image and argmax, copy to the CPU.

Usage:
    python benchmarks/bench_parser.py                       # CPU, batch sizes 1 4 8
    python benchmarks/bench_parser.py --device cuda --batches 20 --batch-sizes 1 4 8 16 32
Writes a Markdown table to docs/benchmarks_parser.md (``--out``), naming the machine.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_masks.parsing.schp import SCHPParser, affine_sample  # noqa: E402
from machine import describe_machine as machine

log = logging.getLogger("bench_parser")






def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_batch(parser: SCHPParser, images: list[np.ndarray], device: torch.device) -> tuple[float, float, float]:
    """(prep, net, back) seconds for one batch, through the parser's own steps (what ``parse`` does)."""
    with torch.inference_mode():
        sync(device)
        t0 = time.perf_counter()
        x, back = parser.preprocess(images)
        sync(device)
        t1 = time.perf_counter()
        logits = parser.logits(x)
        sync(device)
        t2 = time.perf_counter()
        for i, im in enumerate(images):
            affine_sample(logits[i : i + 1], back[i], im.shape[:2])[0].argmax(0).to(torch.uint8).cpu().numpy()
        sync(device)
        t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2


HEADER = """# SCHP parser throughput

Written by `benchmarks/bench_parser.py`; each (device, flip) section is replaced when
the script runs with that setting, the others are kept. "prep" = BGR + affine warp + normalise,
"net" = network forward(s) + flip merge + upsampling, "back" = inverse warp of the
logits to the crop + argmax. One forward at 473x473 is 153 GFLOP (two with the flip test).

"""


def write_section(path: Path, tag: str, section: str) -> None:
    """Replace this device's section of the report (or append it), keeping the others."""
    text = path.read_text() if path.exists() else HEADER
    if tag in text:
        start = text.index(tag)
        end = text.index("<!-- end -->", start) + len("<!-- end -->\n")
        text = text[:start] + section + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--batches", type=int, default=1, help="timed batches per batch size (after a warm-up batch)")
    ap.add_argument("--image-size", default="128x64", help="HxW of the synthetic crops")
    ap.add_argument("--input-size", type=int, default=473)
    ap.add_argument("--no-flip", action="store_true", help="one forward per image instead of SCHP's flip test")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks_parser.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device = torch.device(args.device)
    h, w = (int(v) for v in args.image_size.split("x"))
    torch.manual_seed(0)
    parser = SCHPParser(random_weights=True, device=args.device, input_size=(args.input_size, args.input_size), flip=not args.no_flip)
    rng = np.random.default_rng(0)
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = []
    for bs in args.batch_sizes:
        parser.batch_size = bs
        images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(bs)]
        if device.type == "cuda" or bs == args.batch_sizes[0]:  # warm-up: allocator, kernels per shape, first touch
            run_batch(parser, images, device)
        times = np.array([run_batch(parser, images, device) for _ in range(args.batches)])
        total = times.sum()
        n = bs * args.batches
        row = dict(bs=bs, n=n, ips=n / total, spi=total / n, prep=times[:, 0].sum() / n, net=times[:, 1].sum() / n, back=times[:, 2].sum() / n)
        rows.append(row)
        log.info("batch %d: %.2f images/s (%.3f s/image: prep %.3f, net %.3f, back %.3f)", bs, row["ips"], row["spi"], row["prep"], row["net"], row["back"])
    load1 = os.getloadavg() if hasattr(os, "getloadavg") else None

    tag = f"<!-- section: {device.type} {'noflip' if args.no_flip else 'flip'} -->"
    lines = [
        tag,
        f"## {device.type.upper()}, flip test {'off' if args.no_flip else 'on'}",
        "",
        f"`python benchmarks/bench_parser.py --device {args.device} --batches {args.batches} --batch-sizes {' '.join(map(str, args.batch_sizes))}"
        f"{' --no-flip' if args.no_flip else ''}`",
        "",
        f"* machine: {machine(device)}",
        f"* input {args.input_size}x{args.input_size}, flip test {'off' if args.no_flip else 'on (2 forwards per image)'}, one scale, "
        f"{h}x{w} RGB crops, random weights, fp32; {'one warm-up batch per batch size' if device.type == 'cuda' else 'one warm-up batch'}, then {args.batches} timed batch(es) per batch size",
    ]
    if load0 is not None:
        lines.append(f"* 1-minute load average before / after: {load0[0]:.1f} / {load1[0]:.1f} (other jobs on the machine slow CPU figures)")
    lines += [
        "",
        "| batch | images timed | images/s | s/image | prep s/image | net s/image | back s/image |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['bs']} | {r['n']} | {r['ips']:.3f} | {r['spi']:.3f} | {r['prep']:.4f} | {r['net']:.3f} | {r['back']:.4f} |")
    lines += ["<!-- end -->", ""]
    write_section(args.out, tag, "\n".join(lines))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
