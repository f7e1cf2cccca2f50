"""Data side of reid-train: datasets joined to mask caches, paired transforms, P x K samplers."""
from __future__ import annotations

from .dataset import ReIDImageDataset, load_split_masks
from .sampler import DistributedIdentitySampler, IdentitySampler
from .transforms import IMAGENET_MEAN, IMAGENET_STD, PairedTransform, build_transforms, normalize_images

__all__ = [
    "ReIDImageDataset",
    "load_split_masks",
    "IdentitySampler",
    "DistributedIdentitySampler",
    "PairedTransform",
    "build_transforms",
    "normalize_images",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]
