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


def test_ibn_a_missing_file_is_one_line_naming_file_place_and_source(tmp_path) -> None:
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        path, url = imagenet_weights_file("resnet50_ibn_a")
        assert os.path.basename(path) == "resnet50_ibn_a-d9d0bb7b.pth"
        assert url == "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet50_ibn_a-d9d0bb7b.pth"
        for name in ("mgran", "fsa"):
            with pytest.raises(UserError) as err:
                build_model(name, num_classes=2, backbone="resnet50_ibn_a", pretrained="imagenet")
            msg = str(err.value)
            assert "\n" not in msg and path in msg and url in msg and "IBN-Net" in msg
    finally:
        torch.hub.set_dir(old)
    assert not os.path.exists(path)


# --------------------------------------------------------------------------- ECA and MHSA

from reid_train.models import FSA  # noqa: E402
from reid_train.models.fsa import ECA, FSABottleneck, RelPosMHSA, relative_logits  # noqa: E402

HW = (64, 32)


def _official_eca_k(channel: int, gamma: int = 2, b: int = 1) -> int:
    # ECA-Net (Wang et al. CVPR 2020) eq. 12, k = |log2(C)/gamma + b/gamma|_odd, as the authors implement it
    t = int(abs((math.log(channel, 2) + b) / gamma))
    return t if t % 2 else t + 1


def test_eca_kernel_sizes_follow_the_official_rule_for_every_channel_count_used() -> None:
    torch.manual_seed(0)
    model = build_model("fsa_sam", 3, backbone="resnet50_ibn_a", input_size=HW)
    ecas = [m for m in model.modules() if isinstance(m, ECA)]
    assert len(ecas) == 3 + 4 + 6 + 3  # one per Bottleneck of Conv2_x..Conv5_x, none on the stem
    channels = set()
    for block in (b for layer in (model.backbone.layer1, model.backbone.layer2, model.backbone.layer3, model.backbone.layer4) for b in layer):
        c = block.bn3.num_features
        channels.add(c)
        k = block.eca.conv.kernel_size[0]
        assert k == _official_eca_k(c) and block.eca.conv.padding[0] == (k - 1) // 2
    assert channels == {256, 512, 1024, 2048}
    assert [_official_eca_k(c) for c in sorted(channels)] == [5, 5, 5, 7]
    # placed as in the official ECA-ResNet: on the residual branch, before the identity is added
    # (an ECA that closes its gate leaves relu(x); one after the addition would give 0)
    block = model.backbone.layer1[1].eval()
    with torch.no_grad():
        block.bn3.weight.zero_()
        block.bn3.bias.fill_(1.0)  # the residual branch is 1 everywhere: ECA's pooled input is 1
        block.eca.conv.weight.fill_(-1e4)
        x = torch.rand(1, 256, 4, 2) + 0.1
        torch.testing.assert_close(block(x), x)
    # official forward: x * sigmoid(conv1d(GAP(x) as a channel sequence))
    eca = ECA(256)
    x = torch.randn(2, 256, 3, 2)
    y = torch.sigmoid(eca.conv(x.mean(dim=(2, 3))[:, None, :]))[:, 0]
    torch.testing.assert_close(eca(x), x * y[:, :, None, None])


def test_relative_logits_equal_a_hand_computation_on_a_2x3_map() -> None:
    torch.manual_seed(1)
    h, w, d = 2, 3, 4
    q = torch.randn(1, 2, h, w, d)
    rel_h, rel_w = torch.randn(2 * h - 1, d), torch.randn(2 * w - 1, d)
    got = relative_logits(q, rel_h, rel_w)
    assert got.shape == (1, 2, h * w, h * w)
    for n in range(2):
        for y in range(h):
            for x in range(w):
                for yk in range(h):
                    for xk in range(w):
                        # BoTNet: the key's offset from the query, shifted to a table index
                        expected = float(q[0, n, y, x] @ rel_h[yk - y + h - 1] + q[0, n, y, x] @ rel_w[xk - x + w - 1])
                        assert float(got[0, n, y * w + x, yk * w + xk]) == pytest.approx(expected, abs=1e-5)
    # a worked value: query (0, 2), key (1, 0): height offset +1 -> rel_h[2], width offset -2 -> rel_w[0]
    assert float(got[0, 0, 2, 3]) == pytest.approx(float(q[0, 0, 0, 2] @ (rel_h[2]) + q[0, 0, 0, 2] @ rel_w[0]), abs=1e-5)


