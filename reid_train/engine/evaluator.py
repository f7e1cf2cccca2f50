"""Feature extraction and the standard re-ID evaluation (CMC rank-1/5/10, mAP).

Features follow MMGA / MGN: the model's L2-normalised feature of the image and of its
horizontal flip are averaged and L2-normalised again. Scores come from
:func:`reid_train.evaluation.evaluate_from_features` (torchreid definitions, blocked so
MSMT17-size query x gallery never materialises), or from :func:`evaluate_rank` on the
k-reciprocal re-ranked distance when re-ranking is on (which needs the full matrices).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from reid_masks.datasets import ReIDDataset
from reid_masks.errors import UserError
from reid_masks.fileio import write_json_atomic
from reid_masks.progress import Progress
from reid_masks.workers import detached_worker_init
from reid_train.config import Config
from reid_train.data import ReIDImageDataset, build_transforms
from reid_train.data.cache_check import check_cache_images
from reid_train.data.dataset import damaged_cache_errors
from reid_train.data.regions import expand_region_codes
from reid_train.data.workers import cap_workers
from reid_train.engine import distributed as ddp
from reid_train.models.mgran import region_inputs

__all__ = ["embed", "extract_features", "evaluate_features", "evaluate_model", "build_test_loader", "missing_cache_error", "pool_multi_query", "write_json_atomic"]

logger = logging.getLogger(__name__)


def missing_cache_error(cfg: Config, dataset: ReIDDataset, region_masks: str, cache_key: str = "data.cache") -> UserError:
    """The one line for a mask-needing model (MGRAN) given no mask cache for ``dataset``: names the key to set."""
    return UserError(f"model.name={cfg.model.name} needs the {region_masks} masks of every query/gallery image of "
                     f"{dataset.name} at {dataset.root}: set {cache_key} to that dataset's HDF5 mask cache "
                     f"('reid-masks generate --dataset {dataset.name} --root {dataset.root} --out CACHE.h5')")


def build_test_loader(dataset: ReIDDataset, split: str, cfg: Config, pin_memory: bool = False,
                      region_masks: str | None = None, cache_key: str = "data.cache") -> DataLoader:
    """Images of ``split`` in record order with the evaluation transform (no masks).

    With ``data.cache`` set, the split's images are first checked against the cache
    (:func:`check_cache_images`: changed images and unusable query/gallery rows are a
    UserError; unusable train rows are left out). A cache file that does not exist is
    skipped with a warning for models that need no masks at inference (MMGA family).
    ``region_masks`` (a model's ``region_masks``: MGRAN needs its masks at inference too):
    items also carry the (4, H, W) masks read from ``data.cache``; images the cache lacks
    are a UserError naming the cache file; no cache at all names ``cache_key``, the key to set
    (``data.test_sets[i].cache`` for a test set).
    """
    _, test_tf = build_transforms((cfg.data.height, cfg.data.width), mean=cfg.data.mean, std=cfg.data.std)
    if region_masks and not cfg.data.cache:
        raise missing_cache_error(cfg, dataset, region_masks, cache_key)
    indices = None
    with damaged_cache_errors(cfg.data.cache):
        if cfg.data.cache and (region_masks or Path(cfg.data.cache).is_file()):
            indices = check_cache_images(cfg.data.cache, dataset, [split])[split]
        elif cfg.data.cache:
            logger.warning("data.cache=%s does not exist: the %s images are not checked against it", cfg.data.cache, split)
        ds = ReIDImageDataset(dataset, split, test_tf, cache=cfg.data.cache if region_masks else None, region_masks=region_masks,
                              indices=indices)
    workers = cap_workers(cfg.data.num_workers)
    return DataLoader(ds, batch_size=cfg.test.batch_size, shuffle=False, num_workers=workers, pin_memory=pin_memory,
                      worker_init_fn=detached_worker_init if workers else None)


def embed(
    model: nn.Module,
    images: torch.Tensor,
    flip: bool = True,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    region_masks: torch.Tensor | None = None,
) -> torch.Tensor:
    """The evaluation forward: (N, D) float32 L2-normalised features of a batch of preprocessed images.

    ``images``: (N, 3, H, W) normalised, at the model's input size, on the model's device;
    the model must be in eval mode (its forward then returns the normalised feature).
    ``flip``: the image's and its horizontal flip's features are summed and normalised
    again. ``region_masks`` (MGRAN): (N, C, H, W) masks; flipping the inputs flips images
    and masks alike. Shared by evaluation, ``extract`` and :class:`reid_train.inference.LoadedModel`.
    """
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if region_masks is not None:  # MGRAN: (N, C, 3, H, W)
        images = region_inputs(images, region_masks)
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        f = model(images).float()
        if flip:
            f = f + model(images.flip(-1)).float()
    return F.normalize(f, dim=1)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    flip: bool = True,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    progress: str | None = None,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(features (N, D) float32 on CPU, pids, camids) for every item of ``loader``, in order.

    The model is put in eval mode (its forward then returns the normalised feature);
    the caller restores train mode. ``flip``: average with the flipped image's feature.
    ``progress``: a label; images done, images/s and ETA are then reported on stderr.
    uint8 images (a :class:`ReIDImageDataset` loader) are normalised on ``device`` by the
    dataset's transform, and MGRAN's region code maps expanded there; float images are
    taken as already normalised.
    """
    model.eval()
    feats, pids, camids = [], [], []
    meter = Progress(len(loader.dataset), progress) if progress and len(loader.dataset) else None
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = image_dataset(loader).transform.normalize(images, batch.get("erase"))
        masks = None
        if "region_codes" in batch:  # MGRAN: the code map expanded to its (N, C, H, W) masks on the device
            codes = batch["region_codes"].to(device, non_blocking=True)
            masks = expand_region_codes(codes, image_dataset(loader).region_masks.kind)
        feats.append(embed(model, images, flip, amp_dtype, channels_last, masks).cpu())
        pids.append(batch["pid"].numpy())
        camids.append(batch["camid"].numpy())
        if meter is not None:
            meter.update(len(feats[-1]))
    if not feats:
        raise ValueError("no images to extract features from")
    return torch.cat(feats), np.concatenate(pids), np.concatenate(camids)


def image_dataset(loader: Any) -> ReIDImageDataset:
    """The :class:`ReIDImageDataset` under ``loader`` (through any ``Subset``): its transform
    normalises the uint8 images, its region masks' kind expands the code maps."""
    ds = getattr(loader, "dataset", None)
    while ds is not None and not isinstance(ds, ReIDImageDataset):
        ds = getattr(ds, "dataset", None)
    if ds is None:
        raise TypeError("uint8 images and region codes need the ReIDImageDataset under the loader")
    return ds


def pool_multi_query(
    qf: torch.Tensor,
    q_pids: np.ndarray,
    q_camids: np.ndarray,
    mf: torch.Tensor,
    m_pids: np.ndarray,
    m_camids: np.ndarray,
    mode: str = "mean",
) -> torch.Tensor:
    """Multi-query features: per query, its identity's images from its camera, pooled.

    Market-1501's multiple-query setting (Zheng et al., ICCV 2015, and the dataset's
    evaluation code): query ``i`` is represented by the ``mode`` ("mean" or "max",
    element-wise) of the features ``mf`` of every multi-query (``gt_bbox``) image with the
    query's identity *and* camera, L2-normalised again (so the pooled feature lives on
    the same sphere as the gallery's). A query with no such image keeps its own feature.
    """
    if mode not in ("mean", "max"):
        raise ValueError(f"multi-query pooling must be 'mean' or 'max', got {mode!r}")
    out = qf.clone()
    key = {}
    for j, (p, c) in enumerate(zip(m_pids.tolist(), m_camids.tolist())):
        key.setdefault((p, c), []).append(j)
    for i, (p, c) in enumerate(zip(q_pids.tolist(), q_camids.tolist())):
        members = key.get((p, c))
        if members:
            group = mf[members].to(qf.dtype)
            out[i] = group.mean(dim=0) if mode == "mean" else group.amax(dim=0)
    return F.normalize(out, dim=1)


def _cmc_at(cmc: np.ndarray, k: int) -> float:
    """CMC at rank k; the evaluation clips max_rank to the gallery size, so clip k likewise."""
    return float(cmc[min(k, len(cmc)) - 1])


def evaluate_features(
    qf: torch.Tensor,
    gf: torch.Tensor,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    metric: str = "euclidean",
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    cuhk03_metric: bool = False,
    seed: int | None = None,
) -> dict[str, Any]:
    """``{rank1, rank5, rank10, mAP, num_query, num_gallery}`` (fractions in [0, 1]).

    ``cuhk03_metric``: the CMC of the CUHK03 classic protocol (torchreid's ``eval_cuhk03``:
    one random gallery image per identity, 10 draws averaged; ``seed`` seeds the draws,
    see ``evaluate_rank``); mAP is computed over the whole gallery either way.
    """
    from reid_train.evaluation import compute_distance_matrix, evaluate_from_features, evaluate_rank, re_ranking

    max_rank = max(1, min(50, len(g_pids)))  # small (test) galleries: no warning, CMC clipped as evaluate_rank does
    if rerank:
        # torchreid's recipe: the three matrices of compute_distance_matrix go to re_ranking.
        qg = compute_distance_matrix(qf, gf, metric)
        qq = compute_distance_matrix(qf, qf, metric)
        gg = compute_distance_matrix(gf, gf, metric)
        distmat = re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lambda_value)
        cmc, mAP = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank,
                                 use_metric_cuhk03=cuhk03_metric, seed=seed)
    else:
        cmc, mAP = evaluate_from_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=metric, max_rank=max_rank,
                                          use_metric_cuhk03=cuhk03_metric, seed=seed)
    return {
        "rank1": _cmc_at(cmc, 1),
        "rank5": _cmc_at(cmc, 5),
        "rank10": _cmc_at(cmc, 10),
        "mAP": float(mAP),
        "num_query": int(len(q_pids)),
        "num_gallery": int(len(g_pids)),
    }


