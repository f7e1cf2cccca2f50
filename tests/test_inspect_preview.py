"""``reid-masks inspect`` / ``preview`` on a small hand-made cache with known masks."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from reid_masks import visual
from reid_masks.cache import CUT, STATUS, STATUS_NAMES, MaskCache, Rows, write_cache
from reid_masks.cli import Group
from reid_masks.errors import UserError
from reid_masks.inspect import format_summary, inspect_command, summarize
from reid_masks.preview import (GRID_GAP, OUTLINE_WIDTH, PANEL_GAP, TINT_ALPHA, TOP_HEIGHT, contact_sheet, preview_command,
                                problem_statuses, render_tile, sample_rows, sheet_layout)
from reid_masks.visual import CAPTION_HEIGHT

PERSON_HW = (48, 16)  # 2x the 24x8 grid
IMAGE_HW = (32, 16)
ROWS = 6
PROVENANCE = {"backend": "handmade", "weights": {"file": "none.pth", "sha256": "abc"}}


def rect(i: int) -> tuple[int, int, int, int]:
    """Row ``i``'s whole-mask rectangle in 24x8 cells: r0, r1, c0, c1 (end-exclusive)."""
    return 2 + i % 3, 14 + 2 * i, 1, 7 - i % 2


def base_color(split: str, i: int) -> tuple[int, int, int]:
    return (60 + 20 * i, 100 + 40 * ("train", "query", "gallery").index(split), 140)


