"""reid-masks export (bpbreid / lip-png / seg-png / npz) and the plain torch Dataset.

The keypoint cache (``reid_masks.synth.keypoint_cache``) holds synthetic crops whose true
keypoints and visible masks the renderer knows, put through the real derivation as a perfect
detector would report them, written with the real cache writer (person size 256x128, twice
the crops). The parsing cache is made by ``reid-masks generate --parsing-dir``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from reid_masks.cache import MASK_HW, STATUS, MaskCache
from reid_masks.cli import main
from reid_masks.datasets import build_dataset
from reid_masks.imageio import read_label_png, read_parsing_png
from reid_masks.pifpaf import field_size
from reid_masks.synth.keypoint_cache import keypoint_dataset, repeat_cache

# --- bpbreid's channel order and groupings, transcribed from VlSomers/bpbreid
# torchreid/data/masks_transforms/pifpaf_mask_transform.py (PIFPAF_KEYPOINTS + PIFPAF_JOINTS,
# CombinePifPafIntoEightBodyMasks = 'eight', CombinePifPafIntoFiveVerticalParts = 'five_v';
# MaskGroupingTransform takes the max over each group's channels).
BPBREID_CHANNELS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_ankle_to_left_knee", "left_knee_to_left_hip", "right_ankle_to_right_knee", "right_knee_to_right_hip",
    "left_hip_to_right_hip", "left_shoulder_to_left_hip", "right_shoulder_to_right_hip", "left_shoulder_to_right_shoulder",
    "left_shoulder_to_left_elbow", "right_shoulder_to_right_elbow", "left_elbow_to_left_wrist", "right_elbow_to_right_wrist",
    "left_eye_to_right_eye", "nose_to_left_eye", "nose_to_right_eye", "left_eye_to_left_ear", "right_eye_to_right_ear",
    "left_ear_to_left_shoulder", "right_ear_to_right_shoulder",
]
HEAD = ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_eye_to_right_eye", "nose_to_left_eye", "nose_to_right_eye",
        "left_eye_to_left_ear", "right_eye_to_right_ear", "left_ear_to_left_shoulder", "right_ear_to_right_shoulder"]
EIGHT = {
    "head": HEAD,
    "left_arm": ["left_shoulder", "left_elbow", "left_wrist", "left_shoulder_to_left_elbow", "left_elbow_to_left_wrist"],
    "right_arm": ["right_shoulder", "right_elbow", "right_wrist", "right_shoulder_to_right_elbow", "right_elbow_to_right_wrist"],
    "torso": ["left_hip", "right_hip", "left_hip_to_right_hip", "left_shoulder_to_left_hip", "right_shoulder_to_right_hip",
              "left_shoulder_to_right_shoulder"],
    "left_leg": ["left_knee", "left_ankle_to_left_knee", "left_knee_to_left_hip", "left_hip_to_right_hip"],
    "right_leg": ["right_knee", "right_ankle_to_right_knee", "right_knee_to_right_hip"],
    "left_feet": ["left_ankle"],
    "right_feet": ["right_ankle"],
}
FIVE_V = {
    "head": HEAD,
    "upper_arms_torso": ["left_elbow", "right_elbow", "left_shoulder_to_left_elbow", "right_shoulder_to_right_elbow", "left_shoulder",
                         "right_shoulder", "left_shoulder_to_right_shoulder"],
    "lower_arms_torso": ["left_wrist", "right_wrist", "left_elbow_to_left_wrist", "right_elbow_to_right_wrist", "left_hip", "right_hip",
                         "right_shoulder_to_right_hip"],
    "legs": ["left_hip", "right_hip", "left_knee", "right_knee", "left_ankle_to_left_knee", "left_knee_to_left_hip",
             "right_ankle_to_right_knee", "right_knee_to_right_hip"],
    "feet": ["left_ankle", "right_ankle"],
}


def group(fields: np.ndarray, grouping: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """bpbreid's MaskGroupingTransform ('max' mode) on one (36, H, W) array."""
    return {name: fields[[BPBREID_CHANNELS.index(c) for c in chans]].max(axis=0).clip(0, 1) for name, chans in grouping.items()}


