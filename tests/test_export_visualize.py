"""``reid-train export`` / ``visualize`` / ``curves``: parity of exported graphs, ranking pictures, training curves."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cache_helpers import make_cache
from reid_masks import visual
from reid_masks.datasets import build_dataset
from reid_masks.errors import UserError
from reid_train.cli import main
from reid_train.config import load_config
from reid_train.curves import ACCURACY_COLORS, SERIES_COLORS, TOTAL_COLOR, read_metrics, render_curves, series
from reid_train.engine.evaluator import evaluate_model
from reid_train.engine.trainer import Trainer, load_checkpoint, model_from_checkpoint, save_checkpoint
from reid_train.export import read_export_metadata, sidecar_path
from reid_train.visualize import (MAP_ALPHA, QUERY_FRAME, RankingLayout, id_text, query_distances, rank_gallery, render_ranking,
                                  select_queries, wrap_heading)

HW = (64, 32)


pytestmark = pytest.mark.usefixtures("one_thread_and_clean_logging")


@pytest.fixture(scope="module")
def checkpoint(synth_dataset, tmp_path_factory):
    """``checkpoint(model_name)`` -> a checkpoint in the trainer's format (random resnet18 weights, 64x32 input)."""
    root = synth_dataset("market1501", ids=4)
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            out = tmp_path_factory.mktemp(f"ckpt-{name}")
            cfg = load_config("tiny_synthetic", [
                f"model.name={name}", f"data.root={root}", f"data.cache={make_cache(root)}", f"train.output_dir={out}",
                f"data.height={HW[0]}", f"data.width={HW[1]}", "train.tensorboard=false",
            ])
            trainer = Trainer(cfg)
            save_checkpoint(trainer.ckpt_path, trainer.checkpoint_state(1, {}))
            made[name] = trainer.ckpt_path
        return made[name]

    return make


def _torch_model(ckpt: Path) -> torch.nn.Module:
    model, _ = model_from_checkpoint(load_checkpoint(ckpt))
    return model.eval()


def _run_exported(fmt: str, path: Path, x: np.ndarray) -> np.ndarray:
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": x})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        module = torch.jit.load(str(path))
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("name", ["mmga", "baseline"])
def test_export_parity_dynamic_batch(checkpoint, tmp_path, name, fmt) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    ckpt = checkpoint(name)
    out = tmp_path / f"{name}.{fmt}"
    res = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt), "--format", fmt, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "parity" in res.stdout and "batch 1" in res.stdout and "batch 3" in res.stdout and "OK" in res.stdout
    dim = 2048 if name == "mmga" else 1024

    meta = json.loads(sidecar_path(out).read_text())
    assert meta == read_export_metadata(out)  # the same metadata is embedded in the model file
    assert meta["model"] == name and meta["export_format"] == fmt
    assert meta["input"]["shape"] == ["batch", 3, *HW] and meta["input"]["mean"] == [0.485, 0.456, 0.406]
    assert meta["input"]["std"] == [0.229, 0.224, 0.225]
    assert meta["output"]["dim"] == dim and meta["output"]["l2_normalized"] is True
    assert set(meta["parity"]["max_abs_diff"]) == {"1", "3"} and max(meta["parity"]["max_abs_diff"].values()) <= 1e-4
    if fmt == "onnx":
        import onnx

        model_proto = onnx.load(str(out))
        assert model_proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
        assert meta["opset"] == 17

    # independent check: the exported file against the checkpoint's PyTorch model
    model = _torch_model(ckpt)
    rng = np.random.default_rng(5)
    for b in (1, 3):
        x = rng.standard_normal((b, 3, *HW)).astype(np.float32)
        got = _run_exported(fmt, out, x)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert got.shape == (b, dim)
        assert np.abs(got - ref).max() < 1e-4
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_export_flip_matches_evaluation_features(checkpoint, synth_dataset, tmp_path) -> None:
    """With --flip the exported graph gives extract's features for the test transform's tensors."""
    pytest.importorskip("onnxruntime")
    from reid_train.engine.evaluator import build_test_loader, extract_features

    ckpt = checkpoint("mmga")
    out = tmp_path / "flip.onnx"
    res = CliRunner().invoke(main, ["export", "--checkpoint", str(ckpt), "--out", str(out), "--flip"])
    assert res.exit_code == 0, res.output
    assert json.loads(sidecar_path(out).read_text())["output"]["flip_averaged"] is True
    model, cfg = model_from_checkpoint(load_checkpoint(ckpt))
    loader = build_test_loader(build_dataset("market1501", synth_dataset("market1501", ids=4)), "query", cfg)
    feats, _, _ = extract_features(model, loader, torch.device("cpu"), flip=True)
    images = torch.cat([loader.dataset.transform.normalize(b["image"]) for b in loader]).numpy()  # what extract feeds the model
    assert np.abs(_run_exported("onnx", out, images) - feats.numpy()).max() < 1e-4


