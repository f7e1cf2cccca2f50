"""Paired image + mask transforms for training and evaluation.

The mask-guided attention loss compares each attention map with the body masks *at the
same spatial positions*, so every geometric transform of the image (resize, flip,
pad + crop) must move the masks identically. Photometric transforms (random erasing,
normalisation) touch the image only: erasing occludes pixels, it does not move the body.

Where the work happens (the DataLoader workers are the bottleneck of a training step):

* the workers decode, resize the **uint8** image (bilinear, antialiased) and flip / pad +
  crop it, still uint8, and draw the random-erasing rectangle; items and batches carry
  uint8 images (a quarter of float32's bytes to collate, pin and copy) and the rectangle;
* :func:`normalize_images` -- the one normalisation of every path (training on the device,
  evaluation, ``extract``, ``visualize``, the Python API) -- scales to [0, 1], subtracts the
  mean, divides by the std and zeroes the erased rectangle (the mean colour), as fast-reid
  normalises on the device.

Resizing the uint8 image rounds it to whole grey levels; the float pipeline (scale, then
resize) differs from it by at most one grey level per pixel (tests/test_data.py bounds
it; at ImageNet std that is < 0.018 after normalisation, below JPEG's own quantisation
error, and the same rounding applies in training and at test time).

Masks: the 24x8 soft masks of the cache (whole, upper, bottom; each cell the area fraction
of body in it) are moved on their own grid when the image size is a multiple of it (384x128
for 24x8): a flip is the grid's flip and a shift of ``d`` image pixels (pad + crop) is a
shift of ``d / s`` cells, the fractional part blending two neighbouring cells -- exactly what
upsampling the cells to the image (``nearest-exact``), moving them and area-pooling back
gives, without the round trip. For other sizes the round trip is done (exact up to a
pixel). Masks already at the image size (MGRAN's 0/1 region masks, any dtype) are flipped
and cropped as they are.

All randomness comes from torch's RNG (the global one, or ``generator`` when given), so a
run is reproducible from torch's seed; DataLoader workers are seeded by torch from it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PairedTransform", "build_transforms", "normalize_images"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _as_chw(image: np.ndarray | Tensor) -> Tensor:
    """A 3xHxW tensor viewing ``image`` (HxWx3 arrays are permuted, not copied; dtype kept)."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
        if not image.flags.writeable:  # decoded arrays are read-only; torch wants writable memory
            image = np.array(image, copy=True)
        return torch.from_numpy(image).permute(2, 0, 1)
    return image


def normalize_images(images: Tensor, mean: Sequence[float], std: Sequence[float], erase: Tensor | None = None) -> Tensor:
    """``(x / 255 - mean) / std`` of uint8 images (float images in [0, 1] skip the ``/ 255``),
    then each image's random-erasing rectangle set to 0, the mean colour.

    ``images``: (N, 3, H, W) or (3, H, W), on any device. ``erase``: (N, 4) int
    ``[top, left, height, width]`` per image (height 0: not erased), as items carry it.
    The one normalisation of the training step, evaluation, extract and visualize.
    """
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    x = x.sub_(mean_t).div_(std_t)
    if erase is not None:
        box = erase.to(x.device).view(-1, 4, 1, 1)
        h, w = x.shape[-2:]
        rows = torch.arange(h, device=x.device).view(1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, w)
        inside = (rows >= box[:, 0]) & (rows < box[:, 0] + box[:, 2]) & (cols >= box[:, 1]) & (cols < box[:, 1] + box[:, 3])
        x = x.masked_fill_(inside.view(x.shape[:-3] + (1, h, w)), 0.0)
    return x


