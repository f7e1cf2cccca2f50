"""``reid-masks generate`` / ``merge`` through the CLI: resume, shards, staleness, bad input."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cache_helpers import same_column
from reid_masks.cache import COLUMNS, CUT, STATUS, MaskCache
from reid_masks.cli import main


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def gen(root: Path, out: Path, *extra: str) -> tuple[int, str]:
    return run("generate", "--dataset", "market1501", "--root", root, "--parsing-dir", root / "parsing", "--out", out, "--workers", "0", *extra)


def assert_same_cache(a: Path, b: Path) -> None:
    with MaskCache(a) as ca, MaskCache(b) as cb:
        assert ca.splits == cb.splits
        for s in ca.splits:
            ra, rb = ca.rows(s), cb.rows(s)
            for name in COLUMNS:
                assert same_column(ra[name], rb[name]), (s, name)
        pa, pb = ca.attrs["provenance"], cb.attrs["provenance"]
        for k in ("command", "created"):
            pa.pop(k), pb.pop(k)
        assert pa == pb


@pytest.fixture(scope="module")
def market(synth_dataset) -> Path:
    return synth_dataset("market1501", ids=6, seed=1)


@pytest.fixture(scope="module")
def reference(market, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "market.h5"
    code, msg = gen(market, out)
    assert code == 0, msg
    return out


def test_cache_contract(market, reference):
    from reid_masks.datasets import build_dataset
    from reid_masks.imageio import read_label_png

    ds = build_dataset("market1501", market)
    with MaskCache(reference) as c:
        a = c.attrs
        assert a["schema_version"] == 5 and a["dataset"] == "market1501"
        assert a["provenance"]["backend"] == {"name": "none"} and a["provenance"]["parsing_dir"]
        assert "reid-masks generate" in a["provenance"]["command"] and a["provenance"]["version"]
        for s in ("train", "query", "gallery"):
            recs = ds.split(s)
            n = len(recs)
            assert list(c.column(s, "path")) == [r.path for r in recs]
            assert list(c.column(s, "pid")) == [r.pid for r in recs]
            assert list(c.column(s, "camid")) == [r.camid for r in recs]
            assert c.column(s, "masks").shape == (n, 3, 24, 8)
            assert c.column(s, "keypoints").shape == (n, 17, 3)
            assert c.column(s, "person").shape == (n, 256, 128)
            assert set(np.unique(c.column(s, "regions"))) <= {0, 1, 2, 3}
            # parsing alone: no keypoints, and the status says so
            assert set(c.column(s, "status")) == {STATUS["no_keypoints"]}
            # ... and the region cuts follow the labels; the hip line is estimated only without
            # pants, skirt, upper clothes or coat labels (e.g. a dress)
            cuts = c.column(s, "cuts")
            assert cuts.shape == (n, 2) and cuts.dtype == np.uint8
            assert (cuts[:, 0] == CUT["parsing"]).all()
            clothes = [np.isin(read_label_png((market / "parsing" / r.path).with_suffix(".png")), (5, 7, 9, 12)).any() for r in recs]
            assert cuts[:, 1].tolist() == [CUT["parsing"] if has else CUT["estimate"] for has in clothes]
            assert len(set(c.column(s, "fingerprint"))) == n
            # schema 4: the parsing PNG each row was made from, and digests tying the row together
            from reid_masks.generate import fingerprint
            assert list(c.column(s, "inputs")) == [f"parsing={fingerprint((market / 'parsing' / r.path).with_suffix('.png').read_bytes()).decode()}" for r in recs]
            assert len(set(c.column(s, "row_digest"))) == n and c.column(s, "map_digests").shape == (n, 4)
            # schema 5: the parser's own labels, exactly as read, at the image's size
            for i, r in enumerate(recs):
                assert np.array_equal(c.parsing(s, i), read_label_png((market / "parsing" / r.path).with_suffix(".png"))), r.path


def test_rerun_is_up_to_date(market, reference, tmp_path):
    out = tmp_path / "c.h5"
    shutil.copy(reference, out)
    code, msg = gen(market, out)
    assert code == 0 and "up to date" in msg


def test_killed_run_resumes_to_the_same_cache(market, reference, tmp_path):
    out = tmp_path / "k.h5"
    cmd = [sys.executable, "-m", "reid_masks.cli", "generate", "--dataset", "market1501", "--root", str(market),
           "--parsing-dir", str(market / "parsing"), "--out", str(out), "--workers", "0", "--chunk-rows", "4"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out.with_name(out.name + ".partial")
    deadline = time.time() + 60
    while time.time() < deadline and len(list(partial.glob("chunk-*.npz"))) < 3 and proc.poll() is None:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed run must not leave a cache under its final name"
    done_before = len(list(partial.glob("chunk-*.npz")))
    assert 3 <= done_before < 26
    code, msg = gen(market, out, "--chunk-rows", "4")
    assert code == 0, msg
    assert f"resuming: {done_before} of" in msg
    assert not partial.exists()
    assert_same_cache(out, reference)


def test_resume_with_other_options_is_refused(market, tmp_path):
    out = tmp_path / "o.h5"
    partial = out.with_name(out.name + ".partial")
    partial.mkdir()
    (partial / "meta.json").write_text('{"signature": "x", "provenance": {}, "chunk_rows": 4, "shard": [0, 1], "update": false}')
    code, msg = gen(market, out)
    assert code == 2 and "an interrupted run with other inputs or options" in msg and "remove this folder" in msg


def test_shards_and_merge_equal_a_single_run(market, reference, tmp_path):
    out = tmp_path / "s.h5"
    shards = []
    for i in range(3):
        code, msg = gen(market, out, "--shard", f"{i}/3", "--chunk-rows", "16")
        assert code == 0, msg
        shards.append(tmp_path / f"s.shard{i}of3.h5")
        assert shards[-1].is_file()
    assert not out.exists()
    code, msg = run("merge", *shards, "--out", out)
    assert code == 0, msg
    assert_same_cache(out, reference)
    # refusals: a missing shard, a duplicated shard
    code, msg = run("merge", shards[0], shards[1], "--out", tmp_path / "x.h5")
    assert code == 2 and "row(s) are in no shard" in msg
    code, msg = run("merge", shards[0], shards[0], shards[1], shards[2], "--out", tmp_path / "x.h5")
    assert code == 2 and "is in several shards" in msg
    assert not (tmp_path / "x.h5").exists()


def test_merge_refuses_other_provenance_and_other_dataset(market, synth_dataset, tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert gen(market, a, "--shard", "0/2", "--chunk-rows", "16")[0] == 0
    assert gen(market, b, "--shard", "1/2", "--chunk-rows", "16", "--person-size", "128x64")[0] == 0
    code, msg = run("merge", tmp_path / "a.shard0of2.h5", tmp_path / "b.shard1of2.h5", "--out", tmp_path / "m.h5")
    assert code == 2 and "provenance differs in person_size" in msg
    duke = synth_dataset("dukemtmc")
    code, msg = run("generate", "--dataset", "dukemtmc", "--root", duke, "--parsing-dir", duke / "parsing", "--out", tmp_path / "d.h5",
                    "--workers", "0", "--shard", "1/2")
    assert code == 0, msg
    code, msg = run("merge", tmp_path / "a.shard0of2.h5", tmp_path / "d.shard1of2.h5", "--out", tmp_path / "m.h5")
    assert code == 2 and "shard of dataset 'dukemtmc'" in msg


def test_corrupt_image_gets_its_status_and_the_run_finishes(market, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(market, root)
    victim = sorted((root / "query").glob("*.jpg"))[1]
    victim.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "c.h5"
    code, msg = gen(root, out)
    assert code == 0, msg
    with MaskCache(out) as c:
        paths = list(c.column("query", "path"))
        status = c.column("query", "status")
        i = paths.index(f"query/{victim.name}")
        assert status[i] == STATUS["unreadable"]
        assert c.column("query", "cuts")[i].tolist() == [CUT["none"], CUT["none"]]
        assert (np.delete(status, i) == STATUS["no_keypoints"]).all()


def test_stale_cache_refused_then_updated(market, reference, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(market, root)
    out = tmp_path / "u.h5"
    assert gen(root, out)[0] == 0
    # change one image's pixels (and its parsing), remove nothing
    victim = sorted((root / "bounding_box_train").glob("*.jpg"))[0]
    other = sorted((root / "bounding_box_train").glob("*.jpg"))[5]
    shutil.copy(other, victim)
    shutil.copy((root / "parsing/bounding_box_train" / other.name).with_suffix(".png"), (root / "parsing/bounding_box_train" / victim.name).with_suffix(".png"))
    code, msg = gen(root, out)
    assert code == 2 and "stale cache, 1 image(s) changed or added (first: bounding_box_train/" in msg and "and 0 removed since" in msg and victim.name in msg
    code, msg = gen(root, out, "--update")
    assert code == 0, msg
    fresh = tmp_path / "fresh.h5"
    assert gen(root, fresh)[0] == 0
    assert_same_cache(out, fresh)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--shard", "5/4"], "--shard '5/4': expected 0 <= i < n"),
        (["--shard", "two"], "--shard 'two': expected i/n"),
        (["--person-size", "big"], "--person-size 'big': expected HxW"),
    ],
)
def test_bad_options(market, tmp_path, args, message):
    code, msg = gen(market, tmp_path / "x.h5", *args)
    assert code == 2 and message in msg, msg


def test_wrong_dataset_root_pairing(market, tmp_path):
    code, msg = run("generate", "--dataset", "msmt17", "--root", market, "--parsing-dir", market / "parsing", "--out", tmp_path / "x.h5")
    assert code == 2 and "list_train.txt not found" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output(market, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    code, msg = gen(market, ro / "x.h5")
    assert code == 2 and "output folder is not writable" in msg


def test_unwritable_output_path_is_a_file(market, tmp_path):
    (tmp_path / "file").write_text("x")
    code, msg = gen(market, tmp_path / "file" / "x.h5")
    assert code == 2 and "output folder is not writable" in msg


def test_missing_parsing_png(market, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(market, root)
    victim = sorted((root / "parsing/query").glob("*.png"))[0]
    victim.unlink()
    code, msg = gen(root, tmp_path / "x.h5")
    assert code == 2 and f"{victim}: parsing PNG not found" in msg


def test_cache_of_another_dataset_at_out(market, synth_dataset, reference, tmp_path):
    duke = synth_dataset("dukemtmc")
    out = tmp_path / "c.h5"
    shutil.copy(reference, out)
    code, msg = run("generate", "--dataset", "dukemtmc", "--root", duke, "--parsing-dir", duke / "parsing", "--out", out, "--workers", "0")
    assert code == 2 and "existing cache is for dataset 'market1501', not 'dukemtmc'" in msg


@pytest.fixture()
def tiny_market(synth_dataset, tmp_path) -> Path:
    """A Market copy with two images per split (and two multi-query gt_bbox/ images): CPU-bound detector/parser runs stay short."""
    root = tmp_path / "tiny"
    shutil.copytree(synth_dataset("market1501", ids=2, seed=3), root)
    for folder in ("bounding_box_train", "query", "bounding_box_test", "gt_bbox"):
        files = sorted((root / folder).glob("*.jpg"), key=lambda f: f.name.startswith("-1_"))  # junk last
        for f in files[2:]:
            f.unlink()
    return root


def test_torchvision_backend_end_to_end_with_random_weights(tiny_market, tmp_path):
    root = tiny_market
    out = tmp_path / "tv.h5"
    code, msg = run("generate", "--dataset", "market1501", "--root", root, "--out", out, "--backend", "torchvision",
                    "--random-weights", "--min-size", "128", "--score-threshold", "0.0", "--batch-size", "8", "--workers", "1")
    assert code == 0, msg
    with MaskCache(out) as c:
        prov = c.attrs["provenance"]
        assert prov["backend"]["random_weights"] is True and prov["backend"]["min_size"] == 128
        assert "--random-weights" in prov["command"]
        total = 0
        for s in c.splits:
            n = c.num_rows(s)
            total += n
            status = c.column(s, "status")
            assert set(status) <= {STATUS["ok"], STATUS["no_person"], STATUS["no_keypoints"]}
            kps = c.column(s, "keypoints")
            assert kps.shape == (n, 17, 3)
            ok = status == STATUS["ok"]
            # rows with a person have its box inside the image; no-person rows have no keypoints
            boxes, sizes = c.column(s, "box"), c.column(s, "image_size")
            assert (boxes[ok][:, 2] <= sizes[ok][:, 1] + 1e-3).all()
            assert (kps[status == STATUS["no_person"]][:, :, 2] == 0).all()
        assert total > 0


def test_missing_detector_weights_is_one_clear_line(synth_dataset, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        root = synth_dataset("market1501", ids=2, seed=3)
        code, msg = run("generate", "--dataset", "market1501", "--root", root, "--out", tmp_path / "x.h5", "--backend", "torchvision")
    finally:
        torch.hub.set_dir(old)
    assert code == 2
    assert msg.startswith("error: ") and msg.count("\n") == 1 and ".pth" in msg
    assert not (tmp_path / "x.h5").exists()


def test_schp_parser_end_to_end_with_random_weights(tiny_market, tmp_path):
    root = tiny_market
    out = tmp_path / "schp.h5"
    code, msg = run("generate", "--dataset", "market1501", "--root", root, "--out", out, "--parser", "schp",
                    "--random-weights", "--batch-size", "8", "--workers", "0")
    assert code == 0, msg
    with MaskCache(out) as c:
        prov = c.attrs["provenance"]
        assert prov["backend"] == {"name": "none"} and prov["parser"]["random_weights"] is True
        assert prov["parser"]["flip"] is False and prov["parser"]["norm"]["rule"] == "inplace_abn"  # SCHP's extractor, InPlaceABN's kernel
        for s in c.splits:
            status = c.column(s, "status")
            assert set(status) <= {STATUS["no_person"], STATUS["no_keypoints"]}
            assert c.column(s, "masks").shape == (c.num_rows(s), 3, 24, 8)
            for i, hw in enumerate(c.column(s, "image_size")):  # the parser's own labels, at each image's size
                labels = c.parsing(s, i)
                assert labels.shape == tuple(hw) and labels.max() < 20


@pytest.mark.parametrize(
    "args,message",
    [
        (["--parser", "schp", "--parsing-dir", "X"], "--parser schp and --parsing-dir exclude each other"),
        (["--parser", "precomputed"], "--parser precomputed needs --parsing-dir"),
        (["--parser", "none", "--backend", "none"], "--backend none needs a mask source"),
    ],
)
def test_parser_option_errors(market, tmp_path, args, message):
    code, msg = run("generate", "--dataset", "market1501", "--root", market, "--out", tmp_path / "x.h5", *args)
    assert code == 2 and message in msg, msg
