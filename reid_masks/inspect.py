"""``reid-masks inspect``: what a mask cache holds, per split, with sanity statistics.

Area statistics, the upper-above-bottom check and the keypoint presence rate are computed
over the rows where a person was found (status ``ok`` or ``no_keypoints``); rows with
status ``no_person`` / ``unreadable`` carry empty masks and would only drag them to 0.
The region-cut sources (``cuts``) are counted over all rows, so each line's counts add up
to the split's rows.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from reid_masks.cache import CUT_NAMES, MASK_HW, STATUS, STATUS_NAMES, MaskCache, check_cache_rows

PERCENTILES = (5, 25, 50, 75, 95)
#: Statuses whose rows hold a person (and so masks worth measuring).
PERSON_STATUSES = ("ok", "no_keypoints")
MASK_NAMES = ("whole", "upper", "bottom")
KNOWN_ATTRS = ("schema_version", "dataset", "dataset_root", "person_size", "status_names", "region_names", "cut_names",
               "part_names", "provenance")
CUT_LINES = ("shoulder", "hip")  # the two columns of ``cuts``
_PERSON_CHUNK = 256


def _jsonable(value: Any) -> Any:
    """``value`` with numpy scalars/arrays and bytes turned into JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def area_stats(values: np.ndarray) -> dict[str, float | None]:
    """mean, min, p5..p95 and max of ``values`` (all None when empty)."""
    keys = ["mean", "min"] + [f"p{q}" for q in PERCENTILES] + ["max"]
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {k: None for k in keys}
    out = [v.mean(), v.min(), *np.percentile(v, PERCENTILES), v.max()]
    return {k: float(x) for k, x in zip(keys, out)}


def centroid_y(masks: np.ndarray) -> np.ndarray:
    """Row centroid (in cells, pixel centres at +0.5) of each ``(n, H, W)`` soft mask; NaN when empty."""
    m = np.asarray(masks, dtype=np.float64)
    rows = m.sum(axis=2)
    total = rows.sum(axis=1)
    ys = np.arange(m.shape[1], dtype=np.float64) + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (rows * ys).sum(axis=1) / np.where(total > 0, total, 1.0), np.nan)


def _person_area(cache: MaskCache, split: str, n: int) -> tuple[np.ndarray, list[int]]:
    """Person-mask area fraction of every row (read in chunks) and the person mask size."""
    out = np.zeros(n, dtype=np.float64)
    hw: list[int] = []
    for start in range(0, n, _PERSON_CHUNK):
        idx = np.arange(start, min(n, start + _PERSON_CHUNK))
        person = cache.rows(split, idx, columns=["person"])["person"]
        hw = list(person.shape[1:])
        out[idx] = (person > 0).mean(axis=(1, 2))
    return out, hw


def parsing_rows(cache: MaskCache, split: str, n: int) -> int | None:
    """Rows that keep the parser's labels (``parsing`` cells not empty); None before schema 5."""
    if not cache.has_column("parsing"):
        return None
    return sum(sum(len(cell) > 0 for cell in cache.read(split, "parsing", slice(a, min(n, a + _PERSON_CHUNK))))
               for a in range(0, n, _PERSON_CHUNK))


def count_codes(codes: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
    """How many of ``codes`` name each of ``names``; unknown codes as ``code_<n>``."""
    codes = np.asarray(codes, dtype=np.int64)
    out = {name: int((codes == code).sum()) for code, name in enumerate(names)}
    for code in sorted(set(np.unique(codes).tolist()) - set(range(len(names)))):
        out[f"code_{code}"] = int((codes == code).sum())
    return out


def detector_input_size(provenance: dict[str, Any]) -> dict[str, list[int]] | None:
    """Each detector model's input size as [short side, long-side cap], from the provenance (None without a detector)."""
    backend = provenance.get("backend") if isinstance(provenance, dict) else None
    models = backend.get("models") if isinstance(backend, dict) else None
    if not isinstance(models, dict) or not models:
        return None
    out = {}
    for key, model in models.items():
        if isinstance(model, dict) and "min_size_test" in model:  # detectron2: the config's test size per model
            out[key] = [model["min_size_test"], model["max_size_test"]]
        elif backend.get("min_size") is not None:  # torchvision: one size for both models
            out[key] = [backend["min_size"], backend["max_size"]]
    return out or None


def summarize_split(cache: MaskCache, split: str) -> dict[str, Any]:
    """Counts, status histogram, area statistics and sanity checks of the rows a split stores
    (a shard of ``generate --shard`` stores some of them: ``split_rows`` says how many the split has)."""
    n = cache.num_stored(split)
    cols = cache.rows(split, columns=["pid", "camid", "status", "masks", "keypoints", "cuts"])
    status = cols["status"].astype(np.int64)
    hist = count_codes(status, STATUS_NAMES)
    sel = np.isin(status, [STATUS[s] for s in PERSON_STATUSES])
    masks = cols["masks"][sel]
    cells = MASK_HW[0] * MASK_HW[1]
    person_area, person_hw = _person_area(cache, split, n)
    area: dict[str, Any] = {"rows": int(sel.sum())}
    for k, name in enumerate(MASK_NAMES):
        area[name] = area_stats(masks[:, k].sum(axis=(1, 2), dtype=np.float64) / cells)
    area["person"] = area_stats(person_area[sel])
    cy_up, cy_bot = centroid_y(masks[:, 1]), centroid_y(masks[:, 2])
    both = ~np.isnan(cy_up) & ~np.isnan(cy_bot)
    above = int((cy_up[both] < cy_bot[both]).sum())
    kps = cols["keypoints"][sel]
    present = kps[:, :, 2] > 0
    return {
        "rows": n,
        "split_rows": cache.num_rows(split),
        "ids": int(len(np.unique(cols["pid"]))),
        "cameras": int(len(np.unique(cols["camid"]))),
        "status": hist,
        "cuts": {line: count_codes(cols["cuts"].reshape(-1, 2)[:, k], CUT_NAMES) for k, line in enumerate(CUT_LINES)},
        "person_hw": person_hw,
        "parsing_rows": parsing_rows(cache, split, n),
        "area": area,
        "upper_above_bottom": {
            "rows": int(both.sum()),
            "count": above,
            "fraction": float(above / both.sum()) if both.any() else None,
        },
        "keypoints": {
            "rows": int(len(kps)),
            "presence": float(present.mean()) if present.size else None,
            "rows_with_any": float(present.any(axis=1).mean()) if len(present) else None,
            "per_keypoint": [float(x) for x in present.mean(axis=0)] if len(present) else None,
        },
    }


def summarize(cache: MaskCache) -> dict[str, Any]:
    """A JSON-ready description of ``cache``: attrs, provenance and per-split statistics."""
    attrs = _jsonable(cache.attrs)
    return {
        "path": str(cache.path),
        "dataset": cache.dataset,
        "schema_version": attrs.get("schema_version"),
        "dataset_root": attrs.get("dataset_root"),
        "person_size": attrs.get("person_size"),
        "provenance": attrs.get("provenance") or {},
        "detector_input_size": detector_input_size(attrs.get("provenance") or {}),
        "attrs": {k: v for k, v in attrs.items() if k != "provenance"},
        "splits": {split: summarize_split(cache, split) for split in cache.splits},
    }


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, value)]


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(count: int, total: int) -> str:
    return f"{100.0 * count / total:.1f}%" if total else "-"


