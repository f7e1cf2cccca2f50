"""Dataset adapter options: names, types and defaults come from the loader's signature.

An adapter's options are the keyword-only parameters of its loader, so a new adapter's
options reach ``--dataset-option key=value`` (``reid-masks``) and ``data.options``
(``reid-train``) without a list kept anywhere else. Values given as text (command line)
are converted to the annotated type; typed values (YAML, Python) are checked.
"""
from __future__ import annotations

import inspect
import types
import typing
from typing import Any, Callable, Iterable, Mapping

from reid_masks.errors import UserError

TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def loader_options(loader: Callable[..., Any]) -> dict[str, tuple[Any, Any]]:
    """``{name: (type hint, default)}`` for the loader's keyword-only parameters."""
    hints = typing.get_type_hints(loader)
    return {
        p.name: (hints.get(p.name, str), p.default)
        for p in inspect.signature(loader).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def describe(hint: Any) -> str:
    """How a value of ``hint`` is written on the command line."""
    hint, _ = _unwrap_optional(hint)
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(hint))
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if typing.get_origin(hint) in (tuple, list):
        return "a comma-separated list"
    return "text"


def convert(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the annotated type; text is parsed, anything else must already fit."""
    hint, optional = _unwrap_optional(hint)
    if value is None and optional:
        return None
    bad = UserError(f"{where}={value!r}: expected {describe(hint)}")
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        for c in choices:
            if value == c or (isinstance(value, str) and value == str(c)):
                return c
        raise bad
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        raise bad
    if hint in (int, float):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int) or (hint is float and isinstance(value, float)):
            return hint(value)
        if isinstance(value, str):
            try:
                return hint(value.strip())
            except ValueError:
                raise bad from None
        raise bad
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad
        return origin(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported dataset option type {hint!r}")


def check_options(dataset: str, loader: Callable[..., Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """Typed options for ``loader``; an unknown name lists the valid ones (one line)."""
    spec = loader_options(loader)
    unknown = sorted(set(options) - set(spec))
    if unknown:
        valid = ", ".join(f"{k} ({describe(h)})" for k, (h, _) in spec.items())
        raise UserError(
            f"{dataset}: unknown dataset option(s) {', '.join(unknown)}; "
            + (f"valid: {valid}" if spec else f"{dataset} takes no options")
        )
    return {k: convert(v, spec[k][0], f"{dataset}: dataset option {k}") for k, v in options.items()}


def parse_pairs(pairs: Iterable[str], flag: str = "--dataset-option") -> dict[str, str]:
    """``["key=value", ...]`` -> ``{key: value}`` (values stay text until :func:`check_options`)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} pattern='^(?P<pid>\\d+)_c(?P<camid>\\d)'")
        key = key.strip()
        if key in out:
            raise UserError(f"{flag} {key}: given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, getattr(types, "UnionType", typing.Union)):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False
