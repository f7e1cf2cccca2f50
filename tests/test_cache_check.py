"""Images against the mask cache before any computation: a changed image and a shuffled ``path``
column are refused (fit, evaluate, extract); unreadable train rows are left out with one
warning, unreadable query rows refused."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cache_helpers import make_cache
from reid_masks.cache import STATUS, MaskCache, write_cache
from reid_masks.datasets import build_dataset
from reid_masks.errors import UserError
from reid_train.cli import main
from reid_train.config import load_config
from reid_train.data.cache_check import check_cache_images
from reid_train.engine.trainer import Trainer, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread_and_clean_logging")


@pytest.fixture()
def market(synth_dataset, tmp_path) -> tuple[Path, Path]:
    """A private copy of the synthetic Market (images get changed) and its cache."""
    root = tmp_path / "market"
    shutil.copytree(synth_dataset("market1501", ids=4), root)
    return root, make_cache(root, out=tmp_path / "market.h5")


def rewrite(cache: Path, out: Path, change) -> Path:
    """A copy of ``cache`` with ``change(split, rows)`` applied to each split's rows."""
    with MaskCache(cache) as mc:
        splits = {s: mc.all_rows(s) for s in mc.splits}
        attrs = {"dataset": mc.dataset}
    for s, rows in splits.items():
        change(s, rows)
        rows.row_digest[:] = b""  # a writer that seals the changed rows anew: the digests match them
    write_cache(out, {s: (len(r), r) for s, r in splits.items()}, attrs)
    return out


def cfg(root: Path, cache: Path, out: Path):
    return load_config("tiny_synthetic", [f"data.root={root}", f"data.cache={cache}", f"train.output_dir={out}",
                                          "data.height=64", "data.width=32", "data.num_ids=2", "solver.epochs=1"])


def test_changed_image_is_refused_by_fit_evaluate_and_extract(market, tmp_path) -> None:
    root, cache = market
    ds = build_dataset("market1501", root)
    trainer = Trainer(cfg(root, cache, tmp_path / "run"))  # all fine: nothing refused
    assert len(trainer.train_set) == len(ds.train)
    save_checkpoint(trainer.ckpt_path, trainer.checkpoint_state(1, {}))  # an (untrained) run to evaluate

    victim = ds.train[3].path
    with open(root / victim, "ab") as fh:  # still a valid JPEG, other bytes
        fh.write(b"\0")
    with pytest.raises(UserError) as err:
        Trainer(cfg(root, cache, tmp_path / "run2"))
    n = len(ds.train) + len(ds.query) + len(ds.gallery)
    msg = str(err.value)
    assert f"{cache}: 1 of {n} train, query, gallery image(s) differ" in msg and victim in msg
    assert "--update" in msg and "\n" not in msg
    assert not (tmp_path / "run2" / "checkpoint.pth").exists()

    q_victim = ds.query[0].path
    with open(root / q_victim, "ab") as fh:
        fh.write(b"\0")
    result = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(trainer.ckpt_path)])
    assert result.exit_code == 2 and f"1 of {len(ds.query)} query image(s) differ" in result.output and q_victim in result.output
    result = CliRunner().invoke(main, ["extract", "--checkpoint", str(trainer.ckpt_path), "--split", "train", "--out", str(tmp_path / "f.npz")])
    assert result.exit_code == 2 and f"1 of {len(ds.train)} train image(s) differ" in result.output and victim in result.output
    assert not (tmp_path / "f.npz").exists()


def test_shuffled_path_column_is_refused(market, tmp_path) -> None:
    root, cache = market
    rng = np.random.default_rng(0)

    def shuffle_train_paths(split, rows):
        if split == "train":
            rows.path[:] = rows.path[rng.permutation(len(rows.path))]

    bad = rewrite(cache, tmp_path / "shuffled.h5", shuffle_train_paths)
    with MaskCache(cache) as a, MaskCache(bad) as b:
        moved = int((a.column("train", "path") != b.column("train", "path")).sum())
    assert moved > 0
    ds = build_dataset("market1501", root)
    with pytest.raises(UserError, match=f"{moved} of {len(ds.train)} train image"):
        check_cache_images(bad, ds, ["train"])
    with pytest.raises(UserError, match="rows out of order"):
        Trainer(cfg(root, bad, tmp_path / "run"))


def test_unreadable_rows_train_left_out_query_refused(market, tmp_path, caplog) -> None:
    root, cache = market
    ds = build_dataset("market1501", root)

    def unreadable(which: str, rows_at: list[int]):
        def change(split, rows):
            if split == which:
                rows.status[rows_at] = STATUS["unreadable"]
        return change

    bad_train = rewrite(cache, tmp_path / "bad-train.h5", unreadable("train", [1, 4]))
    with caplog.at_level(logging.WARNING):
        trainer = Trainer(cfg(root, bad_train, tmp_path / "run"))
    warnings = [r.getMessage() for r in caplog.records if "left out of training" in r.getMessage()]
    assert len(warnings) == 1
    assert f"2 of {len(ds.train)} train image(s) have cache status 'unreadable'" in warnings[0]
    assert ds.train[1].path in warnings[0] and ds.train[4].path in warnings[0]
    kept = [r.path for r in trainer.train_set.records]
    assert kept == [r.path for i, r in enumerate(ds.train) if i not in (1, 4)]
    assert len(trainer.train_set.masks) == len(kept)
    trainer.fit()  # trains and evaluates without them

    for model in ("mmga", "baseline", "mgran"):  # one rule for every model
        bad_query = rewrite(cache, tmp_path / f"bad-query-{model}.h5", unreadable("query", [2]))
        c = cfg(root, bad_query, tmp_path / f"run-{model}")
        c.model.name = model
        with pytest.raises(UserError) as err:
            Trainer(c)
        assert f"1 query image(s) have cache status 'unreadable' (first: {ds.query[2].path})" in str(err.value)


def test_a_dangling_train_link_recorded_unreadable_is_left_out_not_refused(market, tmp_path, caplog) -> None:
    """generate records a dangling link as an 'unreadable' row; the check applies the rows rule to it
    (train: left out) instead of refusing it as a file that vanished since the cache was made."""
    from reid_masks.generate import GenerateConfig, generate

    root = market[0]
    victim = sorted((root / "bounding_box_train").glob("*.jpg"))[0]
    victim.unlink()
    victim.symlink_to(tmp_path / "gone.jpg")
    cache = tmp_path / "c.h5"
    generate(GenerateConfig(dataset="market1501", root=root, out=cache, parsing_dir=root / "parsing", backend="none", workers=0))
    ds = build_dataset("market1501", root)
    bad = [r.path for r in ds.train].index(f"bounding_box_train/{victim.name}")
    with caplog.at_level(logging.WARNING):
        usable = check_cache_images(cache, ds, ["train"])["train"]
    assert bad not in usable and len(usable) == len(ds.train) - 1
    assert "left out of training" in caplog.text
