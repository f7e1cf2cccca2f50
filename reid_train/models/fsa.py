"""FSA: Fusion Self-Attention network (An, Lim, He, Kang: "Fusion Self-Attention Feature Clustering
Mechanism Network for Person ReID"), its ablations, and a mask-supervised variant of ours.

One class, :class:`FSA`; the paper's Table 2 rows are option settings of it:

============  =========  ========  ======  ==================  ==========  ===========
variant       MHSA       ECA       fusion  attention-map loss  masks read  infer. dim
============  =========  ========  ======  ==================  ==========  ===========
fsa_baseline  no         no        no      no                  none        2048
fsa_sam       layer3-4   layer1-4  no      no                  none        2048
fsa           layer3-4   layer1-4  yes     no                  none        3584
fsa_mask      layer3-4   layer1-4  yes     whole mask (ours)   whole       3584
============  =========  ========  ======  ==================  ==========  ===========

Data flow for the paper's 256x128 input (``last_stride=2``; the backbone is ResNet50-IBN-a,
``model.backbone: resnet50_ibn_a``)::

    stem + layer1 (Conv2_x) + layer2 (Conv3_x)      -> x3 512x32x16
    layer3 (Conv4_x, MHSA in every block)           -> x4 1024x16x8
    layer4 (Conv5_x, MHSA in every block)           -> x5 2048x8x4
    fused = concat(maxpool4(x3), maxpool2(x4), x5)  -> 3584x8x4       (fsa, fsa_mask)
    f = GAP(fused)  (triplet);  f_bn = BN(f) (BNNeck);  logits = W f_bn  (CE)
    feat = L2norm(f_bn)  (inference)

Decisions the paper leaves open, and why:

* **Backbone and input**: ResNet50-IBN-a (IBN-Net's official structure and release weights,
  ``backbone.py``); 256x128 input, the size the paper's feature sizes (32x16x512, 16x8x1024,
  8x4x2048) follow from.
* **Last stride 2** (``model.last_stride``): the paper's Conv5_x is 8x4 at 256x128, which is
  ResNet's stride 32; BoT's last stride 1 would make it 16x8. ``last_stride=1`` is available
  (Conv4_x is then not pooled; Conv3_x is pooled by 2).
* **MHSA** (BoTNet, Srinivas et al. 2021, following its published TF ``relpos_self_attention``):
  the 3x3 conv2 of *every* Bottleneck of Conv4_x (layer3) and Conv5_x (layer4) is replaced by
  multi-head self-attention over all positions with ``model.mhsa_heads`` = 4 heads (BoTNet's),
  1x1 q/k/v projections without bias, queries scaled by ``d**-0.5`` and 2-D relative position
  logits ``q . r_w[x_k - x_q] + q . r_h[y_k - y_q]`` (:class:`RelPosMHSA`); where the block
  strides, a 2x2 average pool follows the attention, as in BoTNet. The pretrained 3x3 weights
  of those blocks are dropped (the paper replaces the conv); bn2, conv1 and conv3 keep theirs.
  The relative tables are sized for the input size, so a model runs at the size it was built
  for (``data.height x data.width``, multiples of 32).
* **ECA** (Wang et al. 2020, BangguWu/ECANet): GAP, a 1-D conv over channels of size
  ``k = |log2(C)/gamma + b/gamma|_odd`` (gamma=2, b=1; :func:`eca_kernel_size`: 5 for 256 to
  1024 channels, 7 for 2048), sigmoid. The paper puts it "after each residual block from
  Conv1_x to Conv5_x"; Conv1_x (the stem) has no residual block, so ECA sits in every
  Bottleneck of Conv2_x-Conv5_x, where the official ECA-ResNet puts it: on the residual
  branch after bn3, before the identity is added. After the addition it would rescale the
  identity path by ~0.5 in each of the 16 blocks and break the pretrained signal scale.
* **Fusion**: channel concatenation of Conv3_x and Conv4_x max-pooled to Conv5_x's size with
  Conv5_x (3584 channels; ``fused`` above). The paper names only max pooling to a common
  *spatial* size; a sum would also need a channel projection (512/1024 -> 2048) that it does
  not mention, and concatenation adds no parameters. GAP of the concat is the concat of the
  GAPs, so the retrieval feature is 3584-d.
* **Head, loss and recipe** (the paper says only "triplet loss and cross-entropy loss"): the
  BoT recipe (Luo et al. 2019; fast-reid/torchreid): BNNeck (GAP feature -> BatchNorm1d with
  a frozen zero bias -> bias-free classifier), CE with label smoothing 0.1 on the logits,
  batch-hard triplet (margin 0.3) on the pre-BN feature, inference on the L2-normalised BN
  feature, warm-up, random erasing, flip, pad + crop (configs, ``losses_fsa.py``).
* **fsa_mask** (ours, beyond the paper): MMGA's mask-guided attention loss (min-max
  normalised map vs the whole-body mask, ``loss.lambda2``) on the *spatial self-attention
  map* of the last MHSA block: the attention every position receives, averaged over heads
  and queries (``att_maps["sa_whole"]``, 8x4 at 256x128). The same map is what
  ``reid-train visualize`` shows for fsa_sam / fsa / fsa_mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch import Tensor

from reid_masks.errors import UserError

from .backbone import ResNetBackbone

__all__ = ["FSA", "FSASpec", "FSA_VARIANTS", "ECA", "RelPosMHSA", "FSABottleneck", "eca_kernel_size",
           "relative_logits"]


@dataclass(frozen=True)
class FSASpec:
    """What an FSA variant switches on, and which masks its training step needs."""

    mhsa: bool
    eca: bool
    fusion: bool
    masks: tuple[str, ...] = ()  # ("whole",): the self-attention map is trained toward the whole-body mask


FSA_VARIANTS: dict[str, FSASpec] = {
    "fsa_baseline": FSASpec(mhsa=False, eca=False, fusion=False),
    "fsa_sam": FSASpec(mhsa=True, eca=True, fusion=False),
    "fsa": FSASpec(mhsa=True, eca=True, fusion=True),
    "fsa_mask": FSASpec(mhsa=True, eca=True, fusion=True, masks=("whole",)),
}


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA-Net's adaptive kernel size: ``t = int(|(log2 C + b) / gamma|)``, made odd (t + 1 if even)."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class ECA(nn.Module):
    """Efficient channel attention: ``x * sigmoid(conv1d_k(GAP(x)))`` over the channel axis."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = eca_kernel_size(channels)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)

    def weights(self, x: Tensor) -> Tensor:
        """(N, C, 1, 1) channel weights in (0, 1)."""
        y = x.mean(dim=(2, 3))[:, None, :]  # (N, 1, C)
        return torch.sigmoid(self.conv(y))[:, 0, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weights(x)


def _relative_index(n: int) -> Tensor:
    """(n, n) index into a table of 2n-1 relative embeddings: ``[q, k] -> k - q + n - 1``."""
    pos = torch.arange(n)
    return pos[None, :] - pos[:, None] + n - 1


def relative_logits(q: Tensor, rel_h: Tensor, rel_w: Tensor) -> Tensor:
    """BoTNet's 2-D relative position logits.

    Args:
        q: (B, heads, H, W, d) queries (already scaled).
        rel_h: (2H-1, d) height embeddings; rel_w: (2W-1, d) width embeddings.

    Returns (B, heads, H*W, H*W): ``out[.., (y, x), (y', x')] = q[y, x] . rel_h[y'-y+H-1]
    + q[y, x] . rel_w[x'-x+W-1]``.
    """
    b, heads, h, w, _ = q.shape
    r_h = rel_h[_relative_index(h).to(q.device)]  # (H, H, d): [y, y'] -> r_h[y' - y]
    r_w = rel_w[_relative_index(w).to(q.device)]  # (W, W, d)
    logits_h = torch.einsum("bnyxd,ykd->bnyxk", q, r_h.to(q.dtype))  # (B, n, H, W, H')
    logits_w = torch.einsum("bnyxd,xkd->bnyxk", q, r_w.to(q.dtype))  # (B, n, H, W, W')
    logits = logits_h[..., :, None] + logits_w[..., None, :]  # (B, n, H, W, H', W')
    return logits.reshape(b, heads, h * w, h * w)


class RelPosMHSA(nn.Module):
    """BoTNet's multi-head self-attention with 2-D relative position logits on an H x W map.

    ``forward(x)`` -> (out (N, C, H, W), attention (N, heads, HW, HW)).
    """

    def __init__(self, channels: int, size: tuple[int, int], heads: int = 4) -> None:
        super().__init__()
        if heads < 1 or channels % heads:
            raise UserError(f"model.mhsa_heads={heads}: must divide the {channels} channels of the attention layer")
        self.heads, self.size = heads, (int(size[0]), int(size[1]))
        self.dim = channels // heads
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1, bias=False)
        h, w = self.size
        self.rel_h = nn.Parameter(torch.randn(2 * h - 1, self.dim) * self.dim ** -0.5)
        self.rel_w = nn.Parameter(torch.randn(2 * w - 1, self.dim) * self.dim ** -0.5)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n, c, h, w = x.shape
        if (h, w) != self.size:
            raise ValueError(f"MHSA built for a {self.size[0]}x{self.size[1]} map got {h}x{w}: "
                             f"run the model at the input size it was built for")
        q, k, v = self.qkv(x).reshape(n, 3, self.heads, self.dim, h * w).unbind(1)  # (N, heads, d, HW)
        q = q * self.dim ** -0.5
        logits = torch.einsum("bndi,bndj->bnij", q, k)
        logits = logits + relative_logits(q.transpose(-1, -2).reshape(n, self.heads, h, w, self.dim), self.rel_h, self.rel_w)
        attn = logits.float().softmax(dim=-1).to(v.dtype)
        out = torch.einsum("bnij,bndj->bndi", attn, v).reshape(n, c, h, w)
        return out, attn


