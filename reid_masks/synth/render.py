"""Deterministic renderer of synthetic pedestrian crops with ground-truth LIP parsing.

Used as test data across the project: re-ID on these crops is learnable because the
clothing (an :class:`Identity`) identifies the person, and the parsing returned with
each crop is exactly the set of visible pixels painted for the main (target) person.

Conventions
-----------
* Images are ``HxWx3`` uint8 RGB, parsings ``HxW`` uint8 with the 20 LIP labels
  (see :data:`LIP_LABELS`).
* "Left"/"right" follow LIP and COCO: the person's *own* left.  For a person facing
  the camera (``info['facing'] == 'front'``) the left arm/leg/shoe (labels 14/16/18)
  and the left COCO keypoints appear on the image's RIGHT side; for a person seen
  from the back (``'back'``) they appear on the image's left side.
* Keypoints are COCO-17 in pixel coordinates (x right, y down, the pixel ``(r, c)``
  covers ``[c, c+1) x [r, r+1)``), visibility 0 (not labelled: outside the crop or,
  for a back view, the nose and eyes), 1 (labelled but hidden by the occluder),
  2 (visible).
* Everything random comes from the ``rng`` passed in (plus fixed per-camera styles
  derived from ``camid``), so the same seed gives byte-identical outputs.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

__all__ = [
    "Identity",
    "sample_identity",
    "camera_background",
    "render_person",
    "colorize_parsing",
    "LIP_LABELS",
    "LIP_PALETTE",
    "RENDERED_LABELS",
    "COCO_KEYPOINTS",
    "OCCLUDER_KINDS",
]

LIP_LABELS: tuple[str, ...] = (
    "background", "hat", "hair", "glove", "sunglasses", "upper-clothes", "dress", "coat",
    "socks", "pants", "jumpsuits", "scarf", "skirt", "face", "left-arm", "right-arm",
    "left-leg", "right-leg", "left-shoe", "right-shoe",
)

#: The colour map JPPNet/SCHP-style LIP visualizations use (index = label).
LIP_PALETTE: np.ndarray = np.array(
    [
        (0, 0, 0), (128, 0, 0), (255, 0, 0), (0, 85, 0), (170, 0, 51),
        (255, 85, 0), (0, 0, 85), (0, 119, 221), (85, 85, 0), (0, 85, 85),
        (85, 51, 0), (52, 86, 128), (0, 128, 0), (0, 0, 255), (51, 170, 221),
        (0, 255, 255), (85, 255, 170), (170, 255, 85), (255, 255, 0), (255, 170, 0),
    ],
    dtype=np.uint8,
)
LIP_PALETTE.setflags(write=False)

#: Labels the renderer can emit (glove 3, socks 8 and jumpsuits 10 are never used).
RENDERED_LABELS: frozenset[int] = frozenset({0, 1, 2, 4, 5, 6, 7, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19})

#: Occluder kinds render_person can draw in front of the main person.
OCCLUDER_KINDS: tuple[str, ...] = ("pole", "bag", "obstacle", "car", "person")
#: Occluders that are plain rectangles.
BOX_OCCLUDERS: tuple[str, ...] = ("pole", "bag", "obstacle")
#: The kinds and rate used unless the caller asks otherwise (kept so existing seeds render the same images).
DEFAULT_OCCLUDERS: tuple[str, ...] = BOX_OCCLUDERS
DEFAULT_OCCLUSION_RATE = 0.3

COCO_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)

# LIP label ids used below.
HAT, HAIR, SUNGLASSES, UPPER, DRESS, COAT, PANTS, SCARF, SKIRT, FACE = 1, 2, 4, 5, 6, 7, 9, 11, 12, 13
L_ARM, R_ARM, L_LEG, R_LEG, L_SHOE, R_SHOE = 14, 15, 16, 17, 18, 19

Color = tuple[int, int, int]

# Named colour pools (RGB).
_CLOTH_COLORS: tuple[Color, ...] = (
    (28, 28, 32), (235, 235, 228), (128, 128, 130), (72, 72, 78), (30, 40, 92),
    (40, 90, 190), (130, 180, 230), (190, 30, 35), (110, 22, 32), (40, 130, 60),
    (100, 110, 50), (230, 200, 40), (230, 120, 30), (230, 140, 170), (110, 50, 140),
    (110, 70, 40), (200, 180, 140), (30, 130, 130),
)
_LOWER_COLORS: tuple[Color, ...] = (
    (28, 28, 32), (40, 55, 100), (60, 90, 150), (72, 72, 78), (128, 128, 130),
    (200, 180, 140), (110, 70, 40), (100, 110, 50), (190, 30, 35), (235, 235, 228),
    (110, 50, 140), (30, 40, 92),
)
_LOWER_WEIGHTS = np.array([4, 4, 3, 2, 2, 2, 1.5, 1, 1, 1, 0.7, 2], dtype=np.float64)
_SKIN_TONES: tuple[Color, ...] = (
    (250, 214, 180), (236, 190, 150), (214, 164, 120), (180, 130, 90), (140, 95, 60), (96, 64, 42),
)
_HAIR_COLORS: tuple[Color, ...] = (
    (20, 16, 14), (50, 34, 22), (90, 60, 35), (190, 150, 90), (150, 150, 150), (140, 60, 30),
)
_HAIR_WEIGHTS = np.array([5, 4, 2, 1.5, 0.8, 0.7], dtype=np.float64)
_SHOE_COLORS: tuple[Color, ...] = (
    (20, 20, 22), (240, 240, 240), (100, 66, 40), (110, 110, 115), (180, 30, 40), (40, 60, 140),
)
_SHOE_WEIGHTS = np.array([5, 3, 2, 1.5, 0.7, 0.8], dtype=np.float64)


@dataclass(frozen=True)
class Identity:
    """Appearance that identifies a person (constant across images and cameras).

    Colours are RGB ``(r, g, b)`` ints.  ``upper_kind`` is ``'tshirt'`` (short
    sleeves, label 5), ``'longsleeve'`` (5), ``'coat'`` (7, long, covers the hips) or
    ``'dress'`` (6, only with ``lower_kind == 'dress'``); ``lower_kind`` is
    ``'pants'`` (9), ``'shorts'`` (9 + bare legs 16/17), ``'skirt'`` (12 + bare legs)
    or ``'dress'`` (6 + bare legs).  ``height_ratio`` is the typical fraction of the
    crop height the person fills, ``build`` a width multiplier (~0.92 slim .. 1.25 broad).
    """

    skin: Color
    hair_color: Color
    hair_style: str  # 'short' | 'long' | 'bald'
    has_hat: bool
    hat_color: Color
    upper_kind: str  # 'tshirt' | 'longsleeve' | 'coat' | 'dress'
    upper_color: Color
    upper_pattern: str  # 'plain' | 'stripes'
    upper_color2: Color  # stripe colour (unused when plain)
    lower_kind: str  # 'pants' | 'shorts' | 'skirt' | 'dress'
    lower_color: Color
    shoe_color: Color
    has_sunglasses: bool
    has_scarf: bool
    scarf_color: Color
    height_ratio: float
    build: float


def _pick(rng: np.random.Generator, pool: tuple[Color, ...], weights: Optional[np.ndarray] = None) -> int:
    p = None if weights is None else weights / weights.sum()
    return int(rng.choice(len(pool), p=p))


def _jit(rng: np.random.Generator, c: Color, amount: float) -> Color:
    v = np.asarray(c, dtype=np.float64) + rng.uniform(-amount, amount, size=3)
    return tuple(int(x) for x in np.clip(np.round(v), 0, 255))  # type: ignore[return-value]


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw a random identity (clothing, hair, accessories, body proportions)."""
    skin = _jit(rng, _SKIN_TONES[_pick(rng, _SKIN_TONES)], 8)
    hair_color = _jit(rng, _HAIR_COLORS[_pick(rng, _HAIR_COLORS, _HAIR_WEIGHTS)], 8)
    hair_style = ("short", "long", "bald")[int(rng.choice(3, p=[0.55, 0.38, 0.07]))]
    has_hat = bool(rng.random() < 0.18)
    hat_color = _jit(rng, _CLOTH_COLORS[_pick(rng, _CLOTH_COLORS)], 12)
    lower_kind = ("pants", "shorts", "skirt", "dress")[int(rng.choice(4, p=[0.55, 0.15, 0.15, 0.15]))]
    ui = _pick(rng, _CLOTH_COLORS)
    upper_color = _jit(rng, _CLOTH_COLORS[ui], 14)
    u2 = (ui + 1 + int(rng.integers(len(_CLOTH_COLORS) - 1))) % len(_CLOTH_COLORS)
    upper_color2 = _jit(rng, _CLOTH_COLORS[u2], 14)
    upper_pattern = "stripes" if rng.random() < 0.25 else "plain"
    if lower_kind == "dress":
        upper_kind = "dress"
        lower_color = upper_color
    else:
        upper_kind = ("tshirt", "longsleeve", "coat")[int(rng.choice(3, p=[0.4, 0.3, 0.3]))]
        lower_color = _jit(rng, _LOWER_COLORS[_pick(rng, _LOWER_COLORS, _LOWER_WEIGHTS)], 12)
    if upper_kind == "coat" and rng.random() < 0.6:
        upper_pattern = "plain"
    shoe_color = _jit(rng, _SHOE_COLORS[_pick(rng, _SHOE_COLORS, _SHOE_WEIGHTS)], 10)
    has_sunglasses = bool(rng.random() < 0.1)
    has_scarf = bool(rng.random() < (0.3 if upper_kind == "coat" else 0.06))
    scarf_color = _jit(rng, _CLOTH_COLORS[_pick(rng, _CLOTH_COLORS)], 12)
    height_ratio = float(rng.uniform(0.76, 0.90))
    build = float(rng.uniform(0.92, 1.25))
    return Identity(
        skin=skin, hair_color=hair_color, hair_style=hair_style, has_hat=has_hat, hat_color=hat_color,
        upper_kind=upper_kind, upper_color=upper_color, upper_pattern=upper_pattern,
        upper_color2=upper_color2, lower_kind=lower_kind, lower_color=lower_color,
        shoe_color=shoe_color, has_sunglasses=has_sunglasses, has_scarf=has_scarf,
        scarf_color=scarf_color, height_ratio=height_ratio, build=build,
    )


