"""ResNet backbone for re-ID: torchvision ResNet with the last stride removed and no GAP/FC.

Re-ID models (MMGA, MGN, PCB, BoT) remove the stride of ``layer4`` so a 384x128 input
gives a 24x8 final map instead of 12x4: twice the spatial resolution for attention and
pooling at the cost of ~4x the compute of ``layer4``.

Weights never fall back silently to random init (SPEC "Weights on machines without
internet"): ``pretrained`` must say ``None``/``"none"`` (random, explicit), ``"imagenet"``
(torchvision's ImageNet weights, read ONLY from torchvision's local cache; nothing is
downloaded) or a path to a state-dict file. A missing or mismatching file raises
:class:`reid_masks.errors.UserError` with a one-line message.

State-dict keys are torchvision's (``conv1.weight``, ``layer1.0.conv1.weight``, ...) minus
``fc.*``, so torchvision checkpoints load as-is.

``resnet50_ibn_a`` is ResNet50-IBN-a (Pan et al., "Two at once", ECCV 2018), transcribed from
the official IBN-Net code (``ibnnet/resnet_ibn.py``, ``ibnnet/modules.py``): the torchvision
ResNet-50 (same stem, stride in the 3x3 conv2 of a Bottleneck) with bn1 of every Bottleneck
of layer1-3 replaced by :class:`IBN` (InstanceNorm2d(affine) on the first ``int(planes*0.5)``
channels, BatchNorm2d on the rest), none in layer4. Its keys are the official release's
(``layer1.0.bn1.IN.weight``, ``layer1.0.bn1.BN.running_mean``, ...), so
``resnet50_ibn_a-d9d0bb7b.pth`` of the IBN-Net v1.0 release loads strictly as-is; its
"imagenet" file is read from the torch hub cache under that name, as torch.hub would store it.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
import torch.nn as nn
import torchvision
from torch import Tensor

from reid_masks.errors import UserError

__all__ = ["ResNetBackbone", "ARCH_CHANNELS", "IBN", "IBN_A_URL", "imagenet_weights_file", "load_backbone_state_dict",
           "resnet50_ibn_a"]

# Output channels of (stage2 = layer2, stage3 = layer3, stage4 = layer4).
ARCH_CHANNELS: dict[str, tuple[int, int, int]] = {
    "resnet18": (128, 256, 512),
    "resnet34": (128, 256, 512),
    "resnet50": (512, 1024, 2048),
    "resnet50_ibn_a": (512, 1024, 2048),
}

#: The official ImageNet weights of ResNet50-IBN-a (IBN-Net v1.0 release, ``model_urls`` of ibnnet/resnet_ibn.py).
IBN_A_URL = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth"


class IBN(nn.Module):
    """Instance-Batch Normalization (IBN-Net's ``IBN``): IN on the first ``int(planes*ratio)``
    channels, BN on the rest, concatenated back in that order. Attribute names ``IN``/``BN``
    are the official ones, so the release's keys load unchanged."""

    def __init__(self, planes: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.IN(x[:, : self.half].contiguous()), self.BN(x[:, self.half:].contiguous())), 1)


def resnet50_ibn_a(weights: None = None) -> torchvision.models.ResNet:
    """ResNet50-IBN-a as a torchvision ResNet (random init): IBN in bn1 of layer1-3's Bottlenecks.

    The official ``ResNet_IBN`` differs from torchvision's ResNet-50 only there (stem, strides,
    downsample and block order are the same), so the torchvision module with those norms
    swapped has the official structure and key names.
    """
    if weights is not None:
        raise ValueError("resnet50_ibn_a is built with random weights; load a state dict afterwards")
    net = torchvision.models.resnet50(weights=None)
    for layer in (net.layer1, net.layer2, net.layer3):
        for block in layer:
            block.bn1 = IBN(block.bn1.num_features)
    return net


_BUILDERS = {  # arch -> (builder, torchvision weights enum; None: the IBN-Net release, IBN_A_URL)
    "resnet18": (torchvision.models.resnet18, torchvision.models.ResNet18_Weights),
    "resnet34": (torchvision.models.resnet34, torchvision.models.ResNet34_Weights),
    "resnet50": (torchvision.models.resnet50, torchvision.models.ResNet50_Weights),
    "resnet50_ibn_a": (resnet50_ibn_a, None),
}


def _check_arch(arch: str) -> None:
    if arch not in _BUILDERS:
        raise UserError(f"unknown backbone {arch!r}; allowed: {', '.join(sorted(_BUILDERS))}")