def test_export_errors(checkpoint, tmp_path, monkeypatch) -> None:
    from reid_train import export as export_mod
    from reid_train.models import build_model, model_names

    # a failed parity check is a one-line error and leaves nothing behind
    monkeypatch.setattr(export_mod, "parity_check", lambda *a, **k: {1: 0.5, 3: 0.25})
    out = tmp_path / "bad.ts"
    res = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint("baseline")), "--format", "torchscript", "--out", str(out)])
    assert res.exit_code == 2
    assert "parity check failed" in res.stderr and "0.5" in res.stderr and "tolerance 0.0001" in res.stderr
    assert not out.exists() and not sidecar_path(out).exists() and not list(tmp_path.iterdir())

    # models that need masks at inference are refused
    if "mgran" in model_names():
        mgran = build_model("mgran", 4, backbone="resnet18")
    else:  # pragma: no cover - before MGRAN lands
        mgran = type("Stub", (torch.nn.Module,), {"region_masks": "regions"})()
    with pytest.raises(UserError, match="export supports images-only models \\(mmga and fsa families\\); mgran needs masks at inference"):
        export_mod._check_images_only(mgran, "mgran")

    res = CliRunner().invoke(main, ["export", "--checkpoint", str(tmp_path / "missing.pth")])
    assert res.exit_code == 2 and "checkpoint not found" in res.stderr


# --------------------------------------------------------------------------- ranking + pictures


