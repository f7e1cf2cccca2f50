"""Model zoo of reid-train: ``build_model(name, num_classes, ...)`` builds any model by name.

MMGA and its ablations (``baseline``, ``baseline_att``, ``wmga``, ``dmga``, ``mmga``) are
one class, :class:`MMGA`, configured by variant; so are MGRAN's (:class:`MGRAN`) and the
Fusion Self-Attention network's (:class:`FSA`: ``fsa_baseline``, ``fsa_sam``, ``fsa``,
``fsa_mask``). Other architectures register a builder in
``_BUILDERS`` with the same signature.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch.nn as nn

from reid_masks.errors import UserError

from .attention import MaskGuidedAttention
from .backbone import ARCH_CHANNELS, ResNetBackbone, imagenet_weights_file
from .mmga import ATT_MAP_MASK, MMGA, VARIANTS, VariantSpec, middle_split
from .mgran import MGRAN, MGRAN_VARIANTS, region_inputs
from .fsa import FSA, FSA_VARIANTS

__all__ = [
    "build_model",
    "model_names",
    "MMGA",
    "MaskGuidedAttention",
    "ResNetBackbone",
    "ARCH_CHANNELS",
    "VARIANTS",
    "VariantSpec",
    "ATT_MAP_MASK",
    "imagenet_weights_file",
    "middle_split",
    "MGRAN",
    "MGRAN_VARIANTS",
    "region_inputs",
    "FSA",
    "FSA_VARIANTS",
]


def _mmga_builder(variant: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, backbone: str = "resnet50", pretrained: str | None = None, **options: Any) -> nn.Module:
        return MMGA(num_classes, variant=variant, backbone=backbone, pretrained=pretrained, **options)

    build.__doc__ = f"MMGA network, variant {variant!r}."
    return build


_BUILDERS: dict[str, Callable[..., nn.Module]] = {name: _mmga_builder(name) for name in VARIANTS}
# Options accepted by each builder beyond (num_classes, backbone, pretrained).
_OPTIONS: dict[str, set[str]] = {
    name: {
        p for p in inspect.signature(MMGA.__init__).parameters
        if p not in ("self", "num_classes", "variant", "backbone", "pretrained")
    }
    for name in VARIANTS
}


def _mgran_builder(variant: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, backbone: str = "resnet50", pretrained: str | None = None, **options: Any) -> nn.Module:
        return MGRAN(num_classes, variant=variant, backbone=backbone, pretrained=pretrained, **options)

    build.__doc__ = f"MGRAN network, variant {variant!r} (reid_train/models/mgran.py)."
    return build


# MGRAN (Zhou & Yu, PAKDD 2020): mgran, mgran_gf (no global feature), mgran_pl (part-level).
for _name in MGRAN_VARIANTS:
    _BUILDERS[_name] = _mgran_builder(_name)
    _OPTIONS[_name] = {
        p for p in inspect.signature(MGRAN.__init__).parameters
        if p not in ("self", "num_classes", "variant", "backbone", "pretrained")
    }


def _fsa_builder(variant: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, backbone: str = "resnet50", pretrained: str | None = None, **options: Any) -> nn.Module:
        return FSA(num_classes, variant=variant, backbone=backbone, pretrained=pretrained, **options)

    build.__doc__ = f"Fusion Self-Attention network, variant {variant!r} (reid_train/models/fsa.py)."
    return build


# FSA (An, Lim, He, Kang): fsa_baseline, fsa_sam, fsa (Table 2 rows) and fsa_mask (ours).
for _name in FSA_VARIANTS:
    _BUILDERS[_name] = _fsa_builder(_name)
    _OPTIONS[_name] = {
        p for p in inspect.signature(FSA.__init__).parameters
        if p not in ("self", "num_classes", "variant", "backbone", "pretrained")
    }


def model_names() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return list(_BUILDERS)


def build_model(
    name: str,
    num_classes: int,
    backbone: str = "resnet50",
    pretrained: str | None = None,
    **options: Any,
) -> nn.Module:
    """Build a model by name; unknown names or options are a one-line UserError.

    ``pretrained``: None/"none" (random init), "imagenet" (torchvision's local cache only)
    or a state-dict path; see :class:`ResNetBackbone`.
    """
    key = name.lower()
    if key not in _BUILDERS:
        raise UserError(f"unknown model {name!r}; allowed: {', '.join(_BUILDERS)}")
    allowed = _OPTIONS.get(key)
    if allowed is not None:
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise UserError(
                f"unknown option(s) for model {key!r}: {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
            )
    return _BUILDERS[key](num_classes, backbone=backbone, pretrained=pretrained, **options)