class FSABottleneck(nn.Module):
    """A torchvision (or IBN-a) Bottleneck with its 3x3 conv2 optionally replaced by
    :class:`RelPosMHSA` (+ 2x2 average pool where it strides) and ECA after bn3.

    Keeps the wrapped block's conv1/bn1/bn2/conv3/bn3/downsample modules and names, so the
    pretrained weights loaded into them stay.
    """

    def __init__(self, block: torchvision.models.resnet.Bottleneck, mhsa_size: tuple[int, int] | None,
                 heads: int, eca: bool) -> None:
        super().__init__()
        self.conv1, self.bn1, self.bn2, self.conv3, self.bn3 = block.conv1, block.bn1, block.bn2, block.conv3, block.bn3
        self.downsample, self.relu = block.downsample, block.relu
        stride = block.conv2.stride[0]
        self.mhsa: RelPosMHSA | None = None
        if mhsa_size is not None:
            self.mhsa = RelPosMHSA(block.conv2.in_channels, mhsa_size, heads)
            self.pool = nn.AvgPool2d(2, 2) if stride == 2 else nn.Identity()
        else:
            self.conv2 = block.conv2
        self.eca = ECA(block.bn3.num_features) if eca else None

    def forward_with_attention(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        out = self.relu(self.bn1(self.conv1(x)))
        attn = None
        if self.mhsa is not None:
            out, attn = self.mhsa(out)
            out = self.pool(out)
        else:
            out = self.conv2(out)
        out = self.bn3(self.conv3(self.relu(self.bn2(out))))
        if self.eca is not None:
            out = self.eca(out)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity), attn

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_attention(x)[0]


