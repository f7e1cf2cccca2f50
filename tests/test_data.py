"""reid_train.data: paired transforms keep masks on the body, P x K samplers, cache-joined dataset."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cache_helpers import make_cache
from reid_masks.datasets import build_dataset
from reid_masks.errors import UserError
from reid_train.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DistributedIdentitySampler,
    IdentitySampler,
    PairedTransform,
    ReIDImageDataset,
    build_transforms,
)

# --------------------------------------------------------------------------- transforms

IN_HW = (96, 32)  # 4x the 24x8 mask grid, so the marker's mask is exact
OUT_HW = (192, 64)


def marker_pair(top: int = 20, left: int = 4, h: int = 12, w: int = 8) -> tuple[np.ndarray, torch.Tensor]:
    """A black image with a white rectangle, and masks (3, 24, 8) equal to that rectangle."""
    image = np.zeros(IN_HW + (3,), np.uint8)
    image[top : top + h, left : left + w] = 255
    marker = torch.zeros(1, 1, *IN_HW)
    marker[..., top : top + h, left : left + w] = 1
    mask = F.interpolate(marker, size=(24, 8), mode="area")[0, 0]
    return image, torch.stack([mask, mask, torch.zeros_like(mask)])


def marker_in_output(image: torch.Tensor) -> torch.Tensor:
    """The white marker of a transformed (normalised) image, area-pooled to the 24x8 grid."""
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    raw = (image * std + mean).mean(0)
    return F.interpolate((raw > 0.5).float()[None, None], size=(24, 8), mode="area")[0, 0]


def centroid(m: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(m.shape[0]).float(), torch.arange(m.shape[1]).float(), indexing="ij")
    return torch.stack([(m * ys).sum(), (m * xs).sum()]) / m.sum()


@pytest.mark.parametrize("seed", range(12))
def test_masks_follow_flip_and_pad_crop(seed: int) -> None:
    image, masks = marker_pair()
    tf = PairedTransform(size=OUT_HW, train=True, flip_prob=0.5, pad=12, erasing_prob=0.0)
    out_img, out_masks = tf(image, masks, generator=torch.Generator().manual_seed(seed))
    assert out_img.shape == (3,) + OUT_HW and out_masks.shape == (3, 24, 8)
    target = marker_in_output(out_img)
    assert target.sum() > 0
    # the whole and upper masks sit on the marker; the empty bottom mask stays empty
    for ch in (0, 1):
        assert torch.allclose(centroid(out_masks[ch]), centroid(target), atol=0.25)
        assert (out_masks[ch] - target).abs().max() < 0.5
    assert out_masks[2].abs().max() < 1e-6


def test_flip_moves_mask_to_the_other_side() -> None:
    image, masks = marker_pair(left=2, w=6)  # marker on the left
    tf = PairedTransform(size=OUT_HW, train=True, flip_prob=1.0, pad=0, erasing_prob=0.0)
    out_img, out_masks = tf(image, masks, generator=torch.Generator().manual_seed(0))
    assert centroid(marker_in_output(out_img))[1] > 4  # the image was flipped ...
    assert centroid(out_masks[0])[1] > 4  # ... and so was the mask
    assert torch.allclose(out_masks[0], masks[0].flip(-1), atol=1e-5)


def test_random_erasing_touches_the_image_only() -> None:
    image, masks = marker_pair()
    erase = PairedTransform(size=OUT_HW, train=True, flip_prob=0.0, erasing_prob=1.0)
    plain = PairedTransform(size=OUT_HW, train=False)
    img_e, m_e = erase(image, masks, generator=torch.Generator().manual_seed(3))
    img_p, m_p = plain(image, masks)
    assert not torch.equal(img_e, img_p)
    assert (img_e == 0).all(dim=0).any()  # erased rectangle filled with the mean (0 after normalisation)
    assert torch.equal(m_e, m_p)
    assert torch.allclose(m_p, masks, atol=1e-5)  # resize there and back keeps the masks


def test_transforms_are_deterministic_for_a_generator_seed_and_eval_has_no_randomness() -> None:
    image, masks = marker_pair()
    train, test = build_transforms(OUT_HW, flip_prob=0.5, pad=8, erasing_prob=0.5)
    a = train(image, masks, generator=torch.Generator().manual_seed(7))
    b = train(image, masks, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.manual_seed(0)
    c = test(image)
    torch.manual_seed(1)
    d = test(image)
    assert torch.equal(c[0], d[0]) and c[1] is None


def float_pipeline(tf: PairedTransform, image: np.ndarray, masks: torch.Tensor, generator: torch.Generator):
    """The pipeline before images were loaded as uint8, written out: scale to [0, 1], resize the
    float image, flip / pad + crop it with the masks upsampled to the image size, normalise,
    erase, pool the masks back to their grid."""
    h, w = tf.size
    img = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255
    img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    m = F.interpolate(masks[None], size=(h, w), mode="nearest-exact")[0]
    if float(torch.rand((), generator=generator)) < tf.flip_prob:
        img, m = img.flip(-1), m.flip(-1)
    if tf.pad:
        p = tf.pad
        top, left = (int(torch.randint(0, 2 * p + 1, (), generator=generator)) for _ in range(2))
        img = F.pad(img, (p, p, p, p))[:, top:top + h, left:left + w]
        m = F.pad(m, (p, p, p, p))[:, top:top + h, left:left + w]
    img = (img - torch.tensor(tf.mean)[:, None, None]) / torch.tensor(tf.std)[:, None, None]
    if float(torch.rand((), generator=generator)) < tf.erasing_prob:
        top, left, eh, ew = tf._erase_box(h, w, generator).tolist()  # the same draws
        img[:, top:top + eh, left:left + ew] = 0.0
    return img, F.interpolate(m[None], size=tuple(masks.shape[-2:]), mode="area")[0].clamp(0, 1)


@pytest.mark.parametrize("pad", [0, 10, 16])
def test_uint8_pipeline_within_one_grey_level_of_the_float_pipeline_masks_unchanged(pad: int) -> None:
    """Resizing the uint8 image rounds to whole grey levels (< 1 level from the float resize);
    the masks moved on their 24x8 grid equal the round trip through 384x128; same draws, same erasing."""
    rng = np.random.default_rng(pad)
    tf = PairedTransform(size=(384, 128), train=True, flip_prob=0.5, pad=pad, erasing_prob=0.5)
    worst, mean_err = 0.0, []
    for seed in range(8):
        smooth = F.interpolate(torch.from_numpy(rng.random((1, 3, 8, 4))), size=(128, 64), mode="bicubic", align_corners=False)[0]
        image = np.clip(smooth.permute(1, 2, 0).numpy() * 255 + rng.normal(0, 12, (128, 64, 3)), 0, 255).astype(np.uint8)
        masks = torch.from_numpy(rng.random((3, 24, 8)).astype(np.float32))
        got_img, got_masks = tf(image, masks, generator=torch.Generator().manual_seed(seed))
        ref_img, ref_masks = float_pipeline(tf, image, masks, torch.Generator().manual_seed(seed))
        assert torch.allclose(got_masks, ref_masks, atol=1e-5, rtol=0)  # the round trip's own sums are off by ~4e-6
        assert torch.equal((got_img == 0).all(0), (ref_img == 0).all(0))  # the same erased rectangle
        grey = (got_img - ref_img) * torch.tensor(tf.std)[:, None, None] * 255  # in grey levels
        worst = max(worst, float(grey.abs().max()))
        mean_err.append(float(grey.abs().mean()))
    assert worst < 1.0 and np.mean(mean_err) < 0.35
    still = PairedTransform(size=(384, 128), train=False)(image, masks)[1]
    assert torch.equal(still, masks)  # nothing moved: the masks come back exactly (the round trip did not)


def test_batches_carry_uint8_and_normalise_on_the_device_as_the_transform(market) -> None:
    """A collated batch (uint8 images + erasing rectangles) normalised by the one normalisation
    equals the per-image transform bit for bit; the evaluation transform erases nothing."""
    train, test = build_transforms((96, 32), flip_prob=0.5, pad=4, erasing_prob=0.7)
    ds = ReIDImageDataset(market, "train", train)
    batches = iter(torch.utils.data.DataLoader(ds, batch_size=6, shuffle=False))  # draws its base seed here
    torch.manual_seed(0)
    batch = next(batches)
    assert batch["image"].dtype == torch.uint8 and batch["erase"].shape == (6, 4) and bool((batch["erase"][:, 2] > 0).any())
    torch.manual_seed(0)
    from reid_masks.imageio import read_image

    each = torch.stack([train(read_image(market.abspath(r)))[0] for r in ds.records[:6]])
    assert torch.equal(train.normalize(batch["image"], batch["erase"]), each)
    item = ReIDImageDataset(market, "query", test)[0]
    assert "erase" not in item and torch.equal(test.normalize(item["image"][None])[0], test(read_image(market.abspath(market.query[0])))[0])


# --------------------------------------------------------------------------- samplers


def pids_with_counts(counts: list[int]) -> list[int]:
    return [pid for pid, n in enumerate(counts) for _ in range(n)]


def test_sampler_pk_structure_and_epoch_coverage() -> None:
    counts = [5, 3, 1, 8, 4, 4, 2, 6, 7, 3, 2]  # 11 ids: not a multiple of P=4
    pids = pids_with_counts(counts)
    s = IdentitySampler(pids, num_ids=4, num_instances=4, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 3
    seen = set()
    for batch in batches:
        assert len(batch) == 16
        per_id = Counter(pids[i] for i in batch)
        assert len(per_id) == 4 and set(per_id.values()) == {4}
        for pid in per_id:
            own = [i for i in batch if pids[i] == pid]
            if counts[pid] >= 4:  # enough images: drawn without replacement
                assert len(set(own)) == 4
        seen |= set(per_id)
    assert seen == set(range(len(counts)))  # every identity once per epoch


def test_sampler_deterministic_per_epoch_and_state_round_trip() -> None:
    pids = pids_with_counts([4] * 10)
    a = IdentitySampler(pids, num_ids=2, num_instances=2, seed=5)
    b = IdentitySampler(pids, num_ids=2, num_instances=2, seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    assert list(a) == list(b)
    b.set_epoch(4)
    assert list(a) != list(b)
    c = IdentitySampler(pids, num_ids=2, num_instances=2, seed=0)
    c.load_state_dict(a.state_dict())
    assert c.state_dict() == {"seed": 5, "epoch": 3}
    assert list(c) == list(a)


def test_sampler_rejects_more_ids_per_batch_than_the_set_has() -> None:
    with pytest.raises(UserError, match="only 3"):
        IdentitySampler(pids_with_counts([2, 2, 2]), num_ids=4, num_instances=2)


def test_distributed_sampler_ranks_take_disjoint_shares_of_each_global_batch() -> None:
    pids = pids_with_counts([3, 5, 4, 2, 6, 4, 4, 1, 3, 5, 2, 4, 4])
    single = IdentitySampler(pids, num_ids=4, num_instances=2, seed=1)
    ranks = [DistributedIdentitySampler(pids, 4, 2, seed=1, num_replicas=2, rank=r) for r in range(2)]
    for s in [single, *ranks]:
        s.set_epoch(2)
    per_rank = [list(r) for r in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(single)
    for step, global_batch in enumerate(single):
        b0, b1 = per_rank[0][step], per_rank[1][step]
        assert len(b0) == len(b1) == ranks[0].batch_size == 4
        ids0, ids1 = {pids[i] for i in b0}, {pids[i] for i in b1}
        assert len(ids0) == len(ids1) == 2 and not ids0 & ids1
        assert b0 + b1 == global_batch
    with pytest.raises(UserError, match="not divisible"):
        DistributedIdentitySampler(pids, 4, 2, num_replicas=3, rank=0)


# --------------------------------------------------------------------------- dataset


@pytest.fixture(scope="module")
def market(synth_dataset):
    root = synth_dataset("market1501", ids=4)
    return build_dataset("market1501", root)


def test_dataset_items_carry_masks_from_the_cache(market) -> None:
    cache = make_cache(market.root, "market1501")
    _, test_tf = build_transforms((96, 32))
    ds = ReIDImageDataset(market, "train", test_tf, cache=cache)
    assert len(ds) == len(market.train) and ds.masks.shape == (len(market.train), 3, 24, 8)
    item = ds[3]
    assert item["image"].shape == (3, 96, 32)
    assert item["masks"].shape == (3, 24, 8)
    assert item["pid"] == market.train[3].pid and item["camid"] == market.train[3].camid and item["index"] == 3
    assert torch.allclose(item["masks"], ds.masks[3], atol=1e-5)
    assert ds.masks[3, 0].sum() > 5  # a real body mask, not zeros
    no_masks = ReIDImageDataset(market, "query", test_tf)
    assert "masks" not in no_masks[0]


def test_dataset_refuses_a_cache_with_missing_rows(market) -> None:
    cache = make_cache(market.root, "market1501", drop=2)
    _, test_tf = build_transforms((96, 32))
    with pytest.raises(UserError, match=r"2 train image\(s\) .* are not in the cache"):
        ReIDImageDataset(market, "train", test_tf, cache=cache)


def test_dataset_refuses_a_cache_of_another_dataset(market, synth_dataset) -> None:
    duke_cache = make_cache(synth_dataset("dukemtmc", ids=4), "dukemtmc")
    _, test_tf = build_transforms((96, 32))
    with pytest.raises(UserError, match="cache is for dataset 'dukemtmc', not 'market1501'"):
        ReIDImageDataset(market, "train", test_tf, cache=duke_cache)
