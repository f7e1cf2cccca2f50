"""detectron2.checkpoint.DetectionCheckpointer with fvcore's Checkpointer.load flow."""
from __future__ import annotations

import logging
import os
from typing import Any, NamedTuple
from urllib.parse import urlparse

import torch
from torch import nn

__all__ = ["DetectionCheckpointer"]
log = logging.getLogger(__name__)


class _IncompatibleKeys(NamedTuple):
    missing_keys: list
    unexpected_keys: list
    incorrect_shapes: list


def _cache_dir() -> str:
    return os.path.expanduser(os.getenv("FVCORE_CACHE", "~/.torch/iopath_cache"))


class DetectionCheckpointer:
    def __init__(self, model: nn.Module, save_dir: str = "", *, save_to_disk: bool | None = None, **checkpointables: Any) -> None:
        self.model = model
        self.save_dir = save_dir
        self.checkpointables = checkpointables
        self.loaded: list[str] = []

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        if not path:
            log.info("No checkpoint found. Initializing model from scratch")
            return {}
        if not os.path.isfile(path) and path.startswith(("http://", "https://")):
            cached = os.path.join(_cache_dir(), urlparse(path).path.lstrip("/"))
            if not os.path.isfile(cached):
                raise OSError(f"fake detectron2 cannot download {path}")
            path = cached
        assert os.path.isfile(path), f"Checkpoint {path} not found!"
        checkpoint = self._load_file(path)
        incompatible = self._load_model(checkpoint)
        if incompatible is not None:
            self._log_incompatible_keys(incompatible)
        self.loaded.append(path)
        checkpoint.pop("model", None)
        return checkpoint

    def _load_file(self, f: str) -> dict[str, Any]:
        loaded = torch.load(f, map_location="cpu", weights_only=True)
        if "model" not in loaded:
            loaded = {"model": loaded}
        return loaded

    def _load_model(self, checkpoint: dict[str, Any]) -> _IncompatibleKeys:
        state = dict(checkpoint["model"])
        model_state = self.model.state_dict()
        incorrect = []
        for k in list(state):
            if k in model_state and tuple(state[k].shape) != tuple(model_state[k].shape):
                incorrect.append((k, tuple(state[k].shape), tuple(model_state[k].shape)))
                state.pop(k)
        result = self.model.load_state_dict(state, strict=False)
        return _IncompatibleKeys(list(result.missing_keys), list(result.unexpected_keys), incorrect)

    def _log_incompatible_keys(self, incompatible: _IncompatibleKeys) -> None:
        for k, shape_ckpt, shape_model in incompatible.incorrect_shapes:
            log.warning("Skip loading parameter '%s' to the model due to incompatible shapes: %s in the checkpoint but %s in the model!", k, shape_ckpt, shape_model)
        if incompatible.missing_keys:
            log.warning("Some model parameters or buffers are not found in the checkpoint: %s", incompatible.missing_keys)
        if incompatible.unexpected_keys:
            log.warning("The checkpoint state_dict contains keys that are not used by the model: %s", incompatible.unexpected_keys)