def _shift_cells(m: Tensor, shift: int, scale: int, dim: int) -> Tensor:
    """Move ``m`` by ``shift`` pixels of an image ``scale`` times finer along ``dim``, zero fill:
    the area-pooled result of shifting the ``nearest-exact`` upsampled grid."""
    if shift == 0:
        return m
    q, r = divmod(shift, scale)
    n = m.shape[dim]

    def moved(k: int) -> Tensor:  # whole cells: out[i] = m[i - k], zero outside
        out = torch.zeros_like(m)
        if abs(k) < n:
            src = m.narrow(dim, max(0, -k), n - abs(k))
            out.narrow(dim, max(0, k), n - abs(k)).copy_(src)
        return out

    if r == 0:
        return moved(q)
    return moved(q) * ((scale - r) / scale) + moved(q + 1) * (r / scale)


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator))


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """An integer in [low, high] (inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


@dataclass
class PairedTransform:
    """Resize -> [flip] -> [pad + random crop] -> normalise -> [random erasing], masks alongside.

    Args:
        size: output (height, width) of the image, e.g. (384, 128).
        train: False gives the evaluation pipeline (resize + normalise only).
        flip_prob: probability of a horizontal flip (whole/upper/bottom masks are plain
            flipped: none of them is left/right specific).
        pad: zero padding (pixels, each side) before a random crop back to ``size``;
            0 disables pad + crop.
        erasing_prob: probability of random erasing (Zhong et al. 2017) on the image only;
            the erased rectangle is filled with the mean colour (0 after normalisation).
        erasing_area: (min, max) fraction of the image area erased.
        erasing_ratio: min aspect ratio r of the erased rectangle (max is 1/r).
        mean, std: per-channel normalisation.
    """

    size: tuple[int, int] = (384, 128)
    train: bool = True
    flip_prob: float = 0.5
    pad: int = 0
    erasing_prob: float = 0.5
    erasing_area: tuple[float, float] = (0.02, 0.4)
    erasing_ratio: float = 0.3
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD

    def __call__(
        self,
        image: np.ndarray | Tensor,
        masks: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Transform an HxWx3 image (uint8 array or 3xHxW tensor) and optional (C, h, w) masks.

        Returns the normalised 3 x size float image and the masks at their input size (or None):
        :meth:`geometric` followed by :meth:`normalize`, what a training or evaluation batch gets.
        """
        img, m, erase = self.geometric(image, masks, generator)
        return self.normalize(img[None], None if erase is None else erase[None])[0].contiguous(), m

    def geometric(
        self,
        image: np.ndarray | Tensor,
        masks: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The worker's part: resize, [flip], [pad + crop] of the image (uint8 stays uint8) and
        the masks, and the random-erasing draw.

        Returns (3 x size image, masks or None, ``[top, left, height, width]`` int32 of the
        rectangle to erase -- height 0 when not erased -- or None for a transform that never
        erases). The random draws are those of the whole transform, in the same order.
        """
        img = _as_chw(image)
        h, w = self.size
        if tuple(img.shape[-2:]) != (h, w) or img.dtype != torch.uint8:
            src = img[None] if img.dtype == torch.uint8 else img[None].float()
            img = F.interpolate(src, size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        m, cell, source_hw = masks, None, None
        if m is not None and tuple(m.shape[-2:]) != (h, w):
            mh, mw = m.shape[-2:]
            if h % mh == 0 and w % mw == 0:
                cell = (h // mh, w // mw)  # image pixels per mask cell: moved on the mask grid
            else:  # round trip through the image size, pooled back to ``source_hw`` at the end
                source_hw = (mh, mw)
                m = F.interpolate(m.float()[None], size=(h, w), mode="nearest-exact")[0]
        if self.train:
            if self.flip_prob > 0 and _rand(generator) < self.flip_prob:
                img = img.flip(-1)
                m = m.flip(-1) if m is not None else None
            if self.pad > 0:
                img, m = self._pad_crop(img, m, cell, generator)
        erase = None
        if self.train and self.erasing_prob > 0:
            erase = self._erase_box(h, w, generator) if _rand(generator) < self.erasing_prob else torch.zeros(4, dtype=torch.int32)
        if source_hw is not None:
            m = F.interpolate(m[None], size=source_hw, mode="area")[0].clamp_(0.0, 1.0)
        return img.contiguous(), m, erase

    def normalize(self, images: Tensor, erase: Tensor | None = None) -> Tensor:
        """:func:`normalize_images` with this transform's mean and std."""
        return normalize_images(images, self.mean, self.std, erase)

    def _pad_crop(self, img: Tensor, m: Tensor | None, cell: tuple[int, int] | None,
                  generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
        """Zero-pad ``pad`` pixels on each side, then crop a random window of the original size.

        ``cell``: (rows, cols) image pixels per mask cell when ``m`` is on its own coarser grid.
        """
        h, w = img.shape[-2:]
        p = self.pad
        top, left = _randint(0, 2 * p, generator), _randint(0, 2 * p, generator)
        img = F.pad(img, (p, p, p, p))[:, top : top + h, left : left + w]
        if m is not None and cell is not None:  # the same shift, on the mask grid
            m = _shift_cells(_shift_cells(m.float(), p - top, cell[0], -2), p - left, cell[1], -1).clamp(0.0, 1.0)
        elif m is not None:
            m = F.pad(m, (p, p, p, p))[:, top : top + h, left : left + w]
        return img, m

    def _erase_box(self, h: int, w: int, generator: torch.Generator | None) -> Tensor:
        """Random erasing's rectangle: up to 10 tries to place one of random area/aspect inside the image."""
        area = h * w
        lo, hi = self.erasing_area
        log_r = (math.log(self.erasing_ratio), math.log(1.0 / self.erasing_ratio))
        for _ in range(10):
            target = area * (lo + (hi - lo) * _rand(generator))
            aspect = math.exp(log_r[0] + (log_r[1] - log_r[0]) * _rand(generator))
            eh = int(round(math.sqrt(target * aspect)))
            ew = int(round(math.sqrt(target / aspect)))
            if 0 < eh < h and 0 < ew < w:
                top = _randint(0, h - eh, generator)
                left = _randint(0, w - ew, generator)
                return torch.tensor([top, left, eh, ew], dtype=torch.int32)
        return torch.zeros(4, dtype=torch.int32)


def build_transforms(
    size: tuple[int, int],
    flip_prob: float = 0.5,
    pad: int = 0,
    erasing_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[PairedTransform, PairedTransform]:
    """(train, test) transforms sharing size and normalisation."""
    train = PairedTransform(size=tuple(size), train=True, flip_prob=flip_prob, pad=pad, erasing_prob=erasing_prob, mean=tuple(mean), std=tuple(std))
    test = PairedTransform(size=tuple(size), train=False, mean=tuple(mean), std=tuple(std))
    return train, test
