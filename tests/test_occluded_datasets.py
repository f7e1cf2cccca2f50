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
