"""Occluded-Duke, Occluded-REID, Partial-REID and Partial-iLIDS adapters on synthetic copies in their real layouts."""
from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from reid_masks.datasets import build_dataset, load_manifest, read_manifest_file
from reid_masks.errors import UserError
from reid_masks.validate import validate_dataset

TEST_ONLY = ("occluded_reid", "partial_reid", "partial_ilids")
QUERY_DIR = {"occluded_reid": "occluded_body_images", "partial_reid": "partial_body_images", "partial_ilids": "partial_body_images"}


def files_on_disk(folder: Path) -> list[str]:
    """Every image file under ``folder`` (independent of the adapter's listing)."""
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith((".jpg", ".tif")))


def pid_from_name(layout: str, path: str) -> int:
    stem = os.path.basename(path).rsplit(".", 1)[0]
    return int(stem) if layout == "partial_ilids" else int(stem.split("_")[0])


def test_real_manifest_counts():
    """The published counts (sources in each manifest's 'sources')."""
    d = load_manifest("occluded_duke")["splits"]
    assert [(d[s]["images"], d[s]["ids"]) for s in ("train", "query", "gallery")] == [(15618, 702), (2210, 519), (17661, 1110)]
    o = load_manifest("occluded_reid")["splits"]
    assert (o["query"]["images"], o["query"]["ids"], o["gallery"]["images"], o["gallery"]["ids"]) == (1000, 200, 1000, 200)
    p = load_manifest("partial_reid")["splits"]
    assert (p["query"]["images"], p["query"]["ids"], p["gallery"]["images"]) == (300, 60, 300)
    i = load_manifest("partial_ilids")["splits"]
    assert i["query"]["images"] + i["gallery"]["images"] == 238 and i["query"]["ids"] == 119
    for name in ("occluded_duke",) + TEST_ONLY:
        assert "sources" in load_manifest(name)


@pytest.mark.parametrize("layout", TEST_ONLY)
def test_test_only_adapter_counts_ids_cameras(synth_dataset, layout):
    root = synth_dataset(layout)
    ds = build_dataset(layout, root)
    manifest = read_manifest_file(root / "manifest.json")
    assert ds.train == []
    for split in ("query", "gallery"):
        folder = root / manifest["splits"][split]["dirs"][0]
        disk = files_on_disk(folder)
        recs = ds.split(split)
        assert len(recs) == len(disk) == manifest["splits"][split]["images"]
        assert sorted(str(root / r.path) for r in recs) == disk
        assert all(r.pid == pid_from_name(layout, r.path) for r in recs)
        # the protocol's camera rule: queries camera 0, gallery camera 1
        assert {r.camid for r in recs} == {0 if split == "query" else 1}
    assert {r.pid for r in ds.query} == {r.pid for r in ds.gallery}
    per_id = 1 if layout == "partial_ilids" else 5
    assert set(Counter(r.pid for r in ds.query).values()) == {per_id}
    # query/gallery rule: no gallery image shares a query's (pid, camera), so evaluation removes nothing
    assert not {(r.pid, r.camid) for r in ds.query} & {(r.pid, r.camid) for r in ds.gallery}


def test_occluded_reid_per_identity_folders_and_jpg_copies(synth_dataset, tmp_path):
    root = tmp_path / "Occluded_REID"
    shutil.copytree(synth_dataset("occluded_reid"), root)
    ds = build_dataset("occluded_reid", tmp_path)  # the wrapper folder is found
    assert ds.root == root
    assert all(Path(r.path).parent.name == f"{r.pid:03d}" for r in ds.query + ds.gallery)
    for f in files_on_disk(root / "whole_body_images"):  # a re-packaged copy with .jpg files
        os.rename(f, f[:-4] + ".jpg")
    assert len(build_dataset("occluded_reid", root).gallery) == len(ds.gallery)


def test_occluded_reid_tif_and_jpg_of_one_image_read_once(synth_dataset, tmp_path, caplog):
    """A copy holding the release's .tif files and converted .jpg ones lists each image once, the .tif."""
    from PIL import Image

    root = tmp_path / "occ"
    shutil.copytree(synth_dataset("occluded_reid"), root)
    want = build_dataset("occluded_reid", root)
    queries = files_on_disk(root / "occluded_body_images")
    for f in queries:
        Image.open(f).convert("RGB").save(f[:-4] + ".jpg")
    with caplog.at_level("WARNING", logger="reid_masks.datasets.testsets"):
        got = build_dataset("occluded_reid", root)
    assert got.query == want.query and all(r.path.endswith(".tif") for r in got.query)
    assert got.gallery == want.gallery
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"{len(queries)} image(s) exist under several extensions" in line and "preferring .tif over .jpg" in line


def test_partial_reid_queries_are_partial_crops(synth_dataset):
    from PIL import Image

    ds = build_dataset("partial_reid", synth_dataset("partial_reid"))
    ratio = [Image.open(ds.abspath(r)).size[1] / Image.open(ds.abspath(r)).size[0] for r in ds.query]
    whole = [Image.open(ds.abspath(r)).size[1] / Image.open(ds.abspath(r)).size[0] for r in ds.gallery]
    assert np.mean(ratio) < 0.8 * np.mean(whole)


