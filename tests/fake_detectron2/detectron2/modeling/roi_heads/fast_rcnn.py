"""detectron2.modeling.roi_heads.fast_rcnn: the box predictor's test-time path.

Same contract as detectron2's: ``FastRCNNOutputLayers.inference(predictions, proposals)``
calls ``self.predict_boxes`` and ``self.predict_probs`` (softmax over K classes +
background, background LAST) and then ``fast_rcnn_inference`` with the predictor's
``test_score_thresh`` (MODEL.ROI_HEADS.SCORE_THRESH_TEST), ``test_nms_thresh`` and
``test_topk_per_image`` (TEST.DETECTIONS_PER_IMAGE): drop rows with non-finite values,
keep (proposal, class) pairs scoring above the threshold, per-class NMS, then the top k
over ALL classes. The fake's only simplification: class-agnostic box deltas added to
the proposal boxes (detectron2 decodes them with Box2BoxTransform).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms

from detectron2.structures import Boxes, Instances

__all__ = ["FastRCNNOutputLayers", "fast_rcnn_inference"]


def fast_rcnn_inference(boxes: list[torch.Tensor], scores: list[torch.Tensor], image_shapes: list[tuple[int, int]],
                        score_thresh: float, nms_thresh: float, topk_per_image: int) -> tuple[list[Instances], list[torch.Tensor]]:
    """Per image: threshold, per-class NMS, top-k over all classes; (instances, kept proposal indices)."""
    out = [_single_image(b, s, shape, score_thresh, nms_thresh, topk_per_image) for b, s, shape in zip(boxes, scores, image_shapes)]
    return [o[0] for o in out], [o[1] for o in out]


def _single_image(boxes: torch.Tensor, scores: torch.Tensor, image_shape: tuple[int, int], score_thresh: float,
                  nms_thresh: float, topk: int) -> tuple[Instances, torch.Tensor]:
    rows = torch.arange(len(scores))
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    boxes, scores, rows = boxes[valid], scores[valid], rows[valid]
    scores = scores[:, :-1]  # background is the last column
    n_reg = boxes.shape[1] // 4
    clipped = Boxes(boxes.reshape(-1, 4))
    clipped.clip(image_shape)
    boxes = clipped.tensor.view(-1, n_reg, 4)
    above = scores > score_thresh
    pairs = above.nonzero()  # (proposal, class)
    boxes = boxes[pairs[:, 0], 0] if n_reg == 1 else boxes[above]
    scores = scores[above]
    keep = batched_nms(boxes.float(), scores, pairs[:, 1], nms_thresh)
    if topk >= 0:
        keep = keep[:topk]
    result = Instances(image_shape)
    result.pred_boxes = Boxes(boxes[keep])
    result.scores = scores[keep]
    result.pred_classes = pairs[keep, 1]
    return result, rows[pairs[keep, 0]]


class FastRCNNOutputLayers(nn.Module):
    """The test-time half of detectron2's box predictor (no layers: the fake model supplies the logits)."""

    def __init__(self, num_classes: int, test_score_thresh: float = 0.0, test_nms_thresh: float = 0.5, test_topk_per_image: int = 100) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.test_score_thresh = test_score_thresh
        self.test_nms_thresh = test_nms_thresh
        self.test_topk_per_image = test_topk_per_image

    @classmethod
    def from_config(cls, cfg: Any) -> "FastRCNNOutputLayers":
        return cls(cfg.MODEL.ROI_HEADS.NUM_CLASSES, cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST, cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST, cfg.TEST.DETECTIONS_PER_IMAGE)

    def predict_boxes(self, predictions: tuple[torch.Tensor, torch.Tensor], proposals: list[Instances]) -> tuple[torch.Tensor, ...]:
        if not len(proposals):
            return ()
        _, deltas = predictions
        boxes = torch.cat([p.proposal_boxes.tensor for p in proposals]) + deltas.float()
        return boxes.split([len(p) for p in proposals])

    def predict_probs(self, predictions: tuple[torch.Tensor, torch.Tensor], proposals: list[Instances]) -> tuple[torch.Tensor, ...]:
        scores, _ = predictions
        return F.softmax(scores, dim=-1).split([len(p) for p in proposals], dim=0)

    def inference(self, predictions: tuple[torch.Tensor, torch.Tensor], proposals: list[Instances]) -> tuple[list[Instances], list[torch.Tensor]]:
        boxes = self.predict_boxes(predictions, proposals)
        scores = self.predict_probs(predictions, proposals)
        image_shapes = [p.image_size for p in proposals]
        return fast_rcnn_inference(boxes, scores, image_shapes, self.test_score_thresh, self.test_nms_thresh, self.test_topk_per_image)