def make_rows(split: str) -> Rows:
    n = ROWS
    masks = np.zeros((n, 3, 24, 8), np.float32)
    person = np.zeros((n,) + PERSON_HW, np.uint8)
    regions = np.zeros((n,) + PERSON_HW, np.uint8)
    kps = np.zeros((n, 17, 3), np.float32)
    status = np.zeros(n, np.uint8)
    cuts = np.zeros((n, 2), np.uint8)
    for i in range(n):
        if split == "query" and i == 2:
            status[i] = STATUS["no_person"]
            cuts[i] = CUT["prior"]
            continue
        cuts[i] = (CUT["keypoints"], CUT["keypoints"] if i % 2 else CUT["estimate"])
        r0, r1, c0, c1 = rect(i)
        mid = (r0 + r1) // 2
        value = 0.5 if (split, i) == ("train", 4) else 1.0  # one soft mask
        masks[i, 0, r0:r1, c0:c1] = value
        upper, bottom = (slice(r0, mid), slice(mid, r1))
        if (split, i) == ("gallery", 3):  # a broken row: upper and bottom swapped
            upper, bottom = bottom, upper
        masks[i, 1, upper, c0:c1] = value
        masks[i, 2, bottom, c0:c1] = value
        person[i, 2 * r0:2 * r1, 2 * c0:2 * c1] = 1
        regions[i, 2 * r0:2 * r1, 2 * c0:2 * c1] = 2
        regions[i, 2 * mid:2 * r1, 2 * c0:2 * c1] = 3
        regions[i, 2 * r0:2 * r0 + 4, 2 * c0:2 * c1] = 1
        if (split, i) == ("query", 5):
            status[i] = STATUS["no_keypoints"]
        else:
            k = (3 * i + 2) % 18
            kps[i, :k, 0] = np.linspace(3, 12, 17)[:k]
            kps[i, :k, 1] = np.linspace(3, 28, 17)[:k]
            kps[i, :k, 2] = 0.9
    return Rows(
        index=np.arange(n, dtype=np.int64),
        path=np.asarray([f"{split}/{i // 2:04d}_c{i % 2 + 1}_{i}.png" for i in range(n)], dtype=object),
        pid=np.asarray([i // 2 for i in range(n)], np.int32),
        camid=np.asarray([i % 2 for i in range(n)], np.int16),
        fingerprint=np.asarray([b"0123456789abcdef"] * n, dtype="S16"),
        status=status,
        score=np.where(status == 0, 0.9, 0.0).astype(np.float32),
        box=np.tile(np.asarray([[1, 2, 15, 30]], np.float32), (n, 1)),
        keypoints=kps,
        image_size=np.tile(np.asarray([IMAGE_HW], np.int32), (n, 1)),
        masks=masks,
        person=person,
        regions=regions,
        cuts=cuts,
        parts=regions.copy(),
    )


@pytest.fixture()
def made(tmp_path: Path) -> dict:
    root = tmp_path / "data"
    rows = {s: make_rows(s) for s in ("train", "query", "gallery")}
    for split, r in rows.items():
        for i, p in enumerate(r.path):
            (root / p).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (IMAGE_HW[1], IMAGE_HW[0]), base_color(split, i)).save(root / p)
    cache_path = tmp_path / "masks.h5"
    attrs = {"dataset": "handmade", "dataset_root": str(root), "provenance": PROVENANCE, "person_size": list(PERSON_HW)}
    write_cache(cache_path, {s: (ROWS, r) for s, r in rows.items()}, attrs)
    return {"root": root, "cache": cache_path, "rows": rows}


def expected_split(r: Rows) -> dict:
    """Statistics of one split computed directly from the hand-made arrays."""
    sel = [i for i in range(len(r)) if r.status[i] in (STATUS["ok"], STATUS["no_keypoints"])]
    areas = {name: [float(r.masks[i, k].sum()) / 192 for i in sel] for k, name in enumerate(("whole", "upper", "bottom"))}
    areas["person"] = [float(r.person[i].sum()) / (PERSON_HW[0] * PERSON_HW[1]) for i in sel]
    above = 0
    for i in sel:
        ys = np.arange(24) + 0.5
        cu = (r.masks[i, 1].sum(axis=1) * ys).sum() / r.masks[i, 1].sum()
        cb = (r.masks[i, 2].sum(axis=1) * ys).sum() / r.masks[i, 2].sum()
        above += cu < cb
    present = sum(int((r.keypoints[i, :, 2] > 0).sum()) for i in sel)
    return {"sel": sel, "areas": areas, "above": above, "presence": present / (17 * len(sel))}


def test_summarize_counts_and_statistics(made):
    with MaskCache(made["cache"]) as cache:
        s = summarize(cache)
    assert s["dataset"] == "handmade" and s["dataset_root"] == str(made["root"])
    assert s["provenance"] == PROVENANCE and s["person_size"] == list(PERSON_HW)
    assert set(s["splits"]) == {"train", "query", "gallery"}
    for split, r in made["rows"].items():
        got = s["splits"][split]
        exp = expected_split(r)
        assert got["rows"] == 6 and got["ids"] == 3 and got["cameras"] == 2
        assert got["area"]["rows"] == len(exp["sel"])
        for name, values in exp["areas"].items():
            stats = got["area"][name]
            assert stats["mean"] == pytest.approx(np.mean(values))
            assert stats["min"] == pytest.approx(min(values)) and stats["max"] == pytest.approx(max(values))
            for q in (5, 25, 50, 75, 95):
                assert stats[f"p{q}"] == pytest.approx(np.percentile(values, q))
        assert got["upper_above_bottom"]["count"] == exp["above"]
        assert got["upper_above_bottom"]["rows"] == len(exp["sel"])
        assert got["keypoints"]["presence"] == pytest.approx(exp["presence"])
        for k, line in enumerate(("shoulder", "hip")):  # every row counted once per line, by its code's name
            assert sum(got["cuts"][line].values()) == len(r)
            for name, code in CUT.items():
                assert got["cuts"][line][name] == sum(int(c) == code for c in r.cuts[:, k])
    q, g, t = s["splits"]["query"], s["splits"]["gallery"], s["splits"]["train"]
    assert q["status"] == {"ok": 4, "no_person": 1, "no_keypoints": 1, "unreadable": 0}
    assert t["status"] == {"ok": 6, "no_person": 0, "no_keypoints": 0, "unreadable": 0}
    assert q["area"]["rows"] == 5
    # sanity check: everything above except the swapped gallery row
    assert t["upper_above_bottom"]["fraction"] == 1.0
    assert g["upper_above_bottom"]["fraction"] == pytest.approx(5 / 6)
    # by hand: the largest train rectangle is row 5 (rows 4..24 x cols 1..6), the smallest the soft row 4
    assert t["area"]["whole"]["max"] == pytest.approx(20 * 5 / 192)
    assert t["area"]["whole"]["min"] == pytest.approx(19 * 6 * 0.5 / 192)
    assert t["keypoints"]["rows_with_any"] == 1.0 and q["keypoints"]["rows_with_any"] == pytest.approx(4 / 5)
    assert q["cuts"]["hip"] == {"none": 0, "keypoints": 3, "parsing": 0, "estimate": 2, "prior": 1}  # rows 1,3,5 | 0,4 | 2
    assert s["detector_input_size"] is None  # the hand-made provenance names no detector model
    json.dumps(s)  # JSON-ready


def test_inspect_shows_the_detector_input_size(made, tmp_path):
    from reid_masks.inspect import detector_input_size

    tv = {"backend": {"backend": "torchvision", "models": {"mask": "maskrcnn_resnet50_fpn_v2", "keypoint": "keypointrcnn_resnet50_fpn"}, "min_size": 256, "max_size": 768}}
    d2 = {"backend": {"backend": "detectron2", "min_size": None, "models": {
        "mask": {"config": "m.yaml", "min_size_test": 800, "max_size_test": 1333},
        "keypoint": {"config": "k.yaml", "min_size_test": 640, "max_size_test": 1000}}}}
    assert detector_input_size(tv) == {"mask": [256, 768], "keypoint": [256, 768]}
    assert detector_input_size(d2) == {"mask": [800, 1333], "keypoint": [640, 1000]}
    assert detector_input_size({"backend": {"name": "none"}}) is None
    rows = {s: make_rows(s) for s in ("train", "query", "gallery")}
    write_cache(tmp_path / "d2.h5", {s: (ROWS, r) for s, r in rows.items()}, {"dataset": "x", "provenance": d2})
    result = CliRunner().invoke(inspect_command, [str(tmp_path / "d2.h5")])
    assert result.exit_code == 0, result.output
    assert "detector input size (short side / long-side cap): mask 800/1333, keypoint 640/1000" in result.output
    assert "  hip cut from: none 0, keypoints 3 (50.0%), parsing 0, estimate 3 (50.0%), prior 0" in result.output


def test_summarize_empty_split(tmp_path):
    empty = make_rows("train").take(np.arange(0))
    write_cache(tmp_path / "c.h5", {"query": (0, empty)}, {"dataset": "x"})
    with MaskCache(tmp_path / "c.h5") as cache:
        s = summarize(cache)
    q = s["splits"]["query"]
    assert q["rows"] == 0 and q["area"]["whole"]["mean"] is None and q["upper_above_bottom"]["fraction"] is None
    assert "[query] 0 rows" in format_summary(s)


def test_inspect_cli_text_and_json(made):
    result = CliRunner().invoke(inspect_command, [str(made["cache"])])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "[query] 6 rows, 3 ids, 2 cameras" in out
    assert "no_person 1 (16.7%)" in out and "no_keypoints 1 (16.7%)" in out
    assert "backend: handmade" in out and "weights.file: none.pth" in out
    exp = expected_split(made["rows"]["gallery"])
    gallery = out[out.index("[gallery]"):]
    assert f"{np.mean(exp['areas']['whole']):.3f}" in gallery.splitlines()[4]
    assert "upper centroid above bottom centroid: 83.3% (5/6" in gallery
    assert "parsing labels kept: 0 rows (made without a parser)" in gallery
    result = CliRunner().invoke(inspect_command, [str(made["cache"]), "--json"])
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["splits"]["query"]["status"]["no_person"] == 1
    assert data["splits"]["train"]["area"]["upper"]["mean"] == pytest.approx(np.mean(expected_split(made["rows"]["train"])["areas"]["upper"]))


def test_sample_rows_even_and_deterministic():
    counts = {"query": 10, "gallery": 20}
    a = sample_rows(counts, 6, seed=3)
    assert a == sample_rows(counts, 6, seed=3) and len(set(a)) == 6
    flat = [(s, i) for s, c in counts.items() for i in range(c)]
    pos = [flat.index(x) for x in a]
    assert all(4 <= b - a_ <= 6 for a_, b in zip(pos, pos[1:]))
    assert sample_rows(counts, 100) == flat


def test_preview_sheet_size_overlay_and_captions(made, tmp_path):
    out = tmp_path / "sheets" / "sheet.png"
    result = CliRunner().invoke(preview_command, [str(made["cache"]), "--n", "32", "--split", "query", "--out", str(out), "--cols", "4", "--scale", "2"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and not list(out.parent.glob("*.tmp*"))
    sheet = np.asarray(Image.open(out).convert("RGB"))
    # 6 tiles (all query rows) in 4 columns: 2 rows; panels are 2x the 48x16 person size
    ph, pw = 2 * PERSON_HW[0], 2 * PERSON_HW[1]
    tile_w, tile_h = 5 * pw + 4 * PANEL_GAP, ph + CAPTION_HEIGHT
    assert sheet.shape[:2] == (TOP_HEIGHT + 2 * tile_h + 3 * GRID_GAP, 4 * tile_w + 5 * GRID_GAP)
    layout = sheet_layout(PERSON_HW, 6, scale=2, cols=4)
    assert layout.tile_hw == (tile_h, tile_w) and layout.size == (sheet.shape[1], sheet.shape[0])
    rows = made["rows"]["query"]
    alpha, color = TINT_ALPHA, np.asarray(visual.WHOLE_COLOR, np.float64)
    for i in (0, 3):
        y, x = layout.panel_origin(i, "whole")
        panel = sheet[y:y + ph, x:x + pw].astype(np.int64)
        base = np.asarray(base_color("query", i), np.float64)
        tinted = np.round(base * (1 - alpha) + color * alpha)
        inside = np.kron(rows.masks[i, 0] > 0, np.ones((4, 4), bool))  # 24x8 cells -> 4x4 pixels each
        r0, r1, c0, c1 = rect(i)
        # the mask is one rectangle of cells: its contour is OUTLINE_WIDTH pixels inside the rectangle's edge,
        # in the mask's colour; a dark 1-pixel halo just outside; the interior tinted; the rest untouched
        ys, xs = np.mgrid[:ph, :pw]
        top, bottom, left, right = 4 * r0, 4 * r1 - 1, 4 * c0, 4 * c1 - 1
        depth = np.minimum.reduce([ys - top, bottom - ys, xs - left, right - xs])
        edge = inside & (depth < OUTLINE_WIDTH) & (ys > 0) & (ys < ph - 1) & (xs > 0) & (xs < pw - 1)
        interior = inside & (depth >= OUTLINE_WIDTH)
        grown = np.zeros_like(inside)
        grown[max(top - 1, 0):bottom + 2, max(left - 1, 0):right + 2] = True
        halo = grown & ~inside & ~((ys < top) & (xs < left) | (ys < top) & (xs > right) | (ys > bottom) & (xs < left) | (ys > bottom) & (xs > right))
        assert edge.any() and interior.any() and halo.any()
        assert np.abs(panel[edge] - color).max() == 0
        assert np.abs(panel[interior] - tinted).max() <= 1
        assert np.abs(panel[halo]).max() == 0
        assert np.abs(panel[~grown] - base).max() <= 1
        assert np.abs(panel[4 * r0 + 5, 4 * c0 + 5] - tinted).max() <= 1  # a known pixel inside
        assert np.abs(panel[1, 1] - base).max() <= 1  # and one outside
    # captions: the no_person row (2) in red, an ok row (0) without red
    def reds(i: int) -> int:
        y, x = layout.caption_origin(i)
        strip = sheet[y:y + CAPTION_HEIGHT, x:x + tile_w].astype(np.int64)
        return int(((strip[..., 0] > 150) & (strip[..., 1] < 80) & (strip[..., 2] < 80)).sum())
    assert reds(2) > 5 and reds(0) == 0
    assert reds(5) > 5  # no_keypoints is a problem in a cache with a keypoint source (row 0 is ok)


def test_preview_status_colour_follows_the_keypoint_source(made):
    """no_keypoints is red only where keypoints were expected; no_person/unreadable always."""
    assert problem_statuses(False) == {"no_person", "unreadable"}
    assert problem_statuses(True) == {"no_person", "unreadable", "no_keypoints"}
    with MaskCache(made["cache"]) as cache:
        row = {k: v[5] for k, v in cache.rows("query", np.arange(6)).items()}
    assert STATUS_NAMES[int(row["status"])] == "no_keypoints"

    def red_pixels(problems: frozenset[str]) -> int:
        tile = render_tile(None, row, (2 * PERSON_HW[0], 2 * PERSON_HW[1]), "x", problems).astype(np.int64)
        strip = tile[-CAPTION_HEIGHT:]
        return int(((strip[..., 0] > 150) & (strip[..., 1] < 80) & (strip[..., 2] < 80)).sum())

    assert red_pixels(problem_statuses(True)) > 5 and red_pixels(problem_statuses(False)) == 0


def test_contact_sheet_all_splits_and_regions(made):
    with MaskCache(made["cache"]) as cache:
        img = contact_sheet(cache, None, n=5, seed=1, scale=1, cols=5)
        again = contact_sheet(cache, made["root"], n=5, seed=1, scale=1, cols=5)
    assert np.array_equal(np.asarray(img), np.asarray(again))
    assert img.size == sheet_layout(PERSON_HW, 5, scale=1, cols=5).size


def test_preview_missing_image_suggests_root(made, tmp_path):
    missing = made["root"] / made["rows"]["query"].path[1]
    missing.unlink()
    with MaskCache(made["cache"]) as cache, pytest.raises(UserError) as err:
        contact_sheet(cache, None, n=32, split="query")
    assert str(missing) in str(err.value) and "--root" in str(err.value)

    @click.group(cls=Group)
    def cli() -> None:
        pass

    cli.add_command(inspect_command)
    cli.add_command(preview_command)
    moved = tmp_path / "moved"
    shutil.move(str(made["root"]), moved)
    out = tmp_path / "sheet.png"
    result = CliRunner().invoke(cli, ["preview", str(made["cache"]), "--out", str(out)])
    assert result.exit_code == 2 and "--root" in result.output and str(made["root"]) in result.output
    result = CliRunner().invoke(cli, ["preview", str(made["cache"]), "--out", str(out), "--root", str(moved), "--split", "query"])
    assert result.exit_code == 2, result.output
    assert f"error: {moved / made['rows']['query'].path[1]}: image not found" in result.output
    assert not out.exists()
    result = CliRunner().invoke(cli, ["preview", str(made["cache"]), "--out", str(out), "--root", str(moved), "--split", "train"])
    assert result.exit_code == 0 and out.is_file()
    result = CliRunner().invoke(cli, ["inspect", str(tmp_path / "nope.h5")])
    assert result.exit_code == 2 and "mask cache not found" in result.output


def test_undecodable_image_gets_a_placeholder_tile(made):
    bad = made["root"] / made["rows"]["train"].path[0]
    bad.write_bytes(b"not a png")
    with MaskCache(made["cache"]) as cache:
        img = np.asarray(contact_sheet(cache, None, n=6, split="train", scale=1, cols=2))
    layout = sheet_layout(PERSON_HW, 6, scale=1, cols=2)
    y, x = layout.panel_origin(0, "image")
    assert img.shape[:2] == (layout.size[1], layout.size[0])
    assert tuple(img[y + 1, x + PERSON_HW[1] // 2]) == (96, 96, 96)  # grey placeholder, not the image colour
