"""``reid-train visualize``: ranked-retrieval pictures and attention maps of a checkpoint.

For ``n`` queries picked deterministically (``seed``) among the *valid* queries (those with
at least one gallery image of their pid from another camera, the ones evaluation scores),
each PNG shows, left to right:

* the query (light frame), captioned with its pid and camera (the dataset's original pid and the
  1-based camera, both as in the file names: Market's ``0611_c3s2_...`` is ``pid 611 c3``);
* its top-k gallery images under the evaluation protocol -- same features (flip-averaged
  when ``test.flip``), same distance (``test.metric``, squared euclidean by default; the
  k-reciprocal re-ranked distance when ``test.rerank``), gallery images of the query's pid
  *and* camera removed, ties broken by gallery order (stable sort) -- framed green
  (:data:`reid_masks.visual.GOOD`) when the pid matches and red (``BAD``) when not
  (distractors count as wrong, as in evaluation); captions give rank, distance, pid, camera;
* for MMGA-family models with attention, the query's spatial attention maps (``m1_whole``,
  ``m2_whole``, ``m2_upper``, ``m2_bottom``; the MMGA paper's Figure 5) overlaid on it in the
  colour of the mask that guides each (whole magenta, upper orange, bottom blue), each map
  min-max stretched, with its colour scale (raw minimum to maximum) under it;
* for MGRAN-family models, the contours of the region masks the model was given (head /
  upper / lower, or the body parts of ``mgran_pl``), drawn on every image.

A heading names what the picture shows (model, backbone, checkpoint epoch, train set, test set
and protocol), a title line the query's file, rank-1 outcome and average precision.
``index.png`` stacks every query's row under the heading and one legend, and
``rankings.json`` lists the rankings (paths, pids, ``camid`` = the datasets' 0-based camera
index, distances, correct flags, AP).
The queries and gallery are those ``evaluate`` scores: the dataset's, or with
``data.test_sets`` each set's, in a sub-folder named after it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import click
import numpy as np

from reid_masks import visual
from reid_masks.cliopts import SEED
from reid_masks.errors import UserError

if TYPE_CHECKING:  # torch is imported when used, so that 'reid-train --help' stays fast
    import torch

__all__ = [
    "QueryRanking", "RankingLayout", "select_queries", "query_distances", "rank_gallery",
    "render_ranking", "attention_maps", "visualize", "visualize_set", "set_folders", "visualize_command", "MAP_ORDER",
]

logger = logging.getLogger(__name__)

BORDER = 3
TILE_GAP = 2
GROUP_GAP = 12
MARGIN = 4
CAPTION_LINES = 2
TITLE_HEIGHT = visual.CAPTION_HEIGHT + 4
LEGEND_HEIGHT = visual.CAPTION_HEIGHT + 4
QUERY_FRAME: visual.Color = (200, 200, 200)
MAP_ALPHA = 0.7
#: Attention maps shown, in this order, when the model returns them.
MAP_ORDER = ("m1_whole", "m2_whole", "m2_upper", "m2_bottom", "sa_whole")  # sa_whole: FSA's self-attention map


# --------------------------------------------------------------------------- ranking


@dataclass
class QueryRanking:
    """The top-k of one query: gallery indices, distances, correct flags; AP over the whole ranking."""

    query: int
    gallery: np.ndarray
    distances: np.ndarray
    correct: np.ndarray
    num_matches: int
    ap: float


def valid_queries(q_pids: np.ndarray, q_camids: np.ndarray, g_pids: np.ndarray, g_camids: np.ndarray) -> np.ndarray:
    """Indices of the queries evaluation scores: a gallery image of their pid from another camera exists."""
    q_pids, q_camids = np.asarray(q_pids), np.asarray(q_camids)
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    cams_by_pid: dict[int, set[int]] = {}
    for p, c in zip(g_pids.tolist(), g_camids.tolist()):
        cams_by_pid.setdefault(p, set()).add(c)
    ok = [bool(cams_by_pid.get(p, set()) - {c}) for p, c in zip(q_pids.tolist(), q_camids.tolist())]
    return np.flatnonzero(np.asarray(ok, dtype=bool))


def select_queries(q_pids: np.ndarray, q_camids: np.ndarray, g_pids: np.ndarray, g_camids: np.ndarray,
                   n: int, seed: int = 0) -> np.ndarray:
    """``n`` valid query indices drawn without replacement with ``seed`` (sorted; all when fewer)."""
    valid = valid_queries(q_pids, q_camids, g_pids, g_camids)
    if not len(valid):
        raise UserError("no query has a gallery image of its identity from another camera: nothing to rank")
    if n >= len(valid):
        return valid
    return np.sort(np.random.default_rng(seed).choice(valid, size=n, replace=False))


def query_distances(qf: torch.Tensor, gf: torch.Tensor, queries: np.ndarray, metric: str = "euclidean",
                    rerank: bool = False, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """(len(queries), G) distances as evaluation computes them (re-ranking uses every query, as evaluation does)."""
    import torch

    from reid_train.evaluation import compute_distance_matrix, re_ranking

    idx = torch.as_tensor(np.asarray(queries, dtype=np.int64))
    if rerank:
        qg = compute_distance_matrix(qf, gf, metric)
        qq = compute_distance_matrix(qf, qf, metric)
        gg = compute_distance_matrix(gf, gf, metric)
        dist = re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lambda_value)
        dist = dist.cpu().numpy() if isinstance(dist, torch.Tensor) else np.asarray(dist)
        return np.asarray(dist[idx.numpy()], dtype=np.float64)
    return compute_distance_matrix(qf[idx.to(qf.device)], gf, metric).double().cpu().numpy()


def rank_gallery(dist: np.ndarray, queries: Sequence[int], q_pids: np.ndarray, q_camids: np.ndarray,
                 g_pids: np.ndarray, g_camids: np.ndarray, topk: int = 5) -> list[QueryRanking]:
    """Rank the gallery for each query (row ``i`` of ``dist`` is query ``queries[i]``).

    Gallery images with the query's pid and camera are removed; the rest is sorted by
    distance with a stable sort (ties by gallery order). AP is evaluation's
    non-interpolated average precision over the full ranking (NaN without a match).
    """
    dist = np.asarray(dist, dtype=np.float64)
    g_pids, g_camids = np.asarray(g_pids), np.asarray(g_camids)
    out = []
    for row, q in zip(dist, queries):
        qp, qc = int(q_pids[q]), int(q_camids[q])
        keep = np.flatnonzero(~((g_pids == qp) & (g_camids == qc)))
        order = keep[np.argsort(row[keep], kind="stable")]
        hits = g_pids[order] == qp
        n_hits = int(hits.sum())
        if n_hits:
            ranks = np.flatnonzero(hits) + 1.0
            ap = float(np.mean(np.arange(1, n_hits + 1) / ranks))
        else:
            ap = float("nan")
        top = order[:topk]
        out.append(QueryRanking(int(q), top, row[top], hits[:topk].copy(), n_hits, ap))
    return out


# --------------------------------------------------------------------------- pictures


@dataclass(frozen=True)
class RankingLayout:
    """Where the tiles of one query's picture lie (pixels; sizes are (height, width))."""

    panel_hw: tuple[int, int]
    topk: int
    maps: int = 0
    legend: bool = True
    heading: int = 0  # lines of the heading above the title

    @property
    def tile_hw(self) -> tuple[int, int]:
        """A framed, captioned tile."""
        return (self.panel_hw[0] + 2 * BORDER + CAPTION_LINES * visual.CAPTION_HEIGHT,
                self.panel_hw[1] + 2 * BORDER)

    @property
    def header_height(self) -> int:
        return TITLE_HEIGHT * (1 + self.heading) + (LEGEND_HEIGHT if self.legend else 0)

    def tile_origin(self, kind: str, index: int = 0) -> tuple[int, int]:
        """(y, x) of the top-left corner of a tile's frame: ``kind`` query, gallery or map."""
        tw = self.tile_hw[1]
        x = MARGIN
        if kind in ("gallery", "map"):
            x += tw + GROUP_GAP
        if kind == "map":
            x += self.topk * tw + max(self.topk - 1, 0) * TILE_GAP + GROUP_GAP
        elif kind != "gallery" and kind != "query":
            raise ValueError(f"unknown tile kind {kind!r}")
        return self.header_height + MARGIN, x + index * (tw + TILE_GAP)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the picture, as PIL reports it."""
        th, tw = self.tile_hw
        if self.maps:
            right = self.tile_origin("map", self.maps - 1)[1] + tw
        else:
            right = self.tile_origin("gallery", max(self.topk - 1, 0))[1] + (tw if self.topk else 0)
        return right + MARGIN, self.header_height + 2 * MARGIN + th


#: Contour colours of MGRAN's region inputs (channel 0, the pedestrian mask, is not outlined).
REGION_INPUT_COLORS: dict[str, visual.Color] = {
    "head": visual.HEAD_COLOR, "upper": visual.UPPER_COLOR, "lower": visual.BOTTOM_COLOR,
    "torso": visual.UPPER_COLOR, "arms": (0, 220, 160), "legs": visual.BOTTOM_COLOR,
}


def _legend_items(with_maps: bool, regions: Sequence[str] = ()) -> list[tuple[str, visual.Color]]:
    items = [("query", QUERY_FRAME), ("correct match", visual.GOOD), ("wrong", visual.BAD)]
    if with_maps:
        items += [("whole att.", visual.WHOLE_COLOR), ("upper att.", visual.UPPER_COLOR), ("bottom att.", visual.BOTTOM_COLOR)]
    items += [(f"{name} region", REGION_INPUT_COLORS[name]) for name in regions]
    return items


def wrap_heading(text: str, width: int) -> list[str]:
    """``text`` cut at its '; ' separators into as few lines as fit ``width`` pixels (a piece too long is shortened)."""
    lines: list[str] = []
    for piece in text.split("; "):
        joined = f"{lines[-1]}; {piece}" if lines else piece
        if lines and visual.text_width(joined) <= width - 8:
            lines[-1] = joined
        else:
            lines.append(piece)
    return lines


def _title(text: str, width: int) -> np.ndarray:
    strip = np.zeros((0, width, 3), dtype=np.uint8)
    return visual.caption(strip, text, visual.TEXT_COLOR, TITLE_HEIGHT)


def _tile(image: np.ndarray, panel_hw: tuple[int, int], frame: visual.Color, lines: Sequence[str],
          regions: Mapping[str, np.ndarray] | None = None, scale: np.ndarray | None = None) -> np.ndarray:
    """A framed, captioned tile; ``regions`` (name -> 0/1 map, any size) drawn as contours;
    ``scale`` (a colour bar strip) in place of the last caption line."""
    shown = visual.resize_image(image, panel_hw, "bilinear")
    for name, m in (regions or {}).items():
        shown = visual.outline(shown, m, REGION_INPUT_COLORS[name], width=2, halo=None)
    tile = visual.border(shown, frame, BORDER)
    for i in range(CAPTION_LINES - (scale is not None)):
        tile = visual.caption(tile, lines[i] if i < len(lines) else "")
    if scale is not None:
        tile = np.concatenate([tile, scale], axis=0)
    return tile


def _map_color(name: str) -> visual.Color:
    from reid_train.models import ATT_MAP_MASK

    mask = ATT_MAP_MASK.get(name, "whole")
    return visual.MASK_COLORS[("whole", "upper", "bottom").index(mask)]


def render_ranking(
    query_image: np.ndarray,
    gallery_images: Sequence[np.ndarray],
    correct: Sequence[bool],
    *,
    panel_hw: tuple[int, int] = (256, 85),
    query_lines: Sequence[str] = ("query",),
    gallery_lines: Sequence[Sequence[str]] | None = None,
    att_maps: Mapping[str, np.ndarray] | None = None,
    title: str = "",
    legend: bool = True,
    heading: str = "",
    query_regions: Mapping[str, np.ndarray] | None = None,
    gallery_regions: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> np.ndarray:
    """One query's picture (HxWx3 uint8) laid out as :class:`RankingLayout` says.

    ``correct[i]`` frames gallery image ``i`` green (True) or red; ``att_maps`` (name ->
    2-D map, any size) are overlaid on the query after a min-max stretch, each over its colour
    scale; ``heading`` (what the picture shows) is a line above ``title``; ``query_regions`` /
    ``gallery_regions`` (name -> 0/1 map: MGRAN's region inputs) are drawn as contours.
    """
    if len(correct) != len(gallery_images):
        raise ValueError(f"{len(gallery_images)} gallery images but {len(correct)} correct flags")
    maps = dict(att_maps or {})
    width = RankingLayout(tuple(panel_hw), len(gallery_images), len(maps), legend).size[0]  # type: ignore[arg-type]
    heading_lines = wrap_heading(heading, width) if heading else []
    layout = RankingLayout(tuple(panel_hw), len(gallery_images), len(maps), legend, len(heading_lines))  # type: ignore[arg-type]
    width, height = layout.size
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[:] = np.asarray(visual.SHEET_BG, dtype=np.uint8)
    y = 0
    for text in heading_lines + [title]:
        canvas[y:y + TITLE_HEIGHT] = _title(text, width)
        y += TITLE_HEIGHT
    if legend:
        canvas[y:y + LEGEND_HEIGHT] = visual.legend(_legend_items(bool(maps), list(query_regions or ())), width, LEGEND_HEIGHT)

    def paste(tile: np.ndarray, yx: tuple[int, int]) -> None:
        canvas[yx[0]:yx[0] + tile.shape[0], yx[1]:yx[1] + tile.shape[1]] = tile

    paste(_tile(query_image, layout.panel_hw, QUERY_FRAME, query_lines, query_regions), layout.tile_origin("query"))
    for i, (img, ok) in enumerate(zip(gallery_images, correct)):
        lines = gallery_lines[i] if gallery_lines is not None else (f"#{i + 1}",)
        regions = gallery_regions[i] if gallery_regions is not None else None
        paste(_tile(img, layout.panel_hw, visual.GOOD if ok else visual.BAD, lines, regions), layout.tile_origin("gallery", i))
    base = visual.resize_image(query_image, layout.panel_hw, "bilinear")
    for j, (name, m) in enumerate(maps.items()):
        m = np.asarray(m, dtype=np.float32)
        lo, hi = float(m.min()), float(m.max())
        stretched = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
        shown = visual.overlay(base, stretched, _map_color(name), MAP_ALPHA, mode="bilinear")
        scale = visual.colour_bar(layout.tile_hw[1], visual.CAPTION_HEIGHT, _map_color(name), lo, hi, MAP_ALPHA)
        tile = _tile(shown, layout.panel_hw, visual.SHEET_BG, (name.replace("_", " "),), scale=scale)
        paste(tile, layout.tile_origin("map", j))
    return canvas


def attention_maps(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> list[dict[str, np.ndarray]]:
    """Per image, the spatial attention maps (:data:`MAP_ORDER`) of an MMGA-family model, or the
    self-attention map of an FSA model with MHSA (the attention each Conv5_x position receives in
    the last MHSA block, averaged over heads and queries); [] without attention."""
    import torch

    from reid_train.models import FSA, MMGA

    if not ((isinstance(model, MMGA) and model.spec.attention) or (isinstance(model, FSA) and model.spec.mhsa)):
        return []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            maps = model.forward_features(images.to(device))["att_maps"]
    finally:
        model.train(was_training)
    names = [k for k in MAP_ORDER if k in maps]
    arrs = {k: maps[k].float().cpu().numpy() for k in names}
    return [{k: arrs[k][i] for k in names} for i in range(images.shape[0])]


# --------------------------------------------------------------------------- command


def _load(checkpoint: Path, overrides: Sequence[str]):
    from reid_train.inference import load_model

    return load_model(checkpoint, overrides=overrides, command="visualize")


def _stem(path: str) -> str:
    return Path(path).stem


def set_folders(names: Sequence[str]) -> list[str]:
    """One sub-folder name per test set: its dataset name, numbered when a name repeats."""
    return [name if names.count(name) == 1 else f"{i}_{name}" for i, name in enumerate(names)]


def id_text(pid: int, camid: int) -> str:
    """'pid P cC': the dataset's original pid and the 1-based camera, as in Market/Duke file names."""
    return f"pid {pid} c{camid + 1}"


def heading_text(cfg: Any, epoch: int, checkpoint: Path, test_set: str, train_set: str | None = None) -> str:
    """What a picture shows: model, backbone, checkpoint epoch, train set (default ``cfg.data.dataset``),
    test set and protocol."""
    t = cfg.test
    protocol = f"{t.metric}, {'flip-averaged' if t.flip else 'no flip'}, {'re-ranked' if t.rerank else 'no re-ranking'}"
    return (f"{cfg.model.name} ({cfg.model.backbone}), epoch {epoch} of {checkpoint.name}, trained on {train_set or cfg.data.dataset}; "
            f"test: {test_set}; {protocol}")


def region_contours(item: Mapping[str, Any], names: Sequence[str], kind: str = "regions") -> dict[str, np.ndarray]:
    """name -> 0/1 map of the region inputs an MGRAN item carries (its ``region_codes`` of
    ``kind``, expanded; channel 0, the whole pedestrian, is left out); {} for items without them."""
    from reid_train.data.regions import expand_region_codes

    codes = item.get("region_codes")
    if codes is None:
        return {}
    arr = np.asarray(expand_region_codes(codes, kind))
    return {name: arr[k].astype(np.float32) for k, name in enumerate(names) if k > 0 and name in REGION_INPUT_COLORS}


def picture_panel(cfg: Any, n: int, topk: int, tile_height: int) -> tuple[int, int]:
    """The (height, width) of an image panel; options whose ``index.png`` (n rows of topk + 1 tiles
    and the attention maps) would exceed :data:`reid_masks.visual.MAX_PICTURE_PIXELS` are a UserError."""
    panel_hw = (int(tile_height), max(8, int(round(tile_height * cfg.data.width / cfg.data.height))))
    width, height = RankingLayout(panel_hw, topk, len(MAP_ORDER), legend=False).size  # with the most maps
    if width * (height + MARGIN) * n > visual.MAX_PICTURE_PIXELS:
        raise UserError(f"--n {n} --topk {topk} --tile-height {tile_height}: index.png would be up to {width}x{(height + MARGIN) * n} "
                        f"pixels, at most {visual.MAX_PICTURE_PIXELS // 10**6} million; lower --n, --topk or --tile-height")
    return panel_hw


def visualize(checkpoint: str | Path, out_dir: str | Path, n: int = 8, topk: int = 5, seed: int = 0,
              overrides: Sequence[str] = (), tile_height: int = 256) -> list[dict[str, Any]]:
    """Pictures of the checkpoint's test sets: the evaluation's sets (``data.test_sets``, each in
    ``out_dir/<dataset>/``, else the dataset's query/gallery in ``out_dir``); returns each set's rankings.json."""
    from reid_train.engine.test_sets import build_test_sets, check_test_set_caches

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    loaded = _load(checkpoint, overrides)
    cfg = loaded.config
    picture_panel(cfg, n, topk, tile_height)  # refused before any feature is extracted
    sets = build_test_sets(cfg, None if cfg.data.test_sets else loaded.build_dataset())
    check_test_set_caches(sets, loaded.model)
    folders = set_folders([s.dataset.name for s in sets]) if cfg.data.test_sets else [""]
    return [visualize_set(loaded, s.dataset, s.cfg, out_dir / folder, n, topk, seed, tile_height, s.cache_key)
            for s, folder in zip(sets, folders)]


def visualize_set(loaded: Any, dataset: Any, cfg: Any, out_dir: Path, n: int = 8, topk: int = 5, seed: int = 0,
                  tile_height: int = 256, cache_key: str = "data.cache") -> dict[str, Any]:
    """Write one PNG per picked query of ``dataset``, ``index.png`` and ``rankings.json`` to ``out_dir``; returns the JSON."""
    import torch

    from reid_masks.imageio import read_image
    from reid_train.data import ReIDImageDataset, build_transforms
    from reid_masks.fileio import write_json_atomic
    from reid_train.engine.evaluator import build_test_loader, extract_features

    checkpoint, model, device, amp, epoch = loaded.checkpoint, loaded.model, loaded.device, loaded.amp_dtype, loaded.epoch
    train_set = loaded.train_config.data.dataset
    panel_hw = picture_panel(cfg, n, topk, tile_height)
    cuda = device.type == "cuda"
    feats, loaders = {}, {}
    for split in ("query", "gallery"):
        if not dataset.split(split):
            raise UserError(f"{dataset.name} at {dataset.root}: the {split} split is empty")
        loader = build_test_loader(dataset, split, cfg, pin_memory=cuda, region_masks=getattr(model, "region_masks", None),
                                   cache_key=cache_key)
        loaders[split] = loader
        feats[split] = extract_features(model, loader, device, cfg.test.flip, amp, progress=f"{split} features")
    region_names = tuple(getattr(model, "inputs", ())) if getattr(model, "region_masks", None) else ()
    (qf, qp, qc), (gf, gp, gc) = feats["query"], feats["gallery"]
    queries = select_queries(qp, qc, gp, gc, n, seed)
    t = cfg.test
    dist = query_distances(qf, gf, queries, t.metric, t.rerank, t.k1, t.k2, t.lambda_value)
    rankings = rank_gallery(dist, queries, qp, qc, gp, gc, topk)

    _, test_tf = build_transforms((cfg.data.height, cfg.data.width), mean=cfg.data.mean, std=cfg.data.std)
    query_set = ReIDImageDataset(dataset, "query", test_tf)
    att: list[dict[str, np.ndarray]] = []
    for start in range(0, len(queries), cfg.test.batch_size):
        chunk = queries[start:start + cfg.test.batch_size]
        att += attention_maps(model, test_tf.normalize(torch.stack([query_set[int(q)]["image"] for q in chunk]).to(device)), device)

    q_recs, g_recs = dataset.query, dataset.gallery
    heading = heading_text(cfg, epoch, checkpoint, f"{dataset.name} query/gallery", train_set)
    rows, entries = [], []
    for i, r in enumerate(rankings):
        qrec = q_recs[r.query]
        top = [g_recs[int(g)] for g in r.gallery]
        title = (f"query {i + 1}/{len(rankings)}: {_stem(qrec.path)}  {id_text(qrec.pid, qrec.camid)}  "
                 f"rank-1 {'correct' if r.correct[:1].any() else 'wrong'}  AP {100 * r.ap:.1f}%  "
                 f"({r.num_matches} gallery matches)")
        kwargs: dict[str, Any] = dict(
            panel_hw=panel_hw, query_lines=("query", id_text(qrec.pid, qrec.camid)),
            gallery_lines=[(f"#{k + 1} d {d:.3f}", id_text(g.pid, g.camid)) for k, (g, d) in enumerate(zip(top, r.distances))],
            att_maps=att[i] if att else None, title=title,
        )
        if region_names:
            qs, gs = loaders["query"].dataset, loaders["gallery"].dataset
            kwargs["query_regions"] = region_contours(qs[r.query], region_names, qs.region_masks.kind)
            kwargs["gallery_regions"] = [region_contours(gs[int(g)], region_names, gs.region_masks.kind) for g in r.gallery]
        q_img = read_image(dataset.abspath(qrec))
        g_imgs = [read_image(dataset.abspath(g)) for g in top]
        name = f"query_{i + 1:03d}_{_stem(qrec.path)}.png"
        visual.save_png(render_ranking(q_img, g_imgs, r.correct.tolist(), heading=heading, **kwargs), out_dir / name)
        rows.append(render_ranking(q_img, g_imgs, r.correct.tolist(), legend=False, **kwargs))
        entries.append({
            "file": name, "index": r.query, "path": qrec.path, "pid": qrec.pid, "camid": qrec.camid,
            "ap": r.ap, "num_matches": r.num_matches,
            "top": [{"rank": k + 1, "index": int(g), "path": rec.path, "pid": rec.pid, "camid": rec.camid,
                     "distance": float(d), "correct": bool(ok)}
                    for k, (g, rec, d, ok) in enumerate(zip(r.gallery, top, r.distances, r.correct))],
        })
    sheet = np.asarray(visual.tile_grid(rows, cols=1, gap=MARGIN))
    legend_strip = visual.legend(_legend_items(bool(att), [n for n in region_names[1:] if n in REGION_INPUT_COLORS]),
                                 sheet.shape[1], LEGEND_HEIGHT)
    headings = [_title(line, sheet.shape[1]) for line in wrap_heading(heading, sheet.shape[1])]
    visual.save_png(np.concatenate([*headings, legend_strip, sheet], axis=0), out_dir / "index.png")
    result = {
        "heading": heading, "checkpoint": str(checkpoint), "epoch": epoch, "model": cfg.model.name, "backbone": cfg.model.backbone,
        "train_dataset": train_set, "dataset": dataset.name, "root": str(dataset.root), "out": str(out_dir),
        "metric": t.metric, "rerank": t.rerank, "flip": t.flip, "topk": topk, "seed": seed,
        "num_query": int(len(qp)), "num_gallery": int(len(gp)), "attention_maps": list(att[0]) if att else [],
        "queries": entries,
    }
    write_json_atomic(out_dir / "rankings.json", result)
    return result


@click.command("visualize")
@click.option("--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path), help="checkpoint.pth of a fit run.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for the PNGs and rankings.json.")
@click.option("--n", "n", default=8, show_default=True, type=click.IntRange(1, 10000), help="Queries to show.")
@click.option("--topk", default=5, show_default=True, type=click.IntRange(1, 50), help="Gallery images per query.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Picks the queries.")
@click.option("--tile-height", default=256, show_default=True, type=click.IntRange(32, 2048), help="Image height in the pictures (pixels).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a key visualize reads, e.g. --set test.rerank=true, --set data.dataset=dukemtmc --set data.root=..., "
                   "--set 'data.test_sets=[...]' (repeatable; keys visualize does not read are refused).")
def visualize_command(checkpoint: Path, out_dir: Path, n: int, topk: int, seed: int, tile_height: int, overrides: tuple[str, ...]) -> None:
    """Ranked-retrieval pictures (top-k, green = correct, red = wrong) and attention maps of sampled queries.

    With data.test_sets, the pictures of each set go to OUT/<dataset>/, as evaluate scores each set.
    """
    from reid_masks.fileio import check_writable
    from reid_train.config import check_overrides

    check_overrides(overrides, "visualize")  # before torch is imported: a typo is refused at once
    check_writable(out_dir, "--out", folder=True)
    for result in visualize(checkpoint, out_dir, n, topk, seed, overrides, tile_height):
        qs = result["queries"]
        hits = sum(q["top"][0]["correct"] for q in qs if q["top"])
        click.echo(f"wrote {len(qs)} query pictures, index.png and rankings.json to {result['out']} "
                   f"({result['dataset']}: rank-1 correct for {hits} of {len(qs)} shown; {result['metric']}, "
                   f"{'flip-averaged' if result['flip'] else 'no flip'}, {'re-ranked' if result['rerank'] else 'no re-ranking'}"
                   f"{'; attention maps ' + ', '.join(result['attention_maps']) if result['attention_maps'] else ''})")
