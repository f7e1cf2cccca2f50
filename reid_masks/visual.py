"""Shared visual conventions for mask previews and retrieval visualisations.

Everything here works on ``HxWx3`` uint8 RGB numpy arrays or PIL images and knows nothing
about the cache, so ``reid-masks preview`` and ``reid-train``'s retrieval sheets look alike:

* whole mask magenta, upper orange, bottom blue; regions: head yellow, upper orange,
  lower blue (upper/lower always share the hue of the upper/bottom masks);
* COCO keypoints: the person's left side cyan, right side lime, nose/centre white;
* captions: light text on a dark strip, red text for a problem (``BAD``);
* borders: green for a correct match (``GOOD``), red for a wrong one (``BAD``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from reid_masks.fileio import atomic_path

Color = tuple[int, int, int]
ImageLike = Union[np.ndarray, Image.Image]

WHOLE_COLOR: Color = (255, 0, 255)
UPPER_COLOR: Color = (255, 128, 0)
BOTTOM_COLOR: Color = (0, 128, 255)
HEAD_COLOR: Color = (255, 230, 0)
#: Colours of the whole / upper / bottom 24x8 masks, in the cache's ``masks`` order.
MASK_COLORS: tuple[Color, Color, Color] = (WHOLE_COLOR, UPPER_COLOR, BOTTOM_COLOR)
#: Colour of each region code (0 background: not drawn), as in ``cache.REGION_NAMES``.
REGION_COLORS: tuple[Color | None, ...] = (None, HEAD_COLOR, UPPER_COLOR, BOTTOM_COLOR)
MASK_ALPHA = 0.5
REGION_ALPHA = 0.5

GOOD: Color = (0, 200, 0)
BAD: Color = (230, 0, 0)
TEXT_COLOR: Color = (235, 235, 235)
CAPTION_BG: Color = (24, 24, 24)
SHEET_BG: Color = (48, 48, 48)
#: Caption font size and strip height (pixels): legible on a sheet viewed whole.
FONT_SIZE = 13
CAPTION_HEIGHT = 18

KP_LEFT: Color = (0, 230, 255)
KP_RIGHT: Color = (160, 255, 0)
KP_CENTER: Color = (255, 255, 255)
#: COCO-17 limbs as pairs of keypoint indices.
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10),
    (5, 11), (6, 12), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16),
)
_LEFT = frozenset({1, 3, 5, 7, 9, 11, 13, 15})
_RIGHT = frozenset({2, 4, 6, 8, 10, 12, 14, 16})


def keypoint_color(index: int) -> Color:
    """Colour of COCO keypoint ``index``: left side cyan, right side lime, nose white."""
    return KP_LEFT if index in _LEFT else KP_RIGHT if index in _RIGHT else KP_CENTER


def limb_color(a: int, b: int) -> Color:
    """Colour of the limb between keypoints ``a`` and ``b`` (white when it crosses sides)."""
    ca, cb = keypoint_color(a), keypoint_color(b)
    return ca if ca == cb else KP_CENTER


def as_array(image: ImageLike) -> np.ndarray:
    """An ``HxWx3`` uint8 RGB array (a copy) from an array or a PIL image."""
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.array(arr[..., :3], dtype=np.uint8)


def resize_map(values: np.ndarray, hw: tuple[int, int], mode: str = "nearest") -> np.ndarray:
    """Resize a 2-D map to ``hw`` (height, width) as float32; ``mode`` 'nearest' or 'bilinear'."""
    arr = np.asarray(values, dtype=np.float32)
    if arr.shape == tuple(hw):
        return arr.copy()
    resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR}[mode]
    out = Image.fromarray(arr, mode="F").resize((int(hw[1]), int(hw[0])), resample)
    return np.asarray(out, dtype=np.float32)


def resize_image(image: ImageLike, hw: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Resize an RGB image to ``hw`` (height, width); ``mode`` 'nearest' or 'bilinear'."""
    arr = as_array(image)
    if arr.shape[:2] == tuple(hw):
        return arr
    resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR}[mode]
    return np.asarray(Image.fromarray(arr).resize((int(hw[1]), int(hw[0])), resample))


