"""SCHP (Self-Correction for Human Parsing, Li et al. 2019) on LIP, in plain PyTorch.

JPPNet, the parser MMGA used, is TensorFlow 1; its PyTorch successor on the same LIP label
set is SCHP: an augmented CE2P network (ResNet-101 with a deep stem, PSP context module,
edge branch, decoder and fusion) whose public checkpoint ``exp-schp-201908261155-lip.pth``
reaches 59.36% mIoU on LIP val. This module rebuilds that network and its inference
exactly, without SCHP's CUDA-only dependencies (InPlaceABN) and without OpenCV.

Network
-------
Module names and order follow SCHP's ``networks/AugmentCE2P.py`` so the published state
dict loads with strict key and shape matching (after removing DataParallel's ``module.``
prefix). SCHP uses the copy of mapillary's ``InPlaceABNSync`` vendored in its ``modules/``
everywhere: ``BatchNorm2d`` there is ``partial(InPlaceABNSync, activation='none')`` and
the context/edge/decoder/fusion layers use the default ``activation='leaky_relu',
slope=0.01``. InPlaceABN registers exactly ``weight, bias, running_mean, running_var``
(no ``num_batches_tracked``).

Norm semantics (``norm``)
~~~~~~~~~~~~~~~~~~~~~~~~~
InPlaceABN is *not* ``nn.BatchNorm2d`` with the same parameters. Its CPU and CUDA
kernels (``forward_cpu`` / ``forward_kernel`` in ``modules/src/inplace_abn_*``, the same
in mapillary's current release), in training AND in eval mode, compute::

    y = (x - mean) * rsqrt(var + eps) * (|weight| + eps) + bias,   then the activation

with the module's ``eps`` (1e-5) in both places: the scale is made strictly positive so
the in-place operation can be inverted in the backward pass (whose weight gradient is
sign-flipped where ``weight < 0``, so training moves ``|weight|``). A checkpoint trained
with it may hold negative norm weights, which ``nn.BatchNorm2d`` would apply with the
wrong sign. :class:`BatchNormAct2d` therefore implements both rules: ``"inplace_abn"``
(the default, SCHP's published checkpoints) and ``"batchnorm"`` (signed weight: only for
a checkpoint trained with plain ``nn.BatchNorm2d``, e.g. a retrain in one of the CPU
forks that swapped InPlaceABN out; evaluating SCHP's own checkpoint with those forks'
shim is wrong wherever a weight is negative). The rule used and how many norm weights
are negative are recorded in :meth:`SCHPParser.provenance`.

A checkpoint that carries ``num_batches_tracked`` loads as well (the counter has no
effect at inference and is ignored). SCHP's first release (``model.py``) wrapped
``nn.BatchNorm2d`` as ``<layer>.bn``; those ``<layer>.bn.<param>`` keys are mapped to
``<layer>.<param>``, one to one: two checkpoint keys that would land on the same
parameter are refused, never silently merged.

Inference (SCHP's ``simple_extractor.py`` / ``evaluate.py``)
-----------------------------------------------------------
1. The whole image is the person box ``[0, 0, w-1, h-1]``; its centre and a scale grown
   to the input's aspect ratio (1.0 for 473x473) give SCHP's ``get_affine_transform``:
   an isotropic scale ``(W_in - 1) / scale_w`` about the centre, so the long side spans
   the input and the rest is zero padding. The image is warped with bilinear sampling
   (OpenCV's ``warpAffine``, ``BORDER_CONSTANT`` 0, reproduced with ``grid_sample``) and
   rounded to uint8 as OpenCV does for a uint8 image.
2. BGR channel order (SCHP reads with ``cv2.imread``), ``ToTensor`` (/255), then
   ``Normalize(mean=[0.406, 0.456, 0.485], std=[0.225, 0.224, 0.229])`` applied to the
   B, G, R channels in that order: ImageNet's statistics listed for BGR.
3. The fusion output (``output[0][-1]``) is used. ``simple_extractor.py`` runs one plain
   forward (no flip): that is the default here too. Flip test (``flip=True``, SCHP's
   ``evaluate.py --flip``, twice the compute): the flipped
   input's logits have their left/right channels swapped (14<->15 arms, 16<->17 legs,
   18<->19 shoes), are flipped back and averaged with the plain logits at the network's
   output resolution; multi-scale: the warped input is rescaled by each factor
   (bilinear, ``align_corners=True``) and the averaged logits of each scale are upsampled
   to the input size and averaged.
4. The logits are upsampled to the input size (bilinear, ``align_corners=True``), warped
   back to the image with the inverse affine (``transform_logits``) and arg-maxed.

Differences from SCHP, all sub-pixel: OpenCV quantises bilinear weights to 1/32 pixel and
rounds half up; we sample in float32 and round half to even.

Small crops (``min_height``)
----------------------------
Re-ID crops are small (Market-1501/Duke: 128x64). The affine warp already maps the long
side onto the 473-pixel input (a 3.7x bilinear upscale for a 128-px crop), so the
network always sees a person of the same size in pixels whatever the crop's resolution;
upscaling the crop again first would interpolate twice and add no information. SCHP's
reported failures on low-resolution people are about missing detail (blur, few pixels
on a face), which no resampling restores. Default: ``min_height=None`` (no pre-upscale),
identical to SCHP's own extractor. ``min_height=N`` upscales crops shorter than N pixels
with bicubic interpolation before the warp (sharper edges than bilinear alone, for users
who want to compare); labels are still produced on the crop's own pixel grid.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reid_masks.backends.base import parse_device
from reid_masks.derive import LIP_LABELS
from reid_masks.errors import UserError
from reid_masks.weights import weights_record

log = logging.getLogger(__name__)

__all__ = [
    "NUM_CLASSES",
    "LIP_LABELS",
    "FLIP_PAIRS",
    "SCHP_LIP_FILENAME",
    "SCHP_README",
    "INPUT_MEAN_BGR",
    "INPUT_STD_BGR",
    "NORM_RULES",
    "BatchNormAct2d",
    "SCHPNet",
    "SCHPParser",
    "schp_resnet101",
    "state_dict_signature",
    "write_state_dict_keys",
    "normalize_state_dict",
    "load_schp_checkpoint",
    "default_weights_path",
    "box_center_scale",
    "get_affine_transform",
    "affine_sample",
    "swap_flipped_channels",
    "schp_geometry",
]

NUM_CLASSES = len(LIP_LABELS)
FLIP_PAIRS = ((14, 15), (16, 17), (18, 19))  # left/right arm, leg, shoe
SCHP_LIP_FILENAME = "exp-schp-201908261155-lip.pth"
SCHP_README = "https://github.com/GoGoDuck912/Self-Correction-Human-Parsing#trained-models"
INPUT_MEAN_BGR = (0.406, 0.456, 0.485)
INPUT_STD_BGR = (0.225, 0.224, 0.229)
LEAKY_SLOPE = 0.01


# --------------------------------------------------------------------------- network


NORM_RULES = {
    "inplace_abn": "(x - running_mean) * rsqrt(running_var + eps) * (|weight| + eps) + bias (InPlaceABN's kernels)",
    "batchnorm": "(x - running_mean) * rsqrt(running_var + eps) * weight + bias (torch.nn.BatchNorm2d)",
}


def _check_norm(norm: str) -> str:
    if norm not in NORM_RULES:
        raise UserError(f"SCHP parser: norm {norm!r}: expected one of {', '.join(NORM_RULES)}")
    return norm


class BatchNormAct2d(nn.BatchNorm2d):
    """InPlaceABN(Sync) as plain PyTorch: batch norm with InPlaceABN's scale, then LeakyReLU(0.01) or nothing.

    ``norm="inplace_abn"`` scales by ``|weight| + eps`` as InPlaceABN's kernels do (see the
    module doc); ``norm="batchnorm"`` by the signed ``weight``, as ``nn.BatchNorm2d``. Same
    state dict as InPlaceABN (``weight, bias, running_mean, running_var``): the
    ``num_batches_tracked`` buffer of ``nn.BatchNorm2d`` is removed (it only matters for
    ``momentum=None`` training) and ignored when a checkpoint carries it.
    """

    def __init__(self, num_features: int, activation: Optional[str] = "leaky_relu", slope: float = LEAKY_SLOPE,
                 norm: str = "inplace_abn") -> None:
        super().__init__(num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True)
        self.num_batches_tracked = None  # InPlaceABN has no such buffer
        if activation not in ("leaky_relu", None):
            raise ValueError(f"activation must be 'leaky_relu' or None, got {activation!r}")
        self.activation = activation
        self.slope = slope
        self.norm = _check_norm(norm)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            if self.num_batches_tracked is not None:  # None once constructed
                self.num_batches_tracked.zero_()

    def scale_weight(self) -> Tensor:
        """The per-channel factor applied after normalisation: ``|weight| + eps`` or ``weight``."""
        return self.weight.abs() + self.eps if self.norm == "inplace_abn" else self.weight

    def forward(self, x: Tensor) -> Tensor:
        # eval: the running statistics; training: batch statistics (and running-stat updates), as InPlaceABN
        x = F.batch_norm(x, self.running_mean, self.running_var, self.scale_weight(), self.bias, self.training, self.momentum, self.eps)
        if self.activation == "leaky_relu":
            x = F.leaky_relu(x, negative_slope=self.slope, inplace=True)
        return x

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list, unexpected_keys: list, error_msgs: list) -> None:
        # BatchNorm's own hook would re-add num_batches_tracked (and strict loading would
        # then call it unexpected); InPlaceABN checkpoints never have it.
        state_dict.pop(prefix + "num_batches_tracked", None)
        nn.Module._load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}, norm={self.norm}"


def _norm(c: int) -> BatchNormAct2d:
    """SCHP's ``BatchNorm2d``: InPlaceABNSync with ``activation='none'``."""
    return BatchNormAct2d(c, activation=None)