def _border_color(img: np.ndarray, layout: RankingLayout, kind: str, i: int) -> set[tuple[int, ...]]:
    """Colours of the frame of tile ``i``: the 4 corner regions and the 4 edge midpoints (inside the 3-px border)."""
    y, x = layout.tile_origin(kind, i)
    ph, pw = layout.panel_hw
    h, w = ph + 6, pw + 6
    pts = [(y + 1, x + 1), (y + 1, x + w - 2), (y + h - 2, x + 1), (y + h - 2, x + w - 2),
           (y + h // 2, x + 1), (y + h // 2, x + w - 2), (y + 1, x + w // 2), (y + h - 2, x + w // 2)]
    return {tuple(int(c) for c in img[py, px]) for py, px in pts}


def test_ranking_protocol_and_border_colours(tmp_path) -> None:
    """Known distances: junk removed, stable ties, AP; the PNG's frames are green exactly at the matches."""
    # query 0: pid 1 cam 0; query 1: pid 9 cam 0 (its only same-pid image is junk -> not valid)
    q_pids, q_cams = np.array([1, 9]), np.array([0, 0])
    #                  0  1  2  3  4  5  6  7  8
    g_pids = np.array([1, 2, 1, 0, 1, 3, 1, 2, 9])
    g_cams = np.array([0, 1, 1, 2, 2, 1, 3, 1, 0])
    sq_dist = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.1, 0.05])  # gallery 7 ties with 1 (1 comes first)
    gf = torch.tensor(np.stack([np.sqrt(sq_dist), np.zeros(9)], axis=1), dtype=torch.float32)
    qf = torch.zeros(2, 2)
    queries = select_queries(q_pids, q_cams, g_pids, g_cams, n=8, seed=0)
    assert queries.tolist() == [0]
    dist = query_distances(qf, gf, queries, "euclidean")
    (r,) = rank_gallery(dist, queries, q_pids, q_cams, g_pids, g_cams, topk=5)
    assert r.gallery.tolist() == [8, 1, 7, 2, 3]  # gallery 0 (same pid + cam) removed; 8 is another pid
    assert r.correct.tolist() == [False, False, False, True, False]
    assert np.allclose(r.distances, [0.05, 0.1, 0.1, 0.2, 0.3], atol=1e-6)
    assert r.num_matches == 3  # gallery 2, 4, 6 at ranks 4, 6, 8
    assert r.ap == pytest.approx((1 / 4 + 2 / 6 + 3 / 8) / 3)

    # the picture: frames read back from the PNG
    rng = np.random.default_rng(0)
    panel = (60, 24)
    grey = lambda: np.full((50, 20, 3), 128, np.uint8)  # noqa: E731
    correct = [True, False, True, True, False]
    maps = {"m1_whole": rng.random((8, 4)), "m2_whole": rng.random((8, 4)), "m2_upper": rng.random((8, 4)), "m2_bottom": rng.random((8, 4))}
    picture = render_ranking(grey(), [grey() for _ in correct], correct, panel_hw=panel, att_maps=maps, title="t")
    visual.save_png(picture, tmp_path / "r.png")
    img = np.asarray(Image.open(tmp_path / "r.png").convert("RGB"))
    layout = RankingLayout(panel, len(correct), len(maps))
    assert (img.shape[1], img.shape[0]) == layout.size
    assert _border_color(img, layout, "query", 0) == {QUERY_FRAME}
    for i, ok in enumerate(correct):
        assert _border_color(img, layout, "gallery", i) == {visual.GOOD if ok else visual.BAD}, i
    for j, color in enumerate((visual.WHOLE_COLOR, visual.WHOLE_COLOR, visual.UPPER_COLOR, visual.BOTTOM_COLOR)):
        y, x = layout.tile_origin("map", j)
        tile = img[y + 3:y + 3 + panel[0], x + 3:x + 3 + panel[1]].reshape(-1, 3).astype(int)
        # the overlay pulls the grey towards the guiding mask's colour, most at the map's maximum
        shift = tile - 128
        assert np.abs(shift).max() > 40
        assert np.all(np.sign(shift.mean(0)) == np.sign(np.asarray(color) - 128)), (j, shift.mean(0))
        # under it, its colour scale: a ramp from the base grey towards the colour, between the min and max labels
        bar_y = y + 3 + panel[0] + 3 + visual.CAPTION_HEIGHT + visual.CAPTION_HEIGHT // 2
        row = img[bar_y, x:x + layout.tile_hw[1]].astype(float)
        toward = row @ (np.asarray(color, float) - 96) / np.linalg.norm(np.asarray(color, float) - 96)
        ramp = np.flatnonzero(np.abs(row - (96 + (np.asarray(color) - 96) * 0.0)).sum(1) < 3)  # the ramp's grey start
        assert len(ramp), j
        end = np.round(96 * (1 - MAP_ALPHA) + np.asarray(color) * MAP_ALPHA)
        assert (np.abs(row - end).max(1) <= 3).any(), j  # its end: the colour at full stretch
        start, stop = ramp[0], int(np.flatnonzero(np.abs(row - end).max(1) <= 3)[-1])
        assert stop > start + 5 and np.all(np.diff(toward[start:stop + 1]) >= -1.0), j  # increasing towards the colour
    # a heading too wide for the picture is wrapped at its '; ' separators, every line shown
    text = "model x (resnet18), epoch 7 of checkpoint.pth, trained on market1501; test: dukemtmc query/gallery; euclidean"
    lines = wrap_heading(text, layout.size[0])
    assert len(lines) >= 2 and "; ".join(lines) == text
    picture = render_ranking(grey(), [grey() for _ in correct], correct, panel_hw=panel, att_maps=maps, title="t", heading=text)
    assert picture.shape[0] == layout.size[1] + len(lines) * (visual.CAPTION_HEIGHT + 4)
    assert id_text(611, 2) == "pid 611 c3"  # original pid, 1-based camera as in 0611_c3s2_...jpg


