"""Shared fixtures: synthetic datasets in the real layouts, written once per test session."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from reid_masks.synth.layouts import synthesize


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``synth_dataset(layout, ids=4, seed=0)`` -> root of a synthetic copy (cached per arguments)."""
    made: dict[tuple, Path] = {}

    def make(layout: str, ids: int = 4, seed: int = 0) -> Path:
        key = (layout, ids, seed)
        if key not in made:
            root = tmp_path_factory.mktemp(f"{layout}-{ids}-{seed}")
            synthesize(layout, root, ids=ids, seed=seed, workers=1)
            made[key] = root
        return made[key]

    return make


@pytest.fixture()
def one_thread_and_clean_logging():
    """One torch thread (tiny convs on a busy 2-core box); undo the CLI's logging set-up afterwards."""
    import logging

    import torch

    n = torch.get_num_threads()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
