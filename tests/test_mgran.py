"""MGRAN: MSML, region inputs from the cache, shared batched backbone, ablations, masks at inference, CPU fit."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from click.testing import CliRunner
from PIL import Image

from cache_helpers import split_rows
from reid_masks.cache import STATUS, write_cache
from reid_masks.datasets import build_dataset
from reid_masks.backends.base import Instances
from reid_masks.derive import HEAD_LABELS, LOWER_LABELS, UPPER_ONLY_LABELS, Observation, derive
from reid_masks.errors import UserError
from reid_masks.generate import GenerateConfig, generate
from reid_masks.imageio import read_label_png
from reid_train.cli import main
from reid_train.config import READ_WHEN, config_to_dict, load_config, packaged_configs, unread_keys
from reid_train.data import PairedTransform, ReIDImageDataset
from reid_train.data.regions import expand_region_codes, load_split_region_masks
from reid_train.engine.evaluator import evaluate_model
from reid_train.losses import MMGALoss
from reid_train.losses_mgran import MGRANLoss, build_loss, msml_loss
from reid_train.models import ResNetBackbone, build_model, region_inputs
from reid_train.visualize import RankingLayout, wrap_heading
from reid_masks import visual


pytestmark = pytest.mark.usefixtures("one_thread_and_clean_logging")


@pytest.fixture(scope="module")
def market_root(synth_dataset) -> Path:
    return synth_dataset("market1501", ids=4)


@pytest.fixture(scope="module")
def market(market_root):
    return build_dataset("market1501", market_root)


def _generate(root: Path, out: Path, person_size: tuple[int, int]) -> Path:
    """The real mask stage on the synthetic set's parsing PNGs (no detector, no keypoints)."""
    if not out.exists():
        generate(GenerateConfig(dataset="market1501", root=root, out=out, parsing_dir=root / "parsing",
                                backend="none", workers=0, person_size=person_size))
    return out


@pytest.fixture(scope="module")
def native_cache(market_root, tmp_path_factory) -> Path:
    """person_size = the synthetic images' own size (128x64): regions equal derive's output pixel for pixel."""
    return _generate(market_root, tmp_path_factory.mktemp("mgran") / "native.h5", (128, 64))


@pytest.fixture(scope="module")
def small_cache(market_root, tmp_path_factory) -> Path:
    """person_size 64x32: half the training resolution, so the dataset must upsample (nearest)."""
    return _generate(market_root, tmp_path_factory.mktemp("mgran") / "small.h5", (64, 32))


def masks_of(item: dict, kind: str = "regions") -> torch.Tensor:
    """The (C, H, W) 0/1 masks of an item's region code map, as the trainer expands them."""
    return expand_region_codes(item["region_codes"], kind)


def _no_aug(size=(128, 64), flip_prob=0.0, pad=0) -> PairedTransform:
    return PairedTransform(size=size, train=True, flip_prob=flip_prob, pad=pad, erasing_prob=0.0)


# --------------------------------------------------------------------------- MSML


