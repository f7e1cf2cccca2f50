"""``reid-train curves``: training curves (loss terms, rank-1, mAP) from a run's metrics.jsonl.

Drawn with PIL only, in the dark style of :mod:`reid_masks.visual`: a loss panel on top
(every loss term the trainer logged: ``total`` in white, then ``ce_whole``, ``ce_local``,
``triplet``, ``att``, ``att_*``...; the command's default is a log scale, since the
attention terms are ~50x smaller than the CE terms) and, when the log has evaluated epochs, an accuracy
panel below (rank-1 and mAP in percent, a marker on every evaluated epoch, so a sparse
``train.eval_period`` shows as dots joined by lines). Both panels share the epoch axis.

Robust reading: blank lines are skipped; when an epoch appears more than once (logs of
a restarted run appended to each other) the last line wins; non-numeric and non-finite
values are left out; a line that is not a JSON object, or has no integer ``epoch``, is a
UserError naming the line.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import click
import numpy as np
from PIL import Image, ImageDraw

from reid_masks import visual
from reid_masks.errors import UserError

__all__ = ["read_metrics", "loss_keys", "nice_ticks", "Axes", "render_curves", "curves_command", "ACCURACY_KEYS", "SERIES_COLORS"]

ACCURACY_KEYS = ("rank1", "mAP")
ACCURACY_LABELS = {"rank1": "rank-1", "mAP": "mAP"}
_NOT_LOSS = {"epoch", "rank1", "rank5", "rank10", "mAP", "images_per_s", "time_s"}

PLOT_BG: visual.Color = visual.CAPTION_BG
GRID: visual.Color = (72, 72, 72)
AXIS: visual.Color = (150, 150, 150)
TOTAL_COLOR: visual.Color = (240, 240, 240)
#: Line colours, assigned in order after ``total`` (white): eight hues far apart on the dark
#: background (sky blue, orange, green, yellow, pink, vermilion, violet, grey-cyan), then two more.
SERIES_COLORS: tuple[visual.Color, ...] = (
    (86, 180, 233), (240, 150, 0), (0, 200, 120), (240, 228, 66), (230, 120, 200),
    (255, 80, 50), (160, 130, 255), (120, 200, 200), (190, 140, 80), (150, 150, 150),
)
ACCURACY_COLORS: dict[str, visual.Color] = {"rank1": (86, 180, 233), "mAP": (240, 150, 0)}
LINE_WIDTH = 3  # pixels; lines are drawn SUPERSAMPLE times larger and downsampled (anti-aliased)
TOTAL_WIDTH = 7  # ``total`` is drawn first and wider, so a term equal to it (MGRAN's msml) shows inside it
#: Dash patterns (on, off, ... in line widths) cycled over the loss terms after ``total``: two terms with
#: equal values (``ce_whole`` = ``ce_local`` early on) still show both colours, one through the other's gaps.
SERIES_DASHES: tuple[tuple[int, ...] | None, ...] = (None, (4, 3), (1.5, 2.5), (5, 2, 1.5, 2))
MARKER_RADIUS = 4
SUPERSAMPLE = 4
PAD = 10
LEFT = 60  # room for y tick labels
BOTTOM = 34  # room for x tick labels and the axis name
TITLE_HEIGHT = 22
LEGEND_ROW = 18
LEGEND_SWATCH = 26  # length of the line sample in a legend entry
FEW_EVALUATIONS = 2  # up to this many evaluated epochs: the panel starts at 0% and prints each value


# --------------------------------------------------------------------------- data


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl, one per epoch (last line of an epoch wins), by epoch."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: metrics log not found (metrics.jsonl of a fit run)")
    by_epoch: dict[int, dict[str, Any]] = {}
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{no}: not JSON ({exc.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("epoch"), int) or isinstance(rec.get("epoch"), bool):
            raise UserError(f"{path}:{no}: expected a JSON object with an integer 'epoch'")
        by_epoch[rec["epoch"]] = {k: v for k, v in rec.items() if k == "epoch" or _finite(v)}
    if not by_epoch:
        raise UserError(f"{path}: no epochs logged")
    return [by_epoch[e] for e in sorted(by_epoch)]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def loss_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Loss terms in the records: ``total`` first, then in order of first appearance."""
    keys: list[str] = []
    for rec in records:
        for k in rec:
            if k not in _NOT_LOSS and not k.startswith("lr_") and k not in keys:
                keys.append(k)
    return sorted(keys, key=lambda k: (k != "total", keys.index(k)))


