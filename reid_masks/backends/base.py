"""The interface every person segmentation / keypoint backend implements."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from reid_masks.errors import UserError


@dataclass
class Instances:
    """Person instances found in one image, in that image's pixel coordinates.

    ``masks`` are soft probabilities in [0, 1] at image resolution (backends that
    return hard masks give 0/1 floats); ``keypoints`` are the 17 COCO keypoints as
    (x, y, score), with score 0 for a keypoint the backend does not provide.
    """

    boxes: np.ndarray  # (n, 4) float32, x0 y0 x1 y1
    scores: np.ndarray  # (n,) float32
    masks: np.ndarray | None  # (n, H, W) float32, or None without a mask model
    keypoints: np.ndarray | None  # (n, 17, 3) float32, or None without a keypoint model

    def __len__(self) -> int:
        return len(self.scores)

    @staticmethod
    def empty(height: int, width: int, with_masks: bool = True, with_keypoints: bool = True) -> "Instances":
        return Instances(
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.float32),
            np.zeros((0, height, width), np.float32) if with_masks else None,
            np.zeros((0, 17, 3), np.float32) if with_keypoints else None,
        )


class Backend(Protocol):
    """Batched person instance segmentation + keypoints."""

    name: str

    def provenance(self) -> dict[str, Any]:
        """What produced the results: model names, weight files and their hashes, thresholds, input size."""

    def predict(self, images: list[np.ndarray]) -> list[Instances]:
        """Instances for each RGB uint8 HxWx3 image of a batch (sizes may differ)."""


def parse_device(device: str, who: str) -> torch.device:
    """``device`` as a torch.device; an unknown name or CUDA without a GPU is a one-line UserError."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"{who}: unknown device {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{who}: device {device!r} requested but CUDA is not available (torch {torch.__version__})")
    return dev
