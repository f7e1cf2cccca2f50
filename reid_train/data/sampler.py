"""P x K identity sampling for batch-hard triplet training.

Every batch holds ``P`` distinct identities with ``K`` images each (MMGA: P=24, K=4, 96
images). **An epoch** visits every training identity once, in a random order: the
identities are shuffled, cut into groups of P, and each identity contributes K images
(drawn without replacement when it has at least K images, with replacement otherwise).
When the number of identities is not a multiple of P, the last group is completed with
identities drawn from the ones already used this epoch, so every batch has exactly
P x K images (a constant batch shape for BatchNorm, cudnn and DDP). An epoch therefore
has ``ceil(num_ids / P)`` batches -- e.g. Market-1501: 751 ids, P=24 -> 32 batches.
This is the epoch of MGN-pytorch's identity sampler. The MMGA paper does not define its
epoch (it follows MGN elsewhere and gives no code), so reading its "900 epochs" this way
is our assumption; torchreid's RandomIdentitySampler instead visits every *image* once
per epoch, an epoch ~4x longer on Market-1501.

The order of epoch ``e`` depends only on ``(seed, e)``, so sampling is deterministic and a
resumed run draws exactly the batches the interrupted run would have drawn; the state is
just ``{"seed", "epoch"}``. Call :meth:`set_epoch` before iterating (like
``DistributedSampler``); the trainer does. ``set_epoch(e, start=k)`` yields the epoch's
batches from the k-th on (a run resumed mid-epoch continues where it stopped).

The samplers yield lists of dataset indices: pass them as ``batch_sampler`` to a
``DataLoader``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from reid_masks.errors import UserError

__all__ = ["IdentitySampler", "DistributedIdentitySampler"]


class IdentitySampler(Sampler[list[int]]):
    """Yields batches of ``num_ids`` (P) identities x ``num_instances`` (K) indices.

    Args:
        pids: identity of every dataset index (e.g. ``[r.pid for r in dataset.train]``).
        num_ids: P, identities per batch.
        num_instances: K, images per identity.
        seed: base seed; epoch ``e`` uses ``numpy.random.default_rng([seed, e])``.
    """

    def __init__(self, pids: Sequence[int], num_ids: int = 24, num_instances: int = 4, seed: int = 0) -> None:
        if num_ids < 1 or num_instances < 1:
            raise UserError(f"sampler: P (data.num_ids) and K (data.num_instances) must be >= 1, got P={num_ids} K={num_instances}")
        index_of: dict[int, list[int]] = defaultdict(list)
        for i, pid in enumerate(pids):
            index_of[int(pid)].append(i)
        self.identities: list[int] = sorted(index_of)
        if len(self.identities) < num_ids:
            raise UserError(
                f"sampler: P={num_ids} identities per batch but the training set has only {len(self.identities)}; lower data.num_ids"
            )
        self.index_of = {pid: np.asarray(ix, dtype=np.int64) for pid, ix in index_of.items()}
        self.num_ids = num_ids
        self.num_instances = num_instances
        self.seed = int(seed)
        self.epoch = 0
        self.start = 0

    @property
    def batch_size(self) -> int:
        """Images per batch yielded by this sampler."""
        return self.num_ids * self.num_instances

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch whose batches the next iteration yields, from batch ``start`` on."""
        self.epoch = int(epoch)
        self.start = int(start)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])

    def __len__(self) -> int:
        return -(-len(self.identities) // self.num_ids)

    def global_batches(self) -> list[list[int]]:
        """This epoch's batches of P x K indices (ordered identity by identity)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = [self.identities[i] for i in rng.permutation(len(self.identities))]
        full = len(order) - len(order) % self.num_ids
        short = (-len(order)) % self.num_ids
        if short:  # complete the last group with distinct ids from the full groups (>= P of them)
            pool = order[:full]
            order += [pool[i] for i in rng.choice(len(pool), size=short, replace=False)]
        batches = []
        for start in range(0, len(order), self.num_ids):
            batch: list[int] = []
            for pid in order[start : start + self.num_ids]:
                ix = self.index_of[pid]
                pick = rng.choice(len(ix), size=self.num_instances, replace=len(ix) < self.num_instances)
                batch.extend(int(i) for i in ix[pick])
            batches.append(batch)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.global_batches()[self.start :]


class DistributedIdentitySampler(IdentitySampler):
    """P x K sampling for DDP: each global batch of P identities is split between ranks.

    Every rank computes the same global batches (same seed and epoch), and rank ``r`` of
    ``W`` takes identities ``[r * P/W, (r+1) * P/W)`` of each, with all their K images. So
    in one step the ranks see disjoint identities, together exactly the P x K images the
    single-process sampler would yield, and every rank has the same number of steps.
    ``num_ids`` is the *global* P and must be divisible by the world size. Losses are
    computed per rank, so batch-hard triplet mining sees the rank's P/W identities only
    (docs/distributed.md).
    """

    def __init__(
        self,
        pids: Sequence[int],
        num_ids: int = 24,
        num_instances: int = 4,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        if num_replicas is None or rank is None:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise RuntimeError("DistributedIdentitySampler needs num_replicas and rank, or an initialised process group")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        if num_ids % num_replicas:
            raise UserError(f"sampler: P={num_ids} identities per batch is not divisible by the world size {num_replicas}")
        super().__init__(pids, num_ids, num_instances, seed)
        self.num_replicas = num_replicas
        self.rank = rank

    @property
    def batch_size(self) -> int:
        return self.num_ids // self.num_replicas * self.num_instances

    def __iter__(self) -> Iterator[list[int]]:
        share = self.batch_size
        for batch in self.global_batches()[self.start :]:
            yield batch[self.rank * share : (self.rank + 1) * share]
