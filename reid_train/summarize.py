"""``reid-train summarize``: mean and spread over repeated runs (seeds, CUHK03's 20 classic splits).

The classic CUHK03 protocol reports the average over its 20 random train/test splits
(Li et al., CVPR 2014), so one number needs 20 runs (``data.options.split_id`` 0-19);
any recipe is usually reported over a few seeds. This command reads the evaluation
records of run folders or record files (reid_train/results.py) and averages **only
records that differ in the seed or the split**: model, training config, epoch, test set,
protocol and every evaluation setting (metric, flip, re-ranking and its parameters,
multi-query, precision) must agree (:func:`reid_train.results.comparison_key`). Records
that differ in anything else form separate groups, each summarized on its own, after one
line naming what differs. Per group it prints every run and, per metric, the mean, the
sample standard deviation (n - 1) and the range, in percent. From a run evaluated several
times with the same settings (a fit's periodic evaluations) the latest epoch counts; two
runs of the same classic split in one group are refused (one split counted twice).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import click

from reid_masks.errors import UserError
from reid_train.results import METRICS, comparison_key, read_evaluations

__all__ = ["METRICS", "read_evaluations", "group_evaluations", "differences", "summarize_evaluations", "summarize_command"]


def differences(records: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The comparison keys on which ``records`` disagree, with their distinct values in order of appearance."""
    keys = [comparison_key(r) for r in records]
    out: dict[str, list[Any]] = {}
    for name in dict.fromkeys(k for key in keys for k in key):
        values: list[Any] = []
        for key in keys:
            v = key.get(name)
            if v not in values:
                values.append(v)
        if len(values) > 1:
            out[name] = values
    return out


def _show(value: Any) -> str:
    return "unset" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def describe_differences(diff: dict[str, list[Any]]) -> str:
    """``key (a | b); ...`` -- keys some records lack (another model's keys, re-ranking's k1 without
    re-ranking) follow from a key shown, so they are only counted."""
    shown = {k: vs for k, vs in diff.items() if None not in vs} or diff
    text = "; ".join(f"{k} ({' | '.join(_show(v) for v in vs)})" for k, vs in shown.items())
    rest = len(diff) - len(shown)
    return text + (f"; and {rest} key(s) only some of them have" if rest else "")


def group_evaluations(records: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Records grouped by :func:`comparison_key` (first appearance order). Per source file and
    setting only the latest epoch's (then the last) record is kept."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        slot = (str(r.get("source_file", r.get("source"))), repr(sorted(comparison_key(r, with_epoch=False).items(), key=str)))
        if slot not in latest or int(r.get("epoch") or 0) >= int(latest[slot].get("epoch") or 0):
            latest[slot] = r
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in latest.values():
        groups.setdefault(repr(sorted(comparison_key(r).items(), key=str)), []).append(r)
    return list(groups.values())


def summarize_evaluations(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per metric ``{mean, std, min, max, n}`` (fractions; ``std`` with n - 1, 0 for one run) of
    records of one experiment: records that differ in more than seed and split are refused."""
    if not results:
        raise UserError("summarize: no evaluations given")
    diff = differences(results)
    if diff:
        raise UserError(f"summarize: the evaluations differ in {describe_differences(diff)}; only runs that differ "
                        f"in train.seed or the split are averaged")
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


def _how(r: dict[str, Any]) -> str:
    """One line: what was trained and how it was scored (the group's shared settings)."""
    c, s = r.get("config", {}), r.get("settings", {})
    model, data = c.get("model", {}), c.get("data", {})
    rerank = (f"re-ranked k1={s.get('k1')} k2={s.get('k2')} lambda={s.get('lambda_value')}" if s.get("rerank") else "no re-ranking")
    mq = f", multi-query {s['multi_query']}" if s.get("multi_query", "none") != "none" else ""
    return (f"{model.get('name')}/{model.get('backbone')} trained on {data.get('dataset')}, epoch {r.get('epoch')}; "
            f"{s.get('metric')}, {'flip-averaged' if s.get('flip') else 'no flip'}, {rerank}{mq}, {s.get('precision')}")


def _print_group(group: list[dict[str, Any]]) -> None:
    stats = summarize_evaluations(group)
    for r in sorted(group, key=lambda r: (r.get("split_id", -1), r.get("seed", 0), r["source"])):
        split = f"split {r['split_id']:2d}  " if "split_id" in r else ""
        click.echo(f"{split}seed {r.get('seed')}  " + "  ".join(f"{k} {100 * r[k]:6.2f}" for k in METRICS) + f"  {r['source']}")
    n = len(group)
    first = group[0]
    protocol = first.get("protocol", "standard")
    note = " (of the protocol's 20)" if protocol == "cuhk03_classic" and n != 20 else ""
    click.echo(f"{first.get('dataset', '?')}, {protocol} protocol, {n} run(s){note}: {_how(first)}")
    for k in METRICS:
        s = stats[k]
        click.echo(f"  {k:<6} {100 * s['mean']:6.2f} +- {100 * s['std']:.2f}  (min {100 * s['min']:.2f}, max {100 * s['max']:.2f})")


@click.command("summarize")
@click.argument("evaluations", nargs=-1, required=True, type=click.Path(path_type=Path))
def summarize_command(evaluations: tuple[Path, ...]) -> None:
    """Mean +- std over runs that differ only in seed or split (run folders, evaluations.jsonl or .json records).

    Runs that differ in anything else (model, training config, epoch, test set, metric,
    flip, re-ranking...) are not averaged together: one line names what differs, then
    each group is summarized on its own.
    """
    records = []
    seen: set[Path] = set()
    for p in evaluations:
        if p.resolve() not in seen:  # the same run given twice counts once
            seen.add(p.resolve())
            records += read_evaluations(p)
    groups = group_evaluations(records)
    if len(groups) > 1:
        heads = [g[0] for g in groups]
        click.echo(f"not averaged together: the runs differ in {describe_differences(differences(heads))}; "
                   f"{len(groups)} groups below (only runs that differ in train.seed or the split are averaged)")
    for i, group in enumerate(groups):
        if len(groups) > 1:
            click.echo(f"\ngroup {i + 1} of {len(groups)}:")
        _print_group(group)