def _msml_brute_force(features: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    pos, neg = [], []
    for i, j in itertools.combinations(range(len(labels)), 2):
        d = float(torch.linalg.vector_norm(features[i].double() - features[j].double()))
        (pos if labels[i] == labels[j] else neg).append(d)
    if not pos or not neg:
        return 0.0
    return max(0.0, max(pos) - min(neg) + margin)


@pytest.mark.parametrize("seed", range(6))
def test_msml_matches_a_brute_force_reference_over_all_pairs(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n_ids, k = 2 + seed % 3, 1 + seed % 4
    labels = torch.arange(n_ids).repeat_interleave(k)[torch.randperm(n_ids * k, generator=g)]
    feats = torch.randn(len(labels), 7, generator=g) * (0.2 + seed)
    for margin in (0.0, 0.3, 5.0):
        assert float(msml_loss(feats, labels, margin)) == pytest.approx(_msml_brute_force(feats, labels, margin), abs=1e-5)
        normed = F.normalize(feats, dim=1)
        assert float(msml_loss(feats, labels, margin, normalize=True)) == pytest.approx(
            _msml_brute_force(normed, labels, margin), abs=1e-5)


def test_msml_mines_one_pair_per_batch_and_degenerate_batches_are_zero() -> None:
    feats = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0], [10.0, 10.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    loss, d_pos, d_neg = msml_loss(feats, labels, 0.5, return_pair=True)
    # hardest positive: pair (2, 3) = |(10, 9)|; hardest negative: pair (0, 2) = 1
    assert float(d_pos) == pytest.approx(float(np.hypot(10, 9))) and float(d_neg) == pytest.approx(1.0)
    assert float(loss.detach()) == pytest.approx(np.hypot(10, 9) - 1.0 + 0.5)
    loss.backward()
    assert feats.grad[1].abs().sum() == 0  # only the samples of the two mined pairs get a gradient; sample 1 is in neither
    for labels in (torch.tensor([0, 0, 0, 0]), torch.tensor([0, 1, 2, 3])):
        z = msml_loss(feats, labels, 0.3)
        assert float(z.detach()) == 0.0 and z.requires_grad


def test_loss_dispatch_and_id_head() -> None:
    cfg = load_config("mgran_market1501").loss
    assert isinstance(build_loss("mmga", cfg), MMGALoss) and isinstance(build_loss("baseline", cfg), MMGALoss)
    for name in ("mgran", "mgran_gf", "mgran_pl"):
        assert isinstance(build_loss(name, cfg), MGRANLoss)
    torch.manual_seed(0)
    x = torch.randn(4, 4, 3, 32, 16)
    labels = torch.tensor([0, 0, 1, 1])
    plain = build_model("mgran", 3, backbone="resnet18")
    _, terms = build_loss("mgran", cfg)(plain(x), labels)
    assert set(terms) == {"msml", "msml_pos", "msml_neg", "total"}
    with_id = build_model("mgran", 3, backbone="resnet18", id_head=True)
    out = with_id(x)
    assert out["logits"].shape == (4, 3)
    _, terms = build_loss("mgran", cfg)(out, labels)
    assert terms["total"] == pytest.approx(terms["msml"] + terms["ce"], rel=1e-6)


# --------------------------------------------------------------------------- region inputs


def test_region_inputs_equal_the_image_inside_each_mask_and_zero_outside(market, native_cache) -> None:
    ds = ReIDImageDataset(market, "train", _no_aug(), cache=native_cache, region_masks="regions")
    flipped = ReIDImageDataset(market, "train", _no_aug(flip_prob=1.0), cache=native_cache, region_masks="regions")
    assert "masks" not in ds[0] and ds[0]["region_codes"].shape == (1, 128, 64)
    for i in range(0, len(ds), 5):
        item = ds[i]
        img, m = item["image"], masks_of(item)
        assert m.dtype == torch.uint8 and m.shape == (4, 128, 64)
        # synthetic ground truth: the parsing PNG the image was rendered with
        parsing = torch.from_numpy(read_label_png((market.root / "parsing" / market.train[i].path).with_suffix(".png")).astype(np.int64))
        person = parsing > 0
        assert torch.equal(m[0].bool(), person)
        assert torch.equal(m[1].bool(), torch.isin(parsing, torch.tensor(HEAD_LABELS)))
        assert bool(m[2].bool()[torch.isin(parsing, torch.tensor(UPPER_ONLY_LABELS))].all())
        assert bool(m[3].bool()[torch.isin(parsing, torch.tensor(LOWER_LABELS))].all())
        assert torch.equal(m[1:].sum(0).bool(), person) and int(m[1:].sum(0).max()) == 1  # a partition of the person
        x = region_inputs(img[None], m[None])[0]  # (4, 3, H, W)
        for k in range(4):
            inside = m[k].bool()
            assert bool((x[k][:, ~inside] == 0).all())
            assert torch.equal(x[k][:, inside], img[:, inside])
        # under a horizontal flip the region input is the flip of the unflipped one
        f_item = flipped[i]
        assert torch.equal(masks_of(f_item), m.flip(-1))
        assert torch.allclose(region_inputs(f_item["image"][None], masks_of(f_item)[None])[0], x.flip(-1), atol=1e-6)


def test_cache_masks_are_nearest_resized_to_the_training_size_and_follow_pad_crop(market, small_cache) -> None:
    src = load_split_region_masks(small_cache, market, "query", "regions")
    assert src.size == (64, 32)
    ds = ReIDImageDataset(market, "query", _no_aug(), cache=small_cache, region_masks="regions")
    for i in range(len(ds)):
        expected = src[i].repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)  # exact 2x nearest
        assert torch.equal(masks_of(ds[i]), expected)
        assert torch.equal(ds[i]["region_codes"], F.interpolate(torch.from_numpy(src.codes[i])[None, None], size=(128, 64), mode="nearest-exact")[0])
    # pad + crop (random): the masks move with the image; an all-ones image shows where the image went
    padded = ReIDImageDataset(market, "query", _no_aug(pad=10, flip_prob=0.5), cache=small_cache, region_masks="regions")
    padded.transform.mean, padded.transform.std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    for seed in range(4):
        torch.manual_seed(seed)
        item = padded[0]
        torch.manual_seed(seed)
        ref_img, ref_masks = padded.transform(torch.ones(3, 128, 64), src[0][None].float().repeat_interleave(2, -2).repeat_interleave(2, -1)[0])
        assert torch.equal(masks_of(item), (ref_masks > 0.5).to(torch.uint8))
        assert bool((masks_of(item).bool() <= (ref_img[0] > 0)).all())  # masks only where the image is


def test_masks_are_joined_by_path_whatever_the_cache_row_order(market, tmp_path) -> None:
    splits, shuffled = {}, {}
    for split in ("train", "query", "gallery"):
        rows = split_rows(market, split)
        perm = np.random.default_rng(1).permutation(len(rows))
        other = rows.take(perm)
        other.index = np.arange(len(rows))  # the cache's row i holds record perm[i]
        splits[split], shuffled[split] = (len(rows), rows), (len(rows), other)
    write_cache(tmp_path / "a.h5", splits, {"dataset": "market1501"})
    write_cache(tmp_path / "b.h5", shuffled, {"dataset": "market1501"})
    for kind in ("regions", "parts"):
        a = load_split_region_masks(tmp_path / "a.h5", market, "gallery", kind)
        b = load_split_region_masks(tmp_path / "b.h5", market, "gallery", kind)
        assert np.array_equal(a.codes, b.codes) and len(np.unique(a.codes)) > 3


# --------------------------------------------------------------------------- model


def test_one_parameter_set_shared_by_the_four_branches() -> None:
    model = build_model("mgran", 5, backbone="resnet18")
    ref = ResNetBackbone("resnet18")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in model.parameters()} == backbone_ids
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 64, 32)
    grads = []
    for k in range(4):  # the gradient of each branch's feature alone lands on the one shared tensor set
        model.zero_grad(set_to_none=True)
        model(x)["branch_features"][k].sum().backward()
        touched = {id(p) for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert touched == backbone_ids
        grads.append(model.backbone.conv1.weight.grad.clone())
    for a, b in itertools.combinations(grads, 2):
        assert not torch.allclose(a, b)  # four different inputs, one weight tensor


@pytest.mark.parametrize("name, branches, inputs", [("mgran", 4, 4), ("mgran_gf", 3, 4), ("mgran_pl", 5, 5)])
def test_one_batched_backbone_call_per_forward(name: str, branches: int, inputs: int) -> None:
    model = build_model(name, 5, backbone="resnet18")
    calls: list[int] = []
    model.backbone.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    conv_calls: list[int] = []
    model.backbone.conv1.register_forward_hook(lambda mod, inp, out: conv_calls.append(inp[0].shape[0]))
    n = 3
    x = torch.randn(n, inputs, 3, 64, 32)
    out = model(x)
    assert calls == [branches * n] and conv_calls == [branches * n]
    assert out["features"].shape == (n, branches * 512)
    model.eval()
    feat = model(x)
    assert calls == [branches * n, branches * n]
    # inference: the L2-normalised concat, in branch order (global, head, upper, lower)
    with torch.no_grad():
        parts = [model.backbone(x[:, b])[2].mean(dim=(2, 3)) for b in model.spec.branches]
    assert torch.allclose(feat, F.normalize(torch.cat(parts, dim=1), dim=1), atol=1e-5)
    assert torch.allclose(feat.norm(dim=1), torch.ones(n), atol=1e-5)


def test_feature_dimensions() -> None:
    assert build_model("mgran", 10).feature_dim == 4 * 2048
    assert build_model("mgran_gf", 10).feature_dim == 3 * 2048
    pl = build_model("mgran_pl", 10)
    assert pl.feature_dim == 5 * 2048 and pl.branches == ("global", "head", "torso", "arms", "legs")
    with pytest.raises(ValueError, match=r"mgran_pl takes the 5 inputs"):
        pl(torch.randn(2, 4, 3, 64, 32))
    gf = build_model("mgran_gf", 10, backbone="resnet18")
    assert gf.feature_dim == 3 * 512 and gf.branches == ("head", "upper", "lower")
    gf.eval()
    assert gf(torch.randn(2, 4, 3, 64, 32)).shape == (2, 3 * 512)
    reduced = build_model("mgran_gf", 10, backbone="resnet18", reduction_dim=64)
    assert reduced.feature_dim == 3 * 64 and reduced(torch.randn(2, 4, 3, 64, 32))["features"].shape == (2, 192)
    with pytest.raises(UserError, match="unknown option"):
        build_model("mgran", 10, whole_dim=3)


# --------------------------------------------------------------------------- MGRAN-PL parts


# LIP labels by body part, written out here (independent of reid_masks.derive's tables)
_LIP_HEAD, _LIP_TORSO, _LIP_ARMS, _LIP_LEGS = (1, 2, 4, 13), (5, 7, 11), (3, 14, 15), (8, 9, 12, 16, 17, 18, 19)
_LIP_DRESS = (6, 10)  # dress, jumpsuits: torso above the hip line, legs below


def test_mgran_pl_part_inputs_are_the_parsed_body_parts_inside_the_person(market, native_cache) -> None:
    src = load_split_region_masks(native_cache, market, "query", "parts")
    ds = ReIDImageDataset(market, "query", _no_aug(), cache=native_cache, region_masks="parts")
    seen = set()
    for i in range(len(market.query)):
        parsing = read_label_png((market.root / "parsing" / market.query[i].path).with_suffix(".png"))
        m = masks_of(ds[i], "parts").numpy().astype(bool)  # (5, 128, 64): the cache's own size, no resampling
        assert m.shape == (5,) + parsing.shape and torch.equal(src[i], masks_of(ds[i], "parts"))
        person, parts = m[0], m[1:]
        assert np.array_equal(person, parsing > 0)  # no detector: the pedestrian mask is the parsing foreground
        assert (parts.sum(axis=0) <= 1).all()  # disjoint
        assert not (parts & ~person).any()  # nothing outside the person
        assert np.array_equal(parts.any(axis=0), parsing > 0)  # every parsed pixel is in a part
        for k, labels in enumerate((_LIP_HEAD, _LIP_TORSO, _LIP_ARMS, _LIP_LEGS)):
            assert np.array_equal(parts[k] & ~np.isin(parsing, _LIP_DRESS), np.isin(parsing, labels)), k
            seen.add(k) if parts[k].any() else None
        dress = np.isin(parsing, _LIP_DRESS)
        assert (parts[1][dress] | parts[3][dress]).all()  # dress pixels: torso or legs
    assert seen == {0, 1, 2, 3}, "the synthetic query set should show every part"


def test_parts_without_parsing_carve_keypoint_arms_out_of_the_regions() -> None:
    h, w = 100, 60
    person = np.zeros((h, w), bool)
    person[10:95, 22:38] = True  # head + torso + legs
    person[30:62, 38:44] = True  # a hanging arm beside the torso
    kps = np.zeros((17, 3), np.float32)
    kps[5], kps[6] = (24, 28, 0.9), (40, 28, 0.9)  # shoulders (x, y)
    kps[11], kps[12] = (26, 58, 0.9), (36, 58, 0.9)  # hips
    kps[8], kps[10] = (41, 45, 0.9), (41, 60, 0.9)  # right elbow, wrist: right arm = 6 -> 8 -> 10
    inst = Instances(boxes=np.array([[22, 10, 44, 95]], np.float32), scores=np.array([0.99], np.float32),
                     masks=person[None].astype(np.float32), keypoints=kps[None])
    d = derive(Observation(h, w, instances=inst))
    assert d.status == STATUS["ok"]
    assert not ((d.parts > 0) & ~person).any() and ((d.parts > 0) == person).all()
    arms = d.parts == 3
    assert arms[35:60, 39:43].all()  # the arm's own pixels, along the elbow-wrist segment
    assert not arms[40:50, 22:30].any() and not arms[70:90].any()  # torso far from the arm, legs
    # outside the arms: the MGRAN regions (head above the shoulders, legs below the hips)
    rest = ~arms
    assert ((d.parts == 1) == ((d.regions == 1) & rest)).all()
    assert ((d.parts == 2) == ((d.regions == 2) & rest)).all()
    assert ((d.parts == 4) == ((d.regions == 3) & rest)).all()
    # without keypoints there is no arm: head / torso / legs are the regions
    bare = derive(Observation(h, w, instances=Instances(inst.boxes, inst.scores, inst.masks, None)))
    assert not (bare.parts == 3).any() and np.array_equal(bare.parts, np.choose(bare.regions, [0, 1, 2, 4]))


@pytest.mark.parametrize("version, dropped", [(1, ("cuts", "parts")), (2, ("parts",))])
def test_an_older_cache_is_read_but_has_no_parts(market, tmp_path, version, dropped) -> None:
    import h5py

    splits = {s: (len(market.split(s)), split_rows(market, s)) for s in ("train", "query", "gallery")}
    old = tmp_path / f"v{version}.h5"
    write_cache(old, splits, {"dataset": "market1501"})
    with h5py.File(old, "r+") as f:  # what an older writer produced: without the newer columns
        f.attrs["schema_version"] = version
        for s in ("train", "query", "gallery"):
            for name in dropped:
                del f[s][name]
    regions = load_split_region_masks(old, market, "query", "regions")
    assert len(regions) == len(market.query) and regions[0].shape[0] == 4
    with pytest.raises(UserError, match=rf"v{version}.h5: cache schema version {version} has no 'parts' column .*regenerate"):
        load_split_region_masks(old, market, "query", "parts")
    with h5py.File(old, "r+") as f:
        f.attrs["schema_version"] = 6
    with pytest.raises(UserError, match=r"cache schema version 6, this reid-masks reads versions 1, 2, 3, 4, 5"):
        load_split_region_masks(old, market, "query", "regions")


# --------------------------------------------------------------------------- masks at inference


def _tiny_cfg(root: Path, cache: Path, out: Path, *extra: str):
    return load_config("tiny_synthetic_mgran", [
        f"data.root={root}", f"data.cache={cache}", f"train.output_dir={out}",
        "data.height=64", "data.width=32", "data.num_workers=0", "data.num_ids=4", "data.num_instances=2",
        "train.log_period=50", *extra,
    ])


def test_evaluation_refuses_images_without_masks(market, market_root, small_cache, tmp_path) -> None:
    splits = {}
    for split in ("train", "query", "gallery"):
        rows = split_rows(market, split)
        if split == "query":
            rows = rows.take(np.arange(len(rows) - 1))  # the last query image has no row
        splits[split] = (len(rows), rows)
    lacking = tmp_path / "lacking_query.h5"
    write_cache(lacking, splits, {"dataset": "market1501"})
    model = build_model("mgran", market.num_train_pids, backbone="resnet18")
    cfg = _tiny_cfg(market_root, lacking, tmp_path / "run")
    with pytest.raises(UserError) as err:
        evaluate_model(model, market, cfg, torch.device("cpu"))
    assert str(lacking) in str(err.value) and "query" in str(err.value) and market.query[-1].path in str(err.value)
    with pytest.raises(UserError, match="set data.cache"):
        evaluate_model(model, market, _tiny_cfg(market_root, "", tmp_path / "run"), torch.device("cpu"))
    # unreadable rows (all-zero masks) are refused too, naming the cache and the first image
    splits["query"] = (len(market.query), split_rows(market, "query"))
    splits["query"][1].status[2] = STATUS["unreadable"]
    unreadable = tmp_path / "unreadable.h5"
    write_cache(unreadable, splits, {"dataset": "market1501"})
    with pytest.raises(UserError) as err:
        evaluate_model(model, market, _tiny_cfg(market_root, unreadable, tmp_path / "run"), torch.device("cpu"))
    assert str(unreadable) in str(err.value) and "unreadable" in str(err.value) and market.query[2].path in str(err.value)


def test_fit_evaluate_extract_end_to_end_on_cpu(market, market_root, small_cache, tmp_path) -> None:
    out = tmp_path / "run"
    runner = CliRunner()
    sets = [f"data.root={market_root}", f"data.cache={small_cache}", f"train.output_dir={out}",
            "solver.epochs=3", "data.height=64", "data.width=32", "solver.step_size=100"]
    res = runner.invoke(main, ["fit", "--config", "tiny_synthetic_mgran", *[a for s in sets for a in ("--set", s)]])
    assert res.exit_code == 0, res.output
    assert "rank-1" in res.stdout and "rank-5" in res.stdout
    log = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3] and all("msml" in r and "ce_whole" not in r for r in log)
    ckpt = out / "checkpoint.pth"

    res = runner.invoke(main, ["evaluate", "--checkpoint", str(ckpt), "--out", str(tmp_path / "eval.json")])
    assert res.exit_code == 0, res.output
    assert "rank-1" in res.stdout and "rank-5" in res.stdout
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["num_query"] == len(market.query) and results["num_gallery"] == len(market.gallery)
    train_eval = json.loads((out / "evaluations.jsonl").read_text().splitlines()[-1])
    assert train_eval["rank1"] == pytest.approx(results["rank1"]) and train_eval["mAP"] == pytest.approx(results["mAP"])

    feats = tmp_path / "gallery.npz"
    res = runner.invoke(main, ["extract", "--checkpoint", str(ckpt), "--split", "gallery", "--out", str(feats)])
    assert res.exit_code == 0, res.output
    with np.load(feats) as z:
        assert z["features"].shape == (len(market.gallery), 4 * 512)
        assert np.allclose(np.linalg.norm(z["features"], axis=1), 1.0, atol=1e-5)

    # ranked lists show the region inputs the model was given: contours in the region colours on every image
    vis = tmp_path / "vis"
    res = runner.invoke(main, ["visualize", "--checkpoint", str(ckpt), "--n", "1", "--topk", "2", "--tile-height", "64", "--out", str(vis)])
    assert res.exit_code == 0, res.output
    shown = json.loads((vis / "rankings.json").read_text())
    assert shown["heading"].startswith("mgran (resnet18), epoch 3 of checkpoint.pth") and shown["attention_maps"] == []
    img = np.asarray(Image.open(vis / shown["queries"][0]["file"]).convert("RGB"))
    plain = RankingLayout((64, 32), 2, 0)
    layout = RankingLayout((64, 32), 2, 0, heading=len(wrap_heading(shown["heading"], plain.size[0])))
    for kind, i in (("query", 0), ("gallery", 0), ("gallery", 1)):
        y, x = layout.tile_origin(kind, i)
        tile = img[y + 3:y + 3 + 64, x + 3:x + 3 + 32].reshape(-1, 3)
        for color in (visual.HEAD_COLOR, visual.UPPER_COLOR, visual.BOTTOM_COLOR):
            assert np.all(tile == np.asarray(color, np.uint8), axis=1).sum() >= 6, (kind, i, color)

    # the evaluation needs the masks: a cache without them is refused with the file's name
    res = runner.invoke(main, ["evaluate", "--checkpoint", str(ckpt), "--set", f"data.cache={tmp_path / 'none.h5'}"])
    assert res.exit_code == 2 and "none.h5" in res.stderr