def evaluate_model(
    model: nn.Module,
    dataset: ReIDDataset,
    cfg: Config,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    log_result: bool = True,
    progress: bool = False,
    cache_key: str = "data.cache",
) -> dict[str, Any]:
    """Extract query and gallery features with ``cfg.test`` settings and score them.

    The dataset's protocol picks the metric: CUHK03's classic splits (``data.options.protocol:
    classic``) are scored with the CUHK03 single-shot CMC, its draws seeded with
    ``train.seed``; the results name the protocol (and the classic ``split_id``).
    ``test.multi_query`` (mean / max) replaces every query feature by its pooled
    multi-query feature (:func:`pool_multi_query`) before ranking.
    ``log_result``: log the result line (the CLI prints it on stdout instead, once);
    ``progress``: report images/s and ETA per split on stderr (rank 0); ``cache_key``: the
    config key of ``cfg.data.cache`` for messages (``data.test_sets[i].cache`` for a test set).
    """
    start = time.perf_counter()
    pin = device.type == "cuda"
    mode = cfg.test.multi_query
    splits = ("query", "gallery")
    if mode != "none":
        if not dataset.multi_query:
            raise UserError(f"test.multi_query={mode}: {dataset.name} at {dataset.root} has no multi-query images "
                            f"(Market-1501's gt_bbox/ folder); set test.multi_query=none")
        splits += ("multi_query",)
    feats = {}
    for split in splits:
        loader = build_test_loader(dataset, split, cfg, pin_memory=pin, region_masks=getattr(model, "region_masks", None),
                                   cache_key=cache_key)
        # under DDP each rank extracts a shard of whole batches; all ranks get all features
        label = f"{split} features" if progress and ddp.rank() == 0 else None
        feats[split] = ddp.extract_features_distributed(model, loader, device, cfg.test.flip, amp_dtype, channels_last, progress=label)
    (qf, qp, qc), (gf, gp, gc) = feats["query"], feats["gallery"]
    if mode != "none":
        qf = pool_multi_query(qf, qp, qc, *feats["multi_query"], mode=mode)
    if device.type == "cuda" and not cfg.test.rerank:
        qf, gf = qf.to(device), gf.to(device)  # blocked distances on the GPU
    t = cfg.test
    classic = dataset.info.get("protocol") == "classic"
    results = None
    if ddp.rank() == 0:
        results = evaluate_features(qf, gf, qp, gp, qc, gc, t.metric, t.rerank, t.k1, t.k2, t.lambda_value,
                                    cuhk03_metric=classic, seed=cfg.train.seed)
        results["protocol"] = "cuhk03_classic" if classic else "standard"
        results["multi_query"] = mode
        if classic:
            results["split_id"] = int(dataset.info["split_id"])
    results = ddp.broadcast_object(results)  # DDP: rank 0 scores, every rank returns its numbers
    if log_result:
        logger.info("evaluation on %s (%.1fs)", result_line(results, dataset.name, cfg), time.perf_counter() - start)
    return results


def result_line(results: dict[str, Any], dataset_name: str, cfg: Config) -> str:
    """``<dataset> (Q query, G gallery; <how>): rank-1 .. mAP ..`` -- the one result line, saying how it was scored."""
    t = cfg.test
    how = [f"{results.get('protocol', 'standard')} protocol", t.metric, "flip-averaged" if t.flip else "no flip",
           f"re-ranked k1={t.k1} k2={t.k2} lambda={t.lambda_value:g}" if t.rerank else "no re-ranking"]
    if results.get("multi_query", "none") != "none":
        how.append(f"multi-query {results['multi_query']}")
    return (f"{dataset_name} ({results['num_query']} query, {results['num_gallery']} gallery; {', '.join(how)}): "
            f"rank-1 {100 * results['rank1']:.2f}%  rank-5 {100 * results['rank5']:.2f}%  "
            f"rank-10 {100 * results['rank10']:.2f}%  mAP {100 * results['mAP']:.2f}%")


