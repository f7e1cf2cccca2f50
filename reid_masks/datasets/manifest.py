"""Per-dataset facts (layout, file-name pattern, counts) read from ``data_manifests/``.

The adapters take their layout from here, and ``reid-masks validate`` compares a
user's copy with the counts, so no layout constant is repeated in code.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from reid_masks.errors import UserError
from reid_masks.fileio import read_json

DATASET_NAMES = ("market1501", "dukemtmc", "cuhk03", "msmt17")


def load_manifest(name: str) -> dict[str, Any]:
    """The packaged manifest of a known dataset."""
    if name not in DATASET_NAMES:
        raise UserError(f"no packaged manifest for dataset {name!r}: expected one of {', '.join(DATASET_NAMES)}")
    text = resources.files("data_manifests").joinpath(f"{name}.json").read_text()
    return json.loads(text)


def read_manifest_file(path: str | Path) -> dict[str, Any]:
    """A manifest from a file, e.g. the one ``reid-masks synth`` writes beside a synthetic copy."""
    data = read_json(path, "manifest file not found", "a JSON dataset manifest")
    if not isinstance(data, dict) or "name" not in data or ("splits" not in data and "variants" not in data):
        raise UserError(f"{path}: expected a dataset manifest with 'name' and 'splits' keys")
    return data
