"""Check ``reid-masks export --format bpbreid`` against bpbreid's OWN loading code.

The script makes a synthetic Market-1501 copy with true keypoints
(:func:`reid_masks.synth.keypoint_cache.keypoint_dataset`), runs the real CLI
``reid-masks export CACHE --format bpbreid --root <tmp>/Market-1501-v15.09.15``, then reads
every image back the way bpbreid trains and tests on it, importing bpbreid's ``torchreid``
package from a checkout (nothing of bpbreid is copied here):

* bpbreid's default config (``torchreid.scripts.default_config.get_default_config``, with
  ``loss.name='part_based'``, ``masks.dir='pifpaf_maskrcnn_filtering'``) and its real
  ``torchreid.data.ImageDataManager(**imagedata_kwargs(cfg))``: the ``Market1501`` class finds
  the images and computes each ``masks_path`` with ``Dataset.infer_masks_path``; query and
  gallery samples come from ``ImageDataset.getitem`` (``read_image``, ``read_masks``, the test
  transform from ``build_transforms``: Resize, Normalize, ToTensorV2, PermuteMasksDim, the
  grouping, AddBackgroundMask(threshold 0.5, softmax 15), ResizeMasks(/4)). Train images go
  through ``getitem(i, 'train')`` (random crop + erasing: shape and range checked) and, for the
  placement checks, through the same three calls ``getitem`` makes with the test transform.
* groupings ``eight`` (the default config's) and ``five_v`` (the published Market-1501
  config's) go through the data manager; ``none`` (all 36 fields, bpbreid's data manager would
  not load the files for it) through ``build_transforms(..., masks_preprocess='none')`` with the
  same arguments the data manager passes, on ``read_masks`` of the same paths.

Checks per image and grouping: the file is where bpbreid looks and nothing else was written;
``read_masks`` gives ``(H', W', 36)`` float32 in [0, 1] with a grid that covers the image the
right way round (stride 8); the mask tensor is ``(parts + 1, H/4, W/4)``, in [0, 1], summing to
1 per pixel; each part whose keypoints are confident (score >= 0.3 in the cache) has its mass
centred within 1.6 field cells (rows) / 1.25 field cells (columns) of the mean of those
keypoints; every pair of parts whose expected rows differ by at least two field cells is in that
vertical order; every left/right pair of parts (names with left and right swapped) whose
expected columns differ by at least half a field cell is in the keypoints' left-right order.
(Centroids, not peaks: the export zeroes cells outside the person, which can pull a part's
centroid a cell inwards, so an ear's centroid need not be nearer its own keypoint than the other
ear's; the order still holds.)
Negative controls (vertical flip, horizontal flip, transposed grid, left/right channels swapped,
joints-before-keypoints channel order, applied to the ``read_masks`` array) must each be caught.

Needs a Python with this project and bpbreid's dependencies; a scratch venv on top of the
project's, e.g.::

    python3 -m venv /tmp/bpbvenv
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \\
        > /tmp/bpbvenv/lib/python3.11/site-packages/_base.pth
    /tmp/bpbvenv/bin/pip install albumentations==1.3.1 'opencv-python-headless<5' 'matplotlib<3.9' \\
        'setuptools<81' torchmetrics==0.10.3 yacs tabulate pandas tensorboard wandb monai deepdiff tqdm
    mkdir -p /tmp/bpbreid && git -C <bpbreid mirror or clone> archive HEAD torchreid | tar -x -C /tmp/bpbreid
    /tmp/bpbvenv/bin/python benchmarks/check_bpbreid_loader.py --bpbreid /tmp/bpbreid

Prints a table per grouping and a final PASS/FAIL line; exits 1 on failure.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import shutil
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reid_masks.cache import MaskCache
from reid_masks.synth.keypoint_cache import keypoint_dataset

DATASET_DIR = "Market-1501-v15.09.15"  # bpbreid's Market1501.dataset_dir
MASKS_DIR = "pifpaf_maskrcnn_filtering"
MIN_SCORE = 0.3  # a confident keypoint (the export's threshold, and PifPaf's usual one)
STRIDE = 8
TOL_ROWS_CELLS, TOL_COLS_CELLS = 1.6, 1.25  # placement tolerance, in field cells
ORDER_MIN_CELLS, LR_MIN_CELLS = 2.0, 0.5  # pairs closer than this (expected) are not compared: arm and torso both span
# the shoulders, and their centroids sit within a cell of each other whichever way the keypoints lean


def quiet():
    """bpbreid prints a lot while it builds things."""
    return contextlib.redirect_stdout(io.StringIO())


def import_bpbreid(path: Path):
    sys.path.insert(0, str(path))
    warnings.filterwarnings("ignore")
    try:
        with quiet():
            import torchreid  # noqa: F401  (the whole package, as bpbreid's main.py imports it)
            from torchreid.data.masks_transforms import masks_preprocess_all
            from torchreid.data.masks_transforms.pifpaf_mask_transform import PIFPAF_KEYPOINTS, PIFPAF_PARTS
            from torchreid.data.transforms import build_transforms
            from torchreid.scripts.default_config import get_default_config, imagedata_kwargs
            from torchreid.utils import read_image, read_masks
    except ImportError as e:
        sys.exit(f"cannot import bpbreid's torchreid from {path}: {e}\n(see this script's docstring for the environment it needs)")
    if not Path(torchreid.__file__).resolve().is_relative_to(path.resolve()):
        sys.exit(f"imported torchreid from {torchreid.__file__}, not from {path}")
    return dict(torchreid=torchreid, masks_preprocess_all=masks_preprocess_all, PIFPAF_KEYPOINTS=list(PIFPAF_KEYPOINTS),
                PIFPAF_PARTS=list(PIFPAF_PARTS), build_transforms=build_transforms, get_default_config=get_default_config,
                imagedata_kwargs=imagedata_kwargs, read_image=read_image, read_masks=read_masks)


# --- expected positions from the cache's keypoints ------------------------------------------

def group_members(bp, grouping: str) -> tuple[list[str], dict[str, list[str]]]:
    """Part names (output channels 1..K) and each part's field names, from bpbreid's transform."""
    if grouping == "none":
        return list(bp["PIFPAF_PARTS"]), {p: [p] for p in bp["PIFPAF_PARTS"]}
    tf = bp["masks_preprocess_all"][grouping]()
    return list(tf.parts_names), {p: list(tf.parts_grouping[p]) for p in tf.parts_names}


def expected_position(members: list[str], kp: np.ndarray, kp_names: list[str]) -> tuple[float, float] | None:
    """(x, y) in image pixels: mean over the part's fields of the keypoint (or joint midpoint) when confident."""
    pts = []
    for f in members:
        ends = f.split("_to_") if "_to_" in f else [f]
        idx = [kp_names.index(e) for e in ends]
        if all(kp[k, 2] >= MIN_SCORE for k in idx):
            pts.append(kp[idx, :2].mean(axis=0))
    return tuple(np.mean(pts, axis=0)) if pts else None


