"""DataLoader worker counts that fit the machine the run is on."""
from __future__ import annotations

import logging
import os

__all__ = ["available_cpus", "cap_workers"]

logger = logging.getLogger(__name__)
_reported: set[tuple[int, int]] = set()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a Slurm allocation), not the host's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def cap_workers(requested: int) -> int:
    """``data.num_workers`` capped at :func:`available_cpus`: the paper configs ask for 8, which on a
    small machine only oversubscribes it (and makes PyTorch warn). Said once per value, at info level."""
    cpus = available_cpus()
    if requested <= cpus:
        return requested
    if (requested, cpus) not in _reported:
        _reported.add((requested, cpus))
        logger.info("data.num_workers=%d capped at %d, the CPUs available to this process", requested, cpus)
    return cpus
