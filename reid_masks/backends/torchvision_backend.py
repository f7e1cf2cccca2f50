"""The default backend: torchvision Mask R-CNN (person masks) + Keypoint R-CNN (17 COCO keypoints).

Models and weights
------------------
* masks: ``maskrcnn_resnet50_fpn_v2`` with ``MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1``
  (COCO mask AP 41.8);
* keypoints: ``keypointrcnn_resnet50_fpn`` with ``KeypointRCNN_ResNet50_FPN_Weights.COCO_V1``
  (COCO keypoint AP 65.0).

The models are always built with ``weights=None, weights_backbone=None`` so torchvision
never tries to download anything; the checkpoint is then read from the path the user
gives, or else from torchvision's own cache (``torch.hub.get_dir()/checkpoints/<file>``,
where an online ``torchvision`` run would have put it), with
``torch.load(weights_only=True)`` and a strict ``load_state_dict``. A missing file is a
:class:`~reid_masks.errors.UserError` naming the file, the directory and the URL: a user
run never falls back to random weights. ``random_weights=True`` exists for tests and
benchmarks only; it logs a warning and is recorded in :meth:`TorchvisionBackend.provenance`.

The Keypoint R-CNN is rebuilt exactly as torchvision builds it when it loads COCO_V1
(a ResNet-50 with ``FrozenBatchNorm2d``, and ``eps=0`` in those layers, which is what
that checkpoint was trained with); ``keypointrcnn_resnet50_fpn(weights=None)`` would give
plain ``BatchNorm2d`` with ``eps=1e-5`` instead, a slightly different network.

Only the person class (COCO label 1) is kept. For the 91-class Mask R-CNN the box
post-processing is restricted to the person class *before* the per-image top-k
(``detections_per_img``), so other classes neither take person slots nor cost mask-head
time; scores are the usual 91-way softmax probabilities, unchanged. The detectron2
backend follows the same rule (``base.PERSON_RULE``), so both keep the same instances
from the same detections. Compared with torchvision's own ``postprocess_detections``
(top-k over all classes), the persons are the same whenever fewer than
``detections_per_img`` detections of all classes pass the threshold.

Keypoints come from the second model. Its instances are matched to the mask model's
instances by box IoU (:func:`match_instances`: greedy, highest IoU first, each instance
used at most once, IoU >= ``match_iou``). A mask instance without a partner gets all-zero
keypoints (score 0 = absent, the cache's convention). The keypoint model runs with a lower
score threshold (half the mask threshold by default) because its detections are only
candidates for matching: a person the mask model keeps at 0.55 should not lose its
keypoints because the keypoint model scored it 0.45. Keypoint scores are
``sigmoid(heatmap logit)`` so they lie in [0, 1] (torchvision returns the raw logit).

Input size (``min_size`` / ``max_size``)
----------------------------------------
torchvision resizes every image so that its *short* side is ``min_size`` (800 by
default) unless the long side would exceed ``max_size`` (1333). Re-ID crops are tiny and
portrait (Market/Duke 128x64, short side = the 64-px width), so the default turns a
128x64 crop into 1333x667: a ~10x upscale of a blurry image. That buys nothing the
network needs:

* the person fills the crop (~110 of 128 px tall). The RPN's smallest anchor is 32 px (on
  P2) and the largest 512 px (on P6); at ``min_size=256`` (512x256 for Market) the person is
  ~440 px tall: a COCO "large" object, the size range these models are most accurate on;
* FPN assigns a RoI to the level ``4 + log2(sqrt(wh) / 224)``, so the RoIAlign grid of a
  person covers about the same number of feature cells whatever the upscale; the mask is
  predicted on a 28x28 grid and the keypoints on 56x56 heatmaps and then pasted back at
  the crop's own resolution (128x64), so a larger input cannot add output detail;
* cost: the backbone and RPN scale with the pixel count. Measured on a 2-core CPU
  (docs/benchmarks_generate.md): the Mask R-CNN v2 backbone+FPN takes ~0.07 s/crop at
  ``min_size=128``, ~0.28 s at 256, ~0.9 s at 400, ~4.6 s at 800 (1333x667); both models
  end to end run ~2.2x more crops/s at 256 than at 800 (6-8 vs 18-21 CPU-s per crop).

Default: ``min_size=256`` (4x for 64-px-wide crops) and ``max_size=3 * min_size`` (768:
keeps crops up to 3:1 uncapped, at any ``min_size``). 128 (person ~220 px, 256x128 input) would also sit inside the anchors'
range, but at these sizes the backbone is not the bottleneck (the heads are, see below),
so 256 costs only ~0.2 s/crop more on CPU while keeping the scale closer to what the
models were trained on (COCO at a 640-800 px short side) and giving bystanders and
partly visible people, which the target-person rule must see, twice the pixels. 800
reproduces torchvision's evaluation setting at ~7x the pixels (measured ~16x backbone
time, ~2.2x end to end). The quality trade-off could not be measured here (no pretrained
weights offline); users with weights can compare with ``min_size=800``.

At small input sizes the heads, not the backbone, dominate: the v2 box head (4 convs +
FC) runs on every RPN proposal (``rpn_post_nms_top_n``, 1000 by default as in torchvision,
~230 GFLOP per image whatever the input size). 300 proposals gave 2.2x the CPU throughput
at ``min_size=256``; for crops with 1-3 people it is the next speed knob, left at
torchvision's value by default because its effect on quality is unmeasured here.

Batching, devices
-----------------
:meth:`TorchvisionBackend.predict` runs one forward per model for all images of the batch
that torchvision pads to the same size (``forward_by_size``: for same-sized re-ID crops,
one forward for the whole batch), under ``torch.inference_mode()``. torchvision pads a
batch to its largest image; grouping by padded size means a batch never computes on more
padding than a one-image loop, and each image's result equals torchvision's own
``model([image])`` (pinned by tests/test_backend_parity.py). On CUDA, ``amp=True`` runs the models under
``torch.autocast`` (float16 by default, or bfloat16); outputs are always float32 numpy.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import types
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import (
    KeypointRCNN,
    KeypointRCNN_ResNet50_FPN_Weights,
    MaskRCNN_ResNet50_FPN_V2_Weights,
    maskrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops
from torchvision.ops.misc import FrozenBatchNorm2d

from reid_masks.backends.base import (
    DEFAULT_DETECTIONS_PER_IMG,
    PERSON_RULE,
    Instances,
    attach_keypoints,
    box_iou_np,
    forward_by_size,
    match_instances,
    padded_size,
    parse_device,
)
from reid_masks.errors import UserError
from reid_masks.weights import weights_record

log = logging.getLogger(__name__)

__all__ = [
    "TorchvisionBackend",
    "match_instances",
    "box_iou_np",
    "expected_weights_path",
    "build_mask_model",
    "build_keypoint_model",
    "DEFAULT_MIN_SIZE",
    "DEFAULT_MAX_SIZE",
    "PERSON_LABEL",
]

PERSON_LABEL = 1
DEFAULT_MIN_SIZE = 256
DEFAULT_MAX_SIZE = 768
MASK_MODEL_NAME = "maskrcnn_resnet50_fpn_v2"
KEYPOINT_MODEL_NAME = "keypointrcnn_resnet50_fpn"
MASK_WEIGHTS = MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1
KEYPOINT_WEIGHTS = KeypointRCNN_ResNet50_FPN_Weights.COCO_V1
_AMP_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


# --------------------------------------------------------------------------- weights


def expected_weights_path(weights: Any) -> Path:
    """Where torchvision itself caches ``weights`` (a ``WeightsEnum`` member): the file we look for."""
    name = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _resolve_weights(what: str, weights: Any, path: str | os.PathLike | None, option: str) -> Path:
    """The checkpoint to load for ``what``, or a one-line UserError saying what to fetch and where."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(
                f"{what} weights file not found: {p} (given with {option}); download {weights.url} and pass its path"
            )
        return p
    p = expected_weights_path(weights)
    if not p.is_file():
        raise UserError(
            f"{what} weights not found: {p.name} is not in torchvision's cache directory {p.parent}; "
            f"download {weights.url} into that directory, or pass the file's path with {option}"
        )
    return p


