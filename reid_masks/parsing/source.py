"""Glue between ``reid-masks generate`` and a human parser: parse the decoded images of a batch.

``--parser`` choices and what :func:`make_parser_source` returns for them:

* ``schp``: a :class:`ParserSource` running :class:`~reid_masks.parsing.schp.SCHPParser`
  in the main process on each batch of decoded RGB images (next to the detector);
* ``precomputed``: ``None``; the label PNGs are read by the decoding workers
  (``--parsing-dir``), nothing runs here;
* ``none``: ``None``; no parsing (masks come from the detector / mask PNGs).

A run never parses with random weights unless ``random_weights=True`` is asked for
(tests, benchmarks); a missing checkpoint is a one-line UserError naming the file.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence

import numpy as np

from reid_masks.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["PARSERS", "ParserSource", "make_parser_source"]

PARSERS = ("schp", "precomputed", "none")


class ParserSource:
    """Runs a parser on the readable images of a batch; one batched call per ``parse_batch``."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.name: str = getattr(parser, "name", type(parser).__name__)

    def parse_batch(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """LIP label maps (HxW uint8, 0..19), one per RGB uint8 image, each at its image's size."""
        if len(images) == 0:
            return []
        out = self.parser.parse(list(images))
        for image, lab in zip(images, out):
            assert lab.shape == image.shape[:2], (lab.shape, image.shape)
        return out

    def provenance(self) -> dict[str, Any]:
        """What produced the parsing (for the cache's provenance attribute)."""
        return self.parser.provenance()

    def __repr__(self) -> str:
        return f"ParserSource({self.parser!r})"


def make_parser_source(
    name: str,
    weights: str | os.PathLike | None = None,
    device: str = "cpu",
    batch_size: int = 8,
    random_weights: bool = False,
    **options: Any,
) -> Optional[ParserSource]:
    """The parser behind ``--parser NAME`` (``None`` for ``precomputed`` and ``none``).

    ``options`` go to :class:`~reid_masks.parsing.schp.SCHPParser` (``flip``, ``scales``,
    ``input_size``, ``min_height``, ``norm``); an unknown one is a UserError.
    """
    if name not in PARSERS:
        raise UserError(f"--parser {name!r}: expected one of {', '.join(PARSERS)}")
    if name != "schp":
        if weights is not None:
            raise UserError(f"--parser-weights is only used with --parser schp (got --parser {name})")
        if options.get("flip"):
            raise UserError(f"--parser-flip is only used with --parser schp (got --parser {name})")
        return None
    from reid_masks.parsing.schp import SCHPParser

    allowed = {"flip", "scales", "input_size", "min_height", "norm"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UserError(f"SCHP parser: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")
    parser = SCHPParser(weights=weights, device=device, batch_size=batch_size, random_weights=random_weights, **options)
    log.info("parser: %r", parser)
    return ParserSource(parser)