def mirror(name: str) -> str:
    return name.replace("left", "\0").replace("right", "left").replace("\0", "right")


# --- per-image checks -----------------------------------------------------------------------

@dataclass
class Tally:
    images: int = 0
    file_ok: int = 0
    raw_ok: int = 0
    shape_ok: int = 0
    range_ok: int = 0
    place: list[int] = field(default_factory=lambda: [0, 0])  # passed, compared
    order: list[int] = field(default_factory=lambda: [0, 0])
    lr: list[int] = field(default_factory=lambda: [0, 0])
    train_ok: list[int] = field(default_factory=lambda: [0, 0])
    first_errors: list[str] = field(default_factory=list)

    def err(self, msg: str) -> None:
        if len(self.first_errors) < 6:
            self.first_errors.append(msg)

    def failed(self) -> bool:
        full = [self.file_ok, self.raw_ok, self.shape_ok, self.range_ok]
        pairs = [self.place, self.order, self.lr, self.train_ok]
        return any(v != self.images for v in full) or any(p != c for p, c in pairs) or self.place[1] == 0

    def misses(self) -> int:
        return sum(c - p for p, c in (self.place, self.order, self.lr))


def check_raw(raw: np.ndarray, hw: tuple[int, int]) -> str | None:
    """``read_masks`` output: (H', W', 36) float32 in [0, 1], a stride-8 grid covering the image."""
    h, w = hw
    if raw.ndim != 3 or raw.shape[2] != 36 or raw.dtype != np.float32:
        return f"read_masks gave {raw.shape} {raw.dtype}, want (H', W', 36) float32"
    fh, fw = raw.shape[:2]
    for n, size, axis in ((fh, h, "rows"), (fw, w, "columns")):
        if not (size - 1 <= (n - 1) * STRIDE < size - 1 + 2 * STRIDE):
            return f"{n} field {axis} do not cover {size} image {axis} at stride {STRIDE} (transposed?)"
    if not (np.isfinite(raw).all() and raw.min() >= 0 and raw.max() <= 1):
        return f"fields outside [0, 1]: {raw.min()}..{raw.max()}"
    return None