def _resolve_all(wanted: list[tuple[str, Any, str | os.PathLike | None, str]]) -> list[Path]:
    """Resolve several checkpoints, reporting every missing one in a single line."""
    found, problems = [], []
    for what, weights, path, option in wanted:
        try:
            found.append(_resolve_weights(what, weights, path, option))
        except UserError as e:
            problems.append(str(e))
    if problems:
        raise UserError(" | ".join(problems))
    return found




def _load_checkpoint(model: nn.Module, path: Path, what: str) -> None:
    """Strictly load a state dict file into ``model``; a bad file is a UserError naming it."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling / truncated file / not a torch file
        raise UserError(f"cannot read {what} weights file {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a training checkpoint wrapping the state dict
    if not isinstance(state, dict):
        raise UserError(f"{what} weights file {path} does not hold a state dict (got {type(state).__name__})")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise UserError(f"{what} weights file {path} does not fit the model: {first}") from e


# --------------------------------------------------------------------------- models


def _person_only_postprocess(
    self: RoIHeads,
    class_logits: Tensor,
    box_regression: Tensor,
    proposals: list[Tensor],
    image_shapes: list[tuple[int, int]],
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """torchvision's ``RoIHeads.postprocess_detections`` restricted to the person class.

    Same softmax over all classes, same score threshold, small-box removal and NMS; only
    the per-class loop is cut to class 1 before the top-k, so the mask head runs on
    persons only and other classes cannot crowd persons out of ``detections_per_img``.
    """
    boxes_per_image = [b.shape[0] for b in proposals]
    # float32 even under autocast: fp16/bf16 box coordinates would be off by 0.5-4 px at 512-768
    pred_boxes = self.box_coder.decode(box_regression.float(), [p.float() for p in proposals])
    pred_scores = F.softmax(class_logits.float(), -1)
    all_boxes, all_scores, all_labels = [], [], []
    for boxes, scores, image_shape in zip(pred_boxes.split(boxes_per_image, 0), pred_scores.split(boxes_per_image, 0), image_shapes):
        boxes = box_ops.clip_boxes_to_image(boxes[:, PERSON_LABEL], image_shape)
        scores = scores[:, PERSON_LABEL]
        inds = torch.where(scores > self.score_thresh)[0]
        boxes, scores = boxes[inds], scores[inds]
        keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores = boxes[keep], scores[keep]
        keep = box_ops.nms(boxes, scores, self.nms_thresh)[: self.detections_per_img]
        boxes, scores = boxes[keep], scores[keep]
        all_boxes.append(boxes)
        all_scores.append(scores)
        all_labels.append(torch.full_like(scores, PERSON_LABEL, dtype=torch.int64))
    return all_boxes, all_scores, all_labels


def _detector_kwargs(min_size: int, max_size: int, score_threshold: float, detections_per_img: int, rpn_post_nms_top_n: int) -> dict[str, Any]:
    return dict(
        min_size=min_size,
        max_size=max_size,
        box_score_thresh=score_threshold,
        box_detections_per_img=detections_per_img,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n,
    )


def build_mask_model(
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    score_threshold: float = 0.5,
    detections_per_img: int = DEFAULT_DETECTIONS_PER_IMG,
    rpn_post_nms_top_n: int = 1000,
) -> nn.Module:
    """``maskrcnn_resnet50_fpn_v2`` with random weights (nothing downloaded), person-only post-processing."""
    model = maskrcnn_resnet50_fpn_v2(
        weights=None,
        weights_backbone=None,
        num_classes=len(MASK_WEIGHTS.meta["categories"]),
        **_detector_kwargs(min_size, max_size, score_threshold, detections_per_img, rpn_post_nms_top_n),
    )
    model.roi_heads.postprocess_detections = types.MethodType(_person_only_postprocess, model.roi_heads)
    return model.eval()


def build_keypoint_model(
    min_size: int = DEFAULT_MIN_SIZE,
    max_size: int = DEFAULT_MAX_SIZE,
    score_threshold: float = 0.5,
    detections_per_img: int = DEFAULT_DETECTIONS_PER_IMG,
    rpn_post_nms_top_n: int = 1000,
) -> nn.Module:
    """``keypointrcnn_resnet50_fpn`` as torchvision builds it for COCO_V1, with random weights.

    torchvision's builder with ``weights=None`` would use plain BatchNorm2d; the COCO_V1
    checkpoint belongs to a FrozenBatchNorm2d backbone with eps 0 (torchvision's
    ``overwrite_eps(model, 0.0)``), so we build that network directly.
    """
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3)
    model = KeypointRCNN(
        backbone,
        num_classes=len(KEYPOINT_WEIGHTS.meta["categories"]),
        num_keypoints=len(KEYPOINT_WEIGHTS.meta["keypoint_names"]),
        **_detector_kwargs(min_size, max_size, score_threshold, detections_per_img, rpn_post_nms_top_n),
    )
    for m in model.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.eps = 0.0
    # two classes (background, person): the person-only post-processing is torchvision's own,
    # with box decoding kept in float32 under autocast
    model.roi_heads.postprocess_detections = types.MethodType(_person_only_postprocess, model.roi_heads)
    return model.eval()


# --------------------------------------------------------------------------- matching


# --------------------------------------------------------------------------- backend


class TorchvisionBackend:
    """Batched person masks + keypoints with torchvision's Mask R-CNN v2 and Keypoint R-CNN.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        mask_weights / keypoint_weights: checkpoint paths; default: torchvision's cache.
        random_weights: build untrained models (tests and benchmarks only; logged, recorded).
        min_size / max_size: input resize (short side / cap on long side); see the module doc.
        score_threshold: minimum person score (softmax probability) of a returned instance.
        with_masks / with_keypoints: which model(s) to run; without masks the instances
            are the keypoint model's, without keypoints ``Instances.keypoints`` is None.
        amp: autocast on CUDA (``amp_dtype`` ``"float16"`` or ``"bfloat16"``).
        keypoint_score_threshold: threshold of the keypoint model when it only supplies
            match candidates (default ``score_threshold / 2``).
        match_iou: minimum box IoU to attach keypoint instance to a mask instance.
        detections_per_img: most person instances per image.
        rpn_post_nms_top_n: proposals per image fed to the box head (speed knob).
    """

    name = "torchvision"

    def __init__(
        self,
        device: str = "cpu",
        mask_weights: str | os.PathLike | None = None,
        keypoint_weights: str | os.PathLike | None = None,
        random_weights: bool = False,
        min_size: int = DEFAULT_MIN_SIZE,
        max_size: int | None = None,
        score_threshold: float = 0.5,
        with_keypoints: bool = True,
        with_masks: bool = True,
        amp: bool = False,
        amp_dtype: str = "float16",
        keypoint_score_threshold: Optional[float] = None,
        match_iou: float = 0.5,
        detections_per_img: int = DEFAULT_DETECTIONS_PER_IMG,
        rpn_post_nms_top_n: int = 1000,
    ) -> None:
        if not (with_masks or with_keypoints):
            raise UserError("the torchvision backend needs masks or keypoints (or both) enabled")
        if max_size is None:  # 3x the short side: never binds on portrait re-ID crops (768 at the default 256)
            max_size = max(DEFAULT_MAX_SIZE, 3 * int(min_size))
        if int(min_size) < 1 or int(max_size) < int(min_size):
            raise UserError(f"bad input size: need 1 <= min_size <= max_size, got min_size={min_size} max_size={max_size}")
        if not 0.0 <= float(score_threshold) <= 1.0:
            raise UserError(f"score threshold must be in [0, 1], got {score_threshold}")
        if random_weights and (mask_weights is not None or keypoint_weights is not None):
            raise UserError("random weights and a weights file were both requested; choose one")
        self.device = parse_device(device, "torchvision backend")
        if self.device.type not in ("cpu", "cuda"):
            raise UserError(f"device {device!r} is not supported by the torchvision backend (use cpu or cuda)")
        if amp and self.device.type != "cuda":
            raise UserError("AMP (autocast) is only supported on a CUDA device")
        if amp_dtype not in _AMP_DTYPES:
            raise UserError(f"amp dtype must be one of {sorted(_AMP_DTYPES)}, got {amp_dtype!r}")

        self.min_size, self.max_size = int(min_size), int(max_size)
        self.score_threshold = float(score_threshold)
        self.keypoint_score_threshold = float(self.score_threshold / 2 if keypoint_score_threshold is None else keypoint_score_threshold)
        self.match_iou = float(match_iou)
        self.detections_per_img = int(detections_per_img)
        self.rpn_post_nms_top_n = int(rpn_post_nms_top_n)
        self.with_masks, self.with_keypoints = bool(with_masks), bool(with_keypoints)
        self.random_weights = bool(random_weights)
        self.amp = bool(amp)
        self.amp_dtype = _AMP_DTYPES[amp_dtype]
        self._provenance: Optional[dict[str, Any]] = None
        self._padded: dict[tuple[int, int, int], tuple[int, int]] = {}

        # Resolve every file before building anything: a missing file fails fast.
        self.mask_weights_path: Optional[Path] = None
        self.keypoint_weights_path: Optional[Path] = None
        if not self.random_weights:
            wanted = []
            if self.with_masks:
                wanted.append(("Mask R-CNN", MASK_WEIGHTS, mask_weights, "--mask-weights"))
            if self.with_keypoints:
                wanted.append(("Keypoint R-CNN", KEYPOINT_WEIGHTS, keypoint_weights, "--keypoint-weights"))
            paths = _resolve_all(wanted)
            if self.with_masks:
                self.mask_weights_path = paths.pop(0)
            if self.with_keypoints:
                self.keypoint_weights_path = paths.pop(0)
        else:
            log.warning("torchvision backend: RANDOM weights (tests/benchmarks only): masks and keypoints are meaningless")

        common = dict(min_size=self.min_size, max_size=self.max_size, detections_per_img=self.detections_per_img, rpn_post_nms_top_n=self.rpn_post_nms_top_n)
        self.mask_model: Optional[nn.Module] = None
        self.keypoint_model: Optional[nn.Module] = None
        if self.with_masks:
            self.mask_model = build_mask_model(score_threshold=self.score_threshold, **common)
            if self.mask_weights_path is not None:
                _load_checkpoint(self.mask_model, self.mask_weights_path, "Mask R-CNN")
                log.info("loaded Mask R-CNN weights from %s", self.mask_weights_path)
            self.mask_model.to(self.device).eval()
        if self.with_keypoints:
            kp_thresh = self.keypoint_score_threshold if self.with_masks else self.score_threshold
            self.keypoint_model = build_keypoint_model(score_threshold=kp_thresh, **common)
            if self.keypoint_weights_path is not None:
                _load_checkpoint(self.keypoint_model, self.keypoint_weights_path, "Keypoint R-CNN")
                log.info("loaded Keypoint R-CNN weights from %s", self.keypoint_weights_path)
            self.keypoint_model.to(self.device).eval()

    # ------------------------------------------------------------------ provenance

    def provenance(self) -> dict[str, Any]:
        """JSON-able record of what produced the results (hashes computed once, then cached)."""
        if self._provenance is None:
            weights: dict[str, Any] = {}
            for key, model_name, enum, path, on in (
                ("mask", MASK_MODEL_NAME, MASK_WEIGHTS, self.mask_weights_path, self.with_masks),
                ("keypoint", KEYPOINT_MODEL_NAME, KEYPOINT_WEIGHTS, self.keypoint_weights_path, self.with_keypoints),
            ):
                if not on:
                    continue
                record = weights_record(path, expected_weights_path(enum), enum.url)
                weights[key] = {
                    "model": model_name,
                    # torchvision's name for the checkpoint only when its cached file is what was loaded
                    "weights": f"{type(enum).__name__}.{enum.name}" if record["source"] == "zoo" else None,
                    **record,
                }
            self._provenance = {
                "backend": self.name,
                "models": {k: v["model"] for k, v in weights.items()},
                "weights": weights,
                "random_weights": self.random_weights,
                "person_label": PERSON_LABEL,
                "score_threshold": self.score_threshold,
                "keypoint_score_threshold": self.keypoint_score_threshold if (self.with_masks and self.with_keypoints) else None,
                "keypoint_match": "greedy box IoU" if (self.with_masks and self.with_keypoints) else None,
                "match_iou": self.match_iou,
                "instances": PERSON_RULE,
                "keypoint_score": "sigmoid(heatmap logit)",
                "min_size": self.min_size,
                "max_size": self.max_size,
                "detections_per_img": self.detections_per_img,
                "rpn_post_nms_top_n": self.rpn_post_nms_top_n,
                "torchvision_version": torchvision.__version__,
                "torch_version": torch.__version__,
                "device": str(self.device),
                "amp": self.amp,
                "amp_dtype": str(self.amp_dtype).replace("torch.", "") if self.amp else None,
            }
        return copy.deepcopy(self._provenance)

    # ------------------------------------------------------------------ inference

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.amp:
            with torch.autocast(device_type="cuda", dtype=self.amp_dtype):
                yield
        else:
            yield

    def _to_tensor(self, image: np.ndarray) -> Tensor:
        """uint8 HxWx3 RGB -> float CHW in [0, 1] on the device (uint8 crosses the bus, 4x less)."""
        a = np.asarray(image)
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or a.shape[0] < 1 or a.shape[1] < 1:
            raise ValueError(f"expected an RGB uint8 HxWx3 image, got shape {a.shape} dtype {a.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(a)).to(self.device, non_blocking=True)
        return t.permute(2, 0, 1).float().div_(255.0)

    def _padded_size(self, model: nn.Module, height: int, width: int) -> tuple[int, int]:
        """The size torchvision pads one ``height x width`` image to (its own resize rule, cached per size)."""
        key = (id(model), height, width)
        if key not in self._padded:
            resized, _ = model.transform.resize(torch.zeros(1, height, width))
            self._padded[key] = padded_size(resized.shape[-2], resized.shape[-1], model.transform.size_divisible)
        return self._padded[key]

    def forward_raw(self, images: list[np.ndarray]) -> tuple[Optional[list[dict[str, Tensor]]], Optional[list[dict[str, Tensor]]]]:
        """The two models' raw torchvision outputs for a batch: one forward per model and padded size."""
        tensors = [self._to_tensor(im) for im in images]
        mask_out = kp_out = None
        with torch.inference_mode(), self._autocast():
            for model in (self.mask_model, self.keypoint_model):
                if model is None:
                    continue
                out = forward_by_size(model, tensors, [self._padded_size(model, *t.shape[-2:]) for t in tensors])
                if model is self.mask_model:
                    mask_out = out
                else:
                    kp_out = out
        return mask_out, kp_out

    def predict(self, images: list[np.ndarray]) -> list[Instances]:
        """Person instances for each image of the batch, score-sorted, as CPU float32 numpy."""
        if len(images) == 0:
            return []
        mask_out, kp_out = self.forward_raw(images)
        results = []
        for i, image in enumerate(images):
            h, w = int(image.shape[0]), int(image.shape[1])
            m = _person_numpy(mask_out[i]) if mask_out is not None else None
            k = _person_numpy(kp_out[i]) if kp_out is not None else None
            if m is not None:
                boxes, scores = m["boxes"], m["scores"]
                masks = m["masks"].reshape(-1, h, w) if "masks" in m else np.zeros((len(scores), h, w), np.float32)
                keypoints = attach_keypoints(boxes, k["boxes"], k["keypoints"], self.match_iou) if k is not None else None
                results.append(Instances(boxes, scores, masks, keypoints))
            else:
                assert k is not None
                results.append(Instances(k["boxes"], k["scores"], None, k["keypoints"]))
        return results

    def __repr__(self) -> str:
        return (
            f"TorchvisionBackend(device={str(self.device)!r}, masks={self.with_masks}, keypoints={self.with_keypoints}, "
            f"min_size={self.min_size}, max_size={self.max_size}, score_threshold={self.score_threshold}, "
            f"random_weights={self.random_weights}, amp={self.amp})"
        )


def _person_numpy(out: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """One image's torchvision output -> person-only, score-sorted float32 numpy on the CPU."""
    keep = out["labels"] == PERSON_LABEL
    scores = out["scores"][keep].float()
    order = torch.argsort(scores, descending=True, stable=True)
    idx = torch.nonzero(keep, as_tuple=False).flatten()[order]
    res = {
        "boxes": out["boxes"][idx].float().cpu().numpy().astype(np.float32, copy=False).reshape(-1, 4),
        "scores": scores[order].clamp_(0.0, 1.0).cpu().numpy().astype(np.float32, copy=False),
    }
    if "masks" in out:
        res["masks"] = out["masks"][idx][:, 0].float().clamp_(0.0, 1.0).cpu().numpy().astype(np.float32, copy=False)
    if "keypoints" in out:
        kp = out["keypoints"][idx].float()
        kp_scores = torch.sigmoid(out["keypoints_scores"][idx].float())
        res["keypoints"] = torch.cat([kp[..., :2], kp_scores[..., None]], dim=-1).cpu().numpy().astype(np.float32, copy=False)
    return res
