"""``generate --keypoints``: COCO files, COCO results lists and OpenPifPaf folders read back through a real generate.

The import files are written from the synthetic renderer's true keypoints
(``synth --truth-keypoints``), with a passer-by added to many images so that the target
rule has to pick, keypoints made absent (visibility 0, low confidence) and images left
without an entry.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from reid_masks.cache import CUT, PART_NAMES, STATUS, MaskCache
from reid_masks.cli import main
from reid_masks.synth.layouts import TRUTH_KEYPOINTS, synthesize

ARMS = PART_NAMES.index("arms")


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def gen(root: Path, out: Path, keypoints: Path, *extra: object, source: tuple = ()) -> tuple[int, str]:
    source = source or ("--parsing-dir", root / "parsing")
    return run("generate", "--dataset", "market1501", "--root", root, "--out", out, "--workers", "0", *source, "--keypoints", keypoints, *extra)


def rows_by_path(cache: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    with MaskCache(cache) as c:
        for s in c.splits:
            rows = c.rows(s)
            for i, p in enumerate(rows["path"]):
                out[str(p)] = {k: v[i] for k, v in rows.items()}
    return out


@pytest.fixture(scope="module")
def market(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kp-market")
    synthesize("market1501", root, ids=2, seed=3, workers=1, truth_keypoints=True)
    return root


@pytest.fixture(scope="module")
def truth(market) -> dict:
    doc = json.loads((market / TRUTH_KEYPOINTS).read_text())
    names = {im["id"]: im["file_name"] for im in doc["images"]}
    return {"doc": doc, "kps": {names[a["image_id"]]: np.asarray(a["keypoints"], np.float32).reshape(17, 3) for a in doc["annotations"]},
            "bbox": {names[a["image_id"]]: a["bbox"] for a in doc["annotations"]}}


@pytest.fixture(scope="module")
def dataset_paths(truth) -> list[str]:
    """The images the adapter lists (junk crops have no annotation and are left out)."""
    return sorted(truth["kps"])


def passer_by(kps: np.ndarray) -> tuple[list[float], list[float]]:
    """A short person at the image's left border: keypoints and bbox (x, y, w, h), same pose squeezed."""
    p = kps.copy()
    p[:, 0] = 2 + (kps[:, 0] - kps[:, 0].min()) * 0.3
    p[:, 1] = 60 + (kps[:, 1] - kps[:, 1].min()) * 0.5
    p[:, 2] = np.where(kps[:, 2] > 0, 2, 0)
    return p.reshape(-1).tolist(), [1.0, 58.0, 14.0, 62.0]


def check_target(row: dict, kps: np.ndarray) -> None:
    """The stored keypoints are the target's: its positions where present, scores as imported."""
    present = kps[:, 2] > 0
    assert np.allclose(row["keypoints"][present, :2], kps[present, :2], atol=1e-3)
    assert np.allclose(row["keypoints"][:, 2], np.clip(kps[:, 2], 0, 1), atol=1e-6)


