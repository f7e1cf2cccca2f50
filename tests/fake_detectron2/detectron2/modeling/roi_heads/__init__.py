"""detectron2.modeling.roi_heads (the part the backend touches: the box predictor)."""
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers, fast_rcnn_inference

__all__ = ["FastRCNNOutputLayers", "fast_rcnn_inference"]
