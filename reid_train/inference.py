"""A trained checkpoint as a feature extractor (torchreid's ``FeatureExtractor``, without the bookkeeping).

::

    from reid_train import load_model, extract_features
    model = load_model("runs/mmga_market1501/checkpoint.pth")       # an nn.Module in eval mode
    feats = model(images)                                            # (N, 3, H, W) in [0, 1] -> (N, D)
    feats = extract_features(model, ["a.jpg", "b.jpg"])              # (2, D), as `reid-train extract`

The checkpoint carries the config (architecture, class count, input size, mean/std, flip),
so nothing has to be repeated by hand. Features are computed by the same code as
``reid-train evaluate``/``extract`` (:func:`reid_train.engine.evaluator.embed`):
L2-normalised, averaged with the horizontal flip when ``test.flip`` is on.
The CLI commands load checkpoints through :func:`load_model` too.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from reid_masks.errors import UserError
from reid_train.config import Config, apply_overrides, config_from_dict
from reid_train.data import build_transforms
from reid_train.data.transforms import PairedTransform

__all__ = ["LoadedModel", "load_model", "extract_features"]

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from reid_train.any_images import MaskSources

#: An image path, an HxWx3 uint8 RGB array, a 3xHxW float tensor in [0, 1], or a PIL image.
ImageLike = Union[str, Path, np.ndarray, torch.Tensor, Any]


class LoadedModel(nn.Module):
    """A checkpoint's model as an ``nn.Module`` whose forward is the evaluation forward.

    ``loaded(images)`` takes a (N, 3, H, W) tensor (RGB, float in [0, 1] or uint8; any
    H x W) or a sequence of :data:`ImageLike`, applies the run's evaluation preprocessing
    (:attr:`transform`: resize to :attr:`input_size`, normalise) and returns the (N, D)
    L2-normalised features, averaged with the flipped image's when ``test.flip`` -- what
    ``reid-train evaluate``/``extract`` compute. It is returned in eval mode; ``.to()``,
    ``.eval()``, ``.training``, ``state_dict()`` work as on any module.

    Attributes: ``model`` -- the bare network (the ``model.name`` class, e.g.
    :class:`reid_train.models.MMGA`) whose weights this holds: its eval forward takes
    preprocessed images and gives the un-flipped feature, its train forward the training
    outputs; use it to fine-tune or to read attention maps. ``config`` -- the run's config
    with any overrides; ``train_config`` -- as trained; ``epoch``, ``checkpoint``; ``device``,
    ``amp_dtype``, ``channels_last`` follow where the module is (CUDA speed-ups only there).
    """

    def __init__(self, model: nn.Module, config: Config, epoch: int, checkpoint: Path,
                 train_config: Config | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.train_config = train_config or config
        self.epoch = epoch
        self.checkpoint = checkpoint

    @property
    def device(self) -> torch.device:
        """Where the weights are (follows ``.to()``)."""
        return next(self.model.parameters()).device

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """Autocast dtype of ``train.amp`` on :attr:`device` (None: float32; CPU is always float32)."""
        from reid_train.engine.trainer import amp_dtype

        return amp_dtype(self.config.train.amp, self.device)

    @property
    def channels_last(self) -> bool:
        """``train.channels_last``, on CUDA only."""
        return self.config.train.channels_last and self.device.type == "cuda"

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model was trained at."""
        return self.config.data.height, self.config.data.width

    @property
    def transform(self) -> PairedTransform:
        """The evaluation transform of the run (no augmentation)."""
        return build_transforms(self.input_size, mean=self.config.data.mean, std=self.config.data.std)[1]

    def preprocess(self, image: ImageLike) -> torch.Tensor:
        """The evaluation transform: RGB, resized to :attr:`input_size`, normalised (3, H, W)."""
        return self.transform(_as_rgb(image))[0]

    def forward(self, images: torch.Tensor | Sequence[ImageLike], flip: bool | None = None) -> torch.Tensor:
        """(N, D) float32 features on :attr:`device` of ``images`` (class docstring); ``flip``
        defaults to ``test.flip``. Runs with autograd as any module; wrap it in ``torch.no_grad()``."""
        from reid_train.engine.evaluator import embed

        if self.training:
            raise RuntimeError("LoadedModel's forward is the evaluation forward: call .eval() first "
                               "(train the network itself through .model)")
        regions = getattr(self.model, "region_masks", None)
        if regions:
            raise UserError(f"model.name={self.config.model.name} needs the {regions} masks of every image: use "
                            f"extract_features(model, paths, masks=MaskSources(...)) or 'reid-train extract --images'")
        if len(images) == 0:
            return torch.zeros((0, self.model.feature_dim), device=self.device)
        tf = self.transform
        batch = torch.stack([tf(_as_rgb(im))[0] for im in images]).to(self.device)
        return embed(self.model, batch, self.config.test.flip if flip is None else flip, self.amp_dtype, self.channels_last)

    def build_dataset(self) -> Any:
        """The dataset of ``data.dataset`` at ``data.root`` (the training set unless overridden)."""
        from reid_masks.datasets import build_dataset

        d = self.config.data
        return build_dataset(d.dataset, d.root, **d.options)

    def extract_features(self, images: Iterable[ImageLike], batch_size: int | None = None, flip: bool | None = None) -> torch.Tensor:
        """:func:`extract_features` with this model."""
        return extract_features(self, images, batch_size, flip)


