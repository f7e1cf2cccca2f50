"""bpbreid's part labels from cached keypoints: 36 PifPaf-style confidence fields per image.

bpbreid (VlSomers/bpbreid) trains on PifPaf's keypoint (17) and association (19) confidence
fields, filtered by the target's Mask R-CNN mask, one ``float32`` array ``36 x H' x W'`` per
image at PifPaf's output stride 8. Its grouping transforms (``eight``, ``five_v``, ...) take
the max over channels named in ``PIFPAF_KEYPOINTS + PIFPAF_JOINTS`` order. Here the fields are
rendered from the cache's keypoints instead of a PifPaf network: a Gaussian around each
keypoint, a Gaussian band along each joint's segment, each weighted by the keypoint scores,
then set to 0 in every cell the cache's person mask does not touch. README: "Exporting the
masks".
"""
from __future__ import annotations

import math

import numpy as np

from reid_masks.derive import KEYPOINT_MIN_SCORE

#: PifPaf's (and COCO's) 17 keypoints, bpbreid's ``PIFPAF_KEYPOINTS`` order (= COCO order).
PIFPAF_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
#: The 19 association fields, bpbreid's ``PIFPAF_JOINTS`` order ("a_to_b": a segment between keypoints a and b).
PIFPAF_JOINTS = (
    "left_ankle_to_left_knee", "left_knee_to_left_hip", "right_ankle_to_right_knee", "right_knee_to_right_hip",
    "left_hip_to_right_hip", "left_shoulder_to_left_hip", "right_shoulder_to_right_hip", "left_shoulder_to_right_shoulder",
    "left_shoulder_to_left_elbow", "right_shoulder_to_right_elbow", "left_elbow_to_left_wrist", "right_elbow_to_right_wrist",
    "left_eye_to_right_eye", "nose_to_left_eye", "nose_to_right_eye", "left_eye_to_left_ear", "right_eye_to_right_ear",
    "left_ear_to_left_shoulder", "right_ear_to_right_shoulder",
)
PIFPAF_PARTS = PIFPAF_KEYPOINTS + PIFPAF_JOINTS
JOINT_PAIRS = np.asarray([[PIFPAF_KEYPOINTS.index(a), PIFPAF_KEYPOINTS.index(b)] for a, b in (j.split("_to_") for j in PIFPAF_JOINTS)])
STRIDE = 8  # PifPaf's output stride: one field cell per 8x8 input pixels
PAD_MULTIPLE = 16  # PifPaf pads its input to a multiple of 16, plus one (CenterPadTight)
SIGMA_CELLS = 1.0  # Gaussian spread of a keypoint / joint, in field cells (PifPaf's fields are about one cell wide)


def field_size(height: int, width: int) -> tuple[int, int]:
    """PifPaf's field size for an image: ``(H - 1)`` padded up to a multiple of 16, over stride 8, plus one.

    A 128x64 Market-1501 crop gives 17x9, the size of bpbreid's published labels.
    """
    def one(n: int) -> int:
        return math.ceil(max(n - 1, 0) / PAD_MULTIPLE) * (PAD_MULTIPLE // STRIDE) + 1

    return one(height), one(width)


def cell_centres(n_cells: int, size: int) -> np.ndarray:
    """Image coordinates of the cell centres along one axis (the padding split as PifPaf centres it)."""
    pad = ((n_cells - 1) * STRIDE + 1 - size) // 2
    return np.arange(n_cells, dtype=np.float32) * STRIDE - pad


def person_cells(person: np.ndarray, height: int, width: int, fh: int, fw: int) -> np.ndarray:
    """(fh, fw) bool: the cells whose 8x8 footprint holds a person pixel.

    ``person`` is the cache's mask at its person size; footprints are mapped onto it (its
    pixels are the image's, rescaled), and summed with an integral image.
    """
    ph, pw = person.shape
    integral = np.zeros((ph + 1, pw + 1), np.int32)
    integral[1:, 1:] = np.cumsum(np.cumsum(person > 0, axis=0, dtype=np.int32), axis=1)

    def bounds(n: int, size: int, psize: int) -> tuple[np.ndarray, np.ndarray]:
        c = cell_centres(n, size)
        lo = np.clip(np.floor((c - STRIDE / 2) * psize / size), 0, psize).astype(np.int64)
        hi = np.clip(np.ceil((c + STRIDE / 2) * psize / size), 0, psize).astype(np.int64)
        return lo, np.maximum(hi, lo)

    y0, y1 = bounds(fh, height, ph)
    x0, x1 = bounds(fw, width, pw)
    total = integral[y1][:, x1] - integral[y0][:, x1] - integral[y1][:, x0] + integral[y0][:, x0]
    return total > 0


def render_fields(keypoints: np.ndarray, person: np.ndarray, height: int, width: int) -> np.ndarray:
    """(36, H', W') float32 fields of one image (module docstring).

    ``keypoints`` (17, 3) x, y, score in image pixels; a keypoint below the project's keypoint
    threshold (0.3) is absent, as everywhere else in the mask stage. Values lie in [0, 1]:
    a keypoint channel peaks at its keypoint's score, a joint channel along its segment at the
    lower of its two scores.
    """
    fh, fw = field_size(height, width)
    ys = cell_centres(fh, height)[:, None]
    xs = cell_centres(fw, width)[None, :]
    sigma2 = 2.0 * (SIGMA_CELLS * STRIDE) ** 2
    score = np.where(keypoints[:, 2] >= KEYPOINT_MIN_SCORE, keypoints[:, 2], 0.0).astype(np.float32)
    kx, ky = keypoints[:, 0, None, None], keypoints[:, 1, None, None]  # (17, 1, 1)
    keys = score[:, None, None] * np.exp(-((xs - kx) ** 2 + (ys - ky) ** 2) / sigma2)
    a, b = JOINT_PAIRS[:, 0], JOINT_PAIRS[:, 1]
    dx, dy = kx[b] - kx[a], ky[b] - ky[a]
    t = np.clip(((xs - kx[a]) * dx + (ys - ky[a]) * dy) / np.maximum(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
    joints = np.minimum(score[a], score[b])[:, None, None] * np.exp(-((xs - kx[a] - t * dx) ** 2 + (ys - ky[a] - t * dy) ** 2) / sigma2)
    out = np.concatenate([keys, joints]).astype(np.float32)
    out *= person_cells(person, height, width, fh, fw)[None]
    return out
