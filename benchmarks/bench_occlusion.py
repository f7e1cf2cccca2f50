"""Mask-stage quality under occlusion: IoU of the derived masks/regions against the synthetic truth.

For each source route (``parsing``: the true LIP parsing as ``--parsing-dir``;
``detector``: perfect visible-instance masks with visibility-scored keypoints, see
``reid_masks.synth.maskquality``) the script renders ``--n`` crops without occluders
and ``--n`` crops with one occluder each (all kinds, then each kind alone) and prints
the mean IoU of whole/upper/bottom (24x8 soft masks) and head/upper/lower regions,
the share of crops whose target person was picked, and the number of derived pixels
that fall on an occluder (0 means the occluder is excluded).

Usage:
    python benchmarks/bench_occlusion.py --n 200 [--out docs/benchmarks_occlusion.md]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid_masks.synth.maskquality import ROUTES, measure  # noqa: E402
from reid_masks.synth.render import OCCLUDER_KINDS  # noqa: E402

COLUMNS = ("mask_whole", "mask_upper", "mask_bottom", "region_head", "region_upper", "region_lower", "target_picked", "pixels_on_occluder", "occluded")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="crops per row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = ap.parse_args()
    lines = [
        f"Mask IoU against the synthetic truth, {args.n} crops per row (seed {args.seed}); "
        "command: `python benchmarks/bench_occlusion.py --n %d`" % args.n,
        "",
        "| route | occluders | " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for route in ROUTES:
        rows = [("none", 0.0, OCCLUDER_KINDS), ("all kinds", 1.0, OCCLUDER_KINDS)] + [(k, 1.0, (k,)) for k in OCCLUDER_KINDS]
        for label, rate, kinds in rows:
            r = measure(route, n=args.n, seed=args.seed, occlusion_rate=rate, kinds=kinds)
            cells = [f"{r[c]:.0f}" if c == "pixels_on_occluder" else f"{r[c]:.3f}" for c in COLUMNS]
            lines.append(f"| {route} | {label} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