def imagenet_weights_file(arch: str = "resnet50") -> tuple[str, str]:
    """Return ``(local_path, url)`` of torchvision's IMAGENET1K_V1 file for ``arch``
    (``resnet50_ibn_a``: the IBN-Net v1.0 release file ``resnet50_ibn_a-d9d0bb7b.pth``).

    The local path is where torchvision's (torch.hub's) own downloader would put it
    (``torch.hub.get_dir()/checkpoints/<file>``), so an online run of torchvision fills the
    same cache this project reads.
    """
    _check_arch(arch)
    weights = _BUILDERS[arch][1]
    url = weights.IMAGENET1K_V1.url if weights is not None else IBN_A_URL
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    return path, url


def _clean_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    """Unwrap common checkpoint containers, strip ``module.`` (DDP) and drop ``fc.*``."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{source}: not a ResNet state dict (expected a mapping of name -> tensor)")
    out: dict[str, Tensor] = {}
    for key, value in obj.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith("fc."):
            continue
        out[key] = value
    return out


def load_backbone_state_dict(module: nn.Module, path: str, arch: str) -> None:
    """Load a ResNet state-dict file into ``module`` strictly; any mismatch is a UserError.

    Strict loading is the point: a partially loaded backbone trains but silently
    under-performs, which costs days of GPU time before anyone notices.
    """
    if not os.path.isfile(path):
        raise UserError(f"backbone weights file not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with non-tensor objects, ...
        raise UserError(f"cannot read backbone weights {path}: {type(exc).__name__}: {exc}") from None
    state = _clean_state_dict(raw, path)
    expected = module.state_dict()
    for key in expected:  # files saved before PyTorch 0.4.1 have no BN step counters; BN starts them at 0
        if key.endswith(".num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(expected[key])
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise UserError(f"backbone weights {path} do not match {arch}: " + "; ".join(parts))
    module.load_state_dict(state, strict=True)


class ResNetBackbone(nn.Module):
    """torchvision ResNet trunk returning the stage2/3/4 maps (no GAP, no FC).

    Attributes keep torchvision's names (``conv1 bn1 relu maxpool layer1..layer4``) so that
    checkpoints load unchanged and models can run the stages one by one
    (``forward_stage2`` then ``layer3`` then ``layer4``) to put attention between them.
    """

    def __init__(self, arch: str = "resnet50", pretrained: str | None = None, last_stride: int = 1) -> None:
        super().__init__()
        _check_arch(arch)
        if last_stride not in (1, 2):
            raise UserError(f"last_stride must be 1 or 2, got {last_stride}")
        net = _BUILDERS[arch][0](weights=None)  # random init, explicitly; weights are loaded below
        self.arch = arch
        self.channels: tuple[int, int, int] = ARCH_CHANNELS[arch]
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if last_stride == 1:
            block = self.layer4[0]
            # Bottleneck (torchvision "ResNet v1.5") strides in conv2; BasicBlock in conv1.
            strided = block.conv2 if isinstance(block, torchvision.models.resnet.Bottleneck) else block.conv1
            strided.stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        self._load_pretrained(pretrained)

    def _load_pretrained(self, pretrained: str | None) -> None:
        if pretrained is None or (isinstance(pretrained, str) and pretrained.lower() == "none"):
            return
        if not isinstance(pretrained, str) or not pretrained:
            raise UserError(f"pretrained must be None, 'none', 'imagenet' or a file path, got {pretrained!r}")
        if pretrained.lower() == "imagenet":
            path, url = imagenet_weights_file(self.arch)
            if not os.path.isfile(path):
                source = " (IBN-Net v1.0 release)" if self.arch == "resnet50_ibn_a" else ""
                raise UserError(
                    f"ImageNet weights for {self.arch} not found: {path} (no download is attempted); "
                    f"fetch {url}{source} and put it at that path (or set TORCH_HOME), "
                    f"or give a weights file (--set model.pretrained=PATH), or train from random init (--set model.pretrained=none)"
                )
            load_backbone_state_dict(self, path, self.arch)
            return
        load_backbone_state_dict(self, pretrained, self.arch)

    def forward_stage2(self, x: Tensor) -> Tensor:
        """Stem + layer1 + layer2: the input of MMGA's first attention module."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer2(self.layer1(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return (stage2, stage3, stage4) feature maps."""
        s2 = self.forward_stage2(x)
        s3 = self.layer3(s2)
        s4 = self.layer4(s3)
        return s2, s3, s4