def test_coco_file_picks_the_target_and_reads_absent_keypoints(market, truth, dataset_paths, tmp_path):
    doc = copy.deepcopy(truth["doc"])
    ids = {im["file_name"]: im["id"] for im in doc["images"]}
    no_entry, hips_absent = dataset_paths[0], dataset_paths[1]
    doc["images"] = [im for im in doc["images"] if im["file_name"] != no_entry]
    anns = []
    for a in doc["annotations"]:
        if a["image_id"] == ids[no_entry]:
            continue
        rel = next(n for n, i in ids.items() if i == a["image_id"])
        kp, box = passer_by(truth["kps"][rel])
        anns.append({"id": 1000 + a["id"], "image_id": a["image_id"], "category_id": 1, "keypoints": kp, "bbox": box, "score": 1.0})
        a = dict(a, score=0.9)
        if rel == hips_absent:
            k = np.asarray(a["keypoints"]).reshape(17, 3)
            k[11:13, 2] = 0  # not labelled
            a["keypoints"] = k.reshape(-1).tolist()
        anns.append(a)  # the passer-by comes first: order must not matter
    doc["annotations"] = anns
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(doc))

    code, msg = gen(market, tmp_path / "c.h5", path)
    assert code == 0, msg
    rows = rows_by_path(tmp_path / "c.h5")
    assert sorted(rows) == dataset_paths
    for rel, row in rows.items():
        if rel == no_entry:
            assert row["status"] == STATUS["no_keypoints"] and not row["keypoints"].any()
            assert row["cuts"].tolist() == [CUT["parsing"], CUT["parsing"]]
            continue
        kps = truth["kps"][rel].copy()
        if rel == hips_absent:
            kps[11:13, 2] = 0
        check_target(row, kps)
        assert row["status"] == STATUS["ok"], rel
        assert row["score"] == pytest.approx(0.9)
        # without both hips the regions follow the parsing labels, shoulder line included
        cut = CUT["keypoints"] if rel != hips_absent else CUT["parsing"]
        assert row["cuts"].tolist() == [cut, cut], rel
    with MaskCache(tmp_path / "c.h5") as c:
        prov = c.attrs["provenance"]["keypoints"]
    assert prov["format"] == "coco" and prov["path"] == str(path.resolve())
    assert prov["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_results_list_mapped_by_images_file_or_file_name(market, truth, dataset_paths, tmp_path):
    ids = {im["file_name"]: im["id"] for im in truth["doc"]["images"]}
    weak = dataset_paths[2]
    results = []
    for n, rel in enumerate(dataset_paths[1:]):  # dataset_paths[0]: no entry
        kps = truth["kps"][rel].copy()
        kps[:, 2] = np.where(kps[:, 2] > 0, 0.9, 0.0)
        if rel == weak:
            kps[5:7, 2] = 0.2  # shoulders below the keypoint threshold: absent
        who = {"file_name": rel} if n % 2 else {"image_id": ids[rel]}
        results.append({**who, "category_id": 1, "keypoints": kps.reshape(-1).tolist(), "score": 0.8})
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))

    code, msg = gen(market, tmp_path / "r.h5", path)
    assert code != 0 and "--keypoints-images" in msg and msg.count("error:") == 1
    code, msg = gen(market, tmp_path / "r.h5", path, "--keypoints-images", market / TRUTH_KEYPOINTS)
    assert code == 0, msg
    rows = rows_by_path(tmp_path / "r.h5")
    assert rows[dataset_paths[0]]["status"] == STATUS["no_keypoints"]
    for rel in dataset_paths[1:]:
        kps = truth["kps"][rel].copy()
        kps[:, 2] = np.where(kps[:, 2] > 0, 0.9, 0.0)
        if rel == weak:
            kps[5:7, 2] = 0.2
        check_target(rows[rel], kps)
        assert rows[rel]["cuts"][0] == (CUT["parsing"] if rel == weak else CUT["keypoints"]), rel
        assert rows[rel]["cuts"][1] == CUT["keypoints"]
    with MaskCache(tmp_path / "r.h5") as c:
        prov = c.attrs["provenance"]["keypoints"]
    assert prov["format"] == "coco-results"
    assert prov["images"]["sha256"] == hashlib.sha256((market / TRUTH_KEYPOINTS).read_bytes()).hexdigest()


def write_pifpaf(folder: Path, truth: dict, paths: list[str]) -> None:
    for rel in paths:
        kps = truth["kps"][rel]
        target = kps.copy()
        target[:, 2] = np.where(kps[:, 2] > 0, 0.7, 0.0)
        x, y, w, h = truth["bbox"][rel]
        kp, box = passer_by(kps)
        preds = [{"keypoints": np.round(np.asarray(kp).reshape(17, 3) * [1, 1, 0.45], 2).reshape(-1).tolist(), "bbox": box, "score": 0.95, "category_id": 1},
                 {"keypoints": np.round(target, 2).reshape(-1).tolist(), "bbox": [x, y, w, h], "score": 0.6, "category_id": 1}]
        f = folder / f"{rel}.predictions.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(preds))


