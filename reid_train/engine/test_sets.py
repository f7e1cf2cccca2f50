"""Cross-dataset evaluation: train on one dataset, score the query/gallery of others.

Occluded-REID, Partial-REID and Partial-iLIDS have no training split; their protocol
trains on Market-1501 and tests on them. ``data.test_sets`` lists the sets to score,
each ``{dataset, root, cache, options}`` with its own root and mask cache (MGRAN needs
the test images' masks); empty, the training dataset's own query/gallery is scored.
Every set is evaluated with the same ``test`` settings; the first set's numbers are
the run's headline (metrics.jsonl, ``fit``'s last line), all of them go to the
evaluation record under ``test_sets`` (reid_train/results.py).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from reid_masks.datasets import ReIDDataset, build_dataset
from reid_masks.errors import UserError
from reid_train.config import Config
from reid_train.engine.evaluator import evaluate_model, missing_cache_error

__all__ = ["TestSet", "build_test_sets", "check_test_set_caches", "evaluate_test_sets"]


@dataclass
class TestSet:
    """A dataset to score and the config to score it with (``data`` pointing at that set)."""

    dataset: ReIDDataset
    cfg: Config
    key: str = "data"  # where the set is configured, for messages: "data" or "data.test_sets[i]"

    @property
    def cache_key(self) -> str:
        """The config key of this set's mask cache (``data.cache``, ``data.test_sets[i].cache``)."""
        return f"{self.key}.cache"


def build_test_sets(cfg: Config, train_dataset: ReIDDataset | None = None) -> list[TestSet]:
    """The sets ``cfg`` evaluates on; ``train_dataset`` is reused when no ``data.test_sets`` is given."""
    d = cfg.data
    if not d.test_sets:
        return [TestSet(train_dataset or build_dataset(d.dataset, d.root, **d.options), cfg)]
    sets = []
    for i, entry in enumerate(d.test_sets):
        sub = copy.deepcopy(cfg)
        sub.data.dataset, sub.data.root = entry["dataset"], entry["root"]
        sub.data.cache, sub.data.options = entry.get("cache", ""), dict(entry.get("options") or {})
        sub.data.test_sets = []
        dataset = build_dataset(sub.data.dataset, sub.data.root, **sub.data.options)
        if not dataset.query or not dataset.gallery:
            raise UserError(f"data.test_sets[{i}] ({dataset.name} at {sub.data.root}): the query or gallery split is empty")
        sets.append(TestSet(dataset, sub, f"data.test_sets[{i}]"))
    return sets


def check_test_set_caches(test_sets: list[TestSet], model: nn.Module) -> None:
    """Before any work: a model that needs masks at inference (MGRAN) has a cache for every set,
    else the one line naming the set and its key (``data.test_sets[i].cache``)."""
    regions = getattr(model, "region_masks", None)
    for s in test_sets:
        if regions and not s.cfg.data.cache:
            raise missing_cache_error(s.cfg, s.dataset, regions, s.cache_key)


def evaluate_test_sets(
    model: nn.Module,
    test_sets: list[TestSet],
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    **evaluate_options: Any,
) -> dict[str, Any]:
    """The first set's results at the top level, each set's (with its name) under ``test_sets``.

    ``evaluate_options`` go to :func:`evaluate_model` (e.g. ``log_result``, ``progress``).
    """
    check_test_set_caches(test_sets, model)
    per_set = [
        {**evaluate_model(model, s.dataset, s.cfg, device, amp_dtype, channels_last, cache_key=s.cache_key, **evaluate_options),
         "dataset": s.dataset.name, "root": s.cfg.data.root, "cache": s.cfg.data.cache, "options": dict(s.cfg.data.options)}
        for s in test_sets
    ]
    return {**per_set[0], "test_sets": per_set}
