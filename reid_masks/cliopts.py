"""Command-line options shared by the ``reid-masks`` commands that name a dataset, and the
bounds of the size options of both tools.

``--dataset`` and ``--dataset-option KEY=VALUE`` (repeatable) are generated from the
adapter registry (``reid_masks.datasets``), so a new adapter and its options appear in
every command's help without being listed here.

Every count and size a user types is bounded (``click.IntRange`` or :func:`parse_hw`), so a
typo such as ``--person-size 100000x100000`` is one line naming the option and its range, not
an out-of-memory kill hours later. Every float option is a :class:`FiniteFloatRange`: click's
``FloatRange`` lets ``nan`` through (each comparison with it is false).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import click

from reid_masks.datasets import check_dataset_options, dataset_names, dataset_options
from reid_masks.datasets.options import parse_pairs
from reid_masks.errors import UserError


#: ``--seed`` of every command: what numpy's and torch's generators take.
SEED = click.IntRange(0, 2**32 - 1)
#: Sides (pixels) of the stored person mask, regions and parts maps (``generate --person-size``).
PERSON_SIDE = (8, 1024)
#: Most bytes of person/regions/parts maps one chunk of ``generate`` may hold in memory.
CHUNK_BYTES_MAX = 2 << 30


class FiniteFloatRange(click.FloatRange):
    """``click.FloatRange`` that also refuses ``nan``, ``inf`` and ``-inf`` as a usage error naming
    the option (``FloatRange`` compares, and every comparison with ``nan`` is false, so ``nan``
    passed any range and ``inf`` any range open above)."""

    def expected(self) -> str:
        if self.min == 0 and self.min_open and self.max is None:
            return "a finite positive number"
        return f"a finite number in the range {self._describe_range()}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not finite; expected {self.expected()}", param, ctx)
        return super().convert(number, param, ctx)


def parse_hw(text: str, option: str, lo: int, hi: int) -> tuple[int, int]:
    """``HxW`` with both sides in ``lo..hi``; anything else is a one-line UserError naming ``option``."""
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise UserError(f"{option} {text!r}: expected HxW, e.g. 256x128") from None
    if not (lo <= h <= hi and lo <= w <= hi):
        raise UserError(f"{option} {text!r}: each side must be {lo} to {hi} pixels, e.g. 256x128")
    return h, w


def check_chunk_memory(chunk_rows: int, person_hw: tuple[int, int]) -> None:
    """Refuse a ``--chunk-rows`` x ``--person-size`` whose maps (3 bytes a pixel) would not fit in
    :data:`CHUNK_BYTES_MAX`: a chunk is held in memory until it is saved."""
    need = chunk_rows * 3 * person_hw[0] * person_hw[1]
    if need > CHUNK_BYTES_MAX:
        fit = CHUNK_BYTES_MAX // (3 * person_hw[0] * person_hw[1])
        raise UserError(f"--chunk-rows {chunk_rows} with --person-size {person_hw[0]}x{person_hw[1]}: a chunk would hold "
                        f"{need / 2**30:.1f} GiB of maps in memory, at most {CHUNK_BYTES_MAX >> 30} GiB; use --chunk-rows {fit} or less")


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
