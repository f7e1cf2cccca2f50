"""DDP plumbing of reid-train: process group from torchrun's environment, sharded evaluation,
SyncBatchNorm, buffer sync and the per-rank parameter checksum debug dump.

Everything here is a no-op in a single process (no ``WORLD_SIZE`` > 1 in the environment,
or no initialised process group), so the same code paths serve 1 and N processes.
See docs/distributed.md.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

__all__ = [
    "env_world_size", "env_rank", "init_from_env", "is_distributed", "rank", "world_size",
    "barrier", "broadcast_buffers", "maybe_sync_bn", "shard_loader", "all_gather_rows",
    "extract_features_distributed", "broadcast_object", "weight_checksums", "dump_param_checksums", "CHECKSUM_ENV",
]

logger = logging.getLogger(__name__)

#: Debug feature: when set to a folder, every rank writes ``param_checksum_rank{r}.json``
#: there at the end of ``Trainer.fit`` (used by tests/test_ddp.py to check that the ranks'
#: weights stay identical). Kept out of ``train.output_dir``, which only rank 0 writes.
CHECKSUM_ENV = "REID_TRAIN_PARAM_CHECKSUM_DIR"


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE``/``RANK``/``MASTER_*``).

    NCCL for CUDA devices (each process takes ``cuda:LOCAL_RANK``), gloo for CPU. Returns
    the device this process uses. Without ``WORLD_SIZE`` > 1 it returns ``device`` unchanged.
    """
    if env_world_size() <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy)
    return device


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collectives' tensors must live: the current GPU for NCCL, else CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running stats) to every rank.

    DDP keeps parameters identical, but each rank's last forward updates its BN running
    stats from its own images; this makes the model every rank evaluates the one rank 0
    checkpoints.
    """
    if not is_distributed():
        return
    dev = _comm_device()
    for buf in module.buffers():
        t = buf.detach().to(dev)
        dist.broadcast(t, src)
        if t is not buf:
            buf.copy_(t)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (identity in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def maybe_sync_bn(model: nn.Module, enabled: bool, device: torch.device, n_procs: int) -> nn.Module:
    """``train.sync_bn``: BatchNorm layers -> SyncBatchNorm (batch statistics over all ranks).

    Only under DDP (``n_procs`` > 1) and on CUDA: torch's SyncBatchNorm does not train on
    CPU tensors, so a CPU run warns and keeps per-rank BatchNorm. Parameters are kept (the
    same tensors), so call it before building the optimizer and before wrapping in DDP.
    """
    if not enabled or n_procs <= 1:
        return model
    if device.type != "cuda":
        if env_rank() == 0:
            logger.warning("train.sync_bn=true is ignored on %s (torch's SyncBatchNorm needs CUDA); "
                           "BatchNorm statistics stay per rank", device)
        return model
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    logger.info("SyncBatchNorm: BatchNorm statistics are computed over all %d ranks", n_procs)
    return model


def shard_loader(loader: DataLoader, shard: int, num_shards: int) -> DataLoader:
    """The ``shard``-th contiguous block of ``loader``'s *batches* (a sequential loader).

    Cutting at batch boundaries makes every rank run exactly the batches a single process
    runs, so features (and scores) are bitwise those of single-process evaluation. A shard
    may be empty when there are fewer batches than ranks.
    """
    bs = loader.batch_size
    n = len(loader.dataset)
    batches = -(-n // bs)
    lo, hi = shard * batches // num_shards, (shard + 1) * batches // num_shards
    sub = Subset(loader.dataset, range(min(lo * bs, n), min(hi * bs, n)))
    return DataLoader(sub, batch_size=bs, shuffle=False, num_workers=loader.num_workers, pin_memory=loader.pin_memory)


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenation over ranks (in rank order) of every rank's ``t`` of shape (n_r, ...); n_r may differ or be 0."""
    dev = _comm_device()
    t = t.to(dev)
    n = torch.tensor([t.shape[0]], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    padded = torch.zeros((max(counts),) + tuple(t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t
    out = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(out, padded)
    return torch.cat([o[:c] for o, c in zip(out, counts)]).cpu()


def extract_features_distributed(model: nn.Module, loader: DataLoader, device: torch.device, *args: Any,
                                 **kwargs: Any) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """:func:`extract_features` of the whole ``loader``, each rank extracting one shard.

    Every rank gets all features, in ``loader`` order (all_gather). In a single process it
    is plain :func:`extract_features`.
    """
    from reid_train.engine.evaluator import extract_features

    if not is_distributed():
        return extract_features(model, loader, device, *args, **kwargs)
    part = shard_loader(loader, dist.get_rank(), dist.get_world_size())
    if len(part.dataset):
        feats, pids, camids = extract_features(model, part, device, *args, **kwargs)
    else:  # fewer batches than ranks: contribute nothing (the feature width comes from the others)
        model.eval()
        feats, pids, camids = torch.zeros((0, 0)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    width = torch.tensor([feats.shape[1]], dtype=torch.int64, device=_comm_device())
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    if feats.shape[1] != int(width.item()):
        feats = feats.new_zeros((0, int(width.item())))
    return (all_gather_rows(feats),
            all_gather_rows(torch.as_tensor(np.asarray(pids, np.int64))).numpy(),
            all_gather_rows(torch.as_tensor(np.asarray(camids, np.int64))).numpy())


def weight_checksums(model: nn.Module) -> dict[str, Any]:
    """``{params_sha256, buffers_sha256, param_sums}`` of ``model``: SHA-256 over the exact
    bytes of every parameter (resp. buffer) in ``state_dict`` order, and per-parameter sums."""
    buffer_names = {name for name, _ in model.named_buffers()}
    params, buffers = hashlib.sha256(), hashlib.sha256()
    sums: dict[str, float] = {}
    for name, value in model.state_dict().items():
        data = value.detach().cpu().contiguous().reshape(-1)
        h = buffers if name in buffer_names else params
        h.update(name.encode())
        h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        if name not in buffer_names:
            sums[name] = float(data.double().sum())
    return {"params_sha256": params.hexdigest(), "buffers_sha256": buffers.hexdigest(), "param_sums": sums}


def dump_param_checksums(model: nn.Module, epoch: int) -> Path | None:
    """Debug: with ``$REID_TRAIN_PARAM_CHECKSUM_DIR`` set, write this rank's weight checksums.

    ``param_checksum_rank{r}.json`` = ``{rank, world_size, epoch}`` + :func:`weight_checksums`.
    Returns the path, or None when the variable is unset.
    """
    folder = os.environ.get(CHECKSUM_ENV)
    if not folder:
        return None
    r = rank()
    out = Path(folder) / f"param_checksum_rank{r}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"rank": r, "world_size": world_size(), "epoch": epoch, **weight_checksums(model)}
    out.write_text(json.dumps(record, indent=1) + "\n")
    return out
