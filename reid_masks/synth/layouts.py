"""Write small synthetic datasets in the exact on-disk layouts of the real ones.

Every image gets a LIP parsing PNG at ``<out>/parsing/<relative path>.png`` (same stem):
the ground truth the mask stage is tested against. A ``manifest.json`` with the copy's
own counts (same schema as ``data_manifests/``) lets ``reid-masks validate`` check it.
Output is deterministic for a seed: image ``i`` is drawn from ``default_rng([seed, i])``.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from reid_masks.datasets.manifest import load_manifest
from reid_masks.errors import UserError
from reid_masks.synth.render import OCCLUDER_KINDS, Identity, camera_background, render_person, sample_identity

LAYOUTS = ("market1501", "dukemtmc", "cuhk03", "msmt17", "occluded_duke", "occluded_reid", "partial_reid", "partial_ilids")
PARSING_DIR = "parsing"
TRUTH_KEYPOINTS = "keypoints_coco.json"
SECOND_PERSON_RATE = 0.2


@dataclass(frozen=True)
class Job:
    """One image to render: ``identity`` None draws a junk crop (background only).

    ``occlusion_rate`` None keeps the renderer's default rate and kinds; a number draws
    any of :data:`OCCLUDER_KINDS` at that rate. ``keep`` < 1 crops the image (and its
    parsing) to its top ``keep`` fraction: a partial-body image as in Partial-REID.
    """

    path: str
    identity: Identity | None
    camid: int
    height: int = 128
    width: int = 64
    occlusion_rate: float | None = None
    keep: float = 1.0


def render_job(job: Job, seed: int, index: int, identities: list[Identity]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The image, its LIP parsing and the target's true COCO keypoints (None for a junk crop)."""
    rng = np.random.default_rng([seed, index])
    if job.identity is None:
        return camera_background(job.camid, job.height, job.width, rng), np.zeros((job.height, job.width), np.uint8), None
    other = identities[int(rng.integers(len(identities)))] if rng.random() < SECOND_PERSON_RATE else None
    if other == job.identity:
        other = None
    occlusion = {} if job.occlusion_rate is None else {"occlusion_rate": job.occlusion_rate, "occluders": OCCLUDER_KINDS}
    image, parsing, info = render_person(job.identity, job.camid, rng, job.height, job.width, second_person=other, **occlusion)
    keypoints = info["keypoints"].copy()
    if job.keep < 1.0:
        rows = max(1, int(round(job.height * job.keep)))
        image, parsing = image[:rows], parsing[:rows]
        keypoints[keypoints[:, 1] >= rows, 2] = 0.0  # cut off with the image: not labelled
    return image, parsing, keypoints


