"""Inputs that are wrong but used to be accepted (issue 11): label ranges and 16-bit label PNGs,
list entries leaving the dataset root, dangling symlinks, and every adapter option reachable
from both command lines (``--dataset-option`` / ``data.options``)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Literal, Optional, Tuple

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from reid_masks.cache import STATUS, MaskCache
from reid_masks.cli import main
from reid_masks.datasets import build_dataset, check_dataset_options, dataset_names
from reid_masks.datasets.options import check_options
from reid_masks.errors import UserError
from reid_masks.imageio import read_label_png, read_parsing_png

# the folder layout that reads a Market-1501 copy exactly as the market1501 adapter does
MARKET_AS_FOLDER = {
    "pattern": r"^(?P<pid>-1|\d{4})_c(?P<camid>\d)s", "train_dir": "bounding_box_train",
    "gallery_dir": "bounding_box_test", "camera_base": "1", "junk_pid": "-1", "extensions": ".jpg",
}


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def as_cli(options: dict[str, str]) -> list[str]:
    return [a for k, v in options.items() for a in ("--dataset-option", f"{k}={v}")]


def save_png(path: Path, labels: np.ndarray) -> Path:
    """8-bit for uint8, 16-bit for uint16 (the PNG on disk is big-endian)."""
    Image.fromarray(labels).save(path)
    return path


# --- label PNGs -------------------------------------------------------------------------------


def test_parsing_labels_above_19_are_refused(tmp_path):
    lab = np.arange(20, dtype=np.uint8).repeat(3).reshape(6, 10)
    assert np.array_equal(read_parsing_png(save_png(tmp_path / "ok.png", lab)), lab)
    lab[2, 3], lab[4, 4] = 20, 255
    bad = save_png(tmp_path / "bad.png", lab)
    with pytest.raises(UserError) as err:
        read_parsing_png(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad}: 2 pixel(s)") and "20, 255 outside 0..19" in msg and "\n" not in msg


def test_16bit_label_pngs_are_read_without_wrapping(tmp_path):
    lab = (np.arange(60, dtype=np.uint16) % 20).reshape(6, 10)
    path = save_png(tmp_path / "p16.png", lab)
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")  # really a 16-bit PNG
    out = read_parsing_png(path)
    assert out.dtype == np.uint8 and np.array_equal(out, lab)
    # 256 + 5 used to wrap to label 5 (upper body); 512 to background
    lab[0, 0], lab[1, 1] = 261, 512
    with pytest.raises(UserError, match=r"p16w\.png: 2 pixel\(s\) with LIP parsing label value\(s\) 261, 512 outside 0\.\.19"):
        read_parsing_png(save_png(tmp_path / "p16w.png", lab))
    # a 16-bit person mask: any nonzero value is the person, 256 included
    mask = np.zeros((6, 10), np.uint16)
    mask[1:4, 2:5] = 256
    assert np.array_equal(read_label_png(save_png(tmp_path / "m16.png", mask)) > 0, mask > 0)


def test_rgb_label_png_refused(tmp_path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4)).save(path)
    with pytest.raises(UserError, match=r"rgb\.png: expected a single-channel LIP parsing label PNG .* got mode RGB"):
        read_parsing_png(path)


def test_generate_refuses_an_out_of_range_parsing_png(synth_dataset, tmp_path):
    root = shutil.copytree(synth_dataset("market1501"), tmp_path / "m")
    first = sorted((root / "bounding_box_train").glob("*.jpg"))[0]
    png = (root / "parsing" / first.relative_to(root)).with_suffix(".png")
    lab = np.asarray(Image.open(png)).copy()
    lab[0, 0] = 21
    save_png(png, lab)
    code, out = run("generate", "--dataset", "market1501", "--root", root, "--parsing-dir", root / "parsing",
                    "--out", tmp_path / "c.h5", "--workers", "0")
    assert code == 2
    assert out.strip() == f"error: {png}: 1 pixel(s) with LIP parsing label value(s) 21 outside 0..19"


# --- list entries leaving the root ------------------------------------------------------------


@pytest.mark.parametrize("escape", ["../../outside/{name}", "/{abs}/outside/{name}"])
def test_msmt17_list_entry_leaving_the_root_refused(synth_dataset, tmp_path, escape):
    root = shutil.copytree(synth_dataset("msmt17"), tmp_path / "s")
    lst = root / "list_query.txt"
    lines = lst.read_text().splitlines()
    first, label = lines[0].split()
    name = Path(first).name
    # a real image there, so the old reader accepted it and validate said the copy matches
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(root / "test" / first, outside / name)
    entry = escape.format(name=name, abs=str(tmp_path).strip("/"))
    lines[1] = f"{entry} {label}"
    lst.write_text("\n".join(lines) + "\n")
    expected = f"{lst}:2: {entry!r} leaves the dataset root (expected a path relative to test/, like '<pid dir>/<file>')"
    with pytest.raises(UserError) as err:
        build_dataset("msmt17", root)
    assert str(err.value) == expected
    code, out = run("validate", "--dataset", "msmt17", "--root", root, "--manifest", root / "manifest.json")
    assert code == 1 and f"query: {expected}" in out


# --- dangling symlinks ------------------------------------------------------------------------


def test_dangling_symlink_kept_reported_and_recorded_unreadable(synth_dataset, tmp_path):
    root = shutil.copytree(synth_dataset("market1501"), tmp_path / "m")
    ref = build_dataset("market1501", root)
    link = root / "query" / "0001_c1s1_999999_00.jpg"
    os.symlink(tmp_path / "gone.jpg", link)
    rel = "query/0001_c1s1_999999_00.jpg"

    for ds in (build_dataset("market1501", root), build_dataset("folder", root, **MARKET_AS_FOLDER)):
        assert [r.path for r in ds.query] == sorted([r.path for r in ref.query] + [rel])
        assert ds.train == ref.train and ds.gallery == ref.gallery

    dangling = f"query: 1 dangling symlink(s) (first: {rel} -> {tmp_path / 'gone.jpg'})"
    code, out = run("validate", "--dataset", "market1501", "--root", root, "--manifest", root / "manifest.json", "--check-images")
    assert code == 1 and dangling in out
    code, out = run("validate", "--dataset", "folder", *as_cli(MARKET_AS_FOLDER), "--root", root, "--check-images")
    assert code == 1 and out.splitlines()[-2:] == [f"{root}: 1 problem(s) reading it as folder:", f"  {dangling}"]
    assert all(line.startswith("  ") and "images," in line for line in out.splitlines()[:-2])  # the per-split counts

    # generate through --dataset folder and its options: the row is there, marked unreadable
    out_h5 = tmp_path / "c.h5"
    code, out = run("generate", "--dataset", "folder", *as_cli(MARKET_AS_FOLDER), "--root", root,
                    "--parsing-dir", root / "parsing", "--out", out_h5, "--workers", "0")
    assert code == 0, out
    with MaskCache(out_h5) as cache:
        for s in ("train", "query", "gallery"):
            assert list(cache.column(s, "path")) == [r.path for r in build_dataset("market1501", root).split(s)]
        status = dict(zip(cache.column("query", "path"), cache.column("query", "status")))
        assert status.pop(rel) == STATUS["unreadable"]
        assert STATUS["unreadable"] not in status.values()
        assert "--dataset-option='pattern=^(?P<pid>-1|\\d{4})_c" in cache.attrs["provenance"]["command"]


def test_msmt17_dangling_listed_image(synth_dataset, tmp_path):
    root = shutil.copytree(synth_dataset("msmt17"), tmp_path / "s")
    first = (root / "list_gallery.txt").read_text().split()[0]
    (root / "test" / first).unlink()
    os.symlink("nowhere.jpg", root / "test" / first)
    assert f"test/{first}" in [r.path for r in build_dataset("msmt17", root).gallery]
    code, out = run("validate", "--dataset", "msmt17", "--root", root, "--manifest", root / "manifest.json")
    assert code == 1 and f"gallery: 1 dangling symlink(s) (first: test/{first} -> nowhere.jpg)" in out


# --- adapter options from the command line and the trainer's config --------------------------


def fake_loader(root, *, size: int = 1, scale: Optional[float] = None, flag: bool = False,
                mode: Literal["a", "b"] = "a", exts: Tuple[str, ...] = (".jpg",), name: str = "x"):
    """Options of every kind a loader may declare."""


def test_option_values_typed_from_text_and_checked():
    text = {"size": "3", "scale": "0.5", "flag": "true", "mode": "b", "exts": ".png, .JPG", "name": "7"}
    assert check_options("fake", fake_loader, text) == {"size": 3, "scale": 0.5, "flag": True, "mode": "b", "exts": (".png", ".JPG"), "name": "7"}
    typed = {"size": 3, "scale": 2, "flag": False, "mode": "a", "exts": [".png"], "name": "n"}
    assert check_options("fake", fake_loader, typed) == {**typed, "scale": 2.0, "exts": (".png",)}
    for key, value, expected in [("size", "3.5", "an integer"), ("size", True, "an integer"), ("flag", "maybe", "true or false"),
                                 ("mode", "c", "one of a, b"), ("scale", "x", "a number"), ("name", 7, "text")]:
        with pytest.raises(UserError) as err:
            check_options("fake", fake_loader, {key: value})
        assert str(err.value) == f"fake: dataset option {key}={value!r}: expected {expected}"
    with pytest.raises(UserError) as err:
        check_options("fake", fake_loader, {"sise": "3"})
    assert str(err.value) == ("fake: unknown dataset option(s) sise; valid: size (an integer), scale (a number), "
                              "flag (true or false), mode (one of a, b), exts (a comma-separated list), name (text)")


def test_folder_options_as_text_equal_market(synth_dataset):
    root = synth_dataset("market1501")
    ds, ref = build_dataset("folder", root, **MARKET_AS_FOLDER), build_dataset("market1501", root)
    assert (ds.train, ds.query, ds.gallery) == (ref.train, ref.query, ref.gallery)
    assert check_dataset_options("cuhk03_detected", {}) == {"variant": "detected"}
    with pytest.raises(UserError, match="cuhk03: dataset option variant='both': expected one of labeled, detected"):
        check_dataset_options("cuhk03", {"variant": "both"})


def test_unknown_dataset_lists_every_name():
    with pytest.raises(UserError) as err:
        build_dataset("imagenet", "/tmp")
    assert str(err.value) == f"unknown dataset 'imagenet': expected one of {', '.join(dataset_names())}"
    assert "folder" in dataset_names()


def test_cli_dataset_options_one_line_errors(synth_dataset, tmp_path):
    root = synth_dataset("market1501")
    for command in (["generate", "--out", tmp_path / "c.h5"], ["validate"]):
        code, out = run(*command, "--dataset", "folder", "--root", root, "--dataset-option", "bogus=1")
        assert code == 2 and out.strip() == (
            "error: folder: unknown dataset option(s) bogus; valid: pattern (text), train_dir (text), query_dir (text), "
            "gallery_dir (text), extensions (a comma-separated list), junk_pid (an integer), camera_base (an integer)")
        code, out = run(*command, "--dataset", "market1501", "--root", root, "--dataset-option", "variant")
        assert code == 2 and out.strip().startswith("error: --dataset-option 'variant': expected KEY=VALUE")
        code, out = run(*command, "--help")
        assert "folder" in out and "--dataset-option" in out
    code, out = run("generate", "--dataset", "cuhk03", "--variant", "labeled", "--dataset-option", "variant=detected",
                    "--root", root, "--out", tmp_path / "c.h5")
    assert code == 2 and "--variant labeled and --dataset-option variant=detected disagree" in out
    code, out = run("validate", "--dataset", "folder", *as_cli(MARKET_AS_FOLDER), "--root", root)
    ds = build_dataset("market1501", root)  # the folder adapter reads the same records and prints their counts
    assert code == 0 and out.strip().splitlines()[-1] == f"{root}: reads as folder; every listed image is readable"
    for split in ("train", "query", "gallery"):
        recs = ds.split(split)
        line = f"{split}: {len(recs)} images, {len({r.pid for r in recs})} ids, {len({r.camid for r in recs})} cameras"
        assert f"  {line}\n" in out, line


def test_submit_forwards_dataset_options(synth_dataset, tmp_path):
    root = synth_dataset("market1501")
    out = tmp_path / "c.h5"
    code, text = run("submit", "--dataset", "folder", *as_cli(MARKET_AS_FOLDER), "--root", root, "--out", out,
                     "--shards", "2", "--dry-run")
    assert code == 0, text
    script = (tmp_path / "c.h5.slurm" / "generate.sbatch").read_text()
    assert "--dataset-option 'pattern=^(?P<pid>-1|\\d{4})_c(?P<camid>\\d)s'" in script
    assert "--dataset-option camera_base=1" in script
    code, text = run("submit", "--dataset", "folder", "--dataset-option", "camera_base=one", "--root", root,
                     "--out", tmp_path / "d.h5", "--shards", "2", "--dry-run")
    assert code == 2 and text.strip() == "error: folder: dataset option camera_base='one': expected an integer"
    code, text = run("submit", "--dataset", "folder", "--root", root, "--out", tmp_path / "e.h5", "--shards", "2",
                     "--dry-run", "--", "--dataset-option", "pattern=x")
    assert code == 2 and "--dataset-option after '--': submit sets it itself" in text


def test_reid_train_data_options_use_the_same_check(tmp_path):
    from reid_train.config import Config, apply_overrides, load_config

    with pytest.raises(UserError) as err:
        apply_overrides(Config(), ["data.dataset=folder", "data.options.junk_pid=x"])
    assert str(err.value) == "--set: data.dataset/data.options: folder: dataset option junk_pid='x': expected an integer"
    with pytest.raises(UserError, match=r"cuhk03: unknown dataset option\(s\) varaint; valid: variant \(one of labeled, detected\)"):
        apply_overrides(load_config("mgran_cuhk03_labeled"), ["data.options.varaint=detected"])
    # text stays text (a regex or a zero-padded id is not turned into a number by YAML)
    cfg = apply_overrides(Config(), ["data.dataset=folder", "data.options.pattern=0001", "data.options.camera_base=1"])
    assert cfg.data.options == {"pattern": "0001", "camera_base": "1"}
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(json.dumps({"data": {"dataset": "market1501", "options": {"variant": "labeled"}}}))
    with pytest.raises(UserError, match="market1501: unknown dataset option"):
        load_config(str(cfg_file))
