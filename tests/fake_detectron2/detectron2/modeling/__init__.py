"""detectron2.modeling: build_model(cfg) -> a fake GeneralizedRCNN with deterministic detections.

The fake keeps detectron2's contract: ``model(batched_inputs)`` in eval mode takes a list
of ``{"image": CHW float tensor in cfg.INPUT.FORMAT, "height": h, "width": w}``, detects
in the coordinates of the image it received and returns ``[{"instances": Instances}]``
post-processed to the ORIGINAL ``height x width`` (``detector_postprocess``). The fake
makes a few proposals with class probabilities and hands them to
``model.roi_heads.box_predictor.inference`` (``roi_heads.fast_rcnn``), so the score
threshold, per-class NMS and the TEST.DETECTIONS_PER_IMAGE cut over all classes happen
there, as in detectron2's StandardROIHeads; masks and keypoints follow the kept proposals.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
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
        self.roi_heads.box_predictor = FastRCNNOutputLayers.from_config(cfg)
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
        # proposals: (box, {class: probability}, mask); the rest of each row is background
        proposals: list[tuple[torch.Tensor, dict[int, float], torch.Tensor]] = []
        other = CAR if self.num_classes > 1 else None
        if bright.any():
            ys = torch.nonzero(bright.any(1)).flatten()
            xs = torch.nonzero(bright.any(0)).flatten()
            box = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
            if self.keypoint_on:
                box = box + torch.tensor([1.0, 1.0, 1.0, 1.0])  # a slightly different box: matching by IoU
            third = box.clone()
            third[2] = box[0] + (box[2] - box[0]) / 3
            person = {PERSON: 0.9, other: 0.05} if other is not None else {PERSON: 0.9}
            proposals.append((box, person, bright))
            # a second person below a 0.5 threshold (IoU 1/3 with the first: NMS keeps both)
            proposals.append((third, {PERSON: 0.3}, bright & (torch.arange(W, device=bright.device)[None, :] < third[2].item())))
        if other is not None:
            proposals.append((torch.tensor([0.0, 0.0, W, H]), {other: 0.95}, torch.ones(H, W, dtype=torch.bool, device=image.device)))
        probs = torch.zeros(len(proposals), self.num_classes + 1)
        for i, (_, p, _) in enumerate(proposals):
            for c, v in p.items():
                probs[i, c] = v
            probs[i, -1] = 1.0 - sum(p.values())
        props = Instances((H, W))
        props.proposal_boxes = Boxes(torch.stack([b for b, _, _ in proposals]) if proposals else torch.zeros(0, 4))
        logits = probs.clamp_min(1e-12).log()  # softmax gives the probabilities back
        (inst,), (kept,) = self.roi_heads.box_predictor.inference((logits, torch.zeros(len(proposals), 4)), [props])
        keep = kept.tolist()
        masks = [proposals[i][2] for i in keep]
        n = len(keep)
        if self.mask_on:
            # detectron2 keeps (N, 1, 28, 28) mask probabilities until detector_postprocess pastes them
            inst.pred_masks = torch.stack([m.float() for m in masks])[:, None] if n else torch.zeros(0, 1, H, W)
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
