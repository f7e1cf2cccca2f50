"""reid-train: trainer and evaluator for mask-guided re-ID models (MMGA, MGRAN).

A torchreid-like Python API, imported lazily (torch is only loaded when used)::

    from reid_train import build_model, evaluate_rank
    model = build_model("mmga", num_classes=751, pretrained="imagenet")
    cmc, mAP = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)

    model = load_model("runs/mmga_market1501/checkpoint.pth")    # a trained run: an nn.Module in eval mode
    feats = extract_features(model, ["a.jpg", "b.jpg"])          # as `reid-train extract`; model(images) too
"""
from __future__ import annotations

from typing import Any

__all__ = ["build_model", "evaluate_rank", "evaluate_from_features", "load_config", "load_model", "extract_features"]

_LAZY = {
    "build_model": "reid_train.models",
    "evaluate_rank": "reid_train.evaluation",
    "evaluate_from_features": "reid_train.evaluation",
    "load_config": "reid_train.config",
    "load_model": "reid_train.inference",
    "extract_features": "reid_train.inference",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'reid_train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
