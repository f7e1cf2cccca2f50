"""``reid-masks preview``: a contact sheet of cached masks drawn over their images.

Each tile shows five panels, each the image resized to the cache's person-mask size times
``scale``: (1) the image with its COCO keypoints and skeleton, (2) the whole, (3) the upper
and (4) the bottom 24x8 mask as translucent overlays (nearest upsampling, so the cells
stay visible), (5) the head/upper/lower regions; below them a caption strip with the path
stem, the id (``pid P``: the dataset's own id, as in the file name, for query/gallery rows;
``label L``: the training split's relabelled 0..N-1 id) and the status (the status word red when it is a problem: ``no_person``,
``unreadable``, and ``no_keypoints`` only in a cache with a keypoint source). Masks and
regions are drawn as a light tint plus their contour (the 0.5 level, with a dark halo), so
they stay visible on clothing or background of their own colour. Above the tiles: a colour
legend (keypoint colours only when the sampled rows have keypoints) and the panel names over
every column of tiles. Colours: :mod:`reid_masks.visual`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image, ImageDraw

from reid_masks import visual
from reid_masks.cache import STATUS, STATUS_NAMES, MaskCache
from reid_masks.cliopts import SEED, FiniteFloatRange
from reid_masks.errors import UserError
from reid_masks.fileio import check_writable
from reid_masks.imageio import read_image

PANELS = ("image", "whole", "upper", "bottom", "regions")
PANEL_GAP = 2
GRID_GAP = 4
LEGEND_HEIGHT = visual.CAPTION_HEIGHT + 4
HEADER_HEIGHT = visual.CAPTION_HEIGHT  # the panel names above the first row of tiles
TOP_HEIGHT = LEGEND_HEIGHT + HEADER_HEIGHT
DEFAULT_COLS = 4
TINT_ALPHA = 0.3  # lighter than visual.MASK_ALPHA: the outline carries the shape
OUTLINE_WIDTH = 2
_COLUMNS = ["path", "pid", "camid", "status", "keypoints", "image_size", "masks", "regions"]


@dataclass(frozen=True)
class SheetLayout:
    """Where everything lies on a contact sheet (all sizes in pixels, (height, width))."""

    panel_hw: tuple[int, int]
    tiles: int
    cols: int
    legend: bool = True

    @property
    def tile_hw(self) -> tuple[int, int]:
        ph, pw = self.panel_hw
        return ph + visual.CAPTION_HEIGHT, len(PANELS) * pw + (len(PANELS) - 1) * PANEL_GAP

    @property
    def rows(self) -> int:
        return -(-self.tiles // self.cols)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the sheet, as PIL reports it."""
        th, tw = self.tile_hw
        top = TOP_HEIGHT if self.legend else 0
        return self.cols * tw + (self.cols + 1) * GRID_GAP, top + self.rows * th + (self.rows + 1) * GRID_GAP

    def tile_origin(self, index: int) -> tuple[int, int]:
        """(y, x) of tile ``index``'s top-left corner."""
        y, x = visual.grid_origin(index, self.cols, self.tile_hw, GRID_GAP)
        return y + (TOP_HEIGHT if self.legend else 0), x

    def panel_origin(self, index: int, panel: str) -> tuple[int, int]:
        """(y, x) of the top-left corner of ``panel`` (one of :data:`PANELS`) in tile ``index``."""
        y, x = self.tile_origin(index)
        return y, x + PANELS.index(panel) * (self.panel_hw[1] + PANEL_GAP)

    def caption_origin(self, index: int) -> tuple[int, int]:
        """(y, x) of the top-left corner of tile ``index``'s caption strip."""
        y, x = self.tile_origin(index)
        return y + self.panel_hw[0], x


