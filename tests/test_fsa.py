"""ResNet50-IBN-a backbone and the Fusion Self-Attention network (reid_train/models/fsa.py).

CPU, random weights built explicitly, tiny inputs, one thread.
"""
from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn as nn

from reid_masks.errors import UserError
from reid_train.models import ResNetBackbone, build_model, imagenet_weights_file

torch.set_num_threads(1)


# --------------------------------------------------------------------------- the official ResNet50-IBN-a
# A separate transcription of XingangPan/IBN-Net ibnnet/modules.py (IBN) and ibnnet/resnet_ibn.py
# (Bottleneck_IBN, ResNet_IBN with ibn_cfg=('a', 'a', 'a', None)), reduced to what the forward needs.


class _RefIBN(nn.Module):
    def __init__(self, planes, ratio=0.5):
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x):
        split = torch.split(x, self.half, 1)
        return torch.cat((self.IN(split[0].contiguous()), self.BN(split[1].contiguous())), 1)


class _RefBottleneckIBN(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, ibn=None, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = _RefIBN(planes) if ibn == "a" else nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        residual = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out += residual
        return self.relu(out)


class _RefResNetIBN(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), ibn_cfg=("a", "a", "a", None)):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0], ibn=ibn_cfg[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2, ibn=ibn_cfg[1])
        self.layer3 = self._make_layer(256, layers[2], stride=2, ibn=ibn_cfg[2])
        self.layer4 = self._make_layer(512, layers[3], stride=2, ibn=ibn_cfg[3])
        self.avgpool = nn.AvgPool2d(7)
        self.fc = nn.Linear(2048, 1000)

    def _make_layer(self, planes, blocks, stride=1, ibn=None):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, kernel_size=1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [_RefBottleneckIBN(self.inplanes, planes, ibn, stride, downsample)]
        self.inplanes = planes * 4
        layers += [_RefBottleneckIBN(self.inplanes, planes, ibn) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def trunk(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x2 = self.layer2(self.layer1(x))
        x3 = self.layer3(x2)
        return x2, x3, self.layer4(x3)


def _randomize_norms(module: nn.Module) -> None:
    """Non-trivial affine parameters and running statistics, so a misplaced IN/BN split shows."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)


@pytest.fixture(scope="module")
def ibn_reference(tmp_path_factory):
    torch.manual_seed(0)
    ref = _RefResNetIBN().eval()
    _randomize_norms(ref)
    path = tmp_path_factory.mktemp("ibn") / "resnet50_ibn_a-d9d0bb7b.pth"
    torch.save(ref.state_dict(), path)  # the official key names, fc.* included
    return ref, path


def test_ibn_a_keys_are_the_official_ones_and_forward_equals_reference(ibn_reference) -> None:
    ref, path = ibn_reference
    ours = ResNetBackbone("resnet50_ibn_a", pretrained=str(path), last_stride=2).eval()
    official_keys = [k for k in ref.state_dict() if not k.startswith("fc.")]
    assert list(ours.state_dict()) == official_keys  # same names, same order: nothing unused but fc.*
    assert "layer1.0.bn1.IN.weight" in official_keys and "layer3.5.bn1.BN.running_mean" in official_keys
    assert not any(k.startswith("layer4.") and (".IN." in k or ".BN." in k) for k in official_keys)
    assert ours.layer1[0].bn1.half == 32 and ours.layer3[0].bn1.half == 128  # int(planes * 0.5)
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        for a, b in zip(ours(x), ref.trunk(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_ibn_a_state_dict_with_unknown_key_is_refused(ibn_reference, tmp_path) -> None:
    ref, _ = ibn_reference
    state = ref.state_dict()
    state["layer4.0.bn1.IN.weight"] = torch.ones(256)  # an IBN where the official net has none
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(UserError, match="1 unexpected .*layer4.0.bn1.IN.weight"):
        ResNetBackbone("resnet50_ibn_a", pretrained=str(bad))


def test_ibn_a_missing_file_is_one_line_naming_file_place_and_source(tmp_path) -> None:
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        path, url = imagenet_weights_file("resnet50_ibn_a")
        assert os.path.basename(path) == "resnet50_ibn_a-d9d0bb7b.pth"
        assert url == "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth"
        for name in ("baseline", "mgran", "fsa"):
            with pytest.raises(UserError) as err:
                build_model(name, num_classes=2, backbone="resnet50_ibn_a", pretrained="imagenet")
            msg = str(err.value)
            assert "\n" not in msg and path in msg and url in msg and "IBN-Net" in msg
    finally:
        torch.hub.set_dir(old)
    assert not os.path.exists(path)