def overlay(image: ImageLike, mask: np.ndarray, color: Color, alpha: float = MASK_ALPHA, mode: str = "nearest") -> np.ndarray:
    """Blend ``color`` over ``image`` with opacity ``alpha * mask`` (mask in [0, 1], any size).

    A mask of another size (e.g. a 24x8 cache mask) is resized to the image with ``mode``.
    Pixels where the mask is 0 are returned unchanged.
    """
    img = as_array(image)
    m = resize_map(mask, img.shape[:2], mode)
    w = np.clip(m, 0.0, 1.0)[..., None] * float(alpha)
    out = img.astype(np.float32) * (1.0 - w) + np.asarray(color, dtype=np.float32) * w
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _shift_and(m: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion of ``m`` by a (2*steps+1) cross, with the image edge counted as inside."""
    out = m.copy()
    for _ in range(steps):
        e = out.copy()
        e[1:] &= out[:-1]
        e[:-1] &= out[1:]
        e[:, 1:] &= out[:, :-1]
        e[:, :-1] &= out[:, 1:]
        out = e
    return out


def outline(image: ImageLike, mask: np.ndarray, color: Color, width: int = 2, threshold: float = 0.5,
            mode: str = "nearest", halo: Color | None = (0, 0, 0)) -> np.ndarray:
    """Draw the contour of ``mask >= threshold`` (any size, resized with ``mode``) over ``image``.

    The contour is ``width`` pixels inside the region in ``color``, with a 1-pixel ``halo``
    just outside it, so it stays visible on clothing or background of the mask's own colour
    (a tint alone vanishes there). Returns a new array.
    """
    img = as_array(image)
    inside = resize_map(mask, img.shape[:2], mode) >= threshold
    edge = inside & ~_shift_and(inside, max(1, int(width)))
    if halo is not None:
        touching = ~inside & ~_shift_and(~inside, 1)  # pixels outside the region next to it
        img[touching] = np.asarray(halo, dtype=np.uint8)
    img[edge] = np.asarray(color, dtype=np.uint8)
    return img


def overlay_labels(image: ImageLike, labels: np.ndarray, colors: Sequence[Color | None] = REGION_COLORS, alpha: float = REGION_ALPHA) -> np.ndarray:
    """Blend ``colors[label]`` over each pixel (labels resized with nearest; ``None`` colours skipped)."""
    img = as_array(image)
    lab = resize_map(labels, img.shape[:2], "nearest").astype(np.int64)
    for code, color in enumerate(colors):
        if color is not None:
            img = overlay(img, (lab == code).astype(np.float32), color, alpha)
    return img


def draw_keypoints(image: ImageLike, kps: np.ndarray, scale: tuple[float, float] = (1.0, 1.0), radius: int = 2,
                   min_score: float = 0.0, skeleton: Sequence[tuple[int, int]] = COCO_SKELETON) -> np.ndarray:
    """Draw keypoints ``(K, 3)`` (x, y, score; pixel coordinates) as dots joined by ``skeleton``.

    Keypoints with score <= ``min_score`` are absent. ``scale`` = (sx, sy) maps the
    keypoints' pixel coordinates onto ``image`` (e.g. image width / original width).
    """
    img = Image.fromarray(as_array(image))
    draw = ImageDraw.Draw(img)
    pts = np.asarray(kps, dtype=np.float64).reshape(-1, 3)
    xy = pts[:, :2] * np.asarray(scale, dtype=np.float64)
    present = pts[:, 2] > min_score
    width = max(1, radius // 2)
    for a, b in skeleton:
        if a < len(pts) and b < len(pts) and present[a] and present[b]:
            draw.line([tuple(xy[a]), tuple(xy[b])], fill=limb_color(a, b), width=width)
    for k in np.flatnonzero(present):
        x, y = xy[k]
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=keypoint_color(int(k)), outline=(0, 0, 0))
    return np.asarray(img)


_FONTS: dict[int, ImageFont.ImageFont | ImageFont.FreeTypeFont] = {}


def font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled anti-aliased font at ``size`` pixels (its small bitmap font before Pillow 10.1)."""
    if size not in _FONTS:
        try:
            _FONTS[size] = ImageFont.load_default(size=size)
        except (TypeError, ImportError, OSError):  # old Pillow or no FreeType
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return font()


def text_width(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None) -> float:
    """Width in pixels of ``text`` in the caption font."""
    font = font or _font()
    if hasattr(font, "getlength"):
        return float(font.getlength(text))
    return float(font.getsize(text)[0])  # Pillow < 9.2


def _text_offset(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, height: int) -> float:
    """y at which to draw a line of text to centre it vertically in ``height`` pixels."""
    if hasattr(font, "getbbox"):
        top, bottom = font.getbbox("Ag")[1], font.getbbox("Ag")[3]
    else:
        top, bottom = 0, font.getsize("Ag")[1]  # Pillow < 9.2
    return (height - (bottom + top)) / 2


def fit_text(text: str, width: int, font: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None) -> str:
    """``text`` shortened with '...' so that it fits in ``width`` pixels."""
    font = font or _font()
    if text_width(text, font) <= width:
        return text
    while text and text_width(text + "...", font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def caption(tile: ImageLike, text: str, color: Color = TEXT_COLOR, height: int = CAPTION_HEIGHT, background: Color = CAPTION_BG,
            tail: tuple[str, Color] | None = None) -> np.ndarray:
    """``tile`` with a ``height``-pixel strip below it holding ``text`` in ``color`` (shortened to fit),
    then ``tail`` = (text, colour) right after it, e.g. a status word in red."""
    img = as_array(tile)
    strip = Image.new("RGB", (img.shape[1], height), background)
    font = _font()
    tail_w = text_width(tail[0], font) if tail else 0.0
    text = fit_text(text, int(img.shape[1] - 4 - tail_w), font)
    draw = ImageDraw.Draw(strip)
    y = _text_offset(font, height)
    draw.text((2, y), text, fill=color, font=font)
    if tail:
        draw.text((2 + text_width(text, font), y), tail[0], fill=tail[1], font=font)
    return np.concatenate([img, np.asarray(strip)], axis=0)


def border(tile: ImageLike, color: Color, width: int = 3) -> np.ndarray:
    """``tile`` framed by a ``width``-pixel ``color`` border (the result is larger by 2*width)."""
    img = as_array(tile)
    h, w = img.shape[:2]
    out = np.empty((h + 2 * width, w + 2 * width, 3), dtype=np.uint8)
    out[:] = np.asarray(color, dtype=np.uint8)
    out[width:width + h, width:width + w] = img
    return out


def hstack(panels: Sequence[ImageLike], gap: int = 2, background: Color = SHEET_BG) -> np.ndarray:
    """Panels side by side (top-aligned), separated by ``gap`` pixels of ``background``."""
    arrs = [as_array(p) for p in panels]
    h = max(a.shape[0] for a in arrs)
    w = sum(a.shape[1] for a in arrs) + gap * (len(arrs) - 1)
    out = np.empty((h, w, 3), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)
    x = 0
    for a in arrs:
        out[:a.shape[0], x:x + a.shape[1]] = a
        x += a.shape[1] + gap
    return out


def grid_origin(index: int, cols: int, tile_hw: tuple[int, int], gap: int) -> tuple[int, int]:
    """(y, x) of tile ``index``'s top-left corner in a :func:`tile_grid` sheet."""
    r, c = divmod(index, cols)
    return gap + r * (tile_hw[0] + gap), gap + c * (tile_hw[1] + gap)


def tile_grid(tiles: Sequence[ImageLike], cols: int, gap: int = 4, background: Color = SHEET_BG) -> Image.Image:
    """Tiles in rows of ``cols``, row-major, with ``gap`` pixels between and around them.

    Every cell has the size of the largest tile (smaller tiles are top-left aligned), so
    the sheet is ``cols * tw + (cols + 1) * gap`` wide and ``rows * th + (rows + 1) * gap`` tall.
    """
    arrs = [as_array(t) for t in tiles]
    if not arrs:
        raise ValueError("tile_grid needs at least one tile")
    cols = max(1, min(int(cols), len(arrs)))
    rows = -(-len(arrs) // cols)
    th = max(a.shape[0] for a in arrs)
    tw = max(a.shape[1] for a in arrs)
    out = np.empty((rows * th + (rows + 1) * gap, cols * tw + (cols + 1) * gap, 3), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)
    for i, a in enumerate(arrs):
        y, x = grid_origin(i, cols, (th, tw), gap)
        out[y:y + a.shape[0], x:x + a.shape[1]] = a
    return Image.fromarray(out)


def legend(items: Sequence[tuple[str, Color]], width: int, height: int = CAPTION_HEIGHT + 4, background: Color = CAPTION_BG) -> np.ndarray:
    """A strip of colour swatches with their names, left to right, clipped to ``width``."""
    strip = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(strip)
    font = _font()
    ty = _text_offset(font, height)
    x = 4
    sw = max(4, height - 8)
    for name, color in items:
        draw.rectangle([x, (height - sw) // 2, x + sw - 1, (height - sw) // 2 + sw - 1], fill=color)
        x += sw + 3
        draw.text((x, ty), name, fill=TEXT_COLOR, font=font)
        x += int(text_width(name, font)) + 10
    return np.asarray(strip)


def colour_bar(width: int, height: int, color: Color, lo: float, hi: float, alpha: float = MASK_ALPHA,
               base: Color = (96, 96, 96), background: Color = CAPTION_BG) -> np.ndarray:
    """A ``height``-pixel strip: the ``lo`` label, a ramp of ``color`` blended over ``base`` from 0 to
    ``alpha`` (how a min-max stretched map is drawn), the ``hi`` label: the scale of an overlaid map."""
    strip = Image.new("RGB", (int(width), int(height)), background)
    draw = ImageDraw.Draw(strip)
    f = _font()
    left, right = f"{lo:.2f}", f"{hi:.2f}"
    x0 = int(text_width(left, f)) + 6
    x1 = int(width) - int(text_width(right, f)) - 6
    if x1 - x0 >= 16:
        y = _text_offset(f, int(height))
        draw.text((2, y), left, fill=TEXT_COLOR, font=f)
        draw.text((x1 + 4, y), right, fill=TEXT_COLOR, font=f)
    else:  # too narrow for the labels: the ramp alone
        x0, x1 = 2, int(width) - 2
    out = np.asarray(strip).copy()
    if x1 > x0:
        t = np.linspace(0.0, 1.0, x1 - x0)[:, None] * float(alpha)
        ramp = np.asarray(base, np.float64) * (1 - t) + np.asarray(color, np.float64) * t
        out[3:int(height) - 3, x0:x1] = np.round(ramp).astype(np.uint8)[None]
    return out


def save_png(image: ImageLike, path: str | Path) -> Path:
    """Write ``image`` as a PNG atomically (a temporary file renamed over ``path``)."""
    path = Path(path)
    img = image if isinstance(image, Image.Image) else Image.fromarray(as_array(image))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path