def test_packaged_mgran_configs() -> None:
    names = packaged_configs()
    expected = {"mgran_market1501": ("mgran", "market1501"), "mgran_dukemtmc": ("mgran", "dukemtmc"),
                "mgran_cuhk03_labeled": ("mgran", "cuhk03"), "mgran_cuhk03_detected": ("mgran", "cuhk03"),
                "mgran_gf_market1501": ("mgran_gf", "market1501"), "mgran_pl_market1501": ("mgran_pl", "market1501")}
    for n, (model, dataset) in expected.items():
        assert n in names
        cfg = load_config(n)
        assert (cfg.model.name, cfg.data.dataset) == (model, dataset)
        assert cfg.model.backbone == "resnet50" and cfg.model.pretrained == "imagenet" and cfg.data.cache
        assert cfg.model.id_head is False and cfg.model.reduction_dim == 0 and cfg.loss.msml_normalize
    # the paper's CUHK03 numbers are classic-protocol ones; CUHK03-NP has its own configs
    assert load_config("mgran_cuhk03_labeled").data.options == {"variant": "labeled", "protocol": "classic", "split_id": 0}
    assert load_config("mgran_cuhk03_detected").data.options == {"variant": "detected", "protocol": "classic", "split_id": 0}
    assert load_config("mgran_cuhk03np_detected").data.options == {"variant": "detected", "protocol": "new", "split_id": 0}
    assert load_config("mgran_pl_cuhk03_labeled").data.options["protocol"] == "classic"
    assert load_config("mgran_cuhk03_detected").data.cache != load_config("mgran_cuhk03_labeled").data.cache