# --------------------------------------------------------------------------------------
# Rasterization primitives (each limited to its bounding box for speed)
# --------------------------------------------------------------------------------------


class _Prim:
    """A rasterized shape: a boolean mask and a shading factor over a bbox window."""

    __slots__ = ("y0", "x0", "ys", "xs", "m", "shade")

    def __init__(self, y0: int, x0: int, ys: np.ndarray, xs: np.ndarray, m: np.ndarray, shade: np.ndarray):
        self.y0, self.x0, self.ys, self.xs, self.m, self.shade = y0, x0, ys, xs, m, shade

    def restrict(self, cond: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> "_Prim":
        """Keep only pixels where ``cond(ys[:, None], xs[None, :])`` holds (pixel centres)."""
        self.m = self.m & cond(self.ys[:, None], self.xs[None, :])
        return self


def _window(xa: float, xb: float, ya: float, yb: float, h: int, w: int):
    x0, x1 = max(int(math.floor(xa)), 0), min(int(math.ceil(xb)) + 1, w)
    y0, y1 = max(int(math.floor(ya)), 0), min(int(math.ceil(yb)) + 1, h)
    if x0 >= x1 or y0 >= y1:
        return None
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5
    ys = np.arange(y0, y1, dtype=np.float32) + 0.5
    return y0, x0, ys, xs


def _ellipse(cx: float, cy: float, rx: float, ry: float, h: int, w: int) -> Optional[_Prim]:
    win = _window(cx - rx, cx + rx, cy - ry, cy + ry, h, w)
    if win is None:
        return None
    y0, x0, ys, xs = win
    dx = (xs[None, :] - cx) / rx
    dy = (ys[:, None] - cy) / ry
    r2 = dx * dx + dy * dy
    return _Prim(y0, x0, ys, xs, r2 <= 1.0, 1.0 - 0.28 * dx * dx - 0.06 * dy)


def _capsule(p0: tuple[float, float], p1: tuple[float, float], r0: float, r1: float, h: int, w: int) -> Optional[_Prim]:
    """Tapered capsule from ``p0`` (radius ``r0``) to ``p1`` (radius ``r1``); points are (x, y)."""
    r = max(r0, r1)
    win = _window(min(p0[0], p1[0]) - r, max(p0[0], p1[0]) + r, min(p0[1], p1[1]) - r, max(p0[1], p1[1]) + r, h, w)
    if win is None:
        return None
    y0, x0, ys, xs = win
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    l2 = dx * dx + dy * dy + 1e-9
    px = xs[None, :] - p0[0]
    py = ys[:, None] - p0[1]
    t = np.clip((px * dx + py * dy) / l2, 0.0, 1.0)
    ex = px - t * dx
    ey = py - t * dy
    dist2 = ex * ex + ey * ey
    rad = r0 + (r1 - r0) * t
    u2 = dist2 / (rad * rad)
    return _Prim(y0, x0, ys, xs, u2 <= 1.0, 1.0 - 0.3 * u2)


def _polygon(pts: list[tuple[float, float]], h: int, w: int) -> Optional[_Prim]:
    """Convex polygon given by its (x, y) vertices in order (either orientation)."""
    arr = np.asarray(pts, dtype=np.float64)
    win = _window(arr[:, 0].min(), arr[:, 0].max(), arr[:, 1].min(), arr[:, 1].max(), h, w)
    if win is None:
        return None
    y0, x0, ys, xs = win
    n = len(arr)
    area = 0.0
    for i in range(n):
        a, b = arr[i], arr[(i + 1) % n]
        area += a[0] * b[1] - b[0] * a[1]
    sign = 1.0 if area >= 0 else -1.0
    X = xs[None, :]
    Y = ys[:, None]
    m = np.ones((len(ys), len(xs)), dtype=bool)
    for i in range(n):
        a, b = arr[i], arr[(i + 1) % n]
        m &= ((b[0] - a[0]) * (Y - a[1]) - (b[1] - a[1]) * (X - a[0])) * sign >= 0
    cx = 0.5 * (arr[:, 0].min() + arr[:, 0].max())
    half = max(0.5 * (arr[:, 0].max() - arr[:, 0].min()), 1e-3)
    u = (X - cx) / half
    shade = np.broadcast_to(1.0 - 0.25 * u * u, m.shape)
    return _Prim(y0, x0, ys, xs, m, shade)


class _Layer:
    """A person layer: per-pixel label and colour, painted with the painter's algorithm."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.lab = np.zeros((h, w), dtype=np.uint8)
        self.col = np.zeros((h, w, 3), dtype=np.float32)

    def paint(self, prim: Optional[_Prim], label: int, color: np.ndarray,
              stripes: Optional[tuple[np.ndarray, float, float]] = None) -> None:
        """Paint ``prim`` with ``label``; ``stripes = (color2, period, phase)`` adds horizontal stripes."""
        if prim is None or not prim.m.any():
            return
        hh, ww = prim.m.shape
        sl = (slice(prim.y0, prim.y0 + hh), slice(prim.x0, prim.x0 + ww))
        shade = prim.shade
        rgb = shade[..., None] * color[None, None, :]
        if stripes is not None:
            c2, period, phase = stripes
            band = (np.floor((prim.ys - phase) / period).astype(np.int64) % 2) == 1
            rgb = np.where(band[:, None, None], shade[..., None] * c2[None, None, :], rgb)
        self.lab[sl][prim.m] = label
        self.col[sl][prim.m] = rgb[prim.m]


# --------------------------------------------------------------------------------------
# Person geometry and drawing
# --------------------------------------------------------------------------------------


@dataclass
class _Pose:
    lean: float  # radians, positive leans the top towards +x
    abd: tuple[float, float]  # arm abduction (image-left arm, image-right arm), radians
    swing: tuple[float, float]  # upper-arm foreshortening angles
    fore: tuple[float, float]  # extra forearm angle
    spread: tuple[float, float]  # leg spread angles
    stride: float  # foot y offset (fraction of person height)
    head_dx: float  # head side offset (fraction of person height)


def _sample_pose(rng: np.random.Generator) -> _Pose:
    d = math.pi / 180.0
    return _Pose(
        lean=float(np.clip(rng.normal(0.0, 2.5), -6, 6)) * d,
        abd=(float(rng.uniform(3, 22)) * d, float(rng.uniform(3, 22)) * d),
        swing=(float(rng.uniform(0, 40)) * d, float(rng.uniform(0, 40)) * d),
        fore=(float(rng.uniform(-12, 18)) * d, float(rng.uniform(-12, 18)) * d),
        spread=(float(rng.uniform(0.5, 9)) * d, float(rng.uniform(0.5, 9)) * d),
        stride=float(rng.uniform(-0.035, 0.035)),
        head_dx=float(rng.uniform(-0.012, 0.012)),
    )


def _skeleton(ident: Identity, H: float, cx: float, top: float, pose: _Pose) -> dict[str, tuple[float, float]]:
    """Joint positions (x, y) in image coordinates, keyed with image sides 'a' (x-) and 'b' (x+)."""
    b = ident.build
    J: dict[str, tuple[float, float]] = {}
    y_sh = top + 0.165 * H
    y_hip = top + 0.50 * H
    J["head"] = (cx + pose.head_dx * H, top + 0.066 * H)
    J["neck"] = (cx, y_sh)
    for k, s in ((0, -1.0), (1, 1.0)):
        side = "ab"[k]
        sh = (cx + s * (0.098 * b - 0.018) * H, y_sh + 0.012 * H)
        ua = 0.165 * H * (0.75 + 0.25 * math.cos(pose.swing[k]))
        el = (sh[0] + s * ua * math.sin(pose.abd[k]), sh[1] + ua * math.cos(pose.abd[k]))
        fa_ang = pose.abd[k] + pose.fore[k]
        fa = 0.145 * H * (0.7 + 0.3 * math.cos(pose.swing[k]))
        wr = (el[0] + s * fa * math.sin(fa_ang), el[1] + fa * math.cos(fa_ang))
        hip = (cx + s * 0.048 * b * H, y_hip)
        th = 0.22 * H
        kn = (hip[0] + s * th * math.sin(pose.spread[k]), hip[1] + th * math.cos(pose.spread[k]))
        sl = 0.21 * H
        dy = (1 if k == 0 else -1) * pose.stride * H * 0.5
        an = (kn[0] + s * sl * math.sin(pose.spread[k]) * 1.1, kn[1] + sl * math.cos(pose.spread[k]) + dy)
        J["sh_" + side], J["el_" + side], J["wr_" + side] = sh, el, wr
        J["hip_" + side], J["kn_" + side], J["an_" + side] = hip, kn, an
    # Lean: shear about the feet.
    bottom = top + H
    t = math.tan(pose.lean)
    return {k: (x + (bottom - y) * t, y) for k, (x, y) in J.items()}


def _c(rgb: Color) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32)


def _draw_person(layer: _Layer, ident: Identity, H: float, cx: float, top: float, pose: _Pose,
                 facing: str, rng: np.random.Generator) -> dict[str, tuple[float, float]]:
    """Paint one person into ``layer``; returns the skeleton (image-side keyed joints)."""
    h, w = layer.h, layer.w
    J = _skeleton(ident, H, cx, top, pose)
    b = ident.build
    lean_t = math.tan(pose.lean)

    def sx(x: float, y: float) -> tuple[float, float]:  # apply lean to a free point
        return (x + (top + H - y) * lean_t, y)

    jit = 5.0
    skin = _c(_jit(rng, ident.skin, jit))
    hair = _c(_jit(rng, ident.hair_color, jit))
    upper = _c(_jit(rng, ident.upper_color, jit))
    upper2 = _c(_jit(rng, ident.upper_color2, jit))
    lower = _c(_jit(rng, ident.lower_color, jit))
    shoe = _c(_jit(rng, ident.shoe_color, jit))
    hatc = _c(_jit(rng, ident.hat_color, jit))
    scarfc = _c(_jit(rng, ident.scarf_color, jit))
    stripes = (upper2, max(2.0, 0.035 * H), float(rng.uniform(0, 10))) if ident.upper_pattern == "stripes" else None

    # Person's left is image side 'b' (x+) when facing the camera, 'a' when seen from the back.
    left_side = "b" if facing == "front" else "a"
    arm_label = {left_side: L_ARM, ("a" if left_side == "b" else "b"): R_ARM}
    leg_label = {s: (L_LEG if lab == L_ARM else R_LEG) for s, lab in arm_label.items()}
    shoe_label = {s: (L_SHOE if lab == L_ARM else R_SHOE) for s, lab in arm_label.items()}

    upper_label = {"coat": COAT, "dress": DRESS}.get(ident.upper_kind, UPPER)
    y_waist = top + 0.46 * H

    # --- legs ---
    bare_legs = ident.lower_kind != "pants"
    for s in "ab":
        hip, kn, an = J["hip_" + s], J["kn_" + s], J["an_" + s]
        if bare_legs:
            layer.paint(_capsule(hip, kn, 0.040 * b * H, 0.031 * b * H, h, w), leg_label[s], skin)
            layer.paint(_capsule(kn, an, 0.031 * b * H, 0.022 * b * H, h, w), leg_label[s], skin)
        if ident.lower_kind == "pants":
            layer.paint(_capsule(hip, kn, 0.047 * b * H, 0.038 * b * H, h, w), PANTS, lower)
            layer.paint(_capsule(kn, an, 0.038 * b * H, 0.032 * b * H, h, w), PANTS, lower)
        elif ident.lower_kind == "shorts":
            mid = (hip[0] + 0.55 * (kn[0] - hip[0]), hip[1] + 0.55 * (kn[1] - hip[1]))
            layer.paint(_capsule(hip, mid, 0.05 * b * H, 0.045 * b * H, h, w), PANTS, lower)
    # --- shoes ---
    for s in "ab":
        an = J["an_" + s]
        sgn = -1.0 if s == "a" else 1.0
        ex = an[0] + sgn * 0.006 * H
        layer.paint(_ellipse(ex, an[1] + 0.032 * H, 0.036 * H, 0.026 * H, h, w), shoe_label[s], shoe)
    # --- pelvis / lower garments ---
    hw = 0.088 * b * H
    if ident.lower_kind in ("pants", "shorts"):
        p = [sx(cx - hw, y_waist), sx(cx + hw, y_waist), sx(cx + hw * 0.95, top + 0.56 * H), sx(cx - hw * 0.95, top + 0.56 * H)]
        layer.paint(_polygon(p, h, w), PANTS, lower)
    elif ident.lower_kind in ("skirt", "dress"):
        y_end = top + (0.66 if ident.lower_kind == "skirt" else 0.70) * H
        flare = 0.125 * b * H
        p = [sx(cx - hw, y_waist), sx(cx + hw, y_waist), sx(cx + flare, y_end), sx(cx - flare, y_end)]
        layer.paint(_polygon(p, h, w), SKIRT if ident.lower_kind == "skirt" else DRESS, lower)
    # --- neck ---
    hx, hy = J["head"]
    ry, rx = 0.062 * H, 0.047 * H
    nx, ny = J["neck"][0], J["neck"][1] + 0.01 * H
    neck = [(hx - 0.6 * rx, hy), (hx + 0.6 * rx, hy), (nx + 0.6 * rx, ny), (nx - 0.6 * rx, ny)]
    layer.paint(_polygon(neck, h, w), FACE, skin * 0.92)
    # --- torso ---
    shw = 0.100 * b * H
    wsw = 0.082 * b * H
    y_sh = top + 0.158 * H
    y_mid = top + 0.36 * H
    if ident.upper_kind == "coat":
        y_hem, hem_w = top + 0.63 * H, 0.108 * b * H
    else:
        y_hem, hem_w = top + 0.52 * H, 0.090 * b * H
    q1 = [sx(cx - shw, y_sh), sx(cx + shw, y_sh), sx(cx + wsw, y_mid), sx(cx - wsw, y_mid)]
    q2 = [sx(cx - wsw, y_mid - 0.5), sx(cx + wsw, y_mid - 0.5), sx(cx + hem_w, y_hem), sx(cx - hem_w, y_hem)]
    layer.paint(_polygon(q1, h, w), upper_label, upper, stripes)
    layer.paint(_polygon(q2, h, w), upper_label, upper, stripes)
    # Long hair seen from the back lies over the upper back.
    if ident.hair_style == "long" and facing == "back":
        layer.paint(_ellipse(hx, hy + 0.75 * ry, 1.2 * rx, 1.75 * ry, h, w), HAIR, hair)
    # --- scarf ---
    if ident.has_scarf:
        layer.paint(_capsule(sx(cx - 0.055 * b * H, y_sh + 0.004 * H), sx(cx + 0.055 * b * H, y_sh + 0.004 * H),
                             0.024 * H, 0.024 * H, h, w), SCARF, scarfc)
        tail_x = cx + (0.03 if facing == "front" else -0.03) * b * H
        if facing == "front":
            layer.paint(_capsule(sx(tail_x, y_sh), sx(tail_x + 0.005 * H, top + 0.31 * H), 0.018 * H, 0.016 * H, h, w),
                        SCARF, scarfc)
    # --- arms ---
    sleeve_to = {"tshirt": 0.5, "longsleeve": 1.0, "coat": 1.0, "dress": 0.0}[ident.upper_kind]
    for s in "ab":
        sh, el, wr = J["sh_" + s], J["el_" + s], J["wr_" + s]
        lab = arm_label[s]
        layer.paint(_capsule(sh, el, 0.028 * b * H, 0.024 * b * H, h, w), lab, skin)
        layer.paint(_capsule(el, wr, 0.024 * b * H, 0.019 * b * H, h, w), lab, skin)
        hand = (wr[0] + 0.3 * (wr[0] - el[0]) * 0.2, wr[1] + 0.02 * H)
        layer.paint(_ellipse(hand[0], hand[1], 0.02 * H, 0.026 * H, h, w), lab, skin)
        if sleeve_to > 0:
            r_up = (0.035 if ident.upper_kind == "coat" else 0.031) * b * H
            if sleeve_to < 1.0:
                end = (sh[0] + sleeve_to * (el[0] - sh[0]), sh[1] + sleeve_to * (el[1] - sh[1]))
                layer.paint(_capsule(sh, end, r_up, r_up * 0.95, h, w), upper_label, upper, stripes)
            else:
                layer.paint(_capsule(sh, el, r_up, r_up * 0.9, h, w), upper_label, upper, stripes)
                layer.paint(_capsule(el, wr, r_up * 0.9, r_up * 0.8, h, w), upper_label, upper, stripes)
    # --- long hair strands in front of the shoulders (front view) ---
    if ident.hair_style == "long" and facing == "front":
        strands = _ellipse(hx, hy + 0.55 * ry, 1.32 * rx, 1.7 * ry, h, w)
        if strands is not None:
            strands.restrict(lambda Y, X: np.abs(X - hx) >= 0.55 * rx)
        layer.paint(strands, HAIR, hair)
    # --- head ---
    face = _ellipse(hx, hy, rx, ry, h, w)
    layer.paint(face, FACE, skin)
    if facing == "front":
        dark = skin * 0.35
        for ex in (-0.4, 0.4):
            layer.paint(_ellipse(hx + ex * rx, hy - 0.08 * ry, 0.16 * rx + 0.5, 0.1 * ry + 0.5, h, w), FACE, dark)
        layer.paint(_ellipse(hx, hy + 0.5 * ry, 0.3 * rx + 0.4, 0.07 * ry + 0.4, h, w), FACE, skin * 0.7)
    if ident.hair_style != "bald":
        hair_prim = _ellipse(hx, hy - 0.06 * ry, 1.1 * rx, 1.08 * ry, h, w)
        if hair_prim is not None:
            if facing == "front":
                hair_prim.restrict(lambda Y, X: (Y < hy - 0.42 * ry) | ((np.abs(X - hx) > 0.82 * rx) & (Y < hy + 0.1 * ry)))
            elif ident.hair_style == "short":
                hair_prim.restrict(lambda Y, X: Y < hy + 0.6 * ry)
        layer.paint(hair_prim, HAIR, hair)
    if ident.has_hat:
        cap = _ellipse(hx, hy - 0.4 * ry, 1.14 * rx, 0.78 * ry, h, w)
        if cap is not None:
            cap.restrict(lambda Y, X: Y < hy - 0.32 * ry)
        layer.paint(cap, HAT, hatc)
        layer.paint(_ellipse(hx, hy - 0.36 * ry, 1.3 * rx, 0.14 * ry + 0.6, h, w), HAT, hatc * 0.85)
    if ident.has_sunglasses and facing == "front":
        g = _ellipse(hx, hy, rx * 0.98, ry, h, w)
        if g is not None:
            g.restrict(lambda Y, X: (Y > hy - 0.26 * ry) & (Y < hy + 0.06 * ry))
        layer.paint(g, SUNGLASSES, np.array([22.0, 22.0, 26.0], dtype=np.float32))
    return J


# --------------------------------------------------------------------------------------
# Camera backgrounds
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CamStyle:
    wall: np.ndarray
    floor: np.ndarray
    horizon: float
    structure: str
    period: float
    band: float
    struct_color: np.ndarray
    floor_lines: bool
    clutter: np.ndarray
    n_clutter: tuple[int, int]
    grad: float
    tex: float
    tint: np.ndarray
    light: float


_STRUCTURES = ("pillars", "windows", "shelves", "plain")


@functools.lru_cache(maxsize=512)
def _cam_style(camid: int) -> _CamStyle:
    """Fixed (deterministic) appearance of a camera's scene."""
    r = np.random.default_rng([abs(int(camid)) & 0xFFFFFFFF, 1 if camid < 0 else 0, 0x5EED])
    base = r.uniform(50, 210, size=3)
    wall = np.clip(base + r.uniform(-40, 40, size=3), 20, 240)
    floor = np.clip(base * r.uniform(0.5, 0.9) + r.uniform(-30, 30, size=3), 15, 230)
    return _CamStyle(
        wall=wall.astype(np.float32),
        floor=floor.astype(np.float32),
        horizon=float(r.uniform(0.4, 0.75)),
        structure=_STRUCTURES[int(r.integers(len(_STRUCTURES)))],
        period=float(r.uniform(10, 30)),
        band=float(r.uniform(0.25, 0.6)),
        struct_color=np.clip(wall * r.uniform(0.5, 1.3, size=3), 0, 255).astype(np.float32),
        floor_lines=bool(r.random() < 0.5),
        clutter=r.uniform(20, 235, size=(4, 3)).astype(np.float32),
        n_clutter=(int(r.integers(2, 5)), int(r.integers(5, 10))),
        grad=float(r.uniform(-0.35, 0.35)),
        tex=float(r.uniform(6, 22)),
        tint=r.uniform(0.93, 1.07, size=3).astype(np.float32),
        light=float(r.uniform(0.85, 1.15)),
    )


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Bilinearly upsampled random field in [-1, 1] with feature size ``cell`` pixels."""
    gh, gw = int(h / cell) + 2, int(w / cell) + 2
    g = rng.uniform(-1, 1, size=(gh, gw)).astype(np.float32)
    yy = np.arange(h, dtype=np.float32) / cell
    xx = np.arange(w, dtype=np.float32) / cell
    y0 = yy.astype(np.int64)
    x0 = xx.astype(np.int64)
    fy = (yy - y0)[:, None]
    fx = (xx - x0)[None, :]
    a = g[y0][:, x0]
    bb = g[y0][:, x0 + 1]
    c = g[y0 + 1][:, x0]
    d = g[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + bb * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def camera_background(camid: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A cluttered ``height x width x 3`` uint8 background in camera ``camid``'s style.

    The palette, horizon, architectural structure and lighting are fixed per camera;
    the visible part of the scene, the clutter objects and the noise vary per call.
    """
    return np.clip(np.round(_background_float(camid, height, width, rng)), 0, 255).astype(np.uint8)


def _background_float(camid: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    st = _cam_style(camid)
    ys = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
    xs = (np.arange(w, dtype=np.float32) + 0.5)[None, :]
    hz = (st.horizon + float(rng.normal(0, 0.04))) * h
    wall = st.wall + rng.uniform(-12, 12, size=3).astype(np.float32)
    floor = st.floor + rng.uniform(-12, 12, size=3).astype(np.float32)
    is_wall = np.broadcast_to(ys < hz, (h, w))
    img = np.where(is_wall[..., None], wall, floor).astype(np.float32)
    px, py = float(rng.uniform(0, 100)), float(rng.uniform(0, 100))
    per = st.period * float(rng.uniform(0.9, 1.1))
    sc = st.struct_color + rng.uniform(-10, 10, size=3).astype(np.float32)
    if st.structure == "pillars":
        m = (((xs + px) % per) < st.band * per) & is_wall
    elif st.structure == "windows":
        m = (((xs + px) % per) < 0.6 * per) & (((ys + py) % (per * 1.3)) < 0.55 * per * 1.3) & (ys < hz - 3)
    elif st.structure == "shelves":
        m = (((ys + py) % per) < st.band * per * 0.5) & is_wall
    else:
        m = np.zeros((h, w), dtype=bool)
    img[np.broadcast_to(m, (h, w))] = sc
    if st.floor_lines:
        k = float(rng.uniform(-0.8, 0.8))
        fl = (((xs + (ys - hz) * k + px) % (per * 1.5)) < 1.5) & ~is_wall
        img[fl] *= 0.7
    lo, hi = st.n_clutter
    for _ in range(int(rng.integers(lo, hi + 1))):
        col = st.clutter[int(rng.integers(len(st.clutter)))] * float(rng.uniform(0.75, 1.2))
        cw, ch = float(rng.uniform(0.1, 0.5)) * w, float(rng.uniform(0.05, 0.35)) * h
        x0, y0 = float(rng.uniform(-0.2 * w, w)), float(rng.uniform(-0.1 * h, h))
        if rng.random() < 0.7:
            mm = (xs >= x0) & (xs < x0 + cw) & (ys >= y0) & (ys < y0 + ch)
        else:
            mm = ((xs - x0) / (0.5 * cw)) ** 2 + ((ys - y0) / (0.5 * ch)) ** 2 <= 1.0
        img[mm] = np.clip(col, 0, 255)
    img *= (1.0 + st.grad * (ys / h - 0.5))[..., None]
    img += (st.tex * _smooth_noise(rng, h, w, float(rng.uniform(6, 14))))[..., None]
    img *= st.light
    return img


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def _keypoints(J: dict[str, tuple[float, float]], facing: str, H: float) -> np.ndarray:
    """COCO-17 keypoints (x, y, v=2) from the skeleton; visibility refined by the caller."""
    hx, hy = J["head"]
    rx, ry = 0.047 * H, 0.062 * H
    ls, rs = ("b", "a") if facing == "front" else ("a", "b")
    sgn_l = 1.0 if facing == "front" else -1.0
    pts = [
        (hx, hy + 0.2 * ry),
        (hx + sgn_l * 0.4 * rx, hy - 0.08 * ry), (hx - sgn_l * 0.4 * rx, hy - 0.08 * ry),
        (hx + sgn_l * 0.9 * rx, hy + 0.05 * ry), (hx - sgn_l * 0.9 * rx, hy + 0.05 * ry),
        J["sh_" + ls], J["sh_" + rs], J["el_" + ls], J["el_" + rs], J["wr_" + ls], J["wr_" + rs],
        J["hip_" + ls], J["hip_" + rs], J["kn_" + ls], J["kn_" + rs], J["an_" + ls], J["an_" + rs],
    ]
    kp = np.zeros((17, 3), dtype=np.float32)
    kp[:, :2] = np.asarray(pts, dtype=np.float32)
    kp[:, 2] = 2.0
    if facing == "back":
        kp[0:3, 2] = 0.0
    return kp


def render_person(identity: Identity, camid: int, rng: np.random.Generator, height: int = 128, width: int = 64,
                  second_person: Optional[Identity] = None, occlusion_rate: float = DEFAULT_OCCLUSION_RATE,
                  occluders: tuple[str, ...] = DEFAULT_OCCLUDERS) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render one crop of ``identity`` seen by camera ``camid``.

    Returns ``(image, parsing, info)``: an ``HxWx3`` uint8 RGB image, the ``HxW`` uint8
    LIP parsing of the visible pixels of the main person (occluder and other person are
    0), and ``info`` with ``keypoints`` ((17, 3) float32 COCO, see module doc), ``box``
    ((x0, y0, x1, y1) ints, end-exclusive, of the main person's full silhouette),
    ``occluded`` (bool), ``occluder_box`` (or None), ``other_parsing`` (``HxW`` uint8
    parsing of the visible part of ``second_person``; all 0 when there is none),
    ``facing`` ('front' | 'back'), ``camid``, ``person_height`` (pixels),
    ``occluder_kind`` (one of :data:`OCCLUDER_KINDS`, or None), ``occluder_mask`` (``HxW``
    bool, the occluder's pixels; all False when not occluded) and ``occluder_parsing``
    (``HxW`` uint8 LIP labels of an occluding person, else all 0).

    With probability ``occlusion_rate`` an object of a kind drawn from ``occluders`` is
    painted in front of the main person (only kept when it hides some of it); the parsing
    marks its pixels 0 (not the person) and keypoints under it get visibility 1. A second
    person (``second_person``) stands *behind* the main person; an occluding person
    (kind ``'person'``) stands in front, off-centre as a passer-by in a re-ID crop is.
    """
    h, w = int(height), int(width)
    st = _cam_style(camid)
    bg = _background_float(camid, h, w, rng)

    frac = float(np.clip(identity.height_ratio + rng.normal(0.0, 0.025), 0.70, 0.95))
    H = frac * h
    cx = w * (0.5 + float(rng.uniform(-0.1, 0.1)))
    top = (h - H) * (0.5 + float(rng.uniform(-0.3, 0.3)))
    facing = "front" if rng.random() < 0.65 else "back"
    pose = _sample_pose(rng)

    other = _Layer(h, w)
    if second_person is not None:
        H2 = H * float(rng.uniform(0.6, 0.85))
        side = -1.0 if rng.random() < 0.5 else 1.0
        cx2 = w * (0.5 + side * float(rng.uniform(0.45, 0.62)))
        bottom2 = top + H - float(rng.uniform(0.03, 0.15)) * h
        _draw_person(other, second_person, H2, cx2, bottom2 - H2, _sample_pose(rng),
                     "front" if rng.random() < 0.6 else "back", rng)

    main = _Layer(h, w)
    J = _draw_person(main, identity, H, cx, top, pose, facing, rng)

    img = bg
    mo = other.lab > 0
    img[mo] = other.col[mo]
    mm = main.lab > 0
    img[mm] = main.col[mm]
    parsing = main.lab.copy()
    other_parsing = other.lab.copy()
    other_parsing[mm] = 0

    rows = np.flatnonzero(mm.any(axis=1))
    cols = np.flatnonzero(mm.any(axis=0))
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1) if rows.size else (0, 0, 0, 0)

    kp = _keypoints(J, facing, H)
    outside = (kp[:, 0] < 0) | (kp[:, 0] >= w) | (kp[:, 1] < 0) | (kp[:, 1] >= h)
    kp[outside, 2] = 0.0

    occ_box = None
    occluded = False
    occ_kind: Optional[str] = None
    occ_mask = np.zeros((h, w), dtype=bool)
    occ_parsing = np.zeros((h, w), dtype=np.uint8)
    if rows.size and rng.random() < occlusion_rate:
        kind = occluders[int(rng.integers(len(occluders)))]
        layer = _occluder_layer(kind, rng, box, H, h, w, st)
        covered = int((mm & (layer.lab > 0)).sum())
        if covered > 0:
            occluded, occ_kind = True, kind
            occ_mask = layer.lab > 0
            if kind in BOX_OCCLUDERS:
                _colour_box(layer, rng, st)
            img[occ_mask] = layer.col[occ_mask]
            parsing[occ_mask] = 0
            other_parsing[occ_mask] = 0
            if kind == "person":
                occ_parsing = layer.lab.copy()
            ys, xs = np.nonzero(occ_mask)
            occ_box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            kx, ky = np.floor(kp[:, 0]).astype(np.int64), np.floor(kp[:, 1]).astype(np.int64)
            ok = (kp[:, 2] > 0) & (kx >= 0) & (kx < w) & (ky >= 0) & (ky < h)
            hidden = np.zeros(17, dtype=bool)
            hidden[ok] = occ_mask[ky[ok], kx[ok]]
            kp[hidden, 2] = 1.0

    # Lighting (gain/contrast), camera colour cast, sensor noise.
    gain = float(rng.uniform(0.75, 1.2))
    contrast = float(rng.uniform(0.8, 1.15))
    img = (img - 110.0) * contrast + 110.0
    img *= gain * st.tint[None, None, :]
    img += rng.normal(0.0, float(rng.uniform(1.5, 5.0)), size=img.shape).astype(np.float32)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)

    info = {
        "keypoints": kp,
        "box": box,
        "occluded": occluded,
        "occluder_box": occ_box,
        "other_parsing": other_parsing,
        "facing": facing,
        "camid": int(camid),
        "person_height": float(H),
        "occluder_kind": occ_kind,
        "occluder_mask": occ_mask,
        "occluder_parsing": occ_parsing,
    }
    return image, parsing, info


def _box_occluder(kind: str, rng: np.random.Generator, box: tuple[int, int, int, int], H: float, h: int, w: int) -> tuple[int, int, int, int]:
    """An occluding rectangle (pole, bag or low obstacle) overlapping the person box."""
    bx0, by0, bx1, by1 = box
    bw = bx1 - bx0
    if kind == "pole":
        pw = int(rng.integers(3, 8))
        x0 = int(rng.integers(bx0, max(bx0 + 1, bx1 - pw)))
        return (x0, 0, min(x0 + pw, w), h)
    if kind == "bag":  # held at one side
        ow, oh = int(0.16 * H * rng.uniform(0.8, 1.4)), int(0.15 * H * rng.uniform(0.8, 1.3))
        yc = by0 + int((by1 - by0) * rng.uniform(0.45, 0.6))
        if rng.random() < 0.5:
            x0 = bx0 - ow // 3
        else:
            x0 = bx1 - 2 * ow // 3
        x0 = max(x0, 0)
        return (x0, max(yc - oh // 2, 0), min(x0 + ow, w), min(yc + oh // 2, h))
    # low obstacle (bench / railing) hiding the feet and shins
    oh = int((by1 - by0) * rng.uniform(0.08, 0.3))
    x0 = int(rng.integers(0, max(1, bw // 2)))
    return (x0, max(by1 - oh, 0), w, h)


def _colour_box(layer: _Layer, rng: np.random.Generator, st: _CamStyle) -> None:
    """A box occluder's colour: a clutter colour of the camera, shaded across its width."""
    ys, xs = np.nonzero(layer.lab)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    color = np.clip(st.clutter[int(rng.integers(len(st.clutter)))] * float(rng.uniform(0.6, 1.1)), 0, 255)
    u = (np.arange(x1 - x0, dtype=np.float32) + 0.5 - (x1 - x0) / 2) / max((x1 - x0) / 2, 1.0)
    layer.col[y0:y1, x0:x1] = color[None, None, :] * (1.0 - 0.25 * u * u)[None, :, None]


def _occluder_layer(kind: str, rng: np.random.Generator, box: tuple[int, int, int, int], H: float, h: int, w: int,
                    st: _CamStyle) -> _Layer:
    """The occluder of ``kind`` as a painted layer (label > 0 on its pixels)."""
    layer = _Layer(h, w)
    if kind in BOX_OCCLUDERS:  # coloured by _colour_box once it is known to hide the person
        x0, y0, x1, y1 = _box_occluder(kind, rng, box, H, h, w)
        layer.lab[y0:y1, x0:x1] = 1
        return layer
    if kind == "car":  # a parked car across the lower body: body, roof with windows, wheels
        bx0, by0, bx1, by1 = box
        body_h = (by1 - by0) * float(rng.uniform(0.25, 0.4))
        y_bottom = by1 + float(rng.uniform(0.0, 0.04)) * h
        color = np.asarray(_CLOTH_COLORS[int(rng.integers(len(_CLOTH_COLORS)))], np.float32)
        x_a = float(rng.uniform(-0.5, 0.1)) * w
        x_b = x_a + float(rng.uniform(1.1, 1.6)) * w
        body_top = y_bottom - body_h
        layer.paint(_polygon([(x_a, body_top), (x_b, body_top), (x_b, y_bottom), (x_a, y_bottom)], h, w), 1, color)
        roof_h = body_h * float(rng.uniform(0.35, 0.6))
        inset = 0.2 * (x_b - x_a)
        layer.paint(_polygon([(x_a + inset, body_top - roof_h), (x_b - inset, body_top - roof_h),
                              (x_b - 0.6 * inset, body_top), (x_a + 0.6 * inset, body_top)], h, w), 1, color * 0.9)
        layer.paint(_polygon([(x_a + 1.15 * inset, body_top - 0.8 * roof_h), (x_b - 1.15 * inset, body_top - 0.8 * roof_h),
                              (x_b - 0.9 * inset, body_top - 0.1 * roof_h), (x_a + 0.9 * inset, body_top - 0.1 * roof_h)], h, w),
                    1, np.array([60.0, 75.0, 90.0], np.float32))
        for xw in (x_a + 0.2 * (x_b - x_a), x_b - 0.2 * (x_b - x_a)):
            layer.paint(_ellipse(xw, y_bottom - 0.1 * body_h, 0.22 * body_h, 0.22 * body_h, h, w), 1,
                        np.array([25.0, 25.0, 28.0], np.float32))
        return layer
    if kind == "person":  # a passer-by in front: closer (taller), off-centre, cut by a side border
        side = -1.0 if rng.random() < 0.5 else 1.0
        H3 = H * float(rng.uniform(1.0, 1.15))
        cx3 = w * (0.5 + side * float(rng.uniform(0.42, 0.55)))
        top3 = float(box[3]) + float(rng.uniform(0.0, 0.08)) * h - H3
        _draw_person(layer, sample_identity(rng), H3, cx3, top3, _sample_pose(rng),
                     "front" if rng.random() < 0.5 else "back", rng)
        return layer
    raise ValueError(f"unknown occluder kind {kind!r}; expected one of {OCCLUDER_KINDS}")


def colorize_parsing(parsing: np.ndarray) -> np.ndarray:
    """Map an ``HxW`` LIP parsing to an ``HxWx3`` uint8 image with :data:`LIP_PALETTE`."""
    p = np.asarray(parsing)
    return LIP_PALETTE[np.clip(p, 0, len(LIP_PALETTE) - 1).astype(np.intp)]
