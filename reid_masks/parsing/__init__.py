"""Human parsing for the mask stage: the 20 LIP labels from SCHP (a JPPNet-style parser).

* :mod:`reid_masks.parsing.schp`: the SCHP network in plain PyTorch and its batched
  inference (:class:`~reid_masks.parsing.schp.SCHPParser`);
* :mod:`reid_masks.parsing.source`: :class:`~reid_masks.parsing.source.ParserSource`,
  what ``reid-masks generate --parser schp`` calls on each decoded batch.

Imports are lazy so ``import reid_masks.parsing`` costs nothing until a parser is built.
"""
from __future__ import annotations

from typing import Any

__all__ = ["SCHPParser", "ParserSource", "make_parser_source"]


def __getattr__(name: str) -> Any:
    if name == "SCHPParser":
        from reid_masks.parsing.schp import SCHPParser

        return SCHPParser
    if name in ("ParserSource", "make_parser_source"):
        from reid_masks.parsing import source

        return getattr(source, name)
    raise AttributeError(name)
