"""Paired image + mask transforms for training and evaluation.

The mask-guided attention loss compares each attention map with the body masks *at the
same spatial positions*, so every geometric transform of the image (resize, flip,
pad + crop) must move the masks identically. Masks come from the cache as 24x8 soft maps
(whole, upper, bottom), each cell the area fraction of body in that cell. Here they are
upsampled to the image size as piecewise-constant cells (``nearest-exact``), transformed
together with the image, and area-downsampled back to their cache size at the end. That
round trip is the identity when nothing moves (bilinear upsampling would blur every
mask by ~12% into its neighbour cells) and turns a shift, flip or crop of the image into
the exact fractional-cell shift of the masks whenever the image size is a multiple of
the mask grid (384x128 for 24x8); for other sizes it is exact up to a pixel. Photometric transforms
(random erasing, normalisation) touch the image only: erasing occludes pixels, it does
not move the body.

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

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "PairedTransform", "build_transforms", "to_tensor_image"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_tensor_image(image: np.ndarray | Tensor) -> Tensor:
    """An HxWx3 uint8 array (as ``read_image`` returns) as a 3xHxW float tensor in [0, 1]."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
        image = torch.from_numpy(np.array(image, copy=True)).permute(2, 0, 1)  # decoded arrays are read-only
    if image.dtype == torch.uint8:
        return image.float().div_(255.0)
    return image.float()


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

        Returns the normalised 3 x size image and the masks at their input size (or None).
        """
        img = to_tensor_image(image)
        h, w = self.size
        img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        mask_hw = None
        m = None
        if masks is not None:
            mask_hw = tuple(masks.shape[-2:])
            m = F.interpolate(masks.float()[None], size=(h, w), mode="nearest-exact")[0]
        if self.train:
            if self.flip_prob > 0 and _rand(generator) < self.flip_prob:
                img = img.flip(-1)
                m = m.flip(-1) if m is not None else None
            if self.pad > 0:
                img, m = self._pad_crop(img, m, generator)
        mean = torch.as_tensor(self.mean, dtype=img.dtype, device=img.device)[:, None, None]
        std = torch.as_tensor(self.std, dtype=img.dtype, device=img.device)[:, None, None]
        img = (img - mean) / std
        if self.train and self.erasing_prob > 0 and _rand(generator) < self.erasing_prob:
            img = self._erase(img, generator)
        if m is not None:
            m = F.interpolate(m[None], size=mask_hw, mode="area")[0].clamp_(0.0, 1.0)
        return img.contiguous(), m

    def _pad_crop(self, img: Tensor, m: Tensor | None, generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
        """Zero-pad ``pad`` pixels on each side, then crop a random window of the original size."""
        h, w = img.shape[-2:]
        p = self.pad
        top, left = _randint(0, 2 * p, generator), _randint(0, 2 * p, generator)
        img = F.pad(img, (p, p, p, p))[:, top : top + h, left : left + w]
        if m is not None:
            m = F.pad(m, (p, p, p, p))[:, top : top + h, left : left + w]
        return img, m

    def _erase(self, img: Tensor, generator: torch.Generator | None) -> Tensor:
        """Random erasing: up to 10 tries to place a rectangle of random area/aspect inside the image."""
        _, h, w = img.shape
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
                img = img.clone()
                img[:, top : top + eh, left : left + ew] = 0.0
                return img
        return img


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