class FSA(nn.Module):
    """Fusion Self-Attention network and its ablations (see the module docstring's table).

    ``forward`` in training mode returns the dict of :meth:`forward_features`; in eval mode
    the L2-normalised inference feature (N, ``feature_dim``), float32.
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "fsa",
        backbone: str = "resnet50_ibn_a",
        pretrained: str | None = None,
        *,
        last_stride: int = 2,
        mhsa_heads: int = 4,
        input_size: tuple[int, int] = (256, 128),
    ) -> None:
        super().__init__()
        if variant not in FSA_VARIANTS:
            raise UserError(f"unknown FSA variant {variant!r}; allowed: {', '.join(FSA_VARIANTS)}")
        if num_classes < 1:
            raise UserError(f"num_classes must be >= 1, got {num_classes}")
        h, w = int(input_size[0]), int(input_size[1])
        if h % 32 or w % 32:
            raise UserError(f"{variant}: data.height x data.width must be multiples of 32 (its attention maps have fixed sizes), got {h}x{w}")
        self.variant, self.spec, self.num_classes = variant, FSA_VARIANTS[variant], num_classes
        self.input_size = (h, w)
        self.backbone = ResNetBackbone(backbone, pretrained=pretrained, last_stride=last_stride)
        if not isinstance(self.backbone.layer1[0], torchvision.models.resnet.Bottleneck):
            raise UserError(f"{variant} needs a Bottleneck backbone (resnet50, resnet50_ibn_a), got {backbone}")
        if self.spec.mhsa or self.spec.eca:
            self._convert_blocks(h, w, mhsa_heads)
        c3, c4, c5 = self.backbone.channels
        s5 = 16 * last_stride  # Conv5_x's stride: max-pool kernels that bring Conv3_x (stride 8) and Conv4_x (16) to it
        self.fusion_kernels: tuple[int, int] = (s5 // 8, s5 // 16)
        self.feature_dim: int = (c3 + c4 + c5) if self.spec.fusion else c5
        self.bottleneck = nn.BatchNorm1d(self.feature_dim)  # BNNeck
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(self.feature_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def _convert_blocks(self, h: int, w: int, heads: int) -> None:
        """Wrap every Bottleneck (ECA); MHSA in layer3/layer4, each sized for the map its conv1 gives."""
        size = (h // 4, w // 4)  # the stem's output = layer1's input
        for li, layer in enumerate((self.backbone.layer1, self.backbone.layer2, self.backbone.layer3, self.backbone.layer4)):
            for bi in range(len(layer)):
                block = layer[bi]
                mhsa_size = size if (self.spec.mhsa and li >= 2) else None
                layer[bi] = FSABottleneck(block, mhsa_size, heads, self.spec.eca)
                stride = block.conv2.stride[0]
                size = (size[0] // stride, size[1] // stride)

    @property
    def required_masks(self) -> tuple[str, ...]:
        """Masks the training loss needs (fsa_mask: the whole-body mask)."""
        return self.spec.masks

    def _maps(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(Conv3_x, Conv4_x, Conv5_x outputs, last MHSA block's attention or None)."""
        x3 = self.backbone.forward_stage2(x)
        x4 = self.backbone.layer3(x3)
        layer4 = self.backbone.layer4
        x5 = layer4[:-1](x4)
        last = layer4[-1]
        if isinstance(last, FSABottleneck):
            x5, attn = last.forward_with_attention(x5)
        else:
            x5, attn = last(x5), None
        return x3, x4, x5, attn

    def forward_features(self, x: Tensor) -> dict[str, Tensor | dict[str, Tensor]]:
        """Keys: ``features`` (N, D) GAP feature (triplet), ``feat`` L2-normalised BN feature
        (float32, inference), ``logits_whole`` (N, num_classes), ``att_maps`` (``sa_whole``
        (N, h, w): attention each Conv5_x position receives in the last MHSA block; empty
        without MHSA)."""
        x3, x4, x5, attn = self._maps(x)
        if self.spec.fusion:
            k3, k4 = self.fusion_kernels
            x5 = torch.cat([F.max_pool2d(x3, k3), F.max_pool2d(x4, k4) if k4 > 1 else x4, x5], dim=1)
        f = x5.mean(dim=(2, 3))
        f_bn = self.bottleneck(f)
        out: dict[str, Tensor | dict[str, Tensor]] = {
            "features": f,
            "feat": F.normalize(f_bn.float(), dim=1),
            "logits_whole": self.classifier(f_bn),
        }
        maps: dict[str, Tensor] = {}
        if attn is not None:
            h, w = x5.shape[-2:]
            maps["sa_whole"] = attn.float().mean(dim=(1, 2)).reshape(-1, h, w)
        out["att_maps"] = maps
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor | dict[str, Tensor]] | Tensor:
        out = self.forward_features(x)
        if self.training:
            return out
        return out["feat"]