def test_pifpaf_folder_with_mask_pngs_drives_arms_and_cuts(market, truth, dataset_paths, tmp_path):
    masks = tmp_path / "masks"
    for rel in dataset_paths:  # person-mask PNGs: no parsing, so the keypoints cut the regions and draw the arms
        lab = np.asarray(Image.open((market / "parsing" / rel).with_suffix(".png")))
        out = (masks / rel).with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(((lab > 0) * 255).astype(np.uint8)).save(out)
    folder = tmp_path / "pifpaf"
    no_file, nobody = dataset_paths[0], dataset_paths[1]
    write_pifpaf(folder, truth, dataset_paths[1:])
    (folder / f"{nobody}.predictions.json").write_text("[]")

    code, msg = gen(market, tmp_path / "p.h5", folder, source=("--masks-dir", masks))
    assert code == 0, msg
    rows = rows_by_path(tmp_path / "p.h5")
    for rel in (no_file, nobody):
        assert rows[rel]["status"] == STATUS["no_keypoints"]
        assert rows[rel]["cuts"].tolist() == [CUT["estimate"], CUT["estimate"]]
        assert not (rows[rel]["parts"] == ARMS).any()
    arms = 0
    for rel in dataset_paths[2:]:
        kps = truth["kps"][rel].copy()
        kps[:, 2] = np.where(kps[:, 2] > 0, 0.7, 0.0)
        check_target(rows[rel], kps)
        assert rows[rel]["status"] == STATUS["ok"] and rows[rel]["score"] == pytest.approx(0.6)
        assert rows[rel]["cuts"].tolist() == [CUT["keypoints"], CUT["keypoints"]]
        arms += bool((rows[rel]["parts"] == ARMS).any())
    assert arms == len(dataset_paths) - 2  # every row with keypoints has arm pixels from the limbs
    with MaskCache(tmp_path / "p.h5") as c:
        prov = c.attrs["provenance"]["keypoints"]
    assert prov["format"] == "openpifpaf" and prov["files"] == len(dataset_paths) - 1


def test_shards_merge_and_update_with_keypoints(market, truth, dataset_paths, tmp_path):
    folder = tmp_path / "pifpaf"
    write_pifpaf(folder, truth, dataset_paths)
    whole = tmp_path / "whole.h5"
    assert gen(market, whole, folder, "--chunk-rows", "8")[0] == 0
    for i in range(2):
        code, msg = gen(market, tmp_path / "m.h5", folder, "--chunk-rows", "8", "--shard", f"{i}/2")
        assert code == 0, msg
    code, msg = run("merge", tmp_path / "m.shard0of2.h5", tmp_path / "m.shard1of2.h5", "--out", tmp_path / "m.h5")
    assert code == 0, msg
    a, b = rows_by_path(whole), rows_by_path(tmp_path / "m.h5")
    assert sorted(a) == sorted(b)
    for rel in a:
        for col in ("status", "keypoints", "cuts", "parts", "masks"):
            assert np.array_equal(a[rel][col], b[rel][col]), (rel, col)

    code, msg = gen(market, whole, folder, "--chunk-rows", "8", "--update")
    assert code == 0 and "up to date" in msg
    write_pifpaf(folder, truth, dataset_paths[:1])
    (folder / f"{dataset_paths[0]}.predictions.json").write_text("[]")  # one image's keypoints replaced
    code, msg = gen(market, whole, folder, "--chunk-rows", "8")  # without --update: which input changed, and what to do
    assert code != 0 and "1 row(s) whose keypoints file changed" in msg and "--update" in msg and msg.count("error:") == 1, msg
    code, msg = gen(market, whole, folder, "--chunk-rows", "8", "--update")  # the row's entry changed: that row is redone
    assert code == 0 and "updating 1 changed or added row(s)" in msg, msg
    fresh = tmp_path / "fresh.h5"
    assert gen(market, fresh, folder, "--chunk-rows", "8")[0] == 0
    a, b = rows_by_path(whole), rows_by_path(fresh)
    assert a[dataset_paths[0]]["status"] == b[dataset_paths[0]]["status"] == STATUS["no_keypoints"]
    for rel in a:
        for col in ("status", "keypoints", "cuts", "parts", "masks"):
            assert np.array_equal(a[rel][col], b[rel][col]), (rel, col)
    with MaskCache(whole) as c, MaskCache(fresh) as f:
        assert c.attrs["provenance"]["keypoints"]["sha256"] == f.attrs["provenance"]["keypoints"]["sha256"]  # the new source recorded


def test_submit_passes_keypoints_to_every_task(market, tmp_path):
    code, msg = run("submit", "--dataset", "market1501", "--root", market, "--out", tmp_path / "s.h5", "--shards", "2",
                    "--parsing-dir", market / "parsing", "--dry-run", "--", "--keypoints", market / TRUTH_KEYPOINTS)
    assert code == 0, msg
    script = (tmp_path / "s.h5.slurm" / "generate.sbatch").read_text()
    assert f"--keypoints {market / TRUTH_KEYPOINTS}" in script


