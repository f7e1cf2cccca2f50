"""Masks tied to their rows and rows to their inputs (cache schema 4), faults reproduced on real files.

Rows of a real HDF5 cache are permuted or rescaled with h5py, a parsing PNG or an image is
replaced between runs, ``--out`` is a symlink, a compressed chunk is overwritten: every reader
refuses in one line naming the cache, split and rows; ``generate`` sees every changed input.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from cache_helpers import make_cache
from reid_masks.cache import MaskCache, check_cache_rows
from reid_masks.datasets import build_dataset
from reid_masks.errors import UserError
from reid_train.data.cache_check import check_cache_images
from reid_train.data.regions import load_split_region_masks
from test_generate import assert_same_cache, gen, market, reference, run  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread_and_clean_logging")


@pytest.fixture()
def small(synth_dataset, tmp_path) -> tuple[Path, Path]:
    """The 4-id synthetic Market and a cache of it (cache_helpers: written by the real CacheWriter)."""
    root = synth_dataset("market1501", ids=4)
    return root, make_cache(root, out=tmp_path / "c.h5")


def edit(cache: Path, out: Path, change) -> Path:
    """A byte copy of ``cache`` with ``change(h5py.File)`` applied in place (what an outside edit does)."""
    shutil.copy(cache, out)
    with h5py.File(out, "r+") as f:
        change(f)
    return out


def one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_permuted_masks_rows_are_refused_by_every_reader(small, tmp_path):
    root, cache = small
    ds = build_dataset("market1501", root)
    assert check_cache_images(cache, ds, ["train", "query"])  # the clean cache passes

    def permute(f):  # path and fingerprint stay put; every derived column moves
        order = np.roll(np.arange(len(f["train/path"])), 1)
        for name in ("masks", "person", "regions", "parts"):
            f[f"train/{name}"][...] = f[f"train/{name}"][()][order]

    bad = edit(cache, tmp_path / "bad.h5", permute)
    with pytest.raises(UserError) as err:  # fit, evaluate, extract, visualize: all through this check
        check_cache_images(bad, ds, ["train", "query", "gallery"])
    msg = str(err.value)
    assert msg.startswith(f"{bad}: train row(s) 0, 1, 2, ... (of {len(ds.train)}) do not match their row digest") and "\n" not in msg
    assert "regenerate" in msg
    code, out = run("inspect", bad)
    assert code == 2 and "train row(s) 0, 1, 2" in one_line(out)
    code, out = run("merge", bad, "--out", tmp_path / "m.h5")
    assert code == 2 and "do not match their row digest" in one_line(out) and not (tmp_path / "m.h5").exists()

    # only the full-size maps moved (the 24x8 masks and the map digests stay): the readers of the maps refuse
    maps_only = edit(cache, tmp_path / "maps.h5", lambda f: f["query/regions"].__setitem__(..., f["query/regions"][()][::-1]))
    check_cache_images(maps_only, ds, ["query"])  # the row check does not read the maps (docs/benchmarks.md: cost)
    with pytest.raises(UserError, match=rf"{maps_only}: query row\(s\) 0, 1, 2 have person/regions maps that do not match"):
        load_split_region_masks(maps_only, ds, "query", "regions")
    code, out = run("merge", maps_only, "--out", tmp_path / "m.h5")
    assert code == 2 and "do not match their row digests" in one_line(out) and not (tmp_path / "m.h5").exists()
    assert not list(tmp_path.glob(".m.h5.tmp-*"))


@pytest.mark.parametrize("kind", ["scaled", "nan"])
def test_masks_out_of_range_or_nan_are_refused(small, tmp_path, kind, caplog):
    root, cache = small
    ds = build_dataset("market1501", root)

    def spoil(f):
        m = f["gallery/masks"][()]
        if kind == "scaled":
            m = m * 7 - 3  # a cache scaled to [-3, 4]
        else:
            m[5, 1, 3, 2] = np.nan
        f["gallery/masks"][...] = m

    bad = edit(cache, tmp_path / f"{kind}.h5", spoil)
    first = "0, 1, 2" if kind == "scaled" else "5"
    with pytest.raises(UserError, match=rf"{bad}: gallery row\(s\) {first}.* have mask values outside \[0, 1\] or not finite"):
        check_cache_images(bad, ds, ["gallery"])
    # a schema-3 cache (no digests) still gets the range check, and one warning line when clean
    def old(f):
        f.attrs["schema_version"] = 3
        for s in ("train", "query", "gallery"):
            for name in ("inputs", "row_digest", "map_digests"):
                del f[s][name]

    with pytest.raises(UserError, match="outside \\[0, 1\\]"):
        check_cache_images(edit(bad, tmp_path / "old-bad.h5", old), ds, ["gallery"])
    caplog.set_level(logging.WARNING)
    check_cache_images(edit(cache, tmp_path / "old.h5", old), ds, ["query"])
    notes = [r.getMessage() for r in caplog.records if "no row digests" in r.getMessage()]
    assert len(notes) == 1 and "with --update to add them" in notes[0]


def test_inspect_shard_and_damaged_chunk_are_one_line(market, reference, tmp_path):
    assert gen(market, tmp_path / "s.h5", "--shard", "1/2", "--chunk-rows", "16")[0] == 0
    code, out = run("inspect", tmp_path / "s.shard1of2.h5")
    assert code == 0 and "(a shard: " in out, out

    broken = tmp_path / "broken.h5"
    shutil.copy(reference, broken)
    with h5py.File(broken, "r") as f:
        info = f["train/masks"].id.get_chunk_info(0)
    with open(broken, "r+b") as fh:  # overwrite the bytes of one compressed chunk of the masks
        fh.seek(info.byte_offset + 8)
        fh.write(b"\xff" * (info.size - 16))
    code, out = run("inspect", broken)
    assert code == 2 and f"{broken}: damaged data in train/masks rows 0-" in one_line(out) and "regenerate it" in out


def test_replaced_parsing_png_is_seen_and_update_writes_through_a_symlink(market, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(market, root)
    real, link = tmp_path / "real.h5", tmp_path / "link.h5"
    link.symlink_to(real)
    assert gen(root, link, "--chunk-rows", "16")[0] == 0
    assert link.is_symlink() and real.is_file()
    pngs = sorted((root / "parsing/query").glob("*.png"))
    shutil.copy(pngs[1], pngs[0])  # another person's parsing under this image's name
    code, msg = gen(root, link, "--chunk-rows", "16")
    assert code == 2 and f"1 row(s) whose parsing file changed (first: query/{pngs[0].stem}.jpg)" in one_line(msg)
    assert "--update" in msg
    code, msg = gen(root, link, "--chunk-rows", "16", "--update")
    assert code == 0 and "updating 1 changed or added row(s)" in msg, msg
    assert link.is_symlink() and link.resolve() == real  # the link kept, its target rewritten
    fresh = tmp_path / "fresh.h5"
    assert gen(root, fresh, "--chunk-rows", "16")[0] == 0
    assert_same_cache(real, fresh)


def test_a_resumed_chunk_made_from_an_older_image_is_recomputed(market, tmp_path, monkeypatch):
    import reid_masks.generate as g

    root = tmp_path / "m"
    shutil.copytree(market, root)
    out = tmp_path / "r.h5"
    monkeypatch.setattr(g, "assemble", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("crash before assembly")))
    gen(root, out, "--chunk-rows", "16")
    monkeypatch.undo()
    train = sorted((root / "bounding_box_train").glob("*.jpg"))
    shutil.copy(train[3], train[0])  # an image of chunk 0 changes while the run is down
    code, msg = gen(root, out, "--chunk-rows", "16")
    assert code == 0, msg
    assert f"chunk 0: 1 row(s) made from an older version of their image or input files (first: bounding_box_train/{train[0].name}); recomputing chunk 0" in msg
    fresh = tmp_path / "fresh.h5"
    assert gen(root, fresh, "--chunk-rows", "16")[0] == 0
    assert_same_cache(out, fresh)


def test_schema_3_cache_is_refused_by_generate_until_update_adds_digests(market, reference, tmp_path):
    old = tmp_path / "old.h5"
    shutil.copy(reference, old)
    with h5py.File(old, "r+") as f:
        f.attrs["schema_version"] = 3
        for s in ("train", "query", "gallery"):
            for name in ("inputs", "row_digest", "map_digests"):
                del f[s][name]
    with MaskCache(old) as c:
        assert "no row digests" in check_cache_rows(c)
    code, msg = gen(market, old)
    assert code == 2 and "has no row digests" in one_line(msg) and "--update" in msg
    code, msg = gen(market, old, "--update")
    assert code == 0 and "records no fingerprints of its parsing files" in msg
    assert_same_cache(old, reference)


def as_schema_4(cache: Path, out: Path) -> Path:
    """A copy of ``cache`` as reid-masks wrote schema 4: no ``parsing``, three map digests, row digests over them."""
    from reid_masks.cache import row_digests

    def downgrade(f):
        f.attrs["schema_version"] = 4
        for s in ("train", "query", "gallery"):
            g = f[s]
            del g["parsing"]
            maps = g["map_digests"][:, :3]
            del g["map_digests"]
            g.create_dataset("map_digests", data=maps)
            cols = {name: g[name][()] for name in ("fingerprint", "status", "score", "box", "keypoints", "image_size", "masks", "cuts")}
            cols.update(path=[p.decode() for p in g["path"][()]], inputs=[p.decode() for p in g["inputs"][()]], map_digests=maps)
            g["row_digest"][...] = row_digests(cols)

    return edit(cache, out, downgrade)


def test_schema_4_cache_made_with_a_parser_is_read_and_update_adds_the_parsing_labels(market, reference, tmp_path):
    from test_export import run_export

    old = as_schema_4(reference, tmp_path / "old.h5")
    with MaskCache(old) as c:
        assert c.schema_version == 4 and check_cache_rows(c) is None  # its own digests verify
        n = sum(c.num_stored(s) for s in c.splits)
    code, msg = gen(market, old)  # still usable as it is: up to date, with a note
    assert code == 0 and "up to date" in msg and "keeps no parsing labels" in msg and f"recomputes all {n} rows" in msg, msg
    code, msg = run_export(old, "--format", "lip-png", "--out", tmp_path / "lip")
    assert code == 2 and "schema version 4 keeps no parsing labels" in one_line(msg) and "--update" in msg
    code, msg = gen(market, old, "--update")
    assert code == 0 and f"updating {n} changed or added row(s)" in msg, msg
    assert_same_cache(old, reference)


def test_schema_4_cache_without_a_parser_keeps_its_rows_on_update(synth_dataset, tmp_path):
    from PIL import Image

    root, masks = tmp_path / "market", tmp_path / "masks"
    shutil.copytree(synth_dataset("market1501", ids=4), root)
    for png in (root / "parsing").rglob("*.png"):  # person-mask PNGs: a mask source without a parser
        (masks / png.relative_to(root / "parsing")).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(((np.asarray(Image.open(png)) > 0) * 255).astype(np.uint8)).save(masks / png.relative_to(root / "parsing"))
    args = ("generate", "--dataset", "market1501", "--root", root, "--masks-dir", masks, "--workers", "0")
    cache = tmp_path / "seg.h5"
    assert run(*args, "--out", cache)[0] == 0
    old = as_schema_4(cache, tmp_path / "old.h5")
    image = sorted((root / "bounding_box_train").glob("*.jpg"))[0]
    Image.open(image).transpose(Image.FLIP_LEFT_RIGHT).save(image)
    code, msg = run(*args, "--out", old, "--update")
    assert code == 0 and "updating 1 changed or added row(s)" in msg, msg
    fresh = tmp_path / "fresh.h5"
    assert run(*args, "--out", fresh)[0] == 0
    assert_same_cache(old, fresh)  # the kept rows: verified, then sealed with their (empty) parsing
    with MaskCache(old) as c:
        assert c.schema_version == 5 and c.column("train", "map_digests").shape[1] == 4 and check_cache_rows(c) is None