def _other_dataset_without_cache(trained: Config, cfg: Config) -> Config:
    """``cfg`` without the training set's mask cache when the overrides point at another dataset.

    A cache describes one dataset copy: with ``data.dataset``/``data.root``/``data.options``
    changed and ``data.cache`` not, it would refuse every image. A mask-free model (MMGA
    family) then needs none; MGRAN is told to set ``data.cache`` to that dataset's cache.
    """
    t, d = trained.data, cfg.data
    if d.cache and d.cache == t.cache and (d.dataset, d.root, d.options) != (t.dataset, t.root, t.options):
        logger.info("data.cache=%s is the training set's mask cache, not one of %s at %s: not used "
                    "(set data.cache to that dataset's cache to check its images or give masks)", d.cache, d.dataset, d.root)
        d.cache = ""
    return cfg


def load_model(checkpoint: str | Path, device: str | None = None, overrides: Sequence[str] = (),
               command: str = "evaluate") -> LoadedModel:
    """A ``reid-train fit`` checkpoint as a :class:`LoadedModel` (weights_only load), in eval mode.

    ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (default: the run's ``train.device``);
    ``overrides``: ``section.key=value`` as with ``--set`` (e.g. ``test.flip=false``), checked
    as for the ``reid-train`` ``command`` (a key it does not read is refused).
    Mixed precision and channels-last follow the run's config on CUDA.
    """
    from reid_train.engine.trainer import load_checkpoint, model_from_checkpoint, resolve_device

    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint, map_location="cpu")
    trained = config_from_dict(ckpt["config"], f"{checkpoint} config")
    cfg = _other_dataset_without_cache(trained, apply_overrides(trained, overrides, command))
    dev = resolve_device(device or cfg.train.device)
    model, cfg = model_from_checkpoint(ckpt, cfg, checkpoint)
    loaded = LoadedModel(model, cfg, int(ckpt["epoch"]), checkpoint, trained).to(dev).eval()
    if loaded.channels_last:
        model.to(memory_format=torch.channels_last)
    return loaded


def _as_rgb(image: ImageLike) -> np.ndarray | torch.Tensor:
    from reid_masks.imageio import read_image, to_rgb8

    if isinstance(image, (str, Path)):
        return read_image(image)
    if isinstance(image, (np.ndarray, torch.Tensor)):
        return image
    if hasattr(image, "convert"):  # a PIL image (16-bit grey scaled as read_image does)
        return to_rgb8(image)
    raise TypeError(f"expected an image path, an HxWx3 uint8 array, a PIL image or a 3xHxW tensor, got {type(image).__name__}")


def extract_features(model: LoadedModel, images: Iterable[ImageLike], batch_size: int | None = None,
                     flip: bool | None = None, masks: "MaskSources | None" = None) -> torch.Tensor:
    """(N, D) float32 CPU features of ``images`` (paths, HxWx3 uint8 arrays, PIL images or 3xHxW tensors in [0, 1]).

    ``model(batch)`` batch by batch (bounded memory), without autograd: equal to
    ``reid-train extract`` on the same files. ``batch_size`` and ``flip`` default to the
    run's ``test.batch_size`` and ``test.flip``. Models that need masks at inference
    (MGRAN) take image paths and ``masks``, a :class:`reid_train.any_images.MaskSources`:
    a cache holding the images, or the sources the mask stage makes them from on the spot
    (as ``reid-train extract --images``).
    """
    if getattr(model.model, "region_masks", None):
        return _extract_with_masks(model, list(images), masks, flip)
    if masks is not None and masks.given():
        raise UserError(f"masks={masks}: model.name={model.config.model.name} uses no masks at inference")
    bs = int(batch_size or model.config.test.batch_size)
    items = list(images)
    with torch.no_grad():
        feats = [model(items[start:start + bs], flip=flip).cpu() for start in range(0, len(items), bs)]
    return torch.cat(feats) if feats else model(items, flip=flip).cpu()


def _extract_with_masks(model: LoadedModel, items: list[ImageLike], masks: "MaskSources | None", flip: bool | None) -> torch.Tensor:
    """MGRAN-style models: image paths only, their masks from ``masks`` (a cache or the mask stage's sources)."""
    import tempfile

    from reid_train.any_images import dataset_of_paths, extract_images
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