def coco_with(truth: dict, edit) -> dict:
    doc = copy.deepcopy(truth["doc"])
    edit(doc)
    return doc


def add_missing_images(doc: dict) -> None:
    for k in range(3):
        doc["images"].append({"id": 9000 + k, "file_name": f"bounding_box_train/not_there_{k}.jpg"})
        doc["annotations"].append(dict(doc["annotations"][0], id=9000 + k, image_id=9000 + k))


def short_keypoints(doc: dict) -> None:
    for a in doc["annotations"][:2]:
        a["keypoints"] = a["keypoints"][:48]


def far_outside(doc: dict) -> None:
    a = doc["annotations"][4]
    a["keypoints"][0:2] = [500.0, 900.0]  # the nose in another image's coordinates


@pytest.mark.parametrize("edit, expected", [
    (add_missing_images, "3 entries for images not in the market1501 dataset (first: annotation 9000"),
    (short_keypoints, "2 entries with other than 17 keypoints (first: annotation 1"),
    (far_outside, "1 entry with keypoints outside the image (first: annotation 5"),
], ids=["not-in-dataset", "not-17", "outside"])
def test_bad_coco_entries_fail_in_one_line_before_any_work(market, truth, tmp_path, edit, expected):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(coco_with(truth, edit)))
    out = tmp_path / "bad.h5"
    code, msg = gen(market, out, path)
    lines = [line for line in msg.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, msg
    assert lines[0].startswith(f"error: {path}: {expected}"), lines[0]
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()


def test_pifpaf_keypoints_outside_the_image_fail_when_read(market, truth, dataset_paths, tmp_path):
    folder = tmp_path / "pifpaf"
    write_pifpaf(folder, truth, dataset_paths)
    bad = folder / f"{dataset_paths[3]}.predictions.json"
    preds = json.loads(bad.read_text())
    preds[1]["keypoints"] = (np.asarray(preds[1]["keypoints"]).reshape(17, 3) * [4, 4, 1]).reshape(-1).tolist()  # a 4x larger image's pixels
    bad.write_text(json.dumps(preds))
    code, msg = gen(market, tmp_path / "o.h5", folder)
    lines = [line for line in msg.splitlines() if line.strip() and not line.startswith("generate:")]
    assert code == 2 and len(lines) == 1, msg
    assert lines[0].startswith(f"error: {folder}: {dataset_paths[3]} {dataset_paths[3]}.predictions.json entry 1: ") and "outside the 64x128 image" in lines[0]


def test_keypoints_need_a_mask_source_and_no_detector(market, tmp_path):
    code, msg = run("generate", "--dataset", "market1501", "--root", market, "--out", tmp_path / "x.h5", "--keypoints", market / TRUTH_KEYPOINTS)
    assert code == 2 and "add a mask source" in msg
    code, msg = gen(market, tmp_path / "x.h5", market / TRUTH_KEYPOINTS, "--backend", "torchvision")
    assert code == 2 and "replaces the keypoint model" in msg


def test_table_digests_and_left_out_files(market, truth, dataset_paths, capsys):
    """Per-image digests (for per-row input fingerprints) follow the people read; junk crops' entries are ignored with a note."""
    from reid_masks.keypoints_import import load_keypoints

    doc = truth["doc"]
    junk = [im["file_name"] for im in doc["images"] if im["file_name"] not in set(dataset_paths)]
    assert junk and all((market / j).is_file() for j in junk)  # Market's junk images: files the adapter leaves out
    table = load_keypoints(market / TRUTH_KEYPOINTS, None, market, dataset_paths, "market1501")
    assert f"{len(junk)} entries for files the market1501 adapter leaves out" in capsys.readouterr().err
    assert table.num_images == len(dataset_paths) and table.entry_digest("nowhere.jpg") == ""
    digests = {table.entry_digest(p) for p in dataset_paths}
    assert len(digests) == len(dataset_paths)
    edited = copy.deepcopy(doc)
    edited["annotations"][0]["keypoints"][0] += 1.0
    path = market.parent / "edited.json"
    path.write_text(json.dumps(edited))
    other = load_keypoints(path, None, market, dataset_paths, "market1501")
    first = next(im["file_name"] for im in doc["images"] if im["id"] == doc["annotations"][0]["image_id"])
    assert [p for p in dataset_paths if other.entry_digest(p) != table.entry_digest(p)] == [first]