def series(records: Sequence[Mapping[str, Any]], key: str, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of the records that have ``key``."""
    pts = [(r["epoch"], scale * r[key]) for r in records if key in r]
    if not pts:
        return np.zeros(0), np.zeros(0)
    e, v = zip(*pts)
    return np.asarray(e, dtype=np.float64), np.asarray(v, dtype=np.float64)


# --------------------------------------------------------------------------- axes


def nice_ticks(lo: float, hi: float, target: int = 6, integer: bool = False) -> tuple[float, float, list[float]]:
    """(lo', hi', ticks): the range widened to multiples of a 1/2/2.5/5 x 10^k step."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        pad = max(abs(hi) * 0.05, 1.0 if integer else 1e-3)
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(target - 1, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    if integer:
        step = max(1.0, round(step)) if step >= 1 else 1.0
    lo2, hi2 = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    ticks = [lo2 + i * step for i in range(int(round((hi2 - lo2) / step)) + 1)]
    return lo2, hi2, ticks


def _log_ticks(lo: float, hi: float) -> tuple[float, float, list[float]]:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if a == b:
        b = a + 1
    ticks = [m * 10.0 ** e for e in range(a, b + 1) for m in ((1, 2, 5) if b - a <= 3 else (1,)) if lo / 1.001 <= m * 10.0 ** e <= hi * 1.001]
    if len(ticks) < 3:  # a narrow range: linear steps, placed on the log axis
        ticks = [t for t in nice_ticks(lo, hi, 5)[2] if lo <= t <= hi and t > 0]
    return lo, hi, ticks or [lo, hi]


def _fmt(v: float, step: float) -> str:
    if abs(v) < 1e-12:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}"
    decimals = max(0, -int(math.floor(math.log10(step))) + (1 if step / 10 ** math.floor(math.log10(step)) == 2.5 else 0)) if step > 0 else 2
    return f"{v:.{min(decimals, 4)}f}"


@dataclass(frozen=True)
class Axes:
    """A plot box (pixels, inclusive ``x0 y0 x1 y1``) and the data range mapped onto it."""

    box: tuple[int, int, int, int]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    log: bool = False

    def _fy(self, y: float) -> float:
        return math.log10(y) if self.log else y

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """Image (x, y) of data point (x, y) (y grows downwards in the image)."""
        x0, y0, x1, y1 = self.box
        fx = (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0])
        lo, hi = self._fy(self.ylim[0]), self._fy(self.ylim[1])
        fy = (self._fy(y) - lo) / (hi - lo)
        return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)


def _font() -> Any:
    return visual.font()


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, anchor: str = "la", fill: visual.Color = visual.TEXT_COLOR) -> None:
    draw.text(xy, text, fill=fill, font=_font(), anchor=anchor)


class Line(NamedTuple):
    """One series of a panel: its points and how it is drawn."""

    name: str
    epochs: np.ndarray
    values: np.ndarray
    color: visual.Color
    markers: bool
    width: int = LINE_WIDTH
    dash: tuple[float, ...] | None = None


def _legend_rows(lines: Sequence[Line], width: int) -> list[list[tuple[Line, int]]]:
    """Legend items flowed into rows of at most ``width`` pixels: (line, x offset)."""
    rows: list[list[tuple[Line, int]]] = [[]]
    x = 0
    for line in lines:
        w = LEGEND_SWATCH + 4 + int(visual.text_width(line.name)) + 12
        if rows[-1] and x + w > width:
            rows.append([])
            x = 0
        rows[-1].append((line, x))
        x += w
    return rows


