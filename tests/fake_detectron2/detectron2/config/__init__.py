"""detectron2.config: a yacs-like CfgNode and get_cfg() with the defaults the backend touches."""
from __future__ import annotations

import ast
import copy
import os
from typing import Any

import yaml

__all__ = ["CfgNode", "get_cfg"]
BASE_KEY = "_BASE_"


class CfgNode(dict):
    """Attribute-access dict; merging rejects unknown keys; frozen nodes reject writes (as yacs)."""

    def __init__(self, init: dict | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "_immutable", False)
        for k, v in (init or {}).items():
            self[k] = CfgNode(v) if isinstance(v, dict) else v

    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if self._immutable:
            raise AttributeError(f"Attempted to set {name} to {value}, but CfgNode is immutable")
        self[name] = value

    def freeze(self) -> None:
        object.__setattr__(self, "_immutable", True)
        for v in self.values():
            if isinstance(v, CfgNode):
                v.freeze()

    def is_frozen(self) -> bool:
        return self._immutable

    def clone(self) -> "CfgNode":
        return copy.deepcopy(self)

    def dump(self) -> str:
        def plain(n: Any) -> Any:
            return {k: plain(v) for k, v in n.items()} if isinstance(n, dict) else (list(n) if isinstance(n, tuple) else n)

        return yaml.safe_dump(plain(self))

    def merge_from_file(self, cfg_filename: str) -> None:
        """Load a yaml, following ``_BASE_`` (relative to the file) first, then merge its keys."""
        with open(cfg_filename) as f:
            loaded = yaml.safe_load(f) or {}
        base = loaded.pop(BASE_KEY, None)
        if base is not None:
            if not base.startswith(("/", "~")):
                base = os.path.join(os.path.dirname(cfg_filename), base)
            self.merge_from_file(base)
        self._merge(loaded, self, [])

    def _merge(self, src: dict, dst: "CfgNode", path: list[str]) -> None:
        for k, v in src.items():
            full = ".".join(path + [k])
            if k not in dst:
                raise KeyError(f"Non-existent config key: {full}")
            old = dst[k]
            if isinstance(old, CfgNode):
                if not isinstance(v, dict):
                    raise ValueError(f"{full}: expected a mapping")
                self._merge(v, old, path + [k])
                continue
            if isinstance(v, str) and isinstance(old, (tuple, list)):
                v = ast.literal_eval(v)
            if isinstance(old, tuple) and isinstance(v, list):
                v = tuple(v)
            if old is not None and v is not None and type(old) is not type(v) and not (isinstance(old, float) and isinstance(v, int)):
                raise ValueError(f"Type mismatch ({type(old)} vs. {type(v)}) with values ({old} vs. {v}) for config key: {full}")
            dst[k] = v


_DEFAULTS = {
    "VERSION": 2,
    "MODEL": {
        "DEVICE": "cuda",
        "WEIGHTS": "",
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "MASK_ON": False,
        "KEYPOINT_ON": False,
        "PIXEL_MEAN": [103.53, 116.28, 123.675],
        "PIXEL_STD": [1.0, 1.0, 1.0],
        "RESNETS": {"DEPTH": 50},
        "ROI_HEADS": {"NUM_CLASSES": 80, "SCORE_THRESH_TEST": 0.05, "NMS_THRESH_TEST": 0.5},
        "ROI_KEYPOINT_HEAD": {"NUM_KEYPOINTS": 17},
    },
    "INPUT": {"MIN_SIZE_TRAIN": (800,), "MIN_SIZE_TEST": 800, "MAX_SIZE_TEST": 1333, "FORMAT": "BGR"},
    "DATASETS": {"TRAIN": (), "TEST": ()},
    "TEST": {"DETECTIONS_PER_IMAGE": 100},
}


def get_cfg() -> CfgNode:
    """A fresh copy of the default config."""
    return CfgNode(copy.deepcopy(_DEFAULTS))