def test_visualize_cli_matches_evaluation(checkpoint, synth_dataset, tmp_path) -> None:
    root = synth_dataset("market1501", ids=4)
    ds = build_dataset("market1501", root)
    ckpt = checkpoint("mmga")
    out = tmp_path / "vis"
    res = CliRunner().invoke(main, ["visualize", "--checkpoint", str(ckpt), "--n", "8", "--topk", "5", "--out", str(out),
                                    "--tile-height", "96"])
    assert res.exit_code == 0, res.output
    result = json.loads((out / "rankings.json").read_text())
    assert result["attention_maps"] == ["m1_whole", "m2_whole", "m2_upper", "m2_bottom"]
    assert len(result["queries"]) == len(ds.query)  # all 4 synthetic queries are valid, n=8 shows them all
    assert (out / "index.png").is_file()
    assert result["heading"].startswith("mmga (resnet18), epoch 1 of checkpoint.pth, trained on market1501; test: market1501")
    layout = RankingLayout((96, 48), 5, 4)
    layout = RankingLayout((96, 48), 5, 4, heading=len(wrap_heading(result["heading"], layout.size[0])))
    for q in result["queries"]:
        qrec = ds.query[q["index"]]
        assert (q["pid"], q["camid"], q["path"]) == (qrec.pid, qrec.camid, qrec.path)
        top = q["top"]
        assert len(top) == 5 and [t["distance"] for t in top] == sorted(t["distance"] for t in top)
        img = np.asarray(Image.open(out / q["file"]).convert("RGB"))
        assert (img.shape[1], img.shape[0]) == layout.size
        for i, t in enumerate(top):
            g = ds.gallery[t["index"]]
            assert g.path == t["path"] and not (g.pid == qrec.pid and g.camid == qrec.camid)  # junk removed
            assert t["correct"] == (g.pid == qrec.pid)
            assert _border_color(img, layout, "gallery", i) == {visual.GOOD if t["correct"] else visual.BAD}

    # same protocol as evaluation: over all valid queries, top-1 hits = rank-1 and mean AP = mAP
    model, cfg = model_from_checkpoint(load_checkpoint(ckpt))
    ev = evaluate_model(model, ds, cfg, torch.device("cpu"))
    assert np.mean([q["top"][0]["correct"] for q in result["queries"]]) == pytest.approx(ev["rank1"])
    assert np.mean([q["ap"] for q in result["queries"]]) == pytest.approx(ev["mAP"])

    # deterministic picks; models without attention get no maps
    out2 = tmp_path / "vis2"
    args = ["visualize", "--checkpoint", str(checkpoint("baseline")), "--n", "2", "--topk", "3", "--seed", "3", "--tile-height", "64"]
    assert CliRunner().invoke(main, [*args, "--out", str(out2)]).exit_code == 0
    assert CliRunner().invoke(main, [*args, "--out", str(tmp_path / "vis3")]).exit_code == 0
    r2 = json.loads((out2 / "rankings.json").read_text())
    r3 = json.loads((tmp_path / "vis3" / "rankings.json").read_text())
    assert r2["attention_maps"] == [] and [q["index"] for q in r2["queries"]] == [q["index"] for q in r3["queries"]]
    assert len(r2["queries"]) == 2
    img = Image.open(out2 / r2["queries"][0]["file"])
    plain = RankingLayout((64, 32), 3, 0)
    assert img.size == RankingLayout((64, 32), 3, 0, heading=len(wrap_heading(r2["heading"], plain.size[0]))).size


# --------------------------------------------------------------------------- curves


def _write_log(path: Path) -> list[dict]:
    """8 epochs, evaluated every 2nd (rank-1 rising, mAP 20 points lower); epoch 3 logged twice; a blank line."""
    lines = []
    for e in range(1, 9):
        rec = {"epoch": e, "total": 10.0 / e, "ce_whole": 5.0 / e, "triplet": 0.5 / e, "att": 0.2 / e,
               "backbone_lr": 0.05, "lr": 0.1, "images_per_s": 100.0, "time_s": 1.0}
        if e % 2 == 0:
            rec.update(rank1=0.4 + 0.07 * e, rank5=0.9, rank10=0.95, mAP=0.2 + 0.07 * e)
        lines.append(json.dumps(rec))
    lines.insert(2, json.dumps({"epoch": 3, "total": 99.0}))  # superseded by the later epoch-3 line
    lines.insert(5, "")
    path.write_text("\n".join(lines) + "\n")
    return [json.loads(x) for x in lines if x and json.loads(x).get("total") != 99.0]


