"""``reid-train extract --images`` and ``extract_features`` on any folder of crops, for mask-free and mask-needing models."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from reid_masks.datasets import build_dataset
from reid_masks.errors import UserError
from reid_masks.generate import GenerateConfig, generate
from reid_train.any_images import MaskSources
from reid_train.cli import main
from reid_train.config import load_config
from reid_train.engine.trainer import Trainer, save_checkpoint
from reid_train.inference import extract_features, load_model

pytestmark = pytest.mark.usefixtures("one_thread_and_clean_logging")


@pytest.fixture(scope="module")
def setup(synth_dataset, tmp_path_factory):
    """A synthetic Market copy, its mask cache from the parsing PNGs, and random-weight MMGA / MGRAN checkpoints."""
    root = synth_dataset("market1501", ids=4)
    work = tmp_path_factory.mktemp("extract-images")
    cache = work / "market.h5"
    generate(GenerateConfig(dataset="market1501", root=root, out=cache, parsing_dir=root / "parsing", backend="none", workers=0,
                            person_size=(64, 32)))
    ckpts = {}
    for config in ("tiny_synthetic", "tiny_synthetic_mgran"):
        out = work / config
        cfg = load_config(config, [f"data.root={root}", f"data.cache={cache}", f"train.output_dir={out}", "data.height=64",
                                   "data.width=32", "data.num_workers=0", "train.tensorboard=false"])
        trainer = Trainer(cfg)
        save_checkpoint(trainer.ckpt_path, trainer.checkpoint_state(1, {}))
        ckpts[cfg.model.name] = trainer.ckpt_path
    return root, cache, ckpts


def run(*args) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.output


def test_extract_images_equals_the_split_for_mask_free_and_mask_needing_models(setup, tmp_path):
    root, cache, ckpts = setup
    query = build_dataset("market1501", root).query
    for model, sources in (("mmga", []), ("mgran", ["--parsing-dir", root / "parsing" / "query"])):
        code, out = run("extract", "--checkpoint", ckpts[model], "--split", "query", "--out", tmp_path / f"{model}-split.npz")
        assert code == 0, out
        code, out = run("extract", "--checkpoint", ckpts[model], "--images", root / "query", *sources, "--out", tmp_path / f"{model}-images.npz")
        assert code == 0, out
        split, images = np.load(tmp_path / f"{model}-split.npz"), np.load(tmp_path / f"{model}-images.npz")
        # the images' paths relative to the folder, in the split's order; the same features (same images, same masks)
        assert images["paths"].tolist() == [Path(r.path).name for r in query]
        assert np.abs(images["features"] - split["features"]).max() < 1e-5
        assert (images["pids"] == -1).all() and (images["camids"] == 0).all()
        said = "masks made by the mask stage (reid-masks generate --dataset images) from --parsing-dir" if sources else "no masks"
        assert said in out and f"wrote {len(query)} image features" in out

    # a list file (paths relative to its folder): those images, in the list's order
    names = [Path(r.path).name for r in query][::-2]
    (root / "query" / "some.txt").write_text("# picked\n" + "\n".join(names) + "\n")
    try:
        code, out = run("extract", "--checkpoint", ckpts["mmga"], "--images", root / "query" / "some.txt", "--out", tmp_path / "l.npz")
    finally:
        (root / "query" / "some.txt").unlink()
    assert code == 0, out
    listed, split = np.load(tmp_path / "l.npz"), np.load(tmp_path / "mmga-split.npz")
    assert listed["paths"].tolist() == names
    rows = [[Path(p).name for p in split["paths"]].index(n) for n in names]
    assert np.abs(listed["features"] - split["features"][rows]).max() < 1e-5


def test_extract_images_refusals_are_one_line(setup, tmp_path):
    root, cache, ckpts = setup
    cases = [
        (["--checkpoint", ckpts["mgran"], "--images", root / "query"], "this model needs the masks of every image: give --mask-cache FILE"),
        (["--checkpoint", ckpts["mmga"], "--images", root / "query", "--parsing-dir", root / "parsing"], "--parsing-dir: model.name=mmga uses no masks"),
        (["--checkpoint", ckpts["mgran"], "--images", root / "query", "--mask-cache", cache], "a cache of dataset 'market1501'"),
        (["--checkpoint", ckpts["mgran"], "--split", "query", "--parsing-dir", root / "parsing"], "--parsing-dir: only with --images"),
        (["--checkpoint", ckpts["mmga"]], "give --split (a split of the run's dataset) or --images DIR_OR_LIST"),
        (["--checkpoint", ckpts["mmga"], "--images", tmp_path / "nothing"], "no such folder or list file"),
    ]
    for args, message in cases:
        code, out = run("extract", *args, "--out", tmp_path / "x.npz")
        assert code == 2 and message in out and len(out.strip().splitlines()) == 1, out
        assert not (tmp_path / "x.npz").exists()


def test_extract_features_api_takes_mask_sources(setup, tmp_path):
    """The Python API: MGRAN on image paths with a cache of the folder, or masks made on the spot; equal features."""
    root, _, ckpts = setup
    loaded = load_model(ckpts["mgran"])
    paths = sorted((root / "query").glob("*.jpg"))
    folder_cache = tmp_path / "query.h5"
    generate(GenerateConfig(dataset="images", root=root / "query", out=folder_cache, parsing_dir=root / "parsing" / "query",
                            backend="none", workers=0, person_size=(64, 32)))
    a = extract_features(loaded, paths[1:4], masks=MaskSources(cache=folder_cache))
    b = extract_features(loaded, paths[1:4], masks=MaskSources(parsing_dir=root / "parsing" / "query"))
    assert a.shape == (3, loaded.model.feature_dim) and torch.allclose(a, b, atol=1e-5)
    with pytest.raises(UserError, match="needs the regions masks of every image"):
        extract_features(loaded, paths[:2])