def nearest_up(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((hw[1], hw[0]), Image.NEAREST))


# --- a cache with keypoints: reid_masks.synth.keypoint_cache -------------------------------

@pytest.fixture(scope="module")
def kp_cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("kp") / "market"
    return root, keypoint_dataset(root)


@pytest.fixture(scope="module")
def parsing_cache(synth_dataset, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = synth_dataset("market1501")
    out = tmp_path_factory.mktemp("parsing") / "cache.h5"
    r = CliRunner().invoke(main, ["generate", "--dataset", "market1501", "--root", str(root), "--parsing-dir", str(root / "parsing"),
                                  "--out", str(out), "--workers", "0"])
    assert r.exit_code == 0, r.output
    return root, out


def run_export(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, ["export", *map(str, args)])
    return r.exit_code, r.output


def rows_of(cache: Path) -> list[tuple[str, dict]]:
    with MaskCache(cache) as mc:
        return [(s, {k: v[i] for k, v in mc.rows(s).items()}) for s in mc.splits for i in range(mc.num_stored(s))]


# --- bpbreid --------------------------------------------------------------------------------

def test_bpbreid_fields_peak_at_keypoints_inside_the_person(kp_cache):
    root, cache = kp_cache
    code, out = run_export(cache, "--format", "bpbreid", "--root", root)
    assert code == 0, out
    folder = root / "masks" / "pifpaf_maskrcnn_filtering"
    rows = rows_of(cache)
    peaks = 0
    for split, row in rows:
        rel = Path(row["path"])
        f = folder / rel.parent.name / (rel.stem + ".npy")  # bpbreid's infer_masks_path for Market-1501
        fields = np.load(f)
        h, w = (int(v) for v in row["image_size"])
        assert fields.dtype == np.float32 and fields.shape == (36, 17, 9) == (36, *field_size(h, w))
        assert fields.min() >= 0 and fields.max() <= 1
        # inside the person: a cell is nonzero only if its 8x8 footprint holds a person pixel
        person = nearest_up(row["person"], (h, w)) > 0
        padded = np.zeros((17 * 8, 9 * 8), bool)
        padded[:h, :w] = person
        touch = np.zeros((17, 9), bool)
        for i in range(17):
            for j in range(9):
                touch[i, j] = padded[max(0, 8 * i - 4): 8 * i + 4, max(0, 8 * j - 4): 8 * j + 4].any()
        assert not (fields.max(axis=0) > 0)[~touch].any(), f
        # peaks at the keypoints: each confident keypoint whose cell is the person's peaks there
        for k, (x, y, s) in enumerate(row["keypoints"]):
            cell = (min(16, int(round(y / 8))), min(8, int(round(x / 8))))
            if s < 0.3 or not touch[cell]:
                assert s >= 0.3 or fields[k].max() == 0
                continue
            got = np.unravel_index(np.argmax(fields[k]), fields[k].shape)
            assert abs(got[0] - cell[0]) <= 1 and abs(got[1] - cell[1]) <= 1, (f, k, got, cell)
            assert fields[k].max() == pytest.approx(s, rel=0.25)
            peaks += 1
        if row["status"] != STATUS["ok"]:
            assert fields.max() == 0
    assert peaks > 100


def test_bpbreid_groupings_make_sensible_parts(kp_cache):
    root, cache = kp_cache
    assert run_export(cache, "--format", "bpbreid", "--root", root)[0] == 0
    folder = root / "masks" / "pifpaf_maskrcnn_filtering"
    checked = 0
    for split, row in rows_of(cache):
        kp = row["keypoints"]
        if (kp[:, 2] < 0.3).any():  # a fully visible person: every part must show
            continue
        rel = Path(row["path"])
        fields = np.load(folder / rel.parent.name / (rel.stem + ".npy"))
        rows_idx = np.arange(fields.shape[1], dtype=np.float64)[:, None]

        def centre_row(m: np.ndarray) -> float:
            return float((m * rows_idx).sum() / m.sum())

        eight = group(fields, EIGHT)
        assert all(m.max() > 0.2 for m in eight.values()), {k: m.max() for k, m in eight.items()}
        legs = (eight["left_leg"] + eight["right_leg"]) / 2
        feet = (eight["left_feet"] + eight["right_feet"]) / 2
        assert centre_row(eight["head"]) < centre_row(eight["torso"]) < centre_row(legs) < centre_row(feet)
        # left and right limbs sit on the sides of their own keypoints
        cols = np.arange(fields.shape[2], dtype=np.float64)[None, :]
        for side, wrist in (("left_arm", 9), ("right_arm", 10)):
            m = eight[side]
            other = eight["right_arm" if side == "left_arm" else "left_arm"]
            assert abs((m * cols).sum() / m.sum() - kp[wrist, 0] / 8) <= abs((other * cols).sum() / other.sum() - kp[wrist, 0] / 8) + 0.5
        five = [centre_row(m) for m in group(fields, FIVE_V).values()]
        assert five == sorted(five), five  # five_v: head, upper arms/torso, lower arms/torso, legs, feet from top to bottom
        checked += 1
    assert checked >= 3


def test_bpbreid_refused_without_keypoints(parsing_cache, tmp_path):
    _, cache = parsing_cache
    code, out = run_export(cache, "--format", "bpbreid", "--out", tmp_path / "b")
    assert code == 2 and "no row of this cache has one" in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


# --- lip-png / seg-png / npz ----------------------------------------------------------------

def test_lip_png_equals_the_source_labels(parsing_cache, tmp_path):
    root, cache = parsing_cache
    code, out = run_export(cache, "--format", "lip-png", "--out", tmp_path / "lip")
    assert code == 0, out
    n = 0
    for split, row in rows_of(cache):
        src = read_parsing_png((root / "parsing" / row["path"]).with_suffix(".png"))
        got = read_parsing_png((tmp_path / "lip" / row["path"]).with_suffix(".png"))  # the reader of --parsing-dir accepts it
        assert got.dtype == np.uint8 and np.array_equal(got, src), row["path"]
        n += 1
    assert n > 50
    with Image.open((tmp_path / "lip" / row["path"]).with_suffix(".png")) as im:  # SCHP's extractor's files: palette PNGs
        assert im.mode == "P" and np.array_equal(np.asarray(im), src)
        # its colour map is PASCAL VOC's: label 1 dark red, 2 dark green, 3 olive, 4 navy, 8 (64, 0, 0), 19 (128, 192, 0)
        colours = np.asarray(im.getpalette()[:60]).reshape(20, 3)
        assert [tuple(colours[k]) for k in (0, 1, 2, 3, 4, 8, 19)] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0), (0, 0, 128), (64, 0, 0), (128, 192, 0)]