def write_jobs(out: Path, jobs: list[Job], seed: int, identities: list[Identity], workers: int) -> list[np.ndarray | None]:
    """Render and save every image and its parsing PNG (CUHK03 images are kept in memory by the caller).

    Returns each job's true keypoints (None for a junk crop), in job order.
    """
    from joblib import Parallel, delayed

    def work(lo: int, hi: int) -> list[np.ndarray | None]:
        kps = []
        for i in range(lo, hi):
            image, parsing, keypoints = render_job(jobs[i], seed, i, identities)
            save_pair(out, jobs[i].path, image, parsing)
            kps.append(keypoints)
        return kps

    step = max(1, -(-len(jobs) // (workers * 4)))
    parts = Parallel(n_jobs=workers)(delayed(work)(lo, min(lo + step, len(jobs))) for lo in range(0, len(jobs), step))
    return [k for part in parts for k in part]


def write_truth_keypoints(path: Path, jobs: list[Job], keypoints: list[np.ndarray | None]) -> None:
    """The rendered targets' true keypoints as a COCO keypoints file (``generate --keypoints``).

    ``file_name`` is relative to the dataset root; visibility flags as COCO (0 not
    labelled, 1 hidden by an occluder, 2 visible); junk crops get an image entry and no
    annotation; ``bbox`` is the visible keypoints' extent.
    """
    images, annotations = [], []
    for i, (job, kp) in enumerate(zip(jobs, keypoints)):
        h = max(1, int(round(job.height * job.keep))) if job.keep < 1.0 else job.height
        images.append({"id": i + 1, "file_name": job.path, "width": job.width, "height": h})
        if kp is None:
            continue
        seen = kp[kp[:, 2] > 0]
        x0, y0 = seen[:, :2].min(axis=0) if len(seen) else (0.0, 0.0)
        x1, y1 = seen[:, :2].max(axis=0) if len(seen) else (0.0, 0.0)
        annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                            "keypoints": [round(float(v), 2) for v in kp.reshape(-1)], "num_keypoints": int(len(seen)),
                            "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)]})
    doc = {"info": {"description": "reid-masks synth: true keypoints of the rendered targets"}, "images": images,
           "annotations": annotations, "categories": [{"id": 1, "name": "person", "supercategory": "person"}]}
    path.write_text(json.dumps(doc) + "\n")


def save_pair(out: Path, rel: str, image: np.ndarray, parsing: np.ndarray) -> None:
    img_path, lab_path = out / rel, (out / PARSING_DIR / rel).with_suffix(".png")
    img_path.parent.mkdir(parents=True, exist_ok=True)
    lab_path.parent.mkdir(parents=True, exist_ok=True)
    if img_path.suffix == ".jpg":
        Image.fromarray(image).save(img_path, quality=92)
    else:
        Image.fromarray(image).save(img_path)
    Image.fromarray(parsing, mode="L").save(lab_path)


def pick_pids(rng: np.random.Generator, n: int, low: int, high: int) -> list[int]:
    return sorted(int(p) for p in rng.choice(np.arange(low, high), size=n, replace=False))


def visits(rng: np.random.Generator, cameras: int, lo: int, hi: int) -> list[int]:
    """Distinct cameras (0-based) in which one identity is seen."""
    return sorted(int(c) for c in rng.choice(cameras, size=int(rng.integers(lo, hi + 1)), replace=False))


def folder_jobs(layout: str, ids: int, rng: np.random.Generator, ident: Callable[[int], Identity]) -> tuple[list[Job], dict]:
    """Market-1501 / DukeMTMC-reID: train, query and gallery folders with ids in file names."""
    market = layout == "market1501"
    cams = 6 if market else 8
    pids = pick_pids(rng, 2 * ids + (ids // 2 if not market else 0), 1, 1500)
    rng.shuffle(pids)
    train_ids, test_ids, extra_ids = sorted(pids[:ids]), sorted(pids[ids:2 * ids]), sorted(pids[2 * ids:])
    counter = iter(range(1, 10**6))

    def name(pid: int, cam: int) -> str:
        frame = next(counter) * 37
        if market:
            return f"{pid:04d}_c{cam + 1}s{int(rng.integers(1, 7))}_{frame:06d}_{int(rng.integers(0, 8)):02d}.jpg" if pid >= 0 else f"-1_c{cam + 1}s1_{frame:06d}_00.jpg"
        return f"{pid:04d}_c{cam + 1}_f{frame:07d}.jpg"

    size = (lambda: (128, 64)) if market else (lambda: (int(rng.integers(128, 177)), int(rng.integers(56, 81))))
    jobs: list[Job] = []
    counts = {"train": {}, "query": {}, "gallery": {}}

    def add(split: str, folder: str, pid: int, cam: int, identity: Identity | None) -> None:
        h, w = size()
        jobs.append(Job(f"{folder}/{name(pid, cam)}", identity, cam, h, w))
        counts[split].setdefault(pid, 0)
        counts[split][pid] += 1

    for pid in train_ids:
        for cam in visits(rng, cams, 2, 4):
            for _ in range(int(rng.integers(1, 4))):
                add("train", "bounding_box_train", pid, cam, ident(pid))
    queried = []
    for pid in test_ids:
        seen = visits(rng, cams, 2, 4)
        for cam in seen[: int(rng.integers(1, 3))]:
            add("query", "query", pid, cam, ident(pid))
            queried.append((pid, cam))
        for cam in seen:
            for _ in range(int(rng.integers(1, 4))):
                add("gallery", "bounding_box_test", pid, cam, ident(pid))
    n_gallery = len(jobs)
    if market:
        for _ in range(max(2, n_gallery // 10)):
            add("gallery", "bounding_box_test", 0, int(rng.integers(cams)), ident(-1000 - len(jobs)))
        for _ in range(max(2, n_gallery // 10)):
            add("gallery", "bounding_box_test", -1, int(rng.integers(cams)), None)
    for pid in extra_ids:
        for cam in visits(rng, cams, 1, 2):
            add("gallery", "bounding_box_test", pid, cam, ident(pid))
    if market:  # gt_bbox/: 1-3 hand-drawn-like boxes per queried (identity, camera), drawn last
        counts["multi_query"] = {}
        for pid, cam in queried:
            for _ in range(int(rng.integers(1, 4))):
                add("multi_query", "gt_bbox", pid, cam, ident(pid))
    return jobs, counts


def msmt_jobs(ids: int, rng: np.random.Generator, ident: Callable[[int], Identity]) -> tuple[list[Job], dict[str, list[str]]]:
    """MSMT17: train/<pid>/ and test/<pid>/ folders plus list files with per-folder labels."""
    lists: dict[str, list[str]] = {k: [] for k in ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")}
    jobs: list[Job] = []
    tods = ("morning", "noon", "afternoon")

    def add(folder: str, lst: str, label: int, cam: int, identity: Identity) -> None:
        n = sum(1 for j in jobs if j.path.startswith(f"{folder}/{label:04d}/"))
        fname = f"{label:04d}_{n:03d}_{cam + 1:02d}_{int(rng.integers(1, 5)):02d}{int(rng.integers(10, 29)):02d}{tods[int(rng.integers(3))]}_{int(rng.integers(0, 9999)):04d}_{int(rng.integers(0, 9))}.jpg"
        jobs.append(Job(f"{folder}/{label:04d}/{fname}", identity, cam, int(rng.integers(128, 161)), 64))
        lists[lst].append(f"{label:04d}/{fname} {label}")

    n_val = max(1, ids // 8)
    for label in range(ids):
        lst = "list_val.txt" if label >= ids - n_val else "list_train.txt"
        for cam in visits(rng, 15, 2, 3):
            for _ in range(int(rng.integers(1, 3))):
                add("train", lst, label, cam, ident(label))
    for label in range(ids):
        seen = visits(rng, 15, 2, 3)
        add("test", "list_query.txt", label, seen[0], ident(10_000 + label))
        for cam in seen:
            for _ in range(int(rng.integers(1, 3))):
                add("test", "list_gallery.txt", label, cam, ident(10_000 + label))
    return jobs, lists


def write_cuhk03(out: Path, ids: int, seed: int, rng: np.random.Generator, ident: Callable[[int], Identity], identities: list[Identity], workers: int) -> dict:
    """``cuhk-03.mat`` (MATLAB v7.3 layout) and the two new-protocol split files."""
    import h5py
    import scipy.io

    total = 2 * ids
    pair_of = rng.integers(0, 5, size=total)
    per_pair = {p: [i for i in range(total) if pair_of[i] == p] for p in range(5)}
    # which of the ten cells (5 per view) hold an image, identical for both variants
    cells = {i: sorted(rng.choice(5, size=int(rng.integers(2, 4)), replace=False).tolist()) + sorted((5 + rng.choice(5, size=int(rng.integers(2, 4)), replace=False)).tolist()) for i in range(total)}
    facts = {}
    raw = out / "cuhk03_release" / "cuhk-03.mat"
    raw.parent.mkdir(parents=True, exist_ok=True)
    tmp = raw.with_name(raw.name + ".partial")
    with h5py.File(tmp, "w", userblock_size=512) as mat:
        refs = mat.create_group("#refs#")
        index = 0
        for v_i, variant in enumerate(("labeled", "detected")):
            pair_refs = []
            names, labels, jobs = [], [], []
            for p in range(5):
                grid = np.empty((10, len(per_pair[p])), dtype=h5py.ref_dtype)  # MATLAB (ids x 10), stored transposed
                for col, person in enumerate(per_pair[p]):
                    for cell in range(10):
                        if cell in cells[person]:
                            local_pid = col + 1
                            fname = f"{p + 1}_{local_pid:03d}_{1 if cell < 5 else 2}_{cell + 1:02d}.png"
                            job = Job(f"images_{variant}/{fname}", ident(person), cell // 5, int(rng.integers(112, 161)), int(rng.integers(48, 65)))
                            image, parsing, _ = render_job(job, seed, index, identities)
                            index += 1
                            save_parsing_only(out, job.path, parsing)
                            ds = refs.create_dataset(f"img{index}", data=image.transpose(2, 1, 0))
                            names.append(fname)
                            labels.append(person + 1)
                            jobs.append(job)
                        else:
                            ds = refs.create_dataset(f"empty{v_i}_{p}_{col}_{cell}", data=np.zeros(2, np.uint64))
                            ds.attrs["MATLAB_empty"] = np.uint8(1)
                        grid[cell, col] = ds.ref
                cell_ds = refs.create_dataset(f"{variant}_pair{p}", data=grid)
                cell_ds.attrs["MATLAB_class"] = np.bytes_("cell")
                pair_refs.append(cell_ds.ref)
            top = mat.create_dataset(variant, data=np.array([pair_refs], dtype=h5py.ref_dtype))
            top.attrs["MATLAB_class"] = np.bytes_("cell")
            facts[variant] = write_split_mat(out, variant, names, labels, ids, rng, scipy.io)
        facts["classic"] = write_testsets(mat, refs, per_pair, rng)
    with open(tmp, "r+b") as fh:  # the 128-byte MATLAB header inside the userblock
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: reid-masks synth".ljust(116) + b"\0" * 8 + b"\x00\x02IM")
    os.replace(tmp, raw)
    return facts


CLASSIC_SPLITS = 20


def write_testsets(mat: Any, refs: Any, per_pair: dict[int, list[int]], rng: np.random.Generator) -> dict:
    """The classic protocol's ``testsets``: a (20 x 1) MATLAB cell of (n x 2) doubles
    ``[camera pair, person in pair]`` (1-based), n = a quarter of the people (>= 2)."""
    import h5py

    people = [(p + 1, col + 1) for p in range(5) for col in range(len(per_pair[p]))]
    n_test = max(2, len(people) // 4)
    split_refs = []
    for k in range(CLASSIC_SPLITS):
        chosen = sorted(rng.choice(len(people), size=n_test, replace=False).tolist())
        data = np.asarray([people[i] for i in chosen], np.float64).T  # MATLAB (n x 2), stored transposed
        ds = refs.create_dataset(f"testset{k}", data=data)
        ds.attrs["MATLAB_class"] = np.bytes_("double")
        split_refs.append(ds.ref)
    top = mat.create_dataset("testsets", data=np.array([split_refs], dtype=h5py.ref_dtype))
    top.attrs["MATLAB_class"] = np.bytes_("cell")
    return {"splits": CLASSIC_SPLITS, "ids": len(people), "test_ids": n_test, "train_ids": len(people) - n_test}


def save_parsing_only(out: Path, rel: str, parsing: np.ndarray) -> None:
    path = (out / PARSING_DIR / rel).with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(parsing, mode="L").save(path)


_MI_MATRIX, _MX_DOUBLE = 14, 6


def mark_matlab_double(path: Path, names: set[str]) -> None:
    """Relabel the integer arrays ``names`` of an uncompressed MAT-5 file as MATLAB class double.

    MATLAB's ``save`` writes integer-valued doubles with a smaller storage type and class double;
    scipy writes the class of the dtype, so the class byte of each array is rewritten in place.
    """
    data = bytearray(path.read_bytes())
    pos, done = 128, set()
    while pos + 8 <= len(data):
        kind, size = np.frombuffer(bytes(data[pos:pos + 8]), "<u4")
        if kind == _MI_MATRIX:
            body = pos + 8
            dims_size = int(np.frombuffer(bytes(data[body + 20:body + 24]), "<u4")[0])  # after the 16-byte flags element
            name_at = body + 24 + (dims_size + 7) // 8 * 8
            word = int(np.frombuffer(bytes(data[name_at:name_at + 4]), "<u4")[0])
            if word >> 16:  # small data element: length in the upper half, 4 bytes of data follow
                name = bytes(data[name_at + 4:name_at + 4 + (word >> 16)]).decode()
            else:
                n = int(np.frombuffer(bytes(data[name_at + 4:name_at + 8]), "<u4")[0])
                name = bytes(data[name_at + 8:name_at + 8 + n]).decode()
            if name in names:
                data[body + 8] = _MX_DOUBLE  # the class byte of the array-flags word
                done.add(name)
        pos += 8 + (int(size) + 7) // 8 * 8
    if done != names:
        raise RuntimeError(f"{path}: arrays {sorted(names - done)} not found to mark as double")
    path.write_bytes(bytes(data))


def write_split_mat(out: Path, variant: str, names: list[str], labels: list[int], ids: int, rng: np.random.Generator, sio: Any) -> dict:
    """New protocol: the first ``ids`` people train; each test person gives one query per view."""
    labels_arr = np.asarray(labels)
    train_idx = [i for i, l in enumerate(labels) if l <= ids]
    query_idx, gallery_idx = [], []
    for person in sorted(set(labels_arr[labels_arr > ids].tolist())):
        for view in ("1", "2"):
            members = [i for i, (n, l) in enumerate(zip(names, labels)) if l == person and n.split("_")[2] == view]
            q = members[int(rng.integers(len(members)))]
            query_idx.append(q)
            gallery_idx += [m for m in members if m != q]
    cam = [int(n.split("_")[2]) for n in names]
    target = out / f"cuhk03_new_protocol_config_{variant}.mat"
    numeric = {
        "labels": labels_arr,
        "camId": np.asarray(cam),
        "train_idx": np.asarray(train_idx) + 1,
        "query_idx": np.asarray(query_idx) + 1,
        "gallery_idx": np.asarray(gallery_idx) + 1,
    }
    # As in the authors' files (person-re-ranking evaluation/data/CUHK03, written by MATLAB's save):
    # MATLAB class double, stored in the smallest unsigned type that holds the values (camId uint8,
    # the rest uint16 there), so scipy.io.loadmat returns integer arrays, which torchreid indexes with.
    sio.savemat(
        target,
        {"filelist": np.array(names, dtype=object).reshape(-1, 1),
         **{k: v.reshape(-1, 1).astype(np.min_scalar_type(int(v.max()))) for k, v in numeric.items()}},
    )
    mark_matlab_double(target, set(numeric))
    with open(target, "r+b") as fh:  # scipy stamps the creation time in the header text: keep output deterministic
        fh.write(b"MATLAB 5.0 MAT-file, written by reid-masks synth".ljust(116))

    def split_facts(idx: list[int]) -> dict:
        return {"images": len(idx), "ids": len(set(labels_arr[idx].tolist()))}

    return {"train": split_facts(train_idx), "query": split_facts(query_idx), "gallery": split_facts(gallery_idx)}


def synthesize(layout: str, out: str | Path, ids: int = 8, seed: int = 0, workers: int = 2, overwrite: bool = False,
               occlusion_rate: float | None = None, truth_keypoints: bool = False) -> dict[str, Any]:
    """Write a synthetic copy of ``layout`` at ``out``; returns its manifest.

    ``occlusion_rate``: share of images with an occluder of any kind (None: the renderer's
    default); the occluded layouts' own rules (e.g. every Occluded-Duke query) still apply.
    ``truth_keypoints``: also write ``<out>/TRUTH_KEYPOINTS``, the targets' true keypoints
    as a COCO keypoints file (:func:`write_truth_keypoints`).
    """
    if layout not in LAYOUTS:
        raise UserError(f"--layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
    if ids < 2:
        raise UserError(f"--ids {ids}: expected at least 2 identities per split")
    if occlusion_rate is not None and not 0.0 <= occlusion_rate <= 1.0:
        raise UserError(f"--occlusion-rate {occlusion_rate}: expected a fraction in [0, 1]")
    if occlusion_rate is not None and layout == "cuhk03":
        raise UserError("--occlusion-rate: not available for the cuhk03 layout (its images are stored in a .mat file)")
    if truth_keypoints and layout == "cuhk03":
        raise UserError("--truth-keypoints: not available for the cuhk03 layout (its images are stored in a .mat file)")
    from reid_masks.synth.occluded_layouts import TEST_LAYOUTS, occlude_jobs, test_jobs, test_pid
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out}: output folder exists and is not empty (pass --overwrite to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1_000_003])
    cache: dict[int, Identity] = {}

    def ident(key: int) -> Identity:
        if key not in cache:
            cache[key] = sample_identity(np.random.default_rng([seed, 7, key + 10**7]))
        return cache[key]

    def render(jobs: list[Job]) -> None:
        kps = write_jobs(out, jobs, seed, list(cache.values()), workers)
        if truth_keypoints:
            write_truth_keypoints(out / TRUTH_KEYPOINTS, jobs, kps)

    manifest = copy.deepcopy(load_manifest(layout))
    manifest.update(synthetic=True, seed=seed, ids_per_split=ids)
    if layout in TEST_LAYOUTS:
        jobs, _ = test_jobs(layout, ids, rng, ident, occlusion_rate)
        render(jobs)
        for split in ("query", "gallery"):
            spec = manifest["splits"][split]
            paths = [j.path for j in jobs if j.path.startswith(spec["dirs"][0] + "/")]
            spec.update(images=len(paths), ids=len({test_pid(layout, p) for p in paths}))
    elif layout in ("market1501", "dukemtmc", "occluded_duke"):
        jobs, counts = folder_jobs("dukemtmc" if layout == "occluded_duke" else layout, ids, rng, ident)
        jobs = occlude_jobs(layout, jobs, occlusion_rate)
        render(jobs)
        if "multi_query" in counts:
            manifest["multi_query"]["images"] = sum(counts.pop("multi_query").values())
        for split, per_pid in counts.items():
            junk = per_pid.get(manifest["junk_pid"], 0) if manifest["junk_pid"] is not None else 0
            kept = {p: n for p, n in per_pid.items() if p != manifest["junk_pid"]}
            spec = manifest["splits"][split]
            spec.update(images=sum(kept.values()), ids=len(kept))
            if "files" in spec:
                spec.update(files=sum(per_pid.values()), junk=junk, distractors=kept.get(manifest["distractor_pid"], 0))
    elif layout == "msmt17":
        jobs, lists = msmt_jobs(ids, rng, ident)
        jobs = occlude_jobs(layout, jobs, occlusion_rate)
        render(jobs)
        for name, lines in lists.items():
            (out / name).write_text("".join(line + "\n" for line in lines))
        for split, spec in manifest["splits"].items():
            lines = [line for lst in spec["lists"] for line in lists[lst]]
            spec.update(images=len(lines), ids=len({line.split()[1] for line in lines}))
    else:
        for i in range(2 * ids):
            ident(i)
        facts = write_cuhk03(out, ids, seed, rng, ident, list(cache.values()), workers)
        manifest["classic"].update(facts.pop("classic"))
        for variant, splits in facts.items():
            manifest["variants"][variant]["splits"] = splits
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
