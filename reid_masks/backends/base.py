"""The interface every person segmentation / keypoint backend implements."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Protocol, Sequence

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


#: The instance rule both detector backends follow (README, "How masks are derived").
PERSON_RULE = "person class only: score threshold, NMS, then the top detections_per_img by score"
DEFAULT_DETECTIONS_PER_IMG = 100  # torchvision's box_detections_per_img and detectron2's TEST.DETECTIONS_PER_IMAGE


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


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of xyxy boxes; 0 where a union is empty."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_instances(mask_boxes: np.ndarray, keypoint_boxes: np.ndarray, min_iou: float = 0.5) -> np.ndarray:
    """For each mask-model instance, the index of its keypoint-model instance, or -1.

    Greedy one-to-one matching on box IoU: repeatedly pair the two unmatched instances
    with the highest IoU, stopping below ``min_iou``; ties go to the earlier (higher
    scoring, as both lists are score-sorted) instance. With the 1-3 people of a re-ID
    crop this equals the optimal (Hungarian) assignment in practice and needs no scipy.
    """
    n = len(np.asarray(mask_boxes).reshape(-1, 4))
    out = np.full(n, -1, dtype=np.int64)
    iou = box_iou_np(mask_boxes, keypoint_boxes)
    if iou.size == 0:
        return out
    iou = iou.copy()
    while True:
        flat = int(np.argmax(iou))
        i, j = divmod(flat, iou.shape[1])
        if not iou[i, j] >= min_iou or iou[i, j] <= 0:
            break
        out[i] = j
        iou[i, :] = -1.0
        iou[:, j] = -1.0
    return out


def attach_keypoints(boxes: np.ndarray, kp_boxes: np.ndarray, kp_keypoints: np.ndarray, min_iou: float = 0.5) -> np.ndarray:
    """(n, 17, 3) keypoints for the mask model's ``boxes`` from the keypoint model's matched instances (zeros if unmatched)."""
    keypoints = np.zeros((len(np.asarray(boxes).reshape(-1, 4)), 17, 3), np.float32)
    match = match_instances(boxes, kp_boxes, min_iou)
    hit = match >= 0
    keypoints[hit] = np.asarray(kp_keypoints, np.float32)[match[hit]]
    return keypoints


def padded_size(height: int, width: int, divisor: int) -> tuple[int, int]:
    """``(height, width)`` rounded up to multiples of ``divisor`` (how detectors pad a batch); unchanged if ``divisor <= 0``."""
    if divisor <= 0:
        return int(height), int(width)
    return -(-int(height) // divisor) * divisor, -(-int(width) // divisor) * divisor


def forward_by_size(model: Callable[[list], list], inputs: list, keys: Sequence[Hashable]) -> list:
    """``model`` called once per group of ``inputs`` with equal ``keys`` (padded input sizes), results in input order.

    Detection models pad a batch to its largest image. Grouped by the size each image is
    padded to on its own, a batch never pads an image further: it costs no more than a
    one-image loop, and each image gets exactly the result it gets alone, whatever its
    batch-mates (re-ID crops mostly share one size, so most batches stay one forward).
    """
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    out: list = [None] * len(inputs)
    for idx in groups.values():
        for i, result in zip(idx, model([inputs[i] for i in idx])):
            out[i] = result
    return out