def sheet_layout(person_hw: tuple[int, int], tiles: int, scale: float = 2, cols: int | None = None, legend: bool = True) -> SheetLayout:
    """The layout of a sheet of ``tiles`` tiles for person masks of size ``person_hw``."""
    panel = (max(1, int(round(person_hw[0] * scale))), max(1, int(round(person_hw[1] * scale))))
    cols = max(1, min(cols or DEFAULT_COLS, max(tiles, 1)))
    return SheetLayout(panel, max(tiles, 1), cols, legend)


def sample_rows(counts: dict[str, int], n: int, seed: int = 0) -> list[tuple[str, int]]:
    """``n`` (split, row) pairs spread evenly over the splits' rows, in order.

    Positions are evenly spaced over all rows with a phase drawn from ``seed``, so the
    same seed always gives the same rows; every row when ``n`` >= the number of rows.
    """
    flat = [(split, i) for split, count in counts.items() for i in range(count)]
    total = len(flat)
    if n >= total:
        return flat
    phase = float(np.random.default_rng(seed).random())
    pos = np.floor((np.arange(n) + phase) * total / n).astype(np.int64)
    return [flat[p] for p in np.minimum(pos, total - 1)]


def _status_name(code: int) -> str:
    return STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else f"code_{code}"


def _caption_text(stem: str, pid: int, status: str, width: int, id_word: str = "pid") -> str:
    """'stem  pid P  status', shortening the stem (not the pid or status) to fit ``width``."""
    suffix = f"  {id_word} {pid}  {status}"
    room = width - 4 - visual.text_width(suffix)
    return visual.fit_text(stem, int(room)) + suffix if room > visual.text_width("...") else visual.fit_text(stem + suffix, width - 4)


def _placeholder(hw: tuple[int, int]) -> np.ndarray:
    """A grey panel with a dark cross, for an image that cannot be decoded."""
    img = np.full((hw[0], hw[1], 3), 96, dtype=np.uint8)
    ys = np.linspace(0, hw[0] - 1, max(hw)).round().astype(int)
    xs = np.linspace(0, hw[1] - 1, max(hw)).round().astype(int)
    img[ys, xs] = 40
    img[ys, hw[1] - 1 - xs] = 40
    return img


def problem_statuses(keypoint_source: bool) -> frozenset[str]:
    """Statuses drawn in red: ``no_person`` and ``unreadable`` always; ``no_keypoints`` only when the
    cache had a keypoint source (some row is ``ok``), since a parsing-only cache has no keypoints at all."""
    return frozenset({"no_person", "unreadable"} | ({"no_keypoints"} if keypoint_source else set()))


def render_tile(image: np.ndarray | None, row: dict[str, Any], panel_hw: tuple[int, int], label: str,
                problems: frozenset[str] = problem_statuses(True), id_word: str = "pid") -> np.ndarray:
    """One tile: image+keypoints, whole, upper, bottom and regions panels over a caption.

    ``image`` is the RGB image (None when unreadable); ``row`` holds the cache columns
    ``keypoints``, ``image_size``, ``masks``, ``regions``, ``pid`` and ``status``; the status
    word is red when it is one of ``problems`` (:func:`problem_statuses`). ``id_word``: ``pid`` for
    the dataset's own ids (query/gallery), ``label`` for the training split's relabelled 0..N-1 ids.
    """
    if image is None:
        base = _placeholder(panel_hw)
        src_hw = tuple(int(v) for v in row["image_size"])
    else:
        base = visual.resize_image(image, panel_hw, "bilinear")
        src_hw = tuple(int(v) for v in row["image_size"]) if min(row["image_size"]) > 0 else image.shape[:2]
    scale = (panel_hw[1] / max(src_hw[1], 1), panel_hw[0] / max(src_hw[0], 1))
    radius = max(2, int(round(panel_hw[1] / 40)))
    panels = [visual.draw_keypoints(base, row["keypoints"], scale=scale, radius=radius)]
    for k in range(3):  # a light tint for the soft values, the 0.5 contour so that it shows on any clothing
        tinted = visual.overlay(base, row["masks"][k], visual.MASK_COLORS[k], TINT_ALPHA, mode="nearest")
        panels.append(visual.outline(tinted, row["masks"][k], visual.MASK_COLORS[k], OUTLINE_WIDTH))
    regions = visual.overlay_labels(base, row["regions"], visual.REGION_COLORS, TINT_ALPHA)
    for code, color in enumerate(visual.REGION_COLORS):
        if color is not None:
            regions = visual.outline(regions, (row["regions"] == code).astype(np.float32), color, OUTLINE_WIDTH)
    panels.append(regions)
    strip = visual.hstack(panels, gap=PANEL_GAP)
    status = _status_name(int(row["status"]))
    text = _caption_text(label, int(row["pid"]), status, strip.shape[1], id_word)
    problem = status in problems
    if not problem or not text.endswith(status):
        return visual.caption(strip, text, visual.BAD if problem else visual.TEXT_COLOR)
    # the status word in red, the rest light: both legible on the dark strip
    return visual.caption(strip, text[:-len(status)], visual.TEXT_COLOR, tail=(status, visual.BAD))


