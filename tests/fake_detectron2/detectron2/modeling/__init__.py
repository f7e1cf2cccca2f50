"""detectron2.modeling: build_model(cfg) -> a fake GeneralizedRCNN with deterministic detections.

The fake keeps detectron2's contract: ``model(batched_inputs)`` in eval mode takes a list
of ``{"image": CHW float tensor in cfg.INPUT.FORMAT, "height": h, "width": w}``, detects
in the coordinates of the image it received and returns ``[{"instances": Instances}]``
post-processed to the ORIGINAL ``height x width`` (``detector_postprocess``). Detections
with a score below ``MODEL.ROI_HEADS.SCORE_THRESH_TEST`` are dropped, as in detectron2.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.structures import Boxes, Instances

__all__ = ["build_model", "detector_postprocess", "GeneralizedRCNN"]

PERSON, CAR = 0, 2
PEAK_LOGIT = 2.0  # keypoint heatmap peak
NATIVE_KEYPOINT_SCORE = 0.05  # detectron2's spatial-softmax scale


class GeneralizedRCNN(nn.Module):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        self.mask_on = bool(cfg.MODEL.MASK_ON)
        self.keypoint_on = bool(cfg.MODEL.KEYPOINT_ON)
        self.num_classes = int(cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        self.score_thresh = float(cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)
        self.backbone = nn.Conv2d(3, 4, 1)
        self.roi_heads = nn.Module()
        if self.mask_on:
            self.roi_heads.mask_head = nn.Conv2d(4, 1, 1)
        if self.keypoint_on:
            self.roi_heads.keypoint_head = nn.Conv2d(4, 17, 1)
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1), False)
        self.calls: list[list[dict[str, Any]]] = []  # what each forward received (for tests)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: list[dict[str, Any]]) -> list[dict[str, Instances]]:
        if self.training:
            raise NotImplementedError("the fake only does inference")
        record = []
        results = []
        for x in batched_inputs:
            image = x["image"].to(self.device)
            assert image.dim() == 3 and image.shape[0] == 3, image.shape
            record.append({
                "shape": tuple(image.shape), "dtype": image.dtype, "height": x.get("height"), "width": x.get("width"),
                "channel_means": [float(c) for c in image.float().mean(dim=(1, 2))],
            })
            results.append(self._detect(image))
        self.calls.append(record)
        out = []
        for r, x in zip(results, batched_inputs):
            h = x.get("height", r.image_size[0])
            w = x.get("width", r.image_size[1])
            out.append({"instances": detector_postprocess(r, h, w)})
        return out

    def _detect(self, image: torch.Tensor) -> Instances:
        _, H, W = image.shape
        bright = image.max(0).values > 127
        boxes, scores, classes, masks = [], [], [], []
        if bright.any():
            ys = torch.nonzero(bright.any(1)).flatten()
            xs = torch.nonzero(bright.any(0)).flatten()
            box = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
            if self.keypoint_on:
                box = box + torch.tensor([1.0, 1.0, 1.0, 1.0])  # a slightly different box: matching by IoU
            half = box.clone()
            half[2] = (box[0] + box[2]) / 2
            boxes += [box, half]
            scores += [0.9, 0.3]  # the second person is below a 0.5 threshold
            classes += [PERSON, PERSON]
            masks += [bright, bright & (torch.arange(W, device=bright.device)[None, :] < half[2].item())]
        if self.num_classes > 1:
            boxes.append(torch.tensor([0.0, 0.0, W, H]))
            scores.append(0.95)
            classes.append(CAR)
            masks.append(torch.ones(H, W, dtype=torch.bool, device=image.device))
        keep = [i for i, s in enumerate(scores) if s > self.score_thresh]
        n = len(keep)
        inst = Instances((H, W))
        inst.pred_boxes = Boxes(torch.stack([boxes[i] for i in keep]) if n else torch.zeros(0, 4))
        inst.scores = torch.tensor([scores[i] for i in keep], dtype=torch.float32)
        inst.pred_classes = torch.tensor([classes[i] for i in keep], dtype=torch.int64)
        if self.mask_on:
            # detectron2 keeps (N, 1, 28, 28) mask probabilities until detector_postprocess pastes them
            inst.pred_masks = torch.stack([masks[i].float() for i in keep])[:, None] if n else torch.zeros(0, 1, H, W)
        if self.keypoint_on:
            b = inst.pred_boxes.tensor
            t = (torch.arange(17, dtype=torch.float32) + 1) / 18
            kp = torch.zeros(n, 17, 3)
            kp[..., 0] = b[:, None, 0] + t[None] * (b[:, None, 2] - b[:, None, 0])
            kp[..., 1] = b[:, None, 1] + t[None] * (b[:, None, 3] - b[:, None, 1])
            kp[..., 2] = NATIVE_KEYPOINT_SCORE
            inst.pred_keypoints = kp
            hm = torch.full((n, 17, 56, 56), -3.0)
            hm[:, :, 28, 28] = PEAK_LOGIT
            inst.pred_keypoint_heatmaps = hm
        return inst


def detector_postprocess(results: Instances, output_height: int, output_width: int, mask_threshold: float = 0.5) -> Instances:
    """Rescale to the original image size: boxes and keypoints scaled, masks pasted and thresholded (bool)."""
    scale_x, scale_y = output_width / results.image_size[1], output_height / results.image_size[0]
    results = Instances((output_height, output_width), **results.get_fields())
    output_boxes = results.pred_boxes
    output_boxes.scale(scale_x, scale_y)
    output_boxes.clip(results.image_size)
    results = results[output_boxes.nonempty()]
    if results.has("pred_masks"):
        m = results.pred_masks
        pasted = F.interpolate(m.float(), size=(output_height, output_width), mode="bilinear", align_corners=False)[:, 0] if len(m) else torch.zeros(0, output_height, output_width)
        results.pred_masks = pasted >= mask_threshold
    if results.has("pred_keypoints"):
        results.pred_keypoints[:, :, 0] *= scale_x
        results.pred_keypoints[:, :, 1] *= scale_y
    return results


def build_model(cfg: Any) -> nn.Module:
    """``META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)(cfg)`` moved to ``cfg.MODEL.DEVICE``."""
    if cfg.MODEL.META_ARCHITECTURE != "GeneralizedRCNN":
        raise KeyError(f"No object named '{cfg.MODEL.META_ARCHITECTURE}' found in 'META_ARCH' registry!")
    model = GeneralizedRCNN(cfg)
    model.to(torch.device(cfg.MODEL.DEVICE))
    return model