def _counts(counts: dict[str, int], total: int) -> str:
    return ", ".join(f"{name} {c} ({_pct(c, total)})" if c else f"{name} 0" for name, c in counts.items())


def format_summary(summary: dict[str, Any]) -> str:
    """A readable multi-line report of :func:`summarize`'s result."""
    lines = [f"mask cache: {summary['path']} (schema {summary.get('schema_version')})"]
    size = summary.get("person_size")
    size_text = f"{size[0]}x{size[1]}" if isinstance(size, (list, tuple)) and len(size) == 2 else str(size) if size is not None else "-"
    lines.append(f"dataset: {summary.get('dataset') or '-'}  root: {summary.get('dataset_root') or '-'}  person masks: {size_text}")
    other = {k: v for k, v in summary.get("attrs", {}).items() if k not in KNOWN_ATTRS}
    if other:
        lines.append("attributes:")
        lines += [f"  {k}: {json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in other.items()]
    prov = summary.get("provenance") or {}
    lines.append("provenance:" if prov else "provenance: (none)")
    if isinstance(prov, dict):
        lines += [f"  {k}: {json.dumps(v) if isinstance(v, list) else v}" for k, v in _flatten(prov)]
    else:
        lines.append(f"  {prov}")
    sizes = summary.get("detector_input_size")
    if sizes:
        lines.append("detector input size (short side / long-side cap): " + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in sizes.items()))
    head = ["mean", "min"] + [f"p{q}" for q in PERCENTILES] + ["max"]
    for split, s in summary["splits"].items():
        n = s["rows"]
        lines.append("")
        of = f" (a shard: {n} of the split's {s['split_rows']})" if s.get("split_rows", n) != n else ""
        lines.append(f"[{split}] {n} rows{of}, {s['ids']} ids, {s['cameras']} cameras")
        lines.append("  status: " + _counts(s["status"], n))
        area = s["area"]
        lines.append(f"  area fraction over {area['rows']} rows with a person ({'/'.join(PERSON_STATUSES)}):")
        lines.append("    " + f"{'':16}" + "".join(f"{h:>7}" for h in head))
        hw = s.get("person_hw") or []
        labels = {n_: f"{n_} {MASK_HW[0]}x{MASK_HW[1]}" for n_ in MASK_NAMES}
        labels["person"] = f"person {hw[0]}x{hw[1]}" if len(hw) == 2 else "person"
        for name in (*MASK_NAMES, "person"):
            lines.append("    " + f"{labels[name]:16}" + "".join(f"{_fmt(area[name][h]):>7}" for h in head))
        ub = s["upper_above_bottom"]
        lines.append(f"  upper centroid above bottom centroid: {_pct(ub['count'], ub['rows'])} ({ub['count']}/{ub['rows']} rows with both masks)")
        kp = s["keypoints"]
        pres = "-" if kp["presence"] is None else f"{100 * kp['presence']:.1f}%"
        anyk = "-" if kp["rows_with_any"] is None else f"{100 * kp['rows_with_any']:.1f}%"
        lines.append(f"  keypoints present: {pres} of 17 per row; rows with any keypoint: {anyk}")
        for line in CUT_LINES:
            lines.append(f"  {line} cut from: " + _counts(s["cuts"][line], n))
        kept = s.get("parsing_rows")
        lines.append("  parsing labels kept: " + ("- (cache schema before 5)" if kept is None else
                                                  f"{kept} rows ({_pct(kept, n)}; reid-masks export --format lip-png)" if kept else "0 rows (made without a parser)"))
    return "\n".join(lines)


@click.command("inspect")
@click.argument("cache_path", metavar="CACHE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON instead of text.")
def inspect_command(cache_path: Path, as_json: bool) -> None:
    """Summarize a mask cache: rows, ids, cameras, statuses, mask areas, sanity checks, provenance.

    The rows are first checked against their digests and the masks' range (one line naming
    the first bad rows); a damaged file is one line too.
    """
    with MaskCache(cache_path) as cache:
        note = check_cache_rows(cache)
        if note:
            click.echo(f"warning: {note}", err=True)
        summary = summarize(cache)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))