def _dashed(points: Sequence[tuple[float, float]], pattern: Sequence[float]) -> list[list[tuple[float, float]]]:
    """The 'on' pieces of a polyline cut by ``pattern`` (alternating on/off lengths in pixels)."""
    pieces: list[list[tuple[float, float]]] = []
    k, left, on = 0, pattern[0], True
    current: list[tuple[float, float]] = [points[0]] if points else []
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        seg = math.hypot(x1 - x0, y1 - y0)
        pos = 0.0
        while seg - pos > left:
            pos += left
            p = (x0 + (x1 - x0) * pos / seg, y0 + (y1 - y0) * pos / seg)
            if on:
                pieces.append(current + [p])
            current = [p]
            on, k = not on, k + 1
            left = pattern[k % len(pattern)]
        left -= seg - pos
        if on:
            current.append((x1, y1))
        else:
            current = [(x1, y1)]
    if on and len(current) > 1:
        pieces.append(current)
    return pieces


def _polyline(draw: ImageDraw.ImageDraw, pts: Sequence[tuple[float, float]], color: visual.Color, width: float,
              dash: Sequence[float] | None) -> None:
    fill = color + (255,) if len(color) == 3 else color
    if dash is None:
        draw.line(list(pts), fill=fill, width=int(round(width)), joint="curve")
        return
    for piece in _dashed(pts, [d * width for d in dash]):
        draw.line(piece, fill=fill, width=int(round(width)), joint="curve")