def check_tensor(mask, image, parts: int, hw_out: tuple[int, int], img_hw: tuple[int, int]) -> tuple[str | None, str | None]:
    """(shape error, range error) of a transformed sample."""
    m = mask.numpy()
    if tuple(m.shape) != (parts + 1, *hw_out) or tuple(image.shape) != (3, *img_hw):
        return f"mask {tuple(m.shape)} / image {tuple(image.shape)}, want ({parts + 1}, {hw_out[0]}, {hw_out[1]}) / (3, {img_hw[0]}, {img_hw[1]})", None
    if not np.isfinite(m).all() or m.min() < 0 or m.max() > 1 + 1e-5:
        return None, f"mask values {m.min()}..{m.max()}"
    s = m.sum(axis=0)
    if np.abs(s - 1).max() > 1e-4:
        return None, f"channels sum to {s.min()}..{s.max()} per pixel, not 1"
    return None, None


def check_places(m: np.ndarray, names: list[str], members: dict[str, list[str]], kp: np.ndarray, hw: tuple[int, int],
                 kp_names: list[str], t: Tally, tag: str) -> None:
    """Placement, vertical order and left/right checks of a (K+1, mh, mw) mask against the keypoints."""
    h, w = hw
    _, mh, mw = m.shape
    cell_r, cell_c = STRIDE * mh / h, STRIDE * mw / w  # one field cell in output rows / columns
    ys, xs = np.mgrid[0:mh, 0:mw]
    exp, got = {}, {}
    for j, name in enumerate(names):
        e = expected_position(members[name], kp, kp_names)
        if e is None:
            continue
        exp[name] = ((e[1] + 0.5) * mh / h - 0.5, (e[0] + 0.5) * mw / w - 0.5)  # (row, col) in the output
        ch = m[j + 1]
        mass = ch.sum()
        t.place[1] += 1
        if mass < 1e-3:
            t.err(f"{tag}: {name} has no mass though its keypoints are confident")
            continue
        got[name] = ((ch * ys).sum() / mass, (ch * xs).sum() / mass)
        dr, dc = got[name][0] - exp[name][0], got[name][1] - exp[name][1]
        if abs(dr) <= TOL_ROWS_CELLS * cell_r and abs(dc) <= TOL_COLS_CELLS * cell_c:
            t.place[0] += 1
        else:
            t.err(f"{tag}: {name} centred at row {got[name][0]:.1f} col {got[name][1]:.1f}, keypoints at {exp[name][0]:.1f}, {exp[name][1]:.1f}")
    done = [n for n in names if n in got]
    for i, a in enumerate(done):
        for b in done[i + 1:]:
            de = exp[b][0] - exp[a][0]
            if abs(de) >= ORDER_MIN_CELLS * cell_r:
                t.order[1] += 1
                if np.sign(got[b][0] - got[a][0]) == np.sign(de):
                    t.order[0] += 1
                else:
                    t.err(f"{tag}: {a} / {b} in the wrong vertical order (rows {got[a][0]:.1f}, {got[b][0]:.1f}; keypoints {exp[a][0]:.1f}, {exp[b][0]:.1f})")
        b = mirror(a)
        if "left" in a and b != a and b in got and abs(exp[a][1] - exp[b][1]) >= LR_MIN_CELLS * cell_c:
            t.lr[1] += 1
            if np.sign(got[a][1] - got[b][1]) == np.sign(exp[a][1] - exp[b][1]):  # each on its own keypoints' side of the other
                t.lr[0] += 1
            else:
                t.err(f"{tag}: {a} / {b} on the wrong sides (cols {got[a][1]:.1f}, {got[b][1]:.1f}; keypoints {exp[a][1]:.1f}, {exp[b][1]:.1f})")


# --- the run --------------------------------------------------------------------------------