def test_a_key_the_model_does_not_read_is_refused(tmp_path) -> None:
    # every packaged config loads: none sets a key its model ignores (the MGRAN ones used to
    # inherit loss.lambda0/1/2 and solver.lr from the MMGA recipe)
    for name in packaged_configs():
        load_config(name)
    assert unread_keys(load_config("mgran_market1501"), READ_WHEN) == [
        "model.stage4_input", "model.whole_dim", "model.part_dim", "model.head_bn",
        "loss.lambda0", "loss.lambda1", "loss.lambda2", "model.mhsa_heads", "loss.label_smoothing", "solver.lr"]
    with pytest.raises(UserError, match=r"^--set: loss.lambda1 is not read by model.name=mgran"):
        load_config("mgran_market1501", ["loss.lambda1=3"])
    with pytest.raises(UserError, match=r"^--set: solver.lr is not read by model.name=mgran"):
        load_config("mgran_market1501", ["solver.lr=0.2"])
    # solver.lr has a parameter group to act on once the model has non-backbone weights
    assert load_config("mgran_market1501", ["model.id_head=true", "solver.lr=0.2"]).solver.lr == 0.2
    assert load_config("mgran_market1501", ["model.reduction_dim=256", "solver.lr=0.2"]).solver.lr == 0.2
    with pytest.raises(UserError, match=r"^--set: model.reduction_dim is not read by model.name=mmga"):
        load_config("mmga_market1501", ["model.reduction_dim=256"])
    # a file that sets one: the message names the file that sets it
    (tmp_path / "bad.yaml").write_text("_base_: mgran_market1501\nloss:\n  lambda2: 0.1\n")
    with pytest.raises(UserError, match=r"bad.yaml: loss.lambda2 is not read by model.name=mgran"):
        load_config(tmp_path / "bad.yaml")
    # switching an MMGA config to MGRAN: the MMGA file's own keys are refused, naming that file
    with pytest.raises(UserError, match=r"mmga_market1501.yaml: loss.lambda0 is not read by model.name=mgran"):
        load_config("tiny_synthetic", ["model.name=mgran"])
    # a run's config.yaml keeps only the keys its model reads, so it loads back
    cfg = load_config("tiny_synthetic_mgran", ["model.name=mgran_pl"])
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config_to_dict(cfg, read_only=True)))
    assert config_to_dict(load_config(tmp_path / "run.yaml")) == config_to_dict(cfg)