def test_inspect_counts_the_rows_that_keep_parsing_labels(parsing_cache):
    from reid_masks.inspect import inspect_command

    _, cache = parsing_cache
    with MaskCache(cache) as mc:
        n = mc.num_stored("query")
    out = CliRunner().invoke(inspect_command, [str(cache)]).output
    query = out[out.index("[query]"):out.index("[gallery]")]
    assert f"parsing labels kept: {n} rows (100.0%; reid-masks export --format lip-png)" in query, query


def test_lip_png_is_exact_at_any_image_size(tmp_path):
    """Crops of odd sizes (no multiple of the 256x128 person size) with all 20 LIP labels: the
    export gives back the parser's labels pixel for pixel, and --update keeps them."""
    rng = np.random.default_rng(3)
    images, parsing = tmp_path / "crops", tmp_path / "parsing"
    sizes = {"a.jpg": (97, 41), "cam2/b.png": (203, 77), "cam2/c.jpg": (131, 60)}
    labels = {}
    for rel, (h, w) in sizes.items():
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (parsing / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / rel)
        lab = np.repeat(np.repeat(rng.integers(0, 20, (h // 4 + 1, w // 4 + 1)), 4, 0), 4, 1)[:h, :w].astype(np.uint8)
        lab[:2, :20] = np.arange(20)  # every label at least once
        Image.fromarray(lab, mode="L").save((parsing / rel).with_suffix(".png"))
        labels[rel] = lab
    cache = tmp_path / "c.h5"
    r = CliRunner().invoke(main, ["generate", "--dataset", "images", "--root", str(images), "--parsing-dir", str(parsing), "--out", str(cache), "--workers", "0"])
    assert r.exit_code == 0, r.output
    code, out = run_export(cache, "--format", "lip-png", "--out", tmp_path / "lip")
    assert code == 0 and "3 file(s) written" in out, out
    for rel, lab in labels.items():
        assert np.array_equal(read_parsing_png((tmp_path / "lip" / rel).with_suffix(".png")), lab), rel
    # one image replaced: --update recomputes it and keeps the others' labels as they were
    lab = np.full(sizes["a.jpg"], 13, np.uint8)
    Image.fromarray(lab, mode="L").save(parsing / "a.png")
    labels["a.jpg"] = lab
    r = CliRunner().invoke(main, ["generate", "--dataset", "images", "--root", str(images), "--parsing-dir", str(parsing), "--out", str(cache), "--workers", "0", "--update"])
    assert r.exit_code == 0 and "updating 1 changed" in r.output, r.output
    with MaskCache(cache) as mc:
        for i, rel in enumerate(mc.column("query", "path")):
            assert np.array_equal(mc.parsing("query", i), labels[rel]), rel


def test_lip_png_refuses_labels_moved_to_other_rows(parsing_cache, tmp_path):
    import shutil

    import h5py

    _, cache = parsing_cache
    bad = tmp_path / "bad.h5"
    shutil.copy(cache, bad)
    with h5py.File(bad, "r+") as f:  # two rows' parsing swapped, everything else in place
        f["query/parsing"].write_direct(f["query/parsing"][0:2][::-1].copy(), np.s_[0:2], np.s_[0:2])
    code, out = run_export(bad, "--format", "lip-png", "--out", tmp_path / "lip")
    assert code == 2 and "query row(s) 0 (" in out and "do not match their map digests" in out, out
    assert len(out.strip().splitlines()) == 1
    assert not list((tmp_path / "lip").rglob("query*/*.png"))  # the bad block wrote nothing


def test_lip_png_refused_without_a_parsing_source(kp_cache, tmp_path):
    _, cache = kp_cache
    code, out = run_export(cache, "--format", "lip-png", "--out", tmp_path / "lip")
    assert code == 2 and "needs a cache made with a parsing source" in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "lip").exists()


def test_seg_png_equals_the_person_mask_and_reads_back_as_seg_siblings(parsing_cache, tmp_path):
    import shutil

    src_root, cache = parsing_cache
    root = tmp_path / "market"
    shutil.copytree(src_root, root, ignore=shutil.ignore_patterns("parsing", "*_seg"))
    code, out = run_export(cache, "--format", "seg-png", "--root", root)
    assert code == 0, out
    for split, row in rows_of(cache):
        first, rest = row["path"].split("/", 1)
        png = read_label_png((root / f"{first}_seg" / rest).with_suffix(".png"))
        h, w = (int(v) for v in row["image_size"])
        assert png.shape == (h, w) and set(np.unique(png)) <= {0, 255}
        assert np.array_equal(png > 0, nearest_up(row["person"], (h, w)) > 0)
    # generate --seg-siblings reads them back: the same person masks
    again = tmp_path / "again.h5"
    r = CliRunner().invoke(main, ["generate", "--dataset", "market1501", "--root", str(root), "--seg-siblings", "--out", str(again), "--workers", "0"])
    assert r.exit_code == 0, r.output
    with MaskCache(cache) as a, MaskCache(again) as b:
        for s in a.splits:
            assert np.array_equal(a.column(s, "person"), b.column(s, "person"))


def test_npz_holds_every_column(kp_cache, tmp_path):
    _, cache = kp_cache
    code, out = run_export(cache, "--format", "npz", "--out", tmp_path / "npz", "--block-rows", "3")
    assert code == 0, out
    with MaskCache(cache) as mc:
        for s in mc.splits:
            data = np.load(tmp_path / "npz" / f"{s}.npz")
            for c in ("path", "pid", "camid", "status", "keypoints", "masks", "person", "regions", "parts", "cuts"):
                assert np.array_equal(data[c], mc.column(s, c).astype(str) if c == "path" else mc.column(s, c)), (s, c)
            assert data["masks"].shape[1:] == (3, *MASK_HW)
    code, out = run_export(cache, "--format", "npz", "--out", tmp_path / "npz")
    assert code == 0 and "0 file(s) written" in out


def test_another_cache_is_refused_then_overwritten(kp_cache, parsing_cache, tmp_path):
    _, cache_a = kp_cache
    _, cache_b = parsing_cache
    assert run_export(cache_a, "--format", "npz", "--out", tmp_path / "o")[0] == 0
    code, out = run_export(cache_b, "--format", "npz", "--out", tmp_path / "o")
    assert code == 2 and "export of another cache" in out
    code, out = run_export(cache_b, "--format", "npz", "--out", tmp_path / "o", "--overwrite")
    assert code == 0, out
    with MaskCache(cache_b) as mc:
        assert len(np.load(tmp_path / "o" / "train.npz")["pid"]) == mc.num_stored("train")


# --- resume after kill -9 -------------------------------------------------------------------

def count_files(folder: Path, pattern: str) -> int:
    """Files matching ``pattern`` under ``folder`` while a running export writes it (a folder it is
    still creating or tidying may vanish mid-walk: count again)."""
    for _ in range(100):
        try:
            return len(list(folder.glob(pattern)))
        except FileNotFoundError:
            continue
    return 0


def test_killed_export_resumes_skips_complete_files_and_rewrites_a_torn_one(kp_cache, tmp_path):
    _, small = kp_cache
    cache = tmp_path / "big.h5"
    total = repeat_cache(small, cache, copies=25)
    out = tmp_path / "out"
    folder = out / "masks" / "pifpaf_maskrcnn_filtering"
    cmd = [sys.executable, "-m", "reid_masks.cli", "export", str(cache), "--format", "bpbreid", "--out", str(out), "--block-rows", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and count_files(folder, "*/*.npy") < 60 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the export finished before it could be killed; give it more rows"
    done = sorted(folder.glob("*/*.npy"))
    assert 60 <= len(done) < total
    torn = done[len(done) // 2]
    torn.write_bytes(torn.read_bytes()[:300])  # a torn file under its final name
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert f"{total - len(done) + 1} file(s) written, {len(done) - 1} already complete" in r.stdout
    assert "rewrote 1 incomplete file(s)" in r.stderr and str(torn) in r.stderr
    assert len(list(folder.glob("*/*.npy"))) == total
    assert not [p for p in folder.rglob(".*tmp-*")]  # the killed run's temporary file is gone
    assert np.load(torn).shape == (36, 17, 9)


def test_sigterm_ends_with_one_line_and_143(kp_cache, tmp_path):
    _, small = kp_cache
    cache = tmp_path / "big.h5"
    repeat_cache(small, cache, copies=15)
    out = tmp_path / "seg"
    cmd = [sys.executable, "-m", "reid_masks.cli", "export", str(cache), "--format", "bpbreid", "--out", str(out), "--block-rows", "8"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and count_files(out, "**/*.npy") < 20 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate()
    assert proc.returncode == 143, err
    last = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(last) == 1 and "interrupted by SIGTERM" in last[0] and "rerun the same command" in last[0]


# --- the torch Dataset ----------------------------------------------------------------------

def test_torch_dataset_items_match_the_cache(kp_cache):
    import torch

    from reid_masks.torch_dataset import MaskCacheDataset

    root, cache = kp_cache
    ds = MaskCacheDataset(cache, root, "train", columns=("masks", "parts", "keypoints"))
    recs = build_dataset("market1501", root).split("train")
    assert len(ds) == len(recs)
    item = ds[1]
    assert item["image"].shape == (3, 128, 64) and item["pid"] == recs[1].pid and item["path"] == recs[1].path
    with MaskCache(cache) as mc:
        for c in ("masks", "parts", "keypoints"):
            assert torch.equal(item[c], torch.from_numpy(mc.column("train", c)[1])), c


def test_torch_dataset_serves_the_parsing_labels_at_image_size(parsing_cache, kp_cache):
    import torch

    from reid_masks.errors import UserError
    from reid_masks.torch_dataset import MaskCacheDataset

    root, cache = parsing_cache
    ds = MaskCacheDataset(cache, root, "query", columns=("parsing", "parts"))
    for i in (0, len(ds) - 1):
        item = ds[i]
        src = read_parsing_png((root / "parsing" / item["path"]).with_suffix(".png"))
        assert item["parsing"].dtype == torch.uint8 and np.array_equal(item["parsing"].numpy(), src)
        assert item["parsing"].shape == item["image"].shape[1:]
    with pytest.raises(UserError, match="made without a parser"):
        MaskCacheDataset(kp_cache[1], kp_cache[0], "query", columns=("parsing",))


def test_the_documented_training_loops_run(kp_cache):
    """docs/using_the_cache.md's code blocks, run as written on the synthetic dataset."""
    import re

    import torch

    torch.manual_seed(0)
    root, cache = kp_cache
    text = (Path(__file__).resolve().parents[1] / "docs" / "using_the_cache.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 3
    scope = {"CACHE": str(cache), "ROOT": str(root), "EPOCHS": 2}
    for code in blocks[1:]:  # the first block names a /data path
        exec(compile(code, "docs/using_the_cache.md", "exec"), scope)
    assert np.isfinite(scope["loss"].item()) and scope["num_ids"] == 4
    assert scope["images"].shape[1:] == (3, 256, 128)


def test_torch_dataset_checks_the_cache_against_the_images(kp_cache, tmp_path):
    import shutil

    from reid_masks.errors import UserError
    from reid_masks.torch_dataset import MaskCacheDataset

    src, cache = kp_cache
    root = tmp_path / "market"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("masks"))
    first = sorted((root / "query").glob("*.jpg"))[0]
    Image.fromarray(np.zeros((128, 64, 3), np.uint8)).save(first)  # the image changed since the cache was made
    with pytest.raises(UserError, match="--update"):
        MaskCacheDataset(cache, root, "query")
    with pytest.raises(UserError, match="columns"):
        MaskCacheDataset(cache, src, "query", columns=("nonsense",))


def test_bpbreid_paths_follow_its_infer_masks_path():
    from reid_masks.export import bpbreid_target

    base = Path("/d")
    masks = base / "masks" / "pifpaf_maskrcnn_filtering"
    # generic ImageDataset.infer_masks_path: <parent folder>/<stem>.npy
    assert bpbreid_target(base, "market1501")("bounding_box_train/0002_c1s1_000451_03.jpg") == masks / "bounding_box_train" / "0002_c1s1_000451_03.npy"
    assert bpbreid_target(base, "msmt17")("train/0000/0000_c1_0001.jpg") == masks / "0000" / "0000_c1_0001.npy"
    # OccludedReID.infer_masks_path: two folders up (images in per-identity folders)
    assert bpbreid_target(base, "occluded_reid")("occluded_body_images/001/001_01.tif") == masks / "occluded_body_images" / "001_01.npy"
    # OccludedDuke's masks_dirs suffix for pifpaf_maskrcnn_filtering
    assert bpbreid_target(base, "occluded_duke")("query/0001_c1_f0046182.jpg") == masks / "query" / "0001_c1_f0046182.jpg.confidence_fields.npy"


def test_a_second_export_to_the_same_output_is_refused(kp_cache, tmp_path):
    _, cache = kp_cache
    out = tmp_path / "o"
    holder = ("import sys, time\nfrom reid_masks.fileio import OutputLock\n"
              "with OutputLock(sys.argv[1], 'reid-masks export (the other run)'):\n    print('locked', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", holder, str(out / "reid-masks-export-npz.json")], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"  # a POSIX lock: held by another process
        code, text = run_export(cache, "--format", "npz", "--out", out)
    finally:
        proc.kill()
        proc.wait()
    assert code == 2 and "another run is writing it" in text and "the other run" in text
    assert not (out / "train.npz").exists()
