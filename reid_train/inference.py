"""A trained checkpoint as a feature extractor (torchreid's ``FeatureExtractor``, without the bookkeeping).

::

    from reid_train import load_model, extract_features
    model = load_model("runs/mmga_market1501/checkpoint.pth")       # eval mode, its preprocessing
    feats = extract_features(model, ["a.jpg", "b.jpg"])              # (2, D), as `reid-train extract`

The checkpoint carries the config (architecture, class count, input size, mean/std, flip),
so nothing has to be repeated by hand. Features are computed by the same code as
``reid-train evaluate``/``extract`` (:func:`reid_train.engine.evaluator.extract_features`):
L2-normalised, averaged with the horizontal flip when ``test.flip`` is on.
The CLI commands load checkpoints through :func:`load_model` too.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from reid_masks.errors import UserError
from reid_train.config import Config, apply_overrides, config_from_dict
from reid_train.data import build_transforms
from reid_train.data.transforms import PairedTransform

__all__ = ["LoadedModel", "load_model", "extract_features"]

if TYPE_CHECKING:
    from reid_train.any_images import MaskSources

#: An image path, an HxWx3 uint8 RGB array, a 3xHxW float tensor in [0, 1], or a PIL image.
ImageLike = Union[str, Path, np.ndarray, torch.Tensor, Any]


@dataclass
class LoadedModel:
    """A checkpoint's model (eval mode, on ``device``) with what is needed to use it."""

    model: nn.Module
    config: Config
    device: torch.device
    epoch: int
    checkpoint: Path
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model was trained at."""
        return self.config.data.height, self.config.data.width

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """The evaluation transform: RGB, resized to :attr:`input_size`, normalised (3, H, W)."""
        return self.transform(_as_rgb(image))[0]

    @property
    def transform(self) -> PairedTransform:
        """The evaluation transform of the run (no augmentation)."""
        return build_transforms(self.input_size, mean=self.config.data.mean, std=self.config.data.std)[1]

    def build_dataset(self) -> Any:
        """The dataset the model was trained on (``data.dataset`` at ``data.root``)."""
        from reid_masks.datasets import build_dataset

        d = self.config.data
        return build_dataset(d.dataset, d.root, **d.options)

    def extract_features(self, images: Iterable[ImageLike], batch_size: int | None = None, flip: bool | None = None) -> torch.Tensor:
        """:func:`extract_features` with this model."""
        return extract_features(self, images, batch_size, flip)


def load_model(checkpoint: str | Path, device: str | None = None, overrides: Sequence[str] = ()) -> LoadedModel:
    """A ``reid-train fit`` checkpoint as a :class:`LoadedModel` (weights_only load).

    ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (default: the run's ``train.device``);
    ``overrides``: ``section.key=value`` as with ``--set`` (e.g. ``test.flip=false``).
    Mixed precision and channels-last follow the run's config on CUDA.
    """
    from reid_train.engine.trainer import amp_dtype, load_checkpoint, model_from_checkpoint, resolve_device

    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    cfg = apply_overrides(config_from_dict(ckpt["config"], f"{checkpoint} config"), overrides)
    dev = resolve_device(device or cfg.train.device)
    model, cfg = model_from_checkpoint(ckpt, cfg, checkpoint)
    cuda = dev.type == "cuda"
    amp = amp_dtype(cfg.train.amp, dev)
    channels_last = cfg.train.channels_last and cuda
    model.to(dev).eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return LoadedModel(model, cfg, dev, int(ckpt["epoch"]), checkpoint, amp, channels_last)


def _as_rgb(image: ImageLike) -> np.ndarray | torch.Tensor:
    from reid_masks.imageio import read_image

    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return image
    if hasattr(image, "convert"):  # a PIL image
        return np.asarray(image.convert("RGB"))
    raise TypeError(f"expected an image path, an HxWx3 uint8 array, a PIL image or a 3xHxW tensor, got {type(image).__name__}")


def extract_features(model: LoadedModel, images: Iterable[ImageLike], batch_size: int | None = None,
                     flip: bool | None = None, masks: "MaskSources | None" = None) -> torch.Tensor:
    """(N, D) float32 features of ``images`` (paths, HxWx3 uint8 arrays, PIL images or 3xHxW tensors in [0, 1]).

    Equal to ``reid-train extract`` on the same files. ``batch_size`` and ``flip`` default to
    the run's ``test.batch_size`` and ``test.flip``. Models that need masks at inference
    (MGRAN) take image paths and ``masks``, a :class:`reid_train.any_images.MaskSources`:
    a cache holding the images, or the sources the mask stage makes them from on the spot
    (as ``reid-train extract --images``).
    """
    from reid_train.engine.evaluator import extract_features as extract_batches

    if getattr(model.model, "region_masks", None):
        return _extract_with_masks(model, list(images), masks, flip)
    if masks is not None and masks.given():
        raise UserError(f"masks={masks}: model.name={model.config.model.name} uses no masks at inference")
    bs = int(batch_size or model.config.test.batch_size)
    flip = model.config.test.flip if flip is None else flip
    test_tf = model.transform
    items = list(images)
    if not items:
        return torch.zeros((0, model.model.feature_dim))

    def batches() -> Iterator[dict[str, torch.Tensor]]:  # preprocessed batch by batch: bounded memory
        for start in range(0, len(items), bs):
            chunk = torch.stack([test_tf(_as_rgb(im))[0] for im in items[start:start + bs]])
            unknown = torch.full((len(chunk),), -1)
            yield {"image": chunk, "pid": unknown, "camid": unknown}

    return extract_batches(model.model, batches(), model.device, flip, model.amp_dtype, model.channels_last)[0]


def _extract_with_masks(model: LoadedModel, items: list[ImageLike], masks: "MaskSources | None", flip: bool | None) -> torch.Tensor:
    """MGRAN-style models: image paths only, their masks from ``masks`` (a cache or the mask stage's sources)."""
    import tempfile

    from reid_train.any_images import MaskSources, dataset_of_paths, extract_images
    from reid_train.config import apply_overrides

    if masks is None or not masks.given():
        raise UserError(f"model.name={model.config.model.name} needs the {model.model.region_masks} masks of every image: pass "
                        f"masks=MaskSources(cache=...) or MaskSources(parsing_dir=... / masks_dir=... / backend=...)")
    if not all(isinstance(im, (str, Path)) for im in items):
        raise UserError(f"model.name={model.config.model.name}: give image paths (their masks are looked up or made per file)")
    if not items:
        return torch.zeros((0, model.model.feature_dim))
    cfg = model.config if flip is None else apply_overrides(model.config, [f"test.flip={str(flip).lower()}"])
    with tempfile.TemporaryDirectory(prefix=".reid-extract-") as tmp:
        dataset = dataset_of_paths(items, Path(tmp))
        feats, _, _ = extract_images(model.model, cfg, dataset, model.device, masks, model.amp_dtype, model.channels_last, progress=None)
    return feats