def _panel(img: Image.Image, rect: tuple[int, int, int, int], title: str,
           lines: Sequence[Line],
           xlim: tuple[float, float], xticks: Sequence[float], xstep: float, log: bool = False,
           ylabel_scale: str = "", ybounds: tuple[float, float] | None = None, annotate: bool = False,
           yfloor: float | None = None) -> Axes:
    """Draw one panel (title, legend, grid, ticks, polylines) inside ``rect``; return its axes.

    ``ybounds`` (linear only): the range the axis may span, e.g. 0..100 for percentages;
    ``annotate``: print each point's value beside its marker (sparse evaluation series);
    ``yfloor``: a value the linear axis must include (0 for a panel of one or two points).
    """
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = rect
    legend = _legend_rows(lines, right - left - LEFT)
    _text(draw, (left + 4, top + 2), title)
    ly = top + TITLE_HEIGHT
    for row in legend:
        for line, dx in row:
            x = left + LEFT + dx
            _polyline(draw, [(x, ly + LEGEND_ROW // 2), (x + LEGEND_SWATCH, ly + LEGEND_ROW // 2)], line.color,
                      min(line.width, 4), line.dash)
            _text(draw, (x + LEGEND_SWATCH + 4, ly + LEGEND_ROW // 2), line.name, anchor="lm")
        ly += LEGEND_ROW
    box = (left + LEFT, ly + 4, right - PAD, bottom - BOTTOM)
    values = np.concatenate([line.values for line in lines]) if lines else np.zeros(0)
    if log:
        values = values[values > 0]
    if len(values) == 0:
        ylim, yticks = (0.0, 1.0), [0.0, 1.0]
    elif log:
        lo, hi, yticks = _log_ticks(float(values.min()) / 1.15, float(values.max()) * 1.15)
        ylim = (lo, hi)
    else:
        vlo, vhi = float(values.min()), float(values.max())
        if yfloor is not None:
            vlo, vhi = min(vlo, yfloor), max(vhi, yfloor)
        pad = 0.05 * (vhi - vlo)
        lo, hi, yticks = nice_ticks(vlo - pad, vhi + pad, 6)
        if ybounds is not None:
            lo, hi = max(lo, min(ybounds[0], vlo)), min(hi, max(ybounds[1], vhi))
            yticks = [t for t in yticks if lo <= t <= hi]
        ylim = (lo, hi)
    axes = Axes(box, xlim, ylim, log)
    draw.rectangle(box, fill=PLOT_BG)
    ystep = (yticks[1] - yticks[0]) if len(yticks) > 1 else 1.0
    for t in yticks:
        _, py = axes.to_pixel(xlim[0], t)
        draw.line([(box[0], py), (box[2], py)], fill=GRID)
        label = f"{t:.4g}" if log else _fmt(t, ystep)  # log ticks: uneven steps, shortest exact text
        _text(draw, (box[0] - 4, py), label + ylabel_scale, anchor="rm")
    for t in xticks:
        px, _ = axes.to_pixel(t, ylim[0])
        draw.line([(px, box[1]), (px, box[3])], fill=GRID)
        _text(draw, (px, box[3] + 4), _fmt(t, xstep), anchor="ma")
    draw.rectangle(box, outline=AXIS)
    _draw_lines(img, axes, lines)
    if annotate:
        for _, e, v, color, *_ in lines:
            for x, y in zip(e, v):
                px, py = axes.to_pixel(x, y)
                _text(draw, (px - MARKER_RADIUS - 4, py), f"{y:.1f}", anchor="rm", fill=color)
    return axes


def _draw_lines(img: Image.Image, axes: Axes, lines: Sequence[Line]) -> None:
    """Polylines and markers, anti-aliased: drawn SUPERSAMPLE x larger on a clear layer, downsampled, composited.

    In the given order, so a wider line drawn first (``total``) stays visible around a term equal to it.
    """
    x0, y0, x1, y1 = axes.box
    ss = SUPERSAMPLE
    layer = Image.new("RGBA", ((x1 - x0 + 1) * ss, (y1 - y0 + 1) * ss), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _, e, v, color, markers, width, dash in lines:
        keep = v > 0 if axes.log else np.ones(len(v), dtype=bool)
        pts = [((px - x0 + 0.5) * ss, (py - y0 + 0.5) * ss) for px, py in (axes.to_pixel(x, y) for x, y in zip(e[keep], v[keep]))]
        if len(pts) > 1:
            _polyline(draw, pts, color, width * ss, dash)
        if markers or len(pts) == 1:
            r = max(MARKER_RADIUS, width // 2 + 2) * ss
            for px, py in pts:
                draw.ellipse([px - r, py - r, px + r, py + r], fill=color + (255,))
    layer = layer.resize((x1 - x0 + 1, y1 - y0 + 1), Image.BOX)
    img.paste(layer, (x0, y0), layer)  # the layer's alpha is the coverage


def render_curves(records: Sequence[Mapping[str, Any]], size: tuple[int, int] = (960, 640), title: str = "",
                  log_loss: bool = False) -> tuple[Image.Image, dict[str, Axes]]:
    """The curves picture (``size`` = (width, height)) and its panels' axes (``loss``, ``accuracy``)."""
    width, height = int(size[0]), int(size[1])
    if width < 200 or height < 160:
        raise UserError(f"curves picture {width}x{height} is too small (at least 200x160)")
    if not records:
        raise UserError("no epochs to plot")
    img = Image.new("RGB", (width, height), visual.SHEET_BG)
    draw = ImageDraw.Draw(img)
    _text(draw, (PAD, 4), visual.fit_text(title, width - 2 * PAD))
    epochs = [float(r["epoch"]) for r in records]
    emin, emax = min(epochs), max(epochs)
    xpad = max(0.02 * (emax - emin), 0.25)
    xlo, xhi = emin - xpad, emax + xpad  # no point on the frame
    _, _, xticks = nice_ticks(emin, emax, 8, integer=True)
    xstep = xticks[1] - xticks[0] if len(xticks) > 1 else 1.0
    xticks = [t for t in xticks if xlo <= t <= xhi]

    loss_lines = []
    for k in loss_keys(records):
        e, v = series(records, k)
        if k == "total":
            loss_lines.append(Line(k, e, v, TOTAL_COLOR, len(records) <= 40, TOTAL_WIDTH))
        else:
            i = len(loss_lines) - (loss_lines[0].name == "total" if loss_lines else 0)
            loss_lines.append(Line(k, e, v, SERIES_COLORS[i % len(SERIES_COLORS)], len(records) <= 40, LINE_WIDTH,
                                   SERIES_DASHES[i % len(SERIES_DASHES)]))
    acc_lines = []
    for i, k in enumerate(ACCURACY_KEYS):
        e, v = series(records, k, 100.0)
        if len(e):
            acc_lines.append(Line(ACCURACY_LABELS[k], e, v, ACCURACY_COLORS[k], True, LINE_WIDTH, SERIES_DASHES[i]))

    top = TITLE_HEIGHT
    axes: dict[str, Axes] = {}
    if acc_lines:
        split = top + (height - top) * 11 // 20
        rects = {"loss": (0, top, width, split), "accuracy": (0, split, width, height)}
    else:
        rects = {"loss": (0, top, width, height)}
    axes["loss"] = _panel(img, rects["loss"], "loss" + (" (log scale)" if log_loss else ""), loss_lines,
                          (xlo, xhi), xticks, xstep, log=log_loss)
    if acc_lines:
        few = max(len(line.epochs) for line in acc_lines) <= FEW_EVALUATIONS
        # one or two evaluations: an axis from 0 (the dots are not pinned to the frame) and their values printed
        axes["accuracy"] = _panel(img, rects["accuracy"], "evaluation (%)", acc_lines, (xlo, xhi), xticks, xstep,
                                  ybounds=(0.0, 100.0), yfloor=0.0 if few else None, annotate=few)
    last = axes["accuracy" if acc_lines else "loss"].box
    _text(draw, ((last[0] + last[2]) / 2, last[3] + 17), "epoch", anchor="ma", fill=AXIS)
    return img, axes


def summary(records: Sequence[Mapping[str, Any]]) -> str:
    """One line: last epoch, last and best rank-1 / mAP."""
    last = records[-1]
    parts = [f"{len(records)} epochs (last {last['epoch']})"]
    if "total" in last:
        parts.append(f"loss {last['total']:.4g}")
    evald = [r for r in records if "rank1" in r]
    if evald:
        best = max(evald, key=lambda r: r["rank1"])
        le = evald[-1]
        parts.append(f"rank-1 {100 * le['rank1']:.2f}%" + (f" mAP {100 * le['mAP']:.2f}%" if "mAP" in le else "")
                     + f" at epoch {le['epoch']}; best rank-1 {100 * best['rank1']:.2f}% at epoch {best['epoch']}")
    return ", ".join(parts)


def run_title(logfile: Path) -> str:
    """'<model> (<backbone>) on <train set>, <run folder>' from the config.yaml beside the log; the log's path without one."""
    import yaml

    cfg_path = logfile.parent / "config.yaml"
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        model, data = cfg["model"], cfg["data"]
        return f"{model['name']} ({model['backbone']}) trained on {data['dataset']}, {logfile.parent}"
    except (OSError, UnicodeDecodeError, yaml.YAMLError, KeyError, TypeError):
        return str(logfile)


@click.command("curves")
@click.argument("logfile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="PNG to write [default: curves.png next to LOGFILE].")
@click.option("--width", default=960, show_default=True, type=click.IntRange(200, 8000))
@click.option("--height", default=640, show_default=True, type=click.IntRange(160, 8000))
@click.option("--loss-scale", default="log", show_default=True, type=click.Choice(["log", "linear"]),
              help="Loss axis: log shows the small attention terms next to the CE terms.")
def curves_command(logfile: Path, out: Path | None, width: int, height: int, loss_scale: str) -> None:
    """Plot loss terms, rank-1 and mAP against epoch from a run's metrics.jsonl."""
    from reid_masks.fileio import check_writable

    out = check_writable(out or logfile.parent / "curves.png")
    records = read_metrics(logfile)
    text = summary(records)
    img, _ = render_curves(records, (width, height), f"{run_title(logfile)}: {text}", log_loss=loss_scale == "log")
    visual.save_png(img, out)
    click.echo(f"wrote {out} ({width}x{height}): {text}")
