"""Command-line options shared by the ``reid-masks`` commands that name a dataset.

``--dataset`` and ``--dataset-option KEY=VALUE`` (repeatable) are generated from the
adapter registry (``reid_masks.datasets``), so a new adapter and its options appear in
every command's help without being listed here.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import click

from reid_masks.datasets import check_dataset_options, dataset_names, dataset_options
from reid_masks.datasets.options import parse_pairs
from reid_masks.errors import UserError


def dataset_help() -> str:
    names = [n for n in dataset_names() if n != "folder"]
    return f"{', '.join(names)}, or folder (your own layout: --dataset-option pattern=REGEX)."


def dataset_option_help() -> str:
    per = [f"{name}: {', '.join(opts)}" for name in dataset_names() if (opts := dataset_options(name))]
    return "KEY=VALUE option of the dataset's adapter, repeatable (" + "; ".join(per) + ")."


def dataset_flags(required: bool = True) -> Callable[[Callable], Callable]:
    """``--dataset`` and ``--dataset-option`` on a click command."""

    def decorate(f: Callable) -> Callable:
        f = click.option("--dataset-option", "dataset_option", multiple=True, metavar="KEY=VALUE", help=dataset_option_help())(f)
        return click.option("--dataset", required=required, help=dataset_help())(f)

    return decorate


def dataset_options_from_cli(dataset: str, pairs: Iterable[str], variant: str | None = None) -> dict[str, Any]:
    """The typed adapter options of ``--dataset-option`` pairs (``--variant`` is a shortcut)."""
    options: dict[str, Any] = parse_pairs(pairs)
    if variant is not None:
        if options.get("variant", variant) != variant:
            raise UserError(f"--variant {variant} and --dataset-option variant={options['variant']} disagree; give one")
        options["variant"] = variant
    return check_dataset_options(dataset, options)
