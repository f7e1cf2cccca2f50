"""``reid-train summarize``: mean and spread of several evaluations (CUHK03's 20 classic splits).

The classic CUHK03 protocol reports the average over its 20 random train/test splits
(Li et al., CVPR 2014), so one number needs 20 runs (``data.options.split_id`` 0-19).
This command reads their ``evaluation.json`` files (or run folders holding one) and
prints every run and, per metric, the mean, the sample standard deviation (n - 1) and
the range, in percent. Runs must share dataset and protocol; two runs of the same
classic split are refused (they would count one split twice).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import click

from reid_masks.errors import UserError
from reid_masks.fileio import read_json

__all__ = ["METRICS", "read_evaluation", "summarize_evaluations", "summarize_command"]

METRICS = ("rank1", "rank5", "rank10", "mAP")


def read_evaluation(path: str | Path) -> dict[str, Any]:
    """An ``evaluation.json`` (``path`` may be its run folder) with its ``source`` added."""
    path = Path(path)
    if path.is_dir():
        path = path / "evaluation.json"
    data = read_json(path, "evaluation file not found (run 'reid-train fit' or 'reid-train evaluate' first)",
                     "an evaluation JSON of reid-train")
    missing = [k for k in METRICS if not isinstance(data.get(k), (int, float))] if isinstance(data, dict) else list(METRICS)
    if missing:
        raise UserError(f"{path}: not a reid-train evaluation (missing {', '.join(missing)})")
    return {**data, "source": str(path)}


def summarize_evaluations(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per metric ``{mean, std, min, max, n}`` (fractions; ``std`` with n - 1, 0 for one run)."""
    if not results:
        raise UserError("summarize: no evaluations given")
    for key in ("dataset", "protocol"):
        values = {str(r.get(key)) for r in results}
        if len(values) > 1:
            raise UserError(f"summarize: the evaluations mix {key}s ({', '.join(sorted(values))}); summarize one at a time")
    seen: dict[int, str] = {}
    for r in results:
        if r.get("protocol") == "cuhk03_classic":
            split = int(r["split_id"])
            if split in seen:
                raise UserError(f"summarize: classic split {split} twice ({seen[split]} and {r.get('source')})")
            seen[split] = str(r.get("source"))
    out = {}
    for key in METRICS:
        values = [float(r[key]) for r in results]
        n = len(values)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        out[key] = {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}
    return out


@click.command("summarize")
@click.argument("evaluations", nargs=-1, required=True, type=click.Path(path_type=Path))
def summarize_command(evaluations: tuple[Path, ...]) -> None:
    """Mean +- std of several runs' evaluation.json (e.g. the 20 CUHK03 classic splits)."""
    results = [read_evaluation(p) for p in evaluations]
    stats = summarize_evaluations(results)
    for r in sorted(results, key=lambda r: (r.get("split_id", -1), r["source"])):
        split = f"split {r['split_id']:2d}  " if "split_id" in r else ""
        click.echo(f"{split}" + "  ".join(f"{k} {100 * r[k]:6.2f}" for k in METRICS) + f"  {r['source']}")
    n = len(results)
    protocol = results[0].get("protocol", "standard")
    note = " (of the protocol's 20)" if protocol == "cuhk03_classic" and n != 20 else ""
    click.echo(f"{results[0].get('dataset', '?')}, {protocol} protocol, {n} run(s){note}:")
    for k in METRICS:
        s = stats[k]
        click.echo(f"  {k:<6} {100 * s['mean']:6.2f} +- {100 * s['std']:.2f}  (min {100 * s['min']:.2f}, max {100 * s['max']:.2f})")
