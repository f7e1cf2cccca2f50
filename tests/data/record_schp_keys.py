"""Rebuild the state-dict (key, shape) list of SCHP's LIP network from SCHP's own definition.

SCHP's code cannot run here (its ``InPlaceABNSync`` is a CUDA extension, and no network
access), so this script re-derives the list by hand from SCHP's ``networks/AugmentCE2P.py``
(GoGoDuck912/Self-Correction-Human-Parsing, the revision that imports
``modules.InPlaceABNSync`` and sets ``BatchNorm2d = partial(InPlaceABNSync,
activation='none')``) and mapillary's ``modules/bn.py`` (``ABN.__init__`` registers the
parameters ``weight, bias`` and then the buffers ``running_mean, running_var``; there is no
``num_batches_tracked``). It deliberately imports neither torch nor ``reid_masks``: it is
an independent transcription that the test compares our PyTorch network against.

Each function below mirrors one SCHP constructor, registering children in the same
order as its ``__init__`` (PyTorch's state-dict order: a module's own parameters, then
its buffers, then its children in registration order). Parameter-free modules (ReLU,
MaxPool, AdaptiveAvgPool, Dropout2d) still take their index inside ``nn.Sequential``.

Usage: python tests/data/record_schp_keys.py [out.json]   (default: beside this file)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

Key = tuple[str, list[int]]
NUM_CLASSES = 20  # dataset_settings['lip']['num_classes']


def conv(name: str, cin: int, cout: int, k: int, bias: bool = False) -> list[Key]:
    """nn.Conv2d: weight (out, in, k, k), then bias (out) when bias=True."""
    keys = [(f"{name}.weight", [cout, cin, k, k])]
    if bias:
        keys.append((f"{name}.bias", [cout]))
    return keys


def abn(name: str, c: int) -> list[Key]:
    """InPlaceABNSync / ABN with affine=True: weight, bias, running_mean, running_var."""
    return [(f"{name}.{p}", [c]) for p in ("weight", "bias", "running_mean", "running_var")]


def bottleneck(name: str, inplanes: int, planes: int, has_downsample: bool) -> list[Key]:
    """Bottleneck.__init__: conv1 bn1 conv2 bn2 conv3 bn3 relu relu_inplace downsample."""
    keys = conv(f"{name}.conv1", inplanes, planes, 1) + abn(f"{name}.bn1", planes)
    keys += conv(f"{name}.conv2", planes, planes, 3) + abn(f"{name}.bn2", planes)
    keys += conv(f"{name}.conv3", planes, planes * 4, 1) + abn(f"{name}.bn3", planes * 4)
    if has_downsample:  # nn.Sequential(Conv2d 1x1, BatchNorm2d)
        keys += conv(f"{name}.downsample.0", inplanes, planes * 4, 1) + abn(f"{name}.downsample.1", planes * 4)
    return keys


def resnet_layers(inplanes: int) -> list[Key]:
    """ResNet._make_layer for layers (3, 4, 23, 3); downsample when stride != 1 or channels change."""
    keys: list[Key] = []
    for idx, (planes, blocks, stride) in enumerate([(64, 3, 1), (128, 4, 2), (256, 23, 2), (512, 3, 1)], start=1):
        for b in range(blocks):
            first = b == 0
            keys += bottleneck(f"layer{idx}.{b}", inplanes, planes, first and (stride != 1 or inplanes != planes * 4))
            inplanes = planes * 4
    return keys


def psp(name: str, features: int = 2048, out: int = 512, sizes: tuple[int, ...] = (1, 2, 3, 6)) -> list[Key]:
    """PSPModule: stages[i] = Sequential(AdaptiveAvgPool2d, Conv2d 1x1, InPlaceABNSync); bottleneck = Sequential(Conv2d 3x3, ABN)."""
    keys: list[Key] = []
    for i, _ in enumerate(sizes):
        keys += conv(f"{name}.stages.{i}.1", features, out, 1) + abn(f"{name}.stages.{i}.2", out)
    keys += conv(f"{name}.bottleneck.0", features + len(sizes) * out, out, 3) + abn(f"{name}.bottleneck.1", out)
    return keys


def edge(name: str, in_fea: tuple[int, int, int] = (256, 512, 1024), mid: int = 256, out: int = 2) -> list[Key]:
    """Edge_Module: conv1-3 = Sequential(Conv2d 1x1, ABN); conv4 3x3 with bias; conv5 1x1 with bias."""
    keys: list[Key] = []
    for i, c in enumerate(in_fea, start=1):
        keys += conv(f"{name}.conv{i}.0", c, mid, 1) + abn(f"{name}.conv{i}.1", mid)
    keys += conv(f"{name}.conv4", mid, out, 3, bias=True)
    keys += conv(f"{name}.conv5", out * 3, out, 1, bias=True)
    return keys


def decoder(name: str, num_classes: int) -> list[Key]:
    """Decoder_Module: conv1 512->256, conv2 256->48, conv3 304->256->256, conv4 256->classes (bias)."""
    keys = conv(f"{name}.conv1.0", 512, 256, 1) + abn(f"{name}.conv1.1", 256)
    keys += conv(f"{name}.conv2.0", 256, 48, 1) + abn(f"{name}.conv2.1", 48)
    keys += conv(f"{name}.conv3.0", 304, 256, 1) + abn(f"{name}.conv3.1", 256)
    keys += conv(f"{name}.conv3.2", 256, 256, 1) + abn(f"{name}.conv3.3", 256)
    keys += conv(f"{name}.conv4", 256, num_classes, 1, bias=True)
    return keys


def schp_lip_keys(num_classes: int = NUM_CLASSES) -> list[Key]:
    """ResNet.__init__ of AugmentCE2P in registration order."""
    keys = conv("conv1", 3, 64, 3) + abn("bn1", 64)
    keys += conv("conv2", 64, 64, 3) + abn("bn2", 64)
    keys += conv("conv3", 64, 128, 3) + abn("bn3", 128)
    keys += resnet_layers(inplanes=128)  # self.inplanes = 128 after the deep stem
    keys += psp("context_encoding")
    keys += edge("edge")
    keys += decoder("decoder", num_classes)
    # fushion = Sequential(Conv2d 1024->256, InPlaceABNSync(256), Dropout2d, Conv2d 256->classes bias)
    keys += conv("fushion.0", 1024, 256, 1) + abn("fushion.1", 256)
    keys += conv("fushion.3", 256, num_classes, 1, bias=True)
    return keys


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("schp_lip_state_dict_keys.json")
    keys = schp_lip_keys()
    out.write_text("[\n" + ",\n".join(json.dumps([k, s]) for k, s in keys) + "\n]\n")
    n_params = sum(_prod(s) for k, s in keys if not k.endswith(("running_mean", "running_var")))
    sys.stderr.write(f"wrote {out}: {len(keys)} keys, {n_params} parameters\n")


def _prod(shape: list[int]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


if __name__ == "__main__":
    main(sys.argv)