def make_data(tmp: Path, n: int, seed: int) -> tuple[Path, Path, dict[str, tuple[np.ndarray, tuple[int, int]]]]:
    root = tmp / DATASET_DIR
    cache = keypoint_dataset(root, n=n, seed=seed)
    cmd = [sys.executable, "-m", "reid_masks.cli", "export", str(cache), "--format", "bpbreid", "--root", str(root)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    print(f"$ reid-masks export {cache.name} --format bpbreid --root {root}\n  " + (r.stdout.strip().splitlines() or ["(no output)"])[0])
    if r.returncode != 0:
        sys.exit(f"export failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    truth = {}
    with MaskCache(cache) as mc:
        for split in mc.splits:
            rows = mc.rows(split)
            for path, kp, hw in zip(rows["path"], rows["keypoints"], rows["image_size"]):
                truth[os.path.normpath(root / str(path))] = (np.asarray(kp, np.float64), (int(hw[0]), int(hw[1])))
    return root, cache, truth


def data_manager(bp, tmp: Path, grouping: str, height: int, width: int):
    cfg = bp["get_default_config"]()
    cfg.data.root = str(tmp)
    cfg.data.sources = cfg.data.targets = ["market1501"]
    cfg.data.height, cfg.data.width = height, width
    cfg.data.workers = 0
    cfg.use_gpu = False
    cfg.loss.name = "part_based"  # -> use_masks
    cfg.model.bpbreid.masks.dir = MASKS_DIR
    cfg.model.bpbreid.masks.preprocess = grouping
    # bpbreid caches datasets by name in a module global, with the first data manager's transforms.
    vars(bp["torchreid"].data.datasets)["__datasets_cache"].clear()
    with quiet():
        dm = bp["torchreid"].data.ImageDataManager(**bp["imagedata_kwargs"](cfg))
    return cfg, dm


def run_grouping(bp, tmp: Path, root: Path, grouping: str, truth, height: int, width: int, corrupt=None) -> Tally:
    """Checks for one grouping; ``corrupt`` (raw HxWx36 -> array) makes a negative control."""
    t = Tally()
    names, members = group_members(bp, grouping)
    kp_names = bp["PIFPAF_KEYPOINTS"]
    cfg, dm = data_manager(bp, tmp, "eight" if grouping == "none" else grouping, height, width)
    train_ds = dm.train_loader.dataset
    test_ds = {m: dm.test_loader["market1501"][m].dataset for m in ("query", "gallery")}
    tf_te = train_ds.transform_te
    if grouping == "none" or corrupt is not None:
        with quiet():
            _, tf_te = bp["build_transforms"](
                cfg.data.height, cfg.data.width, cfg, transforms=cfg.data.transforms, norm_mean=cfg.data.norm_mean,
                norm_std=cfg.data.norm_std, remove_background_mask=False, masks_preprocess=grouping,
                softmax_weight=cfg.model.bpbreid.masks.softmax_weight,
                background_computation_strategy=cfg.model.bpbreid.masks.background_computation_strategy,
                mask_filtering_threshold=cfg.model.bpbreid.masks.mask_filtering_threshold)
    hw_out = (int(height / 4), int(width / 4))  # build_transforms' default mask_scale (the data manager passes none)

    samples = [("train", i, s) for i, s in enumerate(train_ds.train)]
    samples += [(m, i, s) for m in ("query", "gallery") for i, s in enumerate(test_ds[m].data(m))]
    seen = {os.path.normpath(s["masks_path"]) for _, _, s in samples}
    written = {os.path.normpath(p) for p in root.joinpath("masks", MASKS_DIR).rglob("*.npy")}
    if seen != written:
        t.err(f"files bpbreid does not read: {sorted(written - seen)[:3]}; paths it reads that were not written: {sorted(seen - written)[:3]}")
    for mode, i, s in samples:
        t.images += 1
        img_path = os.path.normpath(s["img_path"])
        tag = f"{grouping}:{Path(img_path).parent.name}/{Path(img_path).name}"
        kp, hw = truth[img_path]
        if not os.path.isfile(s["masks_path"]) or os.path.normpath(s["masks_path"]) not in written:
            t.err(f"{tag}: no file at bpbreid's masks_path {s['masks_path']}")
            continue
        t.file_ok += 1
        raw = bp["read_masks"](s["masks_path"])
        arr = raw if corrupt is None else np.ascontiguousarray(corrupt(raw))
        why = check_raw(arr, hw)
        if why:
            t.err(f"{tag}: {why}")
        else:
            t.raw_ok += 1
        if corrupt is None and mode != "train" and grouping != "none":
            out = test_ds[mode].getitem(i, mode)  # bpbreid's own sample path, end to end
        else:  # what getitem does, with the test transform
            out = tf_te(image=bp["read_image"](s["img_path"]), mask=arr)
        shape_err, range_err = check_tensor(out["mask"], out["image"], len(names), hw_out, (height, width))
        if shape_err:
            t.err(f"{tag}: {shape_err}")
            continue
        t.shape_ok += 1
        if range_err:
            t.err(f"{tag}: {range_err}")
        else:
            t.range_ok += 1
        check_places(out["mask"].numpy(), names, members, kp, hw, kp_names, t, tag)
        if mode == "train" and corrupt is None and grouping != "none":
            tr = train_ds.getitem(i, "train")  # the training transform (random crop, random erasing)
            t.train_ok[1] += 1
            s_err, r_err = check_tensor(tr["mask"], tr["image"], len(names), hw_out, (height, width))
            if s_err or r_err:
                t.err(f"{tag} (train transform): {s_err or r_err}")
            else:
                t.train_ok[0] += 1
    return t


CONTROLS = {
    "vertical flip": lambda r: r[::-1],
    "horizontal flip": lambda r: r[:, ::-1],
    "transposed grid": lambda r: r.transpose(1, 0, 2),
    "left/right swapped": None,  # filled in main (needs bpbreid's names)
    "joints before keypoints": lambda r: r[..., list(range(17, 36)) + list(range(17))],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bpbreid", type=Path, required=True, help="bpbreid checkout (the folder holding torchreid/)")
    parser.add_argument("--n", type=int, default=48, help="synthetic crops (half train, a quarter query, a quarter gallery)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--groupings", nargs="+", default=["eight", "five_v", "none"])
    parser.add_argument("--no-controls", action="store_true", help="skip the negative controls")
    parser.add_argument("--keep", action="store_true", help="keep the temporary dataset and print where it is")
    args = parser.parse_args()

    bp = import_bpbreid(args.bpbreid)
    parts = bp["PIFPAF_PARTS"]
    swap = [parts.index(mirror(p)) if mirror(p) in parts else i for i, p in enumerate(parts)]
    CONTROLS["left/right swapped"] = lambda r: r[..., swap]
    random.seed(args.seed)
    np.random.seed(args.seed)
    bp["torchreid"].utils.set_random_seed(args.seed)  # the training transform's random crop / erasing

    tmp = Path(tempfile.mkdtemp(prefix="bpbreid_check_"))
    ok = True
    try:
        root, _, truth = make_data(tmp, args.n, args.seed)
        print(f"bpbreid torchreid from {Path(bp['torchreid'].__file__).parent}")
        header = f"{'grouping':9s} {'parts':>5s} {'images':>6s} {'file@path':>9s} {'read_masks':>10s} {'shape':>6s} {'range':>6s} {'placement':>10s} {'v-order':>9s} {'left/right':>10s} {'train tf':>8s}"
        print("\n" + header + "\n" + "-" * len(header))
        tallies = {}
        for g in args.groupings:
            t = run_grouping(bp, tmp, root, g, truth, args.height, args.width)
            tallies[g] = t
            nparts = len(group_members(bp, g)[0])
            frac = lambda p: f"{p[0]}/{p[1]}"  # noqa: E731
            print(f"{g:9s} {nparts:5d} {t.images:6d} {t.file_ok:9d} {t.raw_ok:10d} {t.shape_ok:6d} {t.range_ok:6d} "
                  f"{frac(t.place):>10s} {frac(t.order):>9s} {frac(t.lr):>10s} {frac(t.train_ok) if t.train_ok[1] else '-':>8s}")
            ok &= not t.failed()
        for g, t in tallies.items():
            for e in t.first_errors:
                print(f"  ! {e}")
        if not args.no_controls:
            print("\nnegative controls (applied to read_masks' array; each must be caught):")
            for name, fn in CONTROLS.items():
                caught = []
                for g in ("eight", "none"):
                    t = run_grouping(bp, tmp, root, g, truth, args.height, args.width, corrupt=fn)
                    if t.failed():
                        caught.append(f"{g}: {t.misses()} miss(es), {t.images - t.raw_ok} bad grid(s)")
                print(f"  {name:24s} {'caught' if caught else 'NOT CAUGHT'}   ({'; '.join(caught) or 'all checks passed'})")
                ok &= bool(caught)
    finally:
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("\n" + ("PASS" if ok else "FAIL") + ": bpbreid's own loader reads reid-masks' bpbreid export" + ("" if ok else " incorrectly"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