def _ys_of_color(img: np.ndarray, x: float, color: tuple[int, int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Rows (inside ``box``) of column ``x`` whose pixel has exactly ``color``."""
    col = img[box[1]:box[3] + 1, int(round(x))]
    return np.flatnonzero(np.all(col == np.asarray(color, np.uint8), axis=1)) + box[1]


def test_curves_from_metrics_log(tmp_path) -> None:
    log = tmp_path / "metrics.jsonl"
    expected = _write_log(log)
    records = read_metrics(log)
    assert [r["epoch"] for r in records] == list(range(1, 9)) and records[2]["total"] == pytest.approx(10 / 3)
    assert series(records, "rank1")[0].tolist() == [2, 4, 6, 8]
    assert records == expected

    out = tmp_path / "curves.png"
    res = CliRunner().invoke(main, ["curves", str(log), "--out", str(out), "--width", "800", "--height", "600"])
    assert res.exit_code == 0, res.output
    assert "rank-1 96.00%" in res.stdout
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape == (600, 800, 3)
    _, axes = render_curves(records, (800, 600), log_loss=True)  # same geometry as the command's picture
    assert set(axes) == {"loss", "accuracy"}

    acc = axes["accuracy"]
    heights = []
    for e in (2, 4, 6, 8):
        x, y_expected = acc.to_pixel(e, 100 * records[e - 1]["rank1"])
        ys = _ys_of_color(img, x, ACCURACY_COLORS["rank1"], acc.box)
        assert len(ys), e
        y = ys.mean()
        assert abs(y - y_expected) <= 4
        heights.append(y)
        assert len(_ys_of_color(img, x, ACCURACY_COLORS["mAP"], acc.box))
    assert heights == sorted(heights, reverse=True) and len(set(heights)) == 4  # rising rank-1: higher up each time

    loss = axes["loss"]
    total_y = [_ys_of_color(img, loss.to_pixel(e, 0.5)[0], TOTAL_COLOR, loss.box).mean() for e in (1, 4, 8)]
    assert total_y == sorted(total_y)  # falling loss: lower each time
    box = img[loss.box[1]:loss.box[3], loss.box[0]:loss.box[2]].reshape(-1, 3)
    assert np.all(box == np.asarray(SERIES_COLORS[0], np.uint8), axis=1).any()  # ce_whole drawn

    # a log without evaluation: loss panel only; a broken line: one-line error naming it
    noeval = tmp_path / "run" / "metrics.jsonl"
    noeval.parent.mkdir()
    noeval.write_text('{"epoch": 1, "total": 2.0}\n{"epoch": 2, "total": 1.0}\n')
    res = CliRunner().invoke(main, ["curves", str(noeval)])
    assert res.exit_code == 0 and Image.open(noeval.parent / "curves.png").size == (960, 640)  # default: next to the log
    assert set(render_curves(read_metrics(noeval))[1]) == {"loss"}
    (tmp_path / "bad.jsonl").write_text('{"epoch": 1, "total": 2.0}\n{"epoch": 2, "tot\n')
    res = CliRunner().invoke(main, ["curves", str(tmp_path / "bad.jsonl")])
    assert res.exit_code == 2 and "bad.jsonl:2: not JSON" in res.stderr


def test_export_onnx_dynamo_exporter(checkpoint, tmp_path) -> None:
    """torch's torch.export-based ONNX exporter (optional: needs onnxscript) passes the same parity check."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "dyn.onnx"
    res = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint("baseline")), "--out", str(out), "--dynamo"])
    assert res.exit_code == 0, res.output
    meta = read_export_metadata(out)
    assert meta["opset"] >= 18 and "dynamo" in meta["exporter"]
    x = np.random.default_rng(1).standard_normal((3, 3, *HW)).astype(np.float32)
    with torch.no_grad():
        ref = _torch_model(checkpoint("baseline"))(torch.from_numpy(x)).numpy()
    assert np.abs(_run_exported("onnx", out, x) - ref).max() < 1e-4
    res = CliRunner().invoke(main, ["export", "--checkpoint", str(checkpoint("baseline")), "--out", str(out), "--dynamo", "--opset", "17"])
    assert res.exit_code == 2 and "opset 18 or newer" in res.stderr
