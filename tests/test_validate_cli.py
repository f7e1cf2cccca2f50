"""``reid-masks validate`` and ``synth`` through the real CLI."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from reid_masks.cli import main


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output  # click >= 8.2: stdout and stderr interleaved


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("layout", ["market1501", "dukemtmc", "msmt17", "cuhk03"])
def test_validate_accepts_a_correct_copy(synth_dataset, layout):
    root = synth_dataset(layout)
    code, out = run("validate", "--dataset", layout, "--root", str(root), "--manifest", str(root / "manifest.json"), "--check-images")
    assert code == 0, out
    assert "matches" in out


def test_validate_against_real_counts_reports_expected_vs_found(synth_dataset):
    root = synth_dataset("market1501")
    code, out = run("validate", "--dataset", "market1501", "--root", str(root))
    assert code == 1
    assert "train: expected 12936 images, found" in out
    assert "gallery: expected 3819 junk, found" in out


def test_validate_layout_only_on_a_subset(synth_dataset, tmp_path):
    """--no-counts: a subset of Market-1501 passes on layout, names and images, and says what it read."""
    from reid_masks.datasets import build_dataset

    root = copy(synth_dataset("market1501"), tmp_path / "m")
    ds = build_dataset("market1501", root)
    code, out = run("validate", "--dataset", "market1501", "--root", str(root))  # against the real counts
    assert code == 1 and out.strip().endswith("--no-counts checks everything but the counts)")
    assert "only the counts differ" in out
    code, out = run("validate", "--dataset", "market1501", "--root", str(root), "--no-counts", "--check-images")
    assert code == 0, out
    assert out.strip().splitlines()[-1] == (f"{root}: the layout and file names are as market1501 expects and every listed "
                                            f"image is readable and decodes (counts not compared: --no-counts)")
    for split in ("train", "query", "gallery"):
        recs = ds.split(split)
        line = f"{split}: {len(recs)} images, {len({r.pid for r in recs})} ids, {len({r.camid for r in recs})} cameras"
        assert f"  {line}\n" in out, line
    # everything but the counts is still checked: a bad name fails, and no longer says only the counts differ
    (root / "query" / "IMG_001.jpg").write_bytes(b"x")
    code, out = run("validate", "--dataset", "market1501", "--root", str(root), "--no-counts")
    assert code == 1 and "query: 1 file name(s)" in out and "expected" not in out and "only the counts" not in out


def test_validate_missing_split_folder(synth_dataset, tmp_path):
    root = copy(synth_dataset("market1501"), tmp_path / "m")
    shutil.rmtree(root / "bounding_box_test")
    code, out = run("validate", "--dataset", "market1501", "--root", str(root), "--manifest", str(root / "manifest.json"))
    assert code == 1
    assert f"gallery: missing split folder {root / 'bounding_box_test'}" in out
    assert "train: expected" not in out  # the intact splits have no difference


def test_validate_wrong_count_and_bad_names(synth_dataset, tmp_path):
    root = copy(synth_dataset("dukemtmc"), tmp_path / "d")
    victims = sorted((root / "bounding_box_train").glob("*.jpg"))[:2]
    for v in victims:
        v.unlink()
    for name in ("IMG_001.jpg", "IMG_002.jpg", "IMG_003.jpg", "IMG_004.jpg"):
        (root / "query" / name).write_bytes(b"x")
    code, out = run("validate", "--dataset", "dukemtmc", "--root", str(root), "--manifest", str(root / "manifest.json"))
    assert code == 1
    n = len(list((root / "bounding_box_train").glob("*.jpg")))
    assert f"train: expected {n + 2} images, found {n}" in out
    assert "query: 4 file name(s)" in out and "first: IMG_001.jpg, IMG_002.jpg, IMG_003.jpg)" in out


def test_validate_truncated_image(synth_dataset, tmp_path):
    root = copy(synth_dataset("market1501"), tmp_path / "m")
    victim = sorted((root / "query").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    code, out = run("validate", "--dataset", "market1501", "--root", str(root), "--manifest", str(root / "manifest.json"), "--check-images")
    assert code == 1
    assert f"{victim}: unreadable image" in out


def test_validate_msmt_missing_listed_image(synth_dataset, tmp_path):
    root = copy(synth_dataset("msmt17"), tmp_path / "s")
    first = (root / "list_query.txt").read_text().splitlines()[0].split()[0]
    (root / "test" / first).unlink()
    code, out = run("validate", "--dataset", "msmt17", "--root", str(root), "--manifest", str(root / "manifest.json"))
    assert code == 1
    assert f"query: 1 listed image(s) missing (first: test/{first})" in out


def test_validate_user_errors_are_one_line(tmp_path):
    code, out = run("validate", "--dataset", "market1501", "--root", str(tmp_path / "absent"))
    assert code == 2
    assert out.strip() == f"error: {tmp_path / 'absent'}: dataset root not found"
    code, out = run("validate", "--dataset", "market1501", "--root", str(tmp_path), "--manifest", str(tmp_path / "m.json"))
    assert code == 2 and "m.json: manifest file not found" in out and "Traceback" not in out
    code, out = run("validate", "--dataset", "imagenet", "--root", str(tmp_path))
    assert code == 2 and "unknown dataset 'imagenet'" in out


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            data = p.read_bytes()
            if p.suffix == ".mat" and p.name == "cuhk-03.mat":
                data = str(sorted(_h5_digest(p))).encode()  # HDF5 files embed nothing random, but compare content
            h.update(data)
    return h.hexdigest()


def _h5_digest(path: Path) -> list:
    import h5py

    out = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.append((name, hashlib.sha1(obj[()].tobytes()).hexdigest())) if isinstance(obj, h5py.Dataset) and obj.dtype != h5py.ref_dtype else None)
    return out


@pytest.mark.parametrize("layout", ["market1501", "cuhk03"])
def test_synth_is_deterministic_for_a_seed(tmp_path, layout):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        code, out = run("synth", "--layout", layout, "--out", str(tmp_path / name), "--ids", "3", "--seed", str(seed), "--workers", "2")
        assert code == 0, out
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "c")


def test_synth_refuses_non_empty_output(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    code, out = run("synth", "--layout", "market1501", "--out", str(tmp_path / "x"))
    assert code == 2 and "output folder exists and is not empty" in out
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_synth_writes_parsing_for_every_image(synth_dataset):
    from reid_masks.datasets import build_dataset

    root = synth_dataset("market1501")
    ds = build_dataset("market1501", root)
    for r in ds.train + ds.query + ds.gallery:
        assert (root / "parsing" / r.path).with_suffix(".png").is_file()