def _abn(c: int) -> BatchNormAct2d:
    """SCHP's ``InPlaceABNSync(c)``: leaky ReLU, slope 0.01."""
    return BatchNormAct2d(c, activation="leaky_relu")


def _conv(cin: int, cout: int, k: int = 1, stride: int = 1, dilation: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=dilation * (k // 2), dilation=dilation, bias=bias)


class Bottleneck(nn.Module):
    """ResNet bottleneck; the 3x3 conv carries the stride and the dilation (layer4: 2)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 1)
        self.bn1 = _norm(planes)
        self.conv2 = _conv(planes, planes, 3, stride=stride, dilation=dilation)
        self.bn2 = _norm(planes)
        self.conv3 = _conv(planes, planes * 4, 1)
        self.bn3 = _norm(planes * 4)
        self.relu = nn.ReLU(inplace=False)
        self.relu_inplace = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = self.downsample(x) if self.downsample is not None else x
        return self.relu_inplace(out + residual)


class PSPModule(nn.Module):
    """Pyramid pooling (bins 1, 2, 3, 6) over layer4, fused by a 3x3 conv to 512 channels."""

    def __init__(self, features: int = 2048, out_features: int = 512, sizes: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [nn.Sequential(nn.AdaptiveAvgPool2d((s, s)), _conv(features, out_features, 1), _abn(out_features)) for s in sizes]
        )
        self.bottleneck = nn.Sequential(_conv(features + len(sizes) * out_features, out_features, 3), _abn(out_features))

    def forward(self, feats: Tensor) -> Tensor:
        h, w = feats.shape[2:]
        priors = [F.interpolate(stage(feats), size=(h, w), mode="bilinear", align_corners=True) for stage in self.stages]
        return self.bottleneck(torch.cat(priors + [feats], 1))


class EdgeModule(nn.Module):
    """CE2P's edge branch on layer1-3; its features feed the fusion head."""

    def __init__(self, in_fea: Sequence[int] = (256, 512, 1024), mid_fea: int = 256, out_fea: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(_conv(in_fea[0], mid_fea), _abn(mid_fea))
        self.conv2 = nn.Sequential(_conv(in_fea[1], mid_fea), _abn(mid_fea))
        self.conv3 = nn.Sequential(_conv(in_fea[2], mid_fea), _abn(mid_fea))
        self.conv4 = _conv(mid_fea, out_fea, 3, bias=True)
        self.conv5 = _conv(out_fea * 3, out_fea, 1, bias=True)

    def forward(self, x1: Tensor, x2: Tensor, x3: Tensor) -> tuple[Tensor, Tensor]:
        h, w = x1.shape[2:]

        def up(t: Tensor) -> Tensor:
            return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=True)

        f1, f2, f3 = self.conv1(x1), self.conv2(x2), self.conv3(x3)
        e1, e2, e3 = self.conv4(f1), self.conv4(f2), self.conv4(f3)
        edge = self.conv5(torch.cat([e1, up(e2), up(e3)], 1))
        return edge, torch.cat([f1, up(f2), up(f3)], 1)


class DecoderModule(nn.Module):
    """Parsing decoder: context features upsampled onto layer1 (stride 4) + 48 low-level channels."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(_conv(512, 256), _abn(256))
        self.conv2 = nn.Sequential(_conv(256, 48), _abn(48))
        self.conv3 = nn.Sequential(_conv(304, 256), _abn(256), _conv(256, 256), _abn(256))
        self.conv4 = _conv(256, num_classes, 1, bias=True)

    def forward(self, xt: Tensor, xl: Tensor) -> tuple[Tensor, Tensor]:
        h, w = xl.shape[2:]
        xt = F.interpolate(self.conv1(xt), size=(h, w), mode="bilinear", align_corners=True)
        x = self.conv3(torch.cat([xt, self.conv2(xl)], 1))
        return self.conv4(x), x


class SCHPNet(nn.Module):
    """SCHP's augmented CE2P ResNet (``AugmentCE2P.ResNet``): deep stem, dilated layer4 (output stride 16).

    ``forward`` returns SCHP's structure ``[[parsing, fusion], [edge]]``; the fusion
    logits (stride 4) are the parser's output.
    """

    def __init__(self, layers: Sequence[int] = (3, 4, 23, 3), num_classes: int = NUM_CLASSES, norm: str = "inplace_abn") -> None:
        super().__init__()
        self.inplanes = 128
        self.conv1 = _conv(3, 64, 3, stride=2)
        self.bn1 = _norm(64)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = _conv(64, 64, 3)
        self.bn2 = _norm(64)
        self.relu2 = nn.ReLU(inplace=False)
        self.conv3 = _conv(64, 128, 3)
        self.bn3 = _norm(128)
        self.relu3 = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=1, dilation=2)
        self.context_encoding = PSPModule(2048, 512)
        self.edge = EdgeModule()
        self.decoder = DecoderModule(num_classes)
        self.fushion = nn.Sequential(  # SCHP's spelling: it is a state-dict key
            _conv(1024, 256), _abn(256), nn.Dropout2d(0.1), _conv(256, num_classes, 1, bias=True)
        )
        self.set_norm(norm)

    def set_norm(self, norm: str) -> None:
        """Use ``norm`` (``"inplace_abn"`` or ``"batchnorm"``, see the module doc) in every norm layer."""
        _check_norm(norm)
        for m in self.modules():
            if isinstance(m, BatchNormAct2d):
                m.norm = norm

    def norm_layers(self) -> list[BatchNormAct2d]:
        return [m for m in self.modules() if isinstance(m, BatchNormAct2d)]

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(_conv(self.inplanes, planes * 4, 1, stride=stride), _norm(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, dilation=dilation, downsample=downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        x2 = self.layer1(x)
        x3 = self.layer2(x2)
        x4 = self.layer3(x3)
        x5 = self.layer4(x4)
        context = self.context_encoding(x5)
        parsing, parsing_fea = self.decoder(context, x2)
        edge, edge_fea = self.edge(x2, x3, x4)
        fusion = self.fushion(torch.cat([parsing_fea, edge_fea], 1))
        return [[parsing, fusion], [edge]]


def schp_resnet101(num_classes: int = NUM_CLASSES, norm: str = "inplace_abn") -> SCHPNet:
    """The LIP network (random weights; load a checkpoint with :func:`load_schp_checkpoint`)."""
    return SCHPNet((3, 4, 23, 3), num_classes, norm)


# --------------------------------------------------------------------------- state dicts


def state_dict_signature(model_or_state: nn.Module | Mapping[str, Tensor]) -> list[tuple[str, list[int]]]:
    """(key, shape) pairs in state-dict order: what a checkpoint must match."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return [(k, [int(s) for s in v.shape]) for k, v in state.items()]


def write_state_dict_keys(path: str | os.PathLike, model: Optional[nn.Module] = None) -> list[tuple[str, list[int]]]:
    """Record our network's (key, shape) list as JSON (compare with ``tests/data/schp_lip_state_dict_keys.json``)."""
    sig = state_dict_signature(model if model is not None else schp_resnet101())
    Path(path).write_text(json.dumps([[k, s] for k, s in sig], indent=0) + "\n")
    return sig


def normalize_state_dict(obj: Any) -> dict[str, Tensor]:
    """A checkpoint object -> a state dict in our key space, one checkpoint key per parameter.

    Unwraps ``{'state_dict': ...}`` (SCHP's checkpoints) or ``{'model': ...}``, strips
    DataParallel's ``module.`` prefix, maps the first release's ``<abn>.bn.<param>`` to
    ``<abn>.<param>`` and drops ``num_batches_tracked`` (absent from InPlaceABN). Raises
    ``TypeError`` for a non-mapping and ``ValueError`` when two checkpoint keys map to
    the same key (e.g. ``x.weight`` and ``x.bn.weight``): which one is right is unknown.
    """
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a state dict, got {type(obj).__name__}")
    out: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            continue  # e.g. a checkpoint's epoch counter
        k = key[len("module."):] if key.startswith("module.") else key
        if k.endswith("num_batches_tracked"):
            continue
        parts = k.split(".")
        if len(parts) >= 3 and parts[-2] == "bn":  # first release: InPlaceABNSync wrapped nn.BatchNorm2d as ".bn"
            parts = parts[:-2] + parts[-1:]
        k = ".".join(parts)
        if k in source:
            raise ValueError(f"checkpoint keys {source[k]!r} and {key!r} both map to {k!r}; keep only one of them")
        source[k] = key
        out[k] = value
    return out


def _first(items: Sequence[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def load_schp_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Strictly load an SCHP checkpoint file; anything that does not fit is a one-line UserError naming keys."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"SCHP weights file not found: {p}; download {SCHP_LIP_FILENAME} (LIP link in {SCHP_README})")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, not a torch file, pickled objects
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"{p}: cannot read SCHP checkpoint ({type(e).__name__}: {first[:200]})") from None
    try:
        state = normalize_state_dict(obj)
    except TypeError as e:
        raise UserError(f"{p}: not an SCHP checkpoint ({e})") from None
    except ValueError as e:
        raise UserError(f"{p}: {e}") from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_first(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_first(unexpected)})")
        if shapes:
            shown = [f"{k} {list(state[k].shape)} vs {list(expected[k].shape)}" for k in shapes[:3]]
            parts.append(f"{len(shapes)} shape mismatches ({', '.join(shown)}{', ...' if len(shapes) > 3 else ''})")
        hint = ""
        cls_key = "fushion.3.weight"
        if cls_key in state and cls_key in shapes:
            hint = f"; the checkpoint has {state[cls_key].shape[0]} classes, the LIP parser needs {expected[cls_key].shape[0]} (use the LIP checkpoint {SCHP_LIP_FILENAME})"
        raise UserError(f"{p}: does not fit the SCHP LIP network: " + "; ".join(parts) + hint)
    model.load_state_dict(state, strict=True)


def default_weights_path() -> Path:
    """Where the parser looks when no path is given: torch's checkpoint cache, beside torchvision's weights."""
    return Path(torch.hub.get_dir()) / "checkpoints" / SCHP_LIP_FILENAME




# --------------------------------------------------------------------------- geometry


def box_center_scale(width: int, height: int, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """SCHP's ``_box2cs([0, 0, w-1, h-1])``: centre and (w, h) scale grown to the input's aspect ratio."""
    aspect = input_size[1] / input_size[0]
    bw, bh = float(width - 1), float(height - 1)
    center = np.array([bw * 0.5, bh * 0.5], np.float64)
    if bw > aspect * bh:
        bh = bw / aspect
    elif bw < aspect * bh:
        bw = bh * aspect
    return center, np.array([bw, bh], np.float64)


def get_affine_transform(center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int], inv: bool = False) -> np.ndarray:
    """SCHP's ``get_affine_transform`` without rotation, as a 2x3 matrix.

    SCHP maps three points (the centre, a point ``scale_w / 2`` above it, and its
    perpendicular) onto the output's centre ``((W-1)/2, (H-1)/2)`` and a point
    ``(W-1)/2`` above it: an isotropic scale ``k = (W_out - 1) / scale_w`` about the centre.
    ``inv=False`` maps image pixels to input pixels, ``inv=True`` the reverse.
    """
    out_h, out_w = output_size
    k = (out_w - 1) / max(float(scale[0]), 1e-6)  # a 1-pixel-wide, 1-pixel-tall image has scale 0
    cx, cy = float(center[0]), float(center[1])
    ox, oy = (out_w - 1) * 0.5, (out_h - 1) * 0.5
    if not inv:
        return np.array([[k, 0.0, ox - k * cx], [0.0, k, oy - k * cy]], np.float64)
    return np.array([[1 / k, 0.0, cx - ox / k], [0.0, 1 / k, cy - oy / k]], np.float64)


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2x3 affine ``a o b`` (apply b, then a)."""
    a3 = np.vstack([a, [0, 0, 1]])
    b3 = np.vstack([b, [0, 0, 1]])
    return (a3 @ b3)[:2]


def affine_sample(src: Tensor, dst_to_src: np.ndarray, out_hw: tuple[int, int]) -> Tensor:
    """OpenCV's ``warpAffine(src, inverse(dst_to_src), WARP_INVERSE_MAP-style)`` with bilinear, border 0.

    ``src`` is (N, C, H, W); every output pixel (x, y) (pixel centres at integers, as in
    OpenCV) takes the bilinear sample of ``src`` at ``dst_to_src @ (x, y, 1)``; neighbours
    outside the image count as 0, like ``BORDER_CONSTANT`` with value 0.
    """
    n, _, h, w = src.shape
    oh, ow = out_hw
    dev = src.device
    m = torch.as_tensor(dst_to_src, dtype=torch.float64, device=dev)
    ys = torch.arange(oh, dtype=torch.float64, device=dev)
    xs = torch.arange(ow, dtype=torch.float64, device=dev)
    sx = m[0, 0] * xs[None, :] + m[0, 1] * ys[:, None] + m[0, 2]
    sy = m[1, 0] * xs[None, :] + m[1, 1] * ys[:, None] + m[1, 2]
    # align_corners=False: normalised -1/+1 are the outer pixel edges, pixel i's centre is (2i+1)/size - 1
    grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], dim=-1).to(src.dtype)
    return F.grid_sample(src, grid[None].expand(n, oh, ow, 2), mode="bilinear", padding_mode="zeros", align_corners=False)


def schp_geometry(
    height: int, width: int, input_size: tuple[int, int] = (473, 473), min_height: Optional[int] = None
) -> tuple[Optional[tuple[int, int]], np.ndarray, np.ndarray]:
    """How one image reaches the network and how its logits come back.

    Returns ``(upscaled (h, w) or None, forward affine, original-pixel -> input affine)``:
    the forward affine maps the network's image (the original, or its bicubic pre-upscale
    when ``height < min_height``) onto the input (SCHP's warp); the last one maps each
    pixel of the ORIGINAL image into input coordinates (SCHP's ``transform_logits``), so
    labels always come back on the image's own grid.
    """
    up = None
    net_h, net_w = height, width
    if min_height is not None and height < min_height:
        net_h, net_w = int(min_height), max(1, int(round(width * min_height / height)))
        up = (net_h, net_w)
    center, scale = box_center_scale(net_w, net_h, input_size)
    fwd = get_affine_transform(center, scale, input_size)
    if up is None:
        return None, fwd, fwd
    # original pixel centre x -> upscaled pixel (x + 0.5) * f - 0.5 (PIL's resize convention)
    fx, fy = net_w / width, net_h / height
    upscale = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5]])
    return up, fwd, _compose(fwd, upscale)


def swap_flipped_channels(logits: Tensor, dim: int = 1) -> Tensor:
    """Swap the left/right LIP channels (14<->15, 16<->17, 18<->19) of a flipped input's logits."""
    order = list(range(logits.shape[dim]))
    for a, b in FLIP_PAIRS:
        order[a], order[b] = order[b], order[a]
    return logits.index_select(dim, torch.as_tensor(order, device=logits.device))


# --------------------------------------------------------------------------- parser


class SCHPParser:
    """Batched LIP human parsing with SCHP: RGB uint8 images in, HxW uint8 label maps out.

    Args:
        weights: checkpoint path; ``None`` looks in :func:`default_weights_path`.
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        random_weights: untrained network (tests and benchmarks only; logged, recorded).
        input_size: network input (H, W); SCHP's LIP setting is 473x473.
        flip: flip-test averaging with left/right channel swap (SCHP's ``evaluate.py --flip``;
            twice the compute). Off by default, as in SCHP's ``simple_extractor.py``.
        scales: multi-scale factors applied to the warped input (SCHP's ``multi_scales``).
        batch_size: images per forward (a flip doubles the forward's batch).
        min_height: bicubic pre-upscale of shorter images (None: off, see the module doc).
        norm: ``"inplace_abn"`` (scale ``|weight| + eps``, what SCHP's checkpoints were
            trained with) or ``"batchnorm"`` (signed weight); see the module doc.
    """

    name = "schp"

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str = "cpu",
        random_weights: bool = False,
        input_size: tuple[int, int] = (473, 473),
        flip: bool = False,
        scales: Iterable[float] = (1.0,),
        batch_size: int = 8,
        min_height: Optional[int] = None,
        norm: str = "inplace_abn",
    ) -> None:
        if random_weights and weights is not None:
            raise UserError("SCHP parser: random weights and a weights file were both requested; choose one")
        self.device = parse_device(device, "SCHP parser")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if min(self.input_size) < 32:
            raise UserError(f"SCHP parser: input size {self.input_size} is too small (at least 32x32; SCHP uses 473x473)")
        self.scales = tuple(float(s) for s in scales)
        if not self.scales or min(self.scales) <= 0:
            raise UserError(f"SCHP parser: scales must be positive, got {self.scales}")
        self.flip = bool(flip)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise UserError(f"SCHP parser: batch size must be >= 1, got {batch_size}")
        self.min_height = None if min_height is None else int(min_height)
        self.random_weights = bool(random_weights)
        self.weights_path: Optional[Path] = None

        self.norm = _check_norm(norm)
        self.model = schp_resnet101(norm=self.norm)
        if self.random_weights:
            log.warning("SCHP parser: RANDOM weights (tests/benchmarks only): the parsing is meaningless")
        else:
            if weights is None:
                p = default_weights_path()
                if not p.is_file():
                    raise UserError(
                        f"SCHP LIP weights not found: {p.name} is not in {p.parent}; download it (the LIP link in "
                        f"{SCHP_README}) into that directory, or pass its path with --parser-weights"
                    )
            else:
                p = Path(weights).expanduser()
            load_schp_checkpoint(self.model, p)
            self.weights_path = p
            summary = self.norm_summary()
            log.info("loaded SCHP weights from %s (%d of %d norm layers hold negative weights; norm rule %s)",
                     p, summary["layers_with_negative_weight"], summary["layers"], self.norm)
        self.model.to(self.device).eval()
        mean = torch.tensor(INPUT_MEAN_BGR, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(INPUT_STD_BGR, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._mean, self._std = mean, std
        self._provenance: Optional[dict[str, Any]] = None

    def provenance(self) -> dict[str, Any]:
        """JSON-able record of what produced the parsing (the weights' hash is computed once)."""
        if self._provenance is None:
            record = weights_record(self.weights_path, default_weights_path(), None)  # SCHP's release has no stable URL
            self._provenance = {
                "parser": self.name,
                "model": "SCHP AugmentCE2P ResNet-101 (LIP, 20 labels)",
                # the release file's name only when the default (torch hub cache) file was loaded
                "weights": {"file": SCHP_LIP_FILENAME if record["source"] == "zoo" else None, **record},
                "random_weights": self.random_weights,
                "input_size": list(self.input_size),
                "flip": self.flip,
                "scales": list(self.scales),
                "min_height": self.min_height,
                "norm": self.norm_summary(),
                "preprocessing": "SCHP affine warp of the whole image, BGR, mean [0.406,0.456,0.485] std [0.225,0.224,0.229]",
                "torch_version": torch.__version__,
                "device": str(self.device),
            }
        return json.loads(json.dumps(self._provenance))

    def norm_summary(self) -> dict[str, Any]:
        """The norm rule in use and how many norm weights are negative (where the rules disagree)."""
        layers = self.model.norm_layers() if isinstance(self.model, SCHPNet) else []
        negative = [int((m.weight < 0).sum()) for m in layers]
        rule = layers[0].norm if layers else self.norm  # the layers' own setting (set_norm may have changed it)
        return {
            "rule": rule,
            "formula": NORM_RULES[rule],
            "eps": layers[0].eps if layers else None,
            "layers": len(layers),
            "layers_with_negative_weight": sum(1 for n in negative if n),
            "negative_weights": sum(negative),
        }

    # -- steps, public so tests and tools can check each one ------------------------------

    def geometry(self, height: int, width: int) -> tuple[Optional[tuple[int, int]], np.ndarray, np.ndarray]:
        """:func:`schp_geometry` with this parser's input size and upscaling policy."""
        return schp_geometry(height, width, self.input_size, self.min_height)

    def preprocess(self, images: Sequence[np.ndarray]) -> tuple[Tensor, list[np.ndarray]]:
        """Warped, normalised BGR batch (N, 3, H_in, W_in) and each image's original-pixel -> input affine."""
        batch, back = [], []
        for image in images:
            a = np.asarray(image)
            if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or min(a.shape[:2]) < 1:
                raise ValueError(f"expected an RGB uint8 HxWx3 image, got shape {a.shape} dtype {a.dtype}")
            h, w = a.shape[:2]
            up, fwd, to_input = self.geometry(h, w)
            if up is not None:
                from PIL import Image

                a = np.asarray(Image.fromarray(a).resize((up[1], up[0]), Image.BICUBIC))
            t = torch.from_numpy(np.ascontiguousarray(a[:, :, ::-1])).to(self.device)  # RGB -> BGR, uint8 on the bus
            t = t.permute(2, 0, 1)[None].float()
            warped = affine_sample(t, np.linalg.inv(np.vstack([fwd, [0, 0, 1]]))[:2], self.input_size)
            batch.append(warped.round_().clamp_(0, 255))  # OpenCV writes a uint8 image
            back.append(to_input)
        x = torch.cat(batch).div_(255.0)
        return (x - self._mean) / self._std, back

    def logits(self, x: Tensor) -> Tensor:
        """Fusion logits at the input size, averaged over flip and scales (SCHP's ``multi_scale_testing``)."""
        n = x.shape[0]
        fused = None
        for s in self.scales:
            xs = x if s == 1.0 else F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=True)
            if self.flip:
                xs = torch.cat([xs, xs.flip(-1)])
            out = self.model(xs)[0][-1]
            if self.flip:
                out = (out[:n] + swap_flipped_channels(out[n:]).flip(-1)) * 0.5
            out = F.interpolate(out, size=self.input_size, mode="bilinear", align_corners=True)
            fused = out if fused is None else fused + out
        assert fused is not None
        return fused / len(self.scales)

    def parse(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """LIP label maps (HxW uint8, values 0..19) at each image's own size."""
        results: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            with torch.inference_mode():
                x, back = self.preprocess(chunk)
                logits = self.logits(x)
                for i, image in enumerate(chunk):
                    h, w = image.shape[:2]
                    full = affine_sample(logits[i : i + 1], back[i], (h, w))  # SCHP's transform_logits
                    results.append(full[0].argmax(0).to(torch.uint8).cpu().numpy())
        return results

    __call__ = parse

    def __repr__(self) -> str:
        return (
            f"SCHPParser(device={str(self.device)!r}, input_size={self.input_size}, flip={self.flip}, scales={self.scales}, "
            f"batch_size={self.batch_size}, min_height={self.min_height}, norm={self.norm!r}, random_weights={self.random_weights})"
        )
