"""detectron2.data.transforms: ResizeShortestEdge and the transforms it returns."""
from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
from PIL import Image

__all__ = ["ResizeShortestEdge", "ResizeTransform", "NoOpTransform"]


class NoOpTransform:
    def apply_image(self, img: np.ndarray) -> np.ndarray:
        return img


class ResizeTransform:
    """Resize from (h, w) to (new_h, new_w); uint8 images go through PIL, as in detectron2."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int, interp: int = Image.BILINEAR) -> None:
        self.h, self.w, self.new_h, self.new_w, self.interp = h, w, new_h, new_w, interp

    def apply_image(self, img: np.ndarray, interp: int | None = None) -> np.ndarray:
        assert img.shape[:2] == (self.h, self.w)
        assert len(img.shape) <= 4
        method = interp if interp is not None else self.interp
        if img.dtype != np.uint8:
            raise NotImplementedError("the fake only resizes uint8 images (detectron2 uses torch interpolate for floats)")
        pil = Image.fromarray(img[:, :, 0], mode="L") if img.ndim > 2 and img.shape[2] == 1 else Image.fromarray(img)
        return np.asarray(pil.resize((self.new_w, self.new_h), method))


class ResizeShortestEdge:
    """Scale the short side to a size drawn from ``short_edge_length``, capping the long side at ``max_size``."""

    def __init__(self, short_edge_length: int | Sequence[int], max_size: int = sys.maxsize, sample_style: str = "range", interp: int = Image.BILINEAR) -> None:
        assert sample_style in ("range", "choice"), sample_style
        self.is_range = sample_style == "range"
        if isinstance(short_edge_length, int):
            short_edge_length = (short_edge_length, short_edge_length)
        if self.is_range:
            assert len(short_edge_length) == 2, short_edge_length
        self.short_edge_length, self.max_size, self.interp = tuple(short_edge_length), max_size, interp

    def get_transform(self, image: np.ndarray) -> ResizeTransform | NoOpTransform:
        h, w = image.shape[:2]
        if self.is_range:
            size = np.random.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        else:
            size = np.random.choice(self.short_edge_length)
        if size == 0:
            return NoOpTransform()
        newh, neww = ResizeShortestEdge.get_output_shape(h, w, int(size), self.max_size)
        return ResizeTransform(h, w, newh, neww, self.interp)

    @staticmethod
    def get_output_shape(oldh: int, oldw: int, short_edge_length: int, max_size: int) -> tuple[int, int]:
        h, w = oldh, oldw
        size = short_edge_length * 1.0
        scale = size / min(h, w)
        if h < w:
            newh, neww = size, scale * w
        else:
            newh, neww = scale * h, size
        if max(newh, neww) > max_size:
            scale = max_size * 1.0 / max(newh, neww)
            newh, neww = newh * scale, neww * scale
        return int(newh + 0.5), int(neww + 0.5)