def _legend(width: int, keypoints: bool) -> np.ndarray:
    """Colour legend; the keypoint colours only when the sheet shows keypoints."""
    items = [("whole", visual.WHOLE_COLOR), ("upper", visual.UPPER_COLOR), ("bottom/lower", visual.BOTTOM_COLOR),
             ("head", visual.HEAD_COLOR)]
    if keypoints:
        items += [("left keypoints", visual.KP_LEFT), ("right keypoints", visual.KP_RIGHT)]
    return visual.legend(items, width, LEGEND_HEIGHT)


PANEL_TITLES = {"image": "image + keypoints", "whole": "whole 24x8", "upper": "upper 24x8", "bottom": "bottom 24x8",
                "regions": "regions"}


def _headers(layout: SheetLayout, width: int, keypoints: bool) -> np.ndarray:
    """The strip naming each panel above every column of tiles."""
    strip = Image.new("RGB", (width, HEADER_HEIGHT), visual.SHEET_BG)
    draw = ImageDraw.Draw(strip)
    f = visual.font()
    pw = layout.panel_hw[1]
    for c in range(layout.cols):
        _, x0 = visual.grid_origin(c, layout.cols, layout.tile_hw, GRID_GAP)
        for p, name in enumerate(PANELS):
            title = PANEL_TITLES[name] if keypoints or name != "image" else "image"
            text = visual.fit_text(title, pw - 2, f) or visual.fit_text(name, pw - 2, f)
            draw.text((x0 + p * (pw + PANEL_GAP) + pw / 2, HEADER_HEIGHT / 2), text, fill=visual.TEXT_COLOR, font=f, anchor="mm")
    return np.asarray(strip)


def resolve_root(cache: MaskCache, root: str | Path | None) -> Path:
    """``root``, or the cache's ``dataset_root`` attribute; a UserError when neither exists."""
    if root is None:
        stored = cache.attrs.get("dataset_root")
        if not stored:
            raise UserError(f"{cache.path}: the cache records no dataset_root; pass --root DATASET_ROOT")
        root = stored
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: dataset root not found (moved?); pass --root DATASET_ROOT with the images of {cache.path}")
    return root