@pytest.mark.parametrize("names", [("Probe", "Gallery"), ("query", "gallery")])
def test_partial_ilids_other_public_folder_names(synth_dataset, tmp_path, names):
    root = tmp_path / "p"
    shutil.copytree(synth_dataset("partial_ilids"), root)
    ref = build_dataset("partial_ilids", root)
    os.rename(root / "partial_body_images", root / names[0])
    os.rename(root / "whole_body_images", root / names[1])
    ds = build_dataset("partial_ilids", root)
    assert [(r.pid, r.camid) for r in ds.query] == [(r.pid, r.camid) for r in ref.query]
    assert all(r.path.startswith(names[0] + "/") for r in ds.query)


def test_occluded_duke_is_the_duke_layout(synth_dataset):
    root = synth_dataset("occluded_duke")
    ds = build_dataset("occluded_duke", root)
    manifest = read_manifest_file(root / "manifest.json")
    for split in ("train", "query", "gallery"):
        disk = files_on_disk(root / manifest["splits"][split]["dir"])
        assert len(ds.split(split)) == len(disk) == manifest["splits"][split]["images"]
        assert len({r.pid for r in ds.split(split)}) == manifest["splits"][split]["ids"]
        cams = {int(os.path.basename(f).split("_c")[1][0]) - 1 for f in disk}
        assert {r.camid for r in ds.split(split)} == cams and max(cams) < 8
    assert sorted({r.pid for r in ds.train}) == list(range(ds.num_train_pids))  # relabelled
    assert {r.pid for r in ds.query} <= {r.pid for r in ds.gallery}


@pytest.mark.parametrize("layout", ("occluded_duke",) + TEST_ONLY)
def test_validate_matches_and_names_a_missing_folder(synth_dataset, tmp_path, layout):
    root = tmp_path / "copy"
    shutil.copytree(synth_dataset(layout), root)
    manifest = read_manifest_file(root / "manifest.json")
    assert validate_dataset(layout, root, manifest, check_images=True, workers=1) == []
    missing = "query" if layout == "occluded_duke" else QUERY_DIR[layout]
    shutil.rmtree(root / missing)
    problems = validate_dataset(layout, root, manifest)
    assert len(problems) == 1 and problems[0].startswith("query:") and missing in problems[0], problems
    with pytest.raises(UserError, match=missing):
        build_dataset(layout, root)


@pytest.mark.parametrize("layout", TEST_ONLY)
def test_validate_reports_real_counts_and_bad_names(synth_dataset, tmp_path, layout):
    root = tmp_path / "copy"
    shutil.copytree(synth_dataset(layout), root)
    problems = validate_dataset(layout, root, load_manifest(layout))
    expected = load_manifest(layout)["splits"]["query"]["images"]
    assert any(p.startswith(f"query: expected {expected} images") for p in problems), problems
    bad = Path(files_on_disk(root / QUERY_DIR[layout])[0])
    bad.rename(bad.with_name("x" + bad.name))
    problems = validate_dataset(layout, root, read_manifest_file(root / "manifest.json"))
    assert any("do not match" in p and "x" + bad.name in p for p in problems), problems
    with pytest.raises(UserError, match=r"1 query file name\(s\) do not match"):
        build_dataset(layout, root)


def test_generate_shards_merge_inspect_preview_on_a_test_only_set(synth_dataset, tmp_path):
    """The mask stage on a set with no train split: shards, merge, inspect and a preview of the occluded queries."""
    import json

    from click.testing import CliRunner
    from PIL import Image

    from reid_masks.cache import MaskCache
    from reid_masks.cli import main

    root = synth_dataset("occluded_reid")
    runner = CliRunner()
    shards = []
    for i in range(2):
        out = tmp_path / "occ.h5"
        res = runner.invoke(main, ["generate", "--dataset", "occluded_reid", "--root", str(root), "--out", str(out),
                                   "--parsing-dir", str(root / "parsing"), "--workers", "0", "--shard", f"{i}/2", "--chunk-rows", "8"])
        assert res.exit_code == 0, res.output
        shards.append(str(tmp_path / f"occ.shard{i}of2.h5"))
    res = runner.invoke(main, ["merge", *shards, "--out", str(tmp_path / "occ.h5")])
    assert res.exit_code == 0, res.output
    ds = build_dataset("occluded_reid", root)
    with MaskCache(tmp_path / "occ.h5") as cache:
        assert cache.num_rows("train") == 0
        assert list(cache.column("query", "path")) == [r.path for r in ds.query]
        assert list(cache.column("gallery", "pid")) == [r.pid for r in ds.gallery]
    res = runner.invoke(main, ["inspect", str(tmp_path / "occ.h5"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["splits"]["query"]["rows"] == len(ds.query)
    res = runner.invoke(main, ["preview", str(tmp_path / "occ.h5"), "--split", "query", "--n", "4", "--out", str(tmp_path / "q.png")])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "q.png").size[0] > 0
