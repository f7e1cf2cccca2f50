"""detectron2.model_zoo: config paths and checkpoint URLs of the zoo models the backend uses."""
from __future__ import annotations

import os

__all__ = ["get_config_file", "get_checkpoint_url"]

S3_PREFIX = "https://dl.fbaipublicfiles.com/detectron2/"
CONFIG_PATH_TO_URL_SUFFIX = {
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x": "137849600/model_final_f10217.pkl",
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x": "137849621/model_final_a6e10b.pkl",
    "COCO-Detection/faster_rcnn_R_50_FPN_3x": "137849458/model_final_280758.pkl",
}


def get_config_file(config_path: str) -> str:
    cfg_file = os.path.join(os.path.dirname(__file__), "configs", config_path)
    if not os.path.exists(cfg_file):
        raise RuntimeError(f"{config_path} not available in Model Zoo!")
    return cfg_file


def get_checkpoint_url(config_path: str) -> str:
    name = config_path.replace(".yaml", "").replace(".py", "")
    if name in CONFIG_PATH_TO_URL_SUFFIX:
        return S3_PREFIX + name + "/" + CONFIG_PATH_TO_URL_SUFFIX[name]
    raise RuntimeError(f"Pretrained model for {config_path} is not available!")
