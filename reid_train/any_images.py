"""Features of any images, not only a dataset's split: ``reid-train extract --images DIR_OR_LIST``.

A folder of crops (read recursively) or a list file goes through the ``images`` dataset
adapter (:mod:`reid_masks.datasets.images`), so the mask stage and the trainer read it the
same way. Models that need masks at inference (MGRAN) get them from a cache the user gives,
or from the mask stage run on the spot (``reid-masks generate --dataset images``) with the
sources the user gives: precomputed parsing or person-mask PNGs, or a detector backend.
One log line says which.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from reid_masks.errors import UserError

if TYPE_CHECKING:
    import torch

    from reid_masks.datasets import ReIDDataset

logger = logging.getLogger(__name__)

__all__ = ["MaskSources", "images_dataset", "extract_images"]


@dataclass(frozen=True)
class MaskSources:
    """Where the masks of images outside any cache come from (for models that need them).

    ``cache``: a mask cache that holds the images (by path relative to the images folder);
    else the mask stage runs with ``parsing_dir`` (LIP PNGs at the images' relative paths),
    ``masks_dir`` (person-mask PNGs) and/or ``backend`` (``torchvision`` / ``detectron2``,
    its weights from the usual caches), as ``reid-masks generate`` would.
    """

    cache: Path | None = None
    parsing_dir: Path | None = None
    masks_dir: Path | None = None
    backend: str | None = None

    def set_options(self) -> list[tuple[str, Any]]:
        """(command-line flag, value) of each source set."""
        flags = {"cache": "--mask-cache", "parsing_dir": "--parsing-dir", "masks_dir": "--masks-dir", "backend": "--backend"}
        return [(flag, getattr(self, key)) for key, flag in flags.items() if getattr(self, key) is not None]

    def given(self) -> list[str]:
        """The options set, as the command line names them."""
        return [flag for flag, _ in self.set_options()]


def images_dataset(images: str | Path) -> ReIDDataset:
    """A folder (every image under it) or a list file (paths relative to the list's folder) as a dataset."""
    from reid_masks.datasets import build_dataset

    images = Path(images).expanduser().absolute()
    if images.is_file():
        return build_dataset("images", images.parent, list_file=str(images))
    if not images.exists():
        raise UserError(f"--images {images}: no such folder or list file")
    return build_dataset("images", images)


def mask_cache_for(dataset: ReIDDataset, sources: MaskSources, workdir: Path) -> tuple[Path, str]:
    """(a mask cache holding every image of ``dataset``, how it was obtained)."""
    if sources.cache is not None:
        if len(sources.given()) > 1:
            raise UserError(f"--mask-cache reads the masks; {', '.join(sources.given()[1:])} would make them: give one or the other")
        from reid_masks.cache import MaskCache

        with MaskCache(sources.cache) as cache:
            if cache.dataset != "images":
                raise UserError(f"--mask-cache {sources.cache}: a cache of dataset {cache.dataset!r}; the masks of an images folder come "
                                f"from 'reid-masks generate --dataset images --root {dataset.root}' (or give --parsing-dir / "
                                f"--masks-dir / --backend to make them here)")
        return Path(sources.cache), f"masks read from {sources.cache}"
    if not sources.given():
        raise UserError("this model needs the masks of every image: give --mask-cache FILE, or sources to make them "
                        "with the mask stage (--parsing-dir DIR, --masks-dir DIR or --backend torchvision)")
    from reid_masks.generate import GenerateConfig, generate

    opts = {"list_file": dataset.info.get("list_file", "")}
    out = workdir / "masks.h5"
    cfg = GenerateConfig(dataset="images", root=dataset.root, out=out, dataset_options=opts, parsing_dir=sources.parsing_dir,
                         masks_dir=sources.masks_dir, backend=sources.backend or "auto", workers=0,
                         command="reid-train extract --images (masks made on the spot)")
    generate(cfg)
    made = ", ".join(f"{flag} {value}" for flag, value in sources.set_options())
    return out, f"masks made by the mask stage (reid-masks generate --dataset images) from {made}"


def extract_images(model: torch.nn.Module, cfg: Any, dataset: ReIDDataset, device: torch.device, sources: MaskSources,
                   amp_dtype: torch.dtype | None = None, channels_last: bool = False,
                   progress: str | None = "features") -> tuple[torch.Tensor, list[str], str]:
    """(L2-normalised features in record order, the records' relative paths, where the masks came from).

    Mask-free models take the images alone (a mask source given to them is refused: it would be
    ignored); mask-needing models (``region_masks``) get theirs from :func:`mask_cache_for`.
    """
    from reid_train.config import apply_overrides
    from reid_train.engine.evaluator import build_test_loader, extract_features

    region = getattr(model, "region_masks", None)
    if not region and sources.given():
        raise UserError(f"{', '.join(sources.given())}: model.name={cfg.model.name} uses no masks at inference; drop the option(s)")
    cfg = apply_overrides(cfg, ["data.cache=null"]) if not region else cfg
    with tempfile.TemporaryDirectory(prefix=".reid-extract-", dir=os.environ.get("TMPDIR")) as tmp:
        how = "no masks (the model needs none)"
        if region:
            cache, how = mask_cache_for(dataset, sources, Path(tmp))
            cfg = apply_overrides(cfg, [f"data.cache={cache}"])
        logger.info("extract: %d image(s) under %s; %s", len(dataset.query), dataset.root, how)
        loader = build_test_loader(dataset, "query", cfg, pin_memory=device.type == "cuda", region_masks=region)
        feats, _, _ = extract_features(model, loader, device, cfg.test.flip, amp_dtype, channels_last, progress=progress)
    return feats, [r.path for r in loader.dataset.records], how


def dataset_of_paths(paths: Sequence[str | Path], workdir: Path) -> ReIDDataset:
    """The image files ``paths`` as an ``images`` dataset rooted at their common folder (its list written in ``workdir``)."""
    from reid_masks.datasets import build_dataset

    absolute = [Path(p).expanduser().absolute() for p in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    listed = workdir / "images.txt"
    listed.write_text("".join(p.relative_to(common).as_posix() + "\n" for p in absolute), encoding="utf-8")
    return build_dataset("images", common, list_file=str(listed))