def test_mhsa_equals_softmax_of_content_plus_relative_logits() -> None:
    torch.manual_seed(2)
    mhsa = RelPosMHSA(8, (2, 3), heads=2)
    x = torch.randn(2, 8, 2, 3)
    out, attn = mhsa(x)
    qkv = torch.einsum("oc,nchw->nohw", mhsa.qkv.weight[:, :, 0, 0], x).reshape(2, 3, 2, 4, 6)
    for b in range(2):
        for n in range(2):
            q, k, v = qkv[b, 0, n] * 4 ** -0.5, qkv[b, 1, n], qkv[b, 2, n]  # (d, HW)
            rel = torch.zeros(6, 6)
            for i in range(6):
                for j in range(6):
                    rel[i, j] = q[:, i] @ mhsa.rel_h[j // 3 - i // 3 + 1] + q[:, i] @ mhsa.rel_w[j % 3 - i % 3 + 2]
            a = torch.softmax(q.t() @ k + rel, dim=-1)
            torch.testing.assert_close(attn[b, n], a, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(out[b, n * 4:(n + 1) * 4].reshape(4, 6), v @ a.t(), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- the network


@pytest.mark.parametrize("name, dim, mhsa, maps", [
    ("fsa_baseline", 2048, 0, []), ("fsa_sam", 2048, 9, ["sa_whole"]), ("fsa", 3584, 9, ["sa_whole"]),
    ("fsa_mask", 3584, 9, ["sa_whole"]),
])
def test_variants(name: str, dim: int, mhsa: int, maps: list[str]) -> None:
    torch.manual_seed(0)
    model = build_model(name, 5, backbone="resnet50_ibn_a", input_size=HW)
    assert isinstance(model, FSA) and model.feature_dim == dim
    assert sum(isinstance(m, RelPosMHSA) for m in model.modules()) == mhsa  # every block of Conv4_x + Conv5_x
    if mhsa:
        assert not any(hasattr(b, "conv2") for b in (*model.backbone.layer3, *model.backbone.layer4))
        assert all(isinstance(b.conv2, nn.Conv2d) for b in (*model.backbone.layer1, *model.backbone.layer2))
    assert model.required_masks == (("whole",) if name == "fsa_mask" else ())
    out = model(torch.randn(4, 3, *HW))
    assert out["features"].shape == (4, dim) and out["logits_whole"].shape == (4, 5)
    assert sorted(out["att_maps"]) == maps
    torch.testing.assert_close(out["feat"].norm(dim=1), torch.ones(4))
    if maps:
        att = out["att_maps"]["sa_whole"]
        assert att.shape == (4, HW[0] // 32, HW[1] // 32)
        torch.testing.assert_close(att.sum(dim=(1, 2)), torch.ones(4))  # the mean of attention distributions
    if name == "fsa":  # fusion: GAP of concat(maxpool(Conv3_x), maxpool(Conv4_x), Conv5_x); the paper's sizes at 256x128
        # the paper's sizes at 256x128: Conv3_x 32x16, Conv4_x 16x8, Conv5_x 8x4 (MHSA tables sized for the map each block sees)
        paper = build_model(name, 5, backbone="resnet50_ibn_a", input_size=(256, 128))
        sizes = [b.mhsa.size for b in (*paper.backbone.layer3, *paper.backbone.layer4)]
        assert sizes == [(32, 16)] + [(16, 8)] * 6 + [(8, 4)] * 2 and paper.fusion_kernels == (4, 2)
        assert paper.backbone.layer4[0].pool.kernel_size == 2 and isinstance(paper.backbone.layer4[1].pool, nn.Identity)
        model.eval()
        x = torch.randn(2, 3, *HW)
        with torch.no_grad():
            x3, x4, x5, _ = model._maps(x)
            f = torch.cat([nn.functional.adaptive_max_pool2d(m, x5.shape[-2:]).mean(dim=(2, 3)) for m in (x3, x4, x5)], 1)
            torch.testing.assert_close(model.forward_features(x)["features"], f)
            torch.testing.assert_close(model(x), nn.functional.normalize(model.bottleneck(f), dim=1))
    with pytest.raises(UserError, match="multiples of 32"):
        build_model(name, 5, backbone="resnet50_ibn_a", input_size=(60, 32))


def test_fsa_keeps_the_pretrained_weights_it_does_not_replace(ibn_reference) -> None:
    ref, path = ibn_reference
    model = build_model("fsa", 5, backbone="resnet50_ibn_a", pretrained=str(path), input_size=HW)
    ours, official = model.backbone.state_dict(), ref.state_dict()
    kept = [k for k in official if k in ours]
    assert len(kept) == len(official) - 2 - 9  # fc.weight/bias and the 9 replaced 3x3 convs of Conv4_x/Conv5_x
    assert all(torch.equal(ours[k], official[k]) for k in kept)
    assert isinstance(model.backbone.layer1[0], FSABottleneck) and "layer1.0.bn1.IN.weight" in kept


def test_fsa_loss_terms_and_mask_supervision() -> None:
    from reid_train.losses import batch_hard_triplet_loss, mask_attention_loss
    from reid_train.losses_mgran import build_loss

    torch.manual_seed(0)
    model = build_model("fsa_mask", 4, backbone="resnet50_ibn_a", input_size=HW)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    out = model(torch.randn(6, 3, *HW))
    masks = torch.rand(6, 3, 24, 8)
    cfg = load_config("fsa_mask_market1501").loss
    loss = build_loss("fsa_mask", cfg)
    total, terms = loss(out, labels, masks)
    assert set(terms) == {"ce", "triplet", "att", "total"}
    ce = nn.functional.cross_entropy(out["logits_whole"], labels, label_smoothing=0.1)
    tri = batch_hard_triplet_loss(out["features"], labels, 0.3)  # on the pre-BN feature, not the normalised one
    att = mask_attention_loss(out["att_maps"]["sa_whole"], masks[:, 0])
    torch.testing.assert_close(total, ce + cfg.lambda1 * tri + cfg.lambda2 * att)
    total.backward()
    assert model.backbone.layer4[-1].mhsa.rel_h.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="whole-body mask"):
        loss(out, labels, None)
    _, terms = build_loss("fsa", cfg)(out, labels)
    assert set(terms) == {"ce", "triplet", "total"}


from reid_train.config import READ_WHEN, load_config, unread_keys  # noqa: E402


def test_configs_accept_exactly_the_keys_the_model_reads() -> None:
    expected = {"fsa_market1501": ("fsa", "market1501"), "fsa_dukemtmc": ("fsa", "dukemtmc"),
                "fsa_baseline_market1501": ("fsa_baseline", "market1501"), "fsa_sam_market1501": ("fsa_sam", "market1501"),
                "fsa_mask_market1501": ("fsa_mask", "market1501"), "tiny_synthetic_fsa": ("fsa", "market1501")}
    for name, (model, dataset) in expected.items():
        cfg = load_config(name)
        assert (cfg.model.name, cfg.data.dataset, cfg.model.backbone) == (model, dataset, "resnet50_ibn_a")
        assert (cfg.data.height, cfg.data.width) == ((64, 32) if name.startswith("tiny") else (256, 128))
        assert cfg.model.last_stride == 2 and cfg.loss.label_smoothing == 0.1 and cfg.solver.warmup_epochs > 0
    mmga_only = ["model.stage4_input", "model.whole_dim", "model.part_dim", "model.head_bn", "loss.lambda0"]
    assert unread_keys(load_config("fsa_market1501"), READ_WHEN) == [*mmga_only, "loss.lambda2", "model.reduction_dim",
                                                                     "model.id_head", "loss.msml_normalize"]
    assert unread_keys(load_config("fsa_baseline_market1501"), READ_WHEN) == [
        *mmga_only, "loss.lambda2", "model.mhsa_heads", "model.reduction_dim", "model.id_head", "loss.msml_normalize"]
    assert "loss.lambda2" not in unread_keys(load_config("fsa_mask_market1501"), READ_WHEN)
    assert "model.mhsa_heads" in unread_keys(load_config("mmga_market1501"), READ_WHEN)
    for name, key in (("fsa_market1501", "loss.lambda2=0.2"), ("fsa_market1501", "loss.lambda0=1"),
                      ("fsa_baseline_market1501", "model.mhsa_heads=8"), ("fsa_sam_market1501", "model.whole_dim=512"),
                      ("mmga_market1501", "model.mhsa_heads=8")):
        with pytest.raises(UserError, match=rf"^--set: {key.split('=')[0]} is not read by model.name="):
            load_config(name, [key])
    assert load_config("fsa_market1501", ["model.mhsa_heads=8"]).model.mhsa_heads == 8


# --------------------------------------------------------------------------- the engine end to end


def test_fsa_mask_stop_resume_evaluate_extract_export_visualize(synth_dataset, tmp_path, one_thread_and_clean_logging) -> None:
    import json
    import signal

    import numpy as np
    from click.testing import CliRunner

    from cache_helpers import make_cache
    from reid_train.cli import main
    from reid_train.engine.preemption import Stopped
    from reid_train.engine.trainer import Trainer
    from reid_train.inference import load_model

    root = synth_dataset("market1501", ids=4)
    sets = [f"data.root={root}", f"data.cache={make_cache(root)}", "model.name=fsa_mask", "data.num_ids=2",
            "data.num_instances=2", "train.tensorboard=false", "solver.epochs=1", "test.flip=false"]
    straight = Trainer(load_config("tiny_synthetic_fsa", [*sets, f"train.output_dir={tmp_path / 'a'}"]))
    straight.fit()
    log = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(log) == 1 and all({"ce", "triplet", "att", "total"} <= set(r) for r in log) and "mAP" in log[-1]

    # a real SIGUSR1 during the first iteration: the run stops after it with a checkpoint, --resume finishes it
    stopped = Trainer(load_config("tiny_synthetic_fsa", [*sets, f"train.output_dir={tmp_path / 'b'}"]))
    assert len(stopped.sampler) >= 2
    criterion = stopped.criterion

    def signalling(*args):
        stopped.criterion = criterion
        os.kill(os.getpid(), signal.SIGUSR1)
        return criterion(*args)

    stopped.criterion = signalling
    with pytest.raises(Stopped, match="SIGUSR1 after iteration 1/"):
        stopped.fit()
    resumed = Trainer(load_config("tiny_synthetic_fsa", [*sets, f"train.output_dir={tmp_path / 'b'}"]), resume=True)
    assert (resumed.start_epoch, resumed.start_iter) == (0, 1)
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    ckpt = str(tmp_path / "a" / "checkpoint.pth")
    runner = CliRunner()
    other = make_cache(root).parent / "copy"  # data.test_sets: a second set (a copy of the first), scored the same way
    if not other.exists():
        import shutil

        shutil.copytree(root, other)
    res = runner.invoke(main, ["evaluate", "--checkpoint", ckpt, "--set", "test.rerank=true", "--set", "test.flip=true",
                               "--set", f"data.test_sets=[{{dataset: market1501, root: {root}}}, {{dataset: market1501, root: {other}}}]",
                               "--out", str(tmp_path / "ev.json")])
    assert res.exit_code == 0 and "re-ranked" in res.output, res.output
    sets_scored = json.loads((tmp_path / "ev.json").read_text())["test_sets"]
    assert [s["root"] for s in sets_scored] == [str(root), str(other)]
    assert sets_scored[0]["mAP"] == pytest.approx(sets_scored[1]["mAP"])  # the same images and ids: the same scores
    res = runner.invoke(main, ["extract", "--checkpoint", ckpt, "--split", "query", "--out", str(tmp_path / "q.npz")])
    assert res.exit_code == 0, res.output
    loaded = load_model(ckpt)
    from reid_masks.datasets import build_dataset

    paths = [os.path.join(root, r.path) for r in build_dataset("market1501", root).query]
    with np.load(tmp_path / "q.npz") as z:
        assert z["features"].shape == (len(paths), 3584)
        np.testing.assert_allclose(loaded.extract_features(paths).numpy(), z["features"], atol=1e-5)  # flip off, as trained

    for fmt in ("onnx", "torchscript"):
        res = runner.invoke(main, ["export", "--checkpoint", ckpt, "--format", fmt, "--out", str(tmp_path / f"m.{fmt}")])
        assert res.exit_code == 0 and "OK" in res.stdout, res.output
    res = runner.invoke(main, ["export", "--checkpoint", ckpt, "--height", "128", "--width", "64", "--out", str(tmp_path / "x.onnx")])
    assert res.exit_code == 2 and "use the training size 64x32" in res.output

    res = runner.invoke(main, ["visualize", "--checkpoint", ckpt, "--n", "2", "--topk", "3", "--out", str(tmp_path / "vis"),
                               "--tile-height", "64"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "vis" / "rankings.json").read_text())["attention_maps"] == ["sa_whole"]