def contact_sheet(cache: MaskCache, root: str | Path | None, n: int = 32, split: str | None = None, seed: int = 0,
                  scale: float = 2, cols: int | None = None, legend: bool = True) -> Image.Image:
    """A contact sheet of ``n`` rows sampled evenly from ``split`` (all splits when None).

    ``root`` is the dataset root the cache's paths are relative to (None: the cache's
    ``dataset_root``). Panels are the person-mask size times ``scale``; ``cols`` tiles per
    row (default 4). Missing image files raise a UserError suggesting ``--root``.
    """
    if split is not None and split not in cache.splits:
        raise UserError(f"{cache.path}: no '{split}' split (the cache has: {', '.join(cache.splits) or 'none'})")
    splits = [split] if split is not None else cache.splits
    picked = sample_rows({s: cache.num_rows(s) for s in splits}, max(int(n), 0), seed)
    if not picked:
        raise UserError(f"{cache.path}: no rows to preview" + (f" in split '{split}'" if split else ""))
    root = resolve_root(cache, root)
    rows: list[tuple[str, dict[str, Any]]] = []
    for s in splits:
        idx = np.asarray([i for sp, i in picked if sp == s], dtype=np.int64)
        if len(idx):
            data = cache.rows(s, idx, columns=_COLUMNS)
            rows += [(s, {k: v[j] for k, v in data.items()}) for j in range(len(idx))]
    missing = [r["path"] for _, r in rows if not (root / r["path"]).is_file()]
    if missing:
        raise UserError(f"{root / missing[0]}: image not found ({len(missing)} of {len(rows)} sampled images missing under {root}); "
                        f"if the dataset moved, pass --root DATASET_ROOT")
    person_hw = tuple(int(v) for v in rows[0][1]["regions"].shape)
    layout = sheet_layout(person_hw, len(rows), scale, cols, legend)  # type: ignore[arg-type]
    width, height = layout.size
    if width * height > visual.MAX_PICTURE_PIXELS:
        raise UserError(f"--n {n} --scale {scale:g} --cols {layout.cols}: the sheet of {len(rows)} rows would be {width}x{height} pixels, at most "
                        f"{visual.MAX_PICTURE_PIXELS // 10**6} million; lower --n or --scale")
    keypoint_source = any(bool(np.any(cache.column(s, "status") == STATUS["ok"])) for s in cache.splits)
    problems = problem_statuses(keypoint_source)
    tiles = []
    for s, row in rows:
        try:
            image: np.ndarray | None = read_image(root / row["path"])
        except UserError:
            image = None  # present but undecodable (status 'unreadable'): a placeholder panel
        label = Path(row["path"]).stem if split is not None or len(splits) == 1 else f"{s}/{Path(row['path']).stem}"
        tiles.append(render_tile(image, row, layout.panel_hw, label, problems, "label" if s == "train" else "pid"))
    sheet = np.asarray(visual.tile_grid(tiles, layout.cols, gap=GRID_GAP))
    if legend:
        keypoints = any(float(np.max(row["keypoints"][:, 2], initial=0.0)) > 0 for _, row in rows)
        sheet = np.concatenate([_legend(sheet.shape[1], keypoints), _headers(layout, sheet.shape[1], keypoints), sheet], axis=0)
    return Image.fromarray(sheet)


@click.command("preview")
@click.argument("cache_path", metavar="CACHE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PNG file to write.")
@click.option("--n", "n", default=32, show_default=True, type=click.IntRange(1, 10000), help="Rows to show.")
@click.option("--split", type=click.Choice(["train", "query", "gallery"]), help="Only this split (default: all).")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="Dataset root (default: the cache's dataset_root).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Picks the phase of the even sampling.")
@click.option("--scale", default=1.0, show_default=True, type=FiniteFloatRange(0.1, 16), help="Panel size / person-mask size.")
@click.option("--cols", default=DEFAULT_COLS, show_default=True, type=click.IntRange(1, 100), help="Tiles per row.")
def preview_command(cache_path: Path, out: Path, n: int, split: str | None, root: Path | None, seed: int, scale: float, cols: int) -> None:
    """Draw sampled rows' masks, regions and keypoints over their images into a PNG contact sheet."""
    check_writable(out)
    with MaskCache(cache_path) as cache:
        sheet = contact_sheet(cache, root, n=n, split=split, seed=seed, scale=scale, cols=cols)
    visual.save_png(sheet, out)
    click.echo(f"wrote {out} ({sheet.width}x{sheet.height})")
