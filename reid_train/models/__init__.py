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


_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
# Options accepted by each builder beyond (num_classes, backbone, pretrained).
_OPTIONS: dict[str, set[str]] = {}


def _register_family(cls: type[nn.Module], variants: Any, what: str) -> None:
    """One builder per variant of ``cls`` (every ablation is a configuration of the same class)."""
    options = {p for p in inspect.signature(cls.__init__).parameters
               if p not in ("self", "num_classes", "variant", "backbone", "pretrained")}

    def builder(variant: str) -> Callable[..., nn.Module]:
        def build(num_classes: int, backbone: str = "resnet50", pretrained: str | None = None, **opts: Any) -> nn.Module:
            return cls(num_classes, variant=variant, backbone=backbone, pretrained=pretrained, **opts)

        build.__doc__ = f"{what}, variant {variant!r}."
        return build

    for name in variants:
        _BUILDERS[name], _OPTIONS[name] = builder(name), options


_register_family(MMGA, VARIANTS, "MMGA network (reid_train/models/mmga.py)")
# MGRAN (Zhou & Yu, PAKDD 2020): mgran, mgran_gf (no global feature), mgran_pl (part-level).
_register_family(MGRAN, MGRAN_VARIANTS, "MGRAN network (reid_train/models/mgran.py)")
# FSA (An, Lim, He, Kang): fsa_baseline, fsa_sam, fsa (Table 2 rows) and fsa_mask (ours).
_register_family(FSA, FSA_VARIANTS, "Fusion Self-Attention network (reid_train/models/fsa.py)")


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
