"""Keypoints people already have, read instead of running a keypoint model (``generate --keypoints``).

Three formats (README, "Importing keypoints"), told apart by what ``--keypoints`` names:

* a COCO keypoints file: a JSON object with ``images`` (``id``, ``file_name`` relative to the
  dataset root, optional ``width``/``height``) and ``annotations`` (``image_id``, 51
  ``keypoints`` values, optional ``score`` and ``bbox``); detections written as a COCO file
  (annotations with a ``score``) are the same format;
* a COCO results list: a JSON list of ``{image_id, keypoints, score, ...}`` whose ids are
  mapped by the ``images`` of ``--keypoints-images FILE`` (given once), or entries that name
  their image with ``file_name``;
* a folder of OpenPifPaf outputs: ``<folder>/<image's relative path>.predictions.json``, each a
  list of ``{keypoints, bbox, score, category_id}`` (``openpifpaf.predict --json-output``).

Every entry is a person: 17 COCO keypoints ``(x, y, c)`` in image pixels, a score and a box.
``c`` is a COCO visibility flag (0 absent, 1 or 2 labelled) or a confidence; it is stored as
the keypoint's score clipped to [0, 1], so a flag of 0 or a confidence below
``KEYPOINT_MIN_SCORE`` makes the keypoint absent for the derivation, as for a detector's
keypoints. The box is the entry's ``bbox`` (x, y, w, h), else the extent of its keypoints
with ``c > 0``; the person's score is the entry's ``score``, else 1. Among several people in
one image the target rule of :func:`reid_masks.derive.select_target` picks one.

The whole source is read and checked before any image is processed, so a wrong file fails in
one line naming the file and the first bad entry with a count: entries for images the dataset
does not have, keypoint counts other than 17, values that are not numbers, coordinates
outside the image by more than ``OUTSIDE_MARGIN`` of its size (checked up front where the
file gives image sizes, else when the image is read). Entries for files that exist under the
dataset root but that the adapter leaves out (e.g. Market-1501's junk images) are ignored with
a note. The same reading in every shard gives every shard the same provenance.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from reid_masks.derive import KEYPOINT_MIN_SCORE
from reid_masks.errors import UserError

if TYPE_CHECKING:  # annotations only: reading a source needs no torch
    from reid_masks.backends.base import Instances

PIFPAF_SUFFIX = ".predictions.json"
OUTSIDE_MARGIN = 0.25  # a present keypoint may lie this fraction of the image's width / height outside it
NUM_KEYPOINTS = 17


@dataclass
class People:
    """The people one image's entries describe, in image pixels."""

    keypoints: np.ndarray  # (n, 17, 3) float32: x, y, score in [0, 1]
    scores: np.ndarray  # (n,) float32
    boxes: np.ndarray  # (n, 4) float32 x0 y0 x1 y1
    entries: list[str]  # where each person was read ("annotation 12", "entry 3"), for messages


@dataclass
class Problems:
    """Bad entries (or files) of one source, counted per kind, reported as one line."""

    source: Path
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (noun, kind) -> count
    first: dict[tuple[str, str], str] = field(default_factory=dict)

    def add(self, kind: str, example: str, noun: str = "entry") -> None:
        key = (noun, kind)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.first.setdefault(key, example)

    def raise_if_any(self, hints: dict[str, str] | None = None) -> None:
        """One UserError line: per kind, the count, the first example and a hint."""
        if not self.counts:
            return
        parts = []
        for (noun, kind), n in self.counts.items():
            plural = noun if n == 1 else ("entries" if noun == "entry" else noun + "s")
            parts.append(f"{n} {plural} {kind} (first: {self.first[(noun, kind)]}){(hints or {}).get(kind, '')}")
        raise UserError(f"{self.source}: " + "; ".join(parts))


class KeypointTable:
    """Image relative path -> :class:`People`; what generate's workers look keypoints up in.

    All people of the source sit in three arrays, each image owning a slice of them (a few
    bytes per person, so an MSMT17-size source stays small in every worker).
    """

    def __init__(self, keypoints: np.ndarray, scores: np.ndarray, boxes: np.ndarray, labels: list[str],
                 index: dict[str, tuple[int, int]], provenance: dict[str, Any], source: Path):
        self.keypoints, self.scores, self.boxes, self.labels = keypoints, scores, boxes, labels
        self.index, self.source = index, source
        self._provenance = provenance

    @property
    def num_images(self) -> int:
        """Images of the dataset with an entry (possibly one without any person)."""
        return len(self.index)

    def provenance(self) -> dict[str, Any]:
        """Format, resolved path and sha256 of what was read (a folder: one digest over its files)."""
        return dict(self._provenance)

    def people(self, rel: str) -> People | None:
        """The people of image ``rel``, None when the source has no entry for it."""
        if rel not in self.index:
            return None
        a, b = self.index[rel]
        return People(self.keypoints[a:b], self.scores[a:b], self.boxes[a:b], self.labels[a:b])

    def entry_digest(self, rel: str) -> str:
        """sha256 of the people read for image ``rel`` ("" without an entry): a per-row input fingerprint."""
        p = self.people(rel)
        if p is None:
            return ""
        return hashlib.sha256(b"".join(np.ascontiguousarray(x).tobytes() for x in (p.keypoints, p.scores, p.boxes))).hexdigest()

    def instances(self, rel: str, height: int, width: int) -> Instances:
        """The people of image ``rel`` as keypoint-only :class:`Instances` (empty without an entry).

        Raises a one-line :class:`UserError` when a present keypoint lies outside the image by
        more than the margin (checked here with the decoded image's size).
        """
        from reid_masks.backends.base import Instances  # imports torch: only in generate's workers

        p = self.people(rel)
        if p is None or len(p.scores) == 0:
            return Instances.empty(height, width, with_masks=False)
        far = outside(p.keypoints, np.array([[height, width]] * len(p.scores)))
        if far.any():
            k = int(np.argmax(far.any(axis=1)))
            raise UserError(f"{self.source}: {rel} {p.entries[k]}: {outside_text(p.keypoints[k], far[k], height, width)}")
        return Instances(p.boxes.copy(), p.scores.copy(), None, p.keypoints.copy())


# --- the people of many entries, checked at once -----------------------------------------------


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def number_rows(rows: list[list], width: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` (lists of ``width`` values) as a float64 array and which rows are all finite numbers."""
    if not rows:
        return np.zeros((0, width)), np.zeros(0, bool)
    try:
        arr = np.asarray(rows)
        fast = arr.dtype.kind in "iuf" and arr.shape == (len(rows), width)
    except (ValueError, TypeError):
        fast = False
    if not fast:  # some value is not a number: find the rows, row by row
        ok = np.array([all(is_number(v) for v in r) for r in rows], bool)
        arr = np.array([r if good else [0.0] * width for r, good in zip(rows, ok)], np.float64)
        return arr, ok
    arr = arr.astype(np.float64)
    return arr, np.isfinite(arr).all(axis=1)


def outside(kps: np.ndarray, hw: np.ndarray) -> np.ndarray:
    """(n, 17) bool: present keypoints (score >= KEYPOINT_MIN_SCORE) outside their image by more than the margin; ``hw`` (n, 2)."""
    h, w = hw[:, :1].astype(np.float64), hw[:, 1:].astype(np.float64)
    x, y = kps[:, :, 0], kps[:, :, 1]
    far = (x < -OUTSIDE_MARGIN * w) | (x > w * (1 + OUTSIDE_MARGIN)) | (y < -OUTSIDE_MARGIN * h) | (y > h * (1 + OUTSIDE_MARGIN))
    return far & (kps[:, :, 2] >= KEYPOINT_MIN_SCORE)


def outside_text(kps: np.ndarray, far: np.ndarray, height: int, width: int) -> str:
    k = int(np.argmax(far))
    return (f"{int(far.sum())} keypoint(s) outside the {width}x{height} image by more than {OUTSIDE_MARGIN:.0%} of its size "
            f"(first: keypoint {k} at ({kps[k, 0]:.1f}, {kps[k, 1]:.1f})); keypoints must be in the image's pixels")


def build_table(grouped: dict[str, list[tuple[str, Any]]], sizes: dict[str, tuple[int, int]], problems: Problems,
                provenance: dict[str, Any], source: Path) -> KeypointTable:
    """The table of the dataset's images' entries (``grouped``: already only the dataset's images).

    An entry is checked in Python only for its shape (a dict, 51 keypoint values, a number as
    score, 4 bbox values); values are converted and checked all at once. A box of zero size
    (OpenPifPaf writes ``[0, 0, 0, 0]`` for a person without keypoints) is as no box; a person
    without a box and without any keypoint with ``c > 0`` carries nothing and is dropped.
    """
    raw_kps, raw_boxes, scores, labels, owner, rels = [], [], [], [], [], []
    no_box = [0.0, 0.0, 0.0, 0.0]
    for rel, entries in grouped.items():
        img = len(rels)
        rels.append(rel)
        for label, e in entries:
            where = f"{label} for {rel}"
            if not isinstance(e, dict):
                problems.add("that are not JSON objects", where)
                continue
            kp = e.get("keypoints")
            if not isinstance(kp, list):
                problems.add("without a keypoints list", where)
                continue
            if len(kp) != 3 * NUM_KEYPOINTS:
                problems.add(f"with other than {NUM_KEYPOINTS} keypoints", f"{where}: {len(kp)} values, expected {3 * NUM_KEYPOINTS} = 17 x (x, y, v)")
                continue
            score = e.get("score", 1.0)
            if not is_number(score):
                problems.add("with a score that is not a number", where)
                continue
            box = e.get("bbox")
            if box is not None and not (isinstance(box, list) and len(box) == 4):
                problems.add("with a bbox that is not [x, y, width, height]", where)
                continue
            raw_kps.append(kp)
            raw_boxes.append(no_box if box is None else box)
            scores.append(score)
            labels.append(label)
            owner.append(img)
    kps, kp_ok = number_rows(raw_kps, 3 * NUM_KEYPOINTS)
    xywh, box_ok = number_rows(raw_boxes, 4)
    box_ok &= (xywh[:, 2] >= 0) & (xywh[:, 3] >= 0)
    for i in np.flatnonzero(~kp_ok):
        problems.add("with keypoint values that are not finite numbers", f"{labels[i]} for {rels[owner[i]]}")
    for i in np.flatnonzero(kp_ok & ~box_ok):
        problems.add("with a bbox that is not [x, y, width, height]", f"{labels[i]} for {rels[owner[i]]}")
    kps = kps.reshape(-1, NUM_KEYPOINTS, 3).astype(np.float32)
    kps[:, :, 2] = np.clip(kps[:, :, 2], 0.0, 1.0)
    labelled = kps[:, :, 2] > 0
    has_box = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
    keep = kp_ok & box_ok & (has_box | labelled.any(axis=1))
    inf = np.float32(np.inf)
    lo = np.where(labelled[..., None], kps[:, :, :2], inf).min(axis=1)
    hi = np.where(labelled[..., None], kps[:, :, :2], -inf).max(axis=1)
    boxes = np.where(has_box[:, None], np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1), np.concatenate([lo, hi], axis=1))
    owner_a = np.asarray(owner, np.int64)
    hw = np.array([sizes.get(rels[o], (0, 0)) for o in owner], np.int64).reshape(-1, 2)
    far = outside(kps, np.where(hw > 0, hw, 1 << 30)) & (hw[:, :1] > 0) & keep[:, None]
    for i in np.flatnonzero(far.any(axis=1)):
        h, w = hw[i]
        problems.add("with keypoints outside the image", f"{labels[i]} for {rels[owner[i]]}: {outside_text(kps[i], far[i], int(h), int(w))}")

    kept = np.flatnonzero(keep)
    counts = np.bincount(owner_a[kept], minlength=len(rels))
    ends = np.cumsum(counts)
    index = {rel: (int(e - c), int(e)) for rel, c, e in zip(rels, counts, ends)}
    return KeypointTable(kps[kept], np.asarray(scores, np.float32).reshape(-1)[kept], boxes[kept].astype(np.float32),
                         [labels[i] for i in kept], index, provenance, source)


# --- reading the formats ----------------------------------------------------------------------


def relative_name(name: Any, root: Path) -> str | None:
    """A ``file_name`` as a dataset-relative POSIX path (absolute names under ``root`` too); None if not a string."""
    if not isinstance(name, str) or not name:
        return None
    name = name.replace("\\", "/")
    if name.startswith("/"):
        try:
            name = Path(name).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return name
    return posixpath.normpath(name)


def read_json(path: Path, what: str) -> tuple[Any, str]:
    """The parsed JSON of ``path`` and the sha256 of its bytes; a one-line UserError if it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    try:
        return json.loads(data), hashlib.sha256(data).hexdigest()
    except ValueError as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); expected the {what}") from None


def image_table(images: Any, source: Path, root: Path) -> tuple[dict[Any, str], dict[str, tuple[int, int]]]:
    """COCO ``images``: id -> relative path, and relative path -> (height, width) where given."""
    if not isinstance(images, list):
        raise UserError(f"{source}: 'images' is not a list (expected COCO images with id and file_name)")
    ids: dict[Any, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    problems = Problems(source)
    for i, im in enumerate(images):
        rel = relative_name(im.get("file_name"), root) if isinstance(im, dict) else None
        if rel is None or "id" not in im:
            problems.add("without an id and a file_name", f"images[{i}]", noun="image")
            continue
        ids[im["id"]] = rel
        h, w = im.get("height"), im.get("width")
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            sizes[rel] = (h, w)
    problems.raise_if_any()
    return ids, sizes


def group_by_image(entries: Iterable[tuple[str, Any]], name_of: Any, problems: Problems) -> dict[str, list[tuple[str, Any]]]:
    """Entries grouped by their image's relative path (``name_of(entry)``: the path, or a problem kind prefixed with '!')."""
    out: dict[str, list[tuple[str, Any]]] = {}
    for label, entry in entries:
        rel = name_of(entry)
        if rel.startswith("!"):
            problems.add(rel[1:], label)
            continue
        out.setdefault(rel, []).append((label, entry))
    return out


def read_coco(path: Path, doc: dict, images_file: Path | None, root: Path, problems: Problems) -> tuple[dict[str, list], dict[str, tuple[int, int]]]:
    if images_file is not None:
        raise UserError(f"--keypoints-images {images_file}: only for a COCO results list; {path} is a COCO file with its own images")
    ids, sizes = image_table(doc.get("images"), path, root)
    anns = doc.get("annotations")
    if not isinstance(anns, list):
        raise UserError(f"{path}: 'annotations' is not a list (expected COCO keypoint annotations)")

    def name_of(a: Any) -> str:
        if not isinstance(a, dict) or a.get("image_id") not in ids:
            return "!with an image_id that is not in its images"
        return ids[a["image_id"]]

    labels = (f"annotation {a.get('id', i) if isinstance(a, dict) else i} (annotations[{i}])" for i, a in enumerate(anns))
    grouped = group_by_image(zip(labels, anns), name_of, problems)
    for rel in ids.values():  # an image listed without annotations: an entry with nobody in it
        grouped.setdefault(rel, [])
    return grouped, sizes


def read_results(path: Path, results: list, images_file: Path | None, root: Path, problems: Problems) -> tuple[dict[str, list], dict[str, tuple[int, int]], dict[str, Any] | None]:
    ids: dict[Any, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    images_prov = None
    if images_file is not None:
        doc, sha = read_json(images_file, "COCO images list (a COCO file, or a list of {id, file_name})")
        ids, sizes = image_table(doc.get("images") if isinstance(doc, dict) else doc, images_file, root)
        images_prov = {"path": str(images_file.resolve()), "sha256": sha}

    def name_of(e: Any) -> str:
        if not isinstance(e, dict):
            return "!that are not JSON objects"
        if "file_name" in e:
            rel = relative_name(e["file_name"], root)
            return rel if rel is not None else "!with a file_name that is not a path"
        if "image_id" not in e:
            return "!with neither file_name nor image_id"
        if images_file is None:
            return "!with an image_id but no --keypoints-images to map it"
        return ids.get(e["image_id"], "!with an image_id that is not in --keypoints-images")

    grouped = group_by_image(((f"entry {i}", e) for i, e in enumerate(results)), name_of, problems)
    return grouped, sizes, images_prov


def read_pifpaf(folder: Path, workers: int, problems: Problems) -> tuple[dict[str, list], str, int]:
    """Every ``*.predictions.json`` under ``folder``: grouped entries, a digest over the files, their count."""
    files = sorted(
        Path(d, f) for d, _, names in os.walk(folder, followlinks=True) for f in names if f.endswith(PIFPAF_SUFFIX)
    )

    def one(p: Path) -> tuple[str, Any, str | None]:
        rel = p.relative_to(folder).as_posix()[: -len(PIFPAF_SUFFIX)]
        try:
            data = p.read_bytes()
        except OSError as exc:
            return rel, None, f"that cannot be read ({exc.strerror or exc})"
        try:
            return rel, (json.loads(data), hashlib.sha256(data).hexdigest()), None
        except ValueError:
            return rel, None, "that are not valid JSON"

    grouped: dict[str, list] = {}
    digest = hashlib.sha256()
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for rel, got, err in pool.map(one, files):
            fname = f"{rel}{PIFPAF_SUFFIX}"
            if err:
                problems.add(err, fname, noun="file")
                continue
            doc, sha = got
            digest.update(f"{rel}\t{sha}\n".encode())
            if not isinstance(doc, list):
                problems.add("that are not a JSON list of predictions", fname, noun="file")
                continue
            grouped[rel] = [(f"{fname} entry {i}", e) for i, e in enumerate(doc)]
    return grouped, digest.hexdigest(), len(files)


def load_keypoints(path: Path, images_file: Path | None, root: Path, dataset_paths: Iterable[str], dataset_name: str, workers: int = 4) -> KeypointTable:
    """Read and check a keypoint source against the dataset's relative paths (module docstring).

    Returns the table the workers look people up in; raises one :class:`UserError` line for
    a source that cannot be used.
    """
    if not path.exists():
        raise UserError(f"--keypoints {path}: not found (expected a COCO keypoints/results JSON file or a folder of OpenPifPaf {PIFPAF_SUFFIX} files)")
    if images_file is not None and not images_file.is_file():
        raise UserError(f"--keypoints-images {images_file}: not found (expected a COCO file whose images map ids to file names)")
    problems = Problems(path)
    sizes: dict[str, tuple[int, int]] = {}
    prov: dict[str, Any] = {"path": str(path.resolve())}
    if path.is_dir():
        if images_file is not None:
            raise UserError(f"--keypoints-images {images_file}: only for a COCO results list; {path} is a folder of OpenPifPaf files")
        grouped, digest, n_files = read_pifpaf(path, workers, problems)
        if not n_files:
            raise UserError(f"--keypoints {path}: no *{PIFPAF_SUFFIX} files in this folder (expected <folder>/<image's relative path>{PIFPAF_SUFFIX})")
        prov.update(format="openpifpaf", sha256=digest, files=n_files)
    else:
        doc, sha = read_json(path, "keypoints (a COCO keypoints file or a COCO results list)")
        prov["sha256"] = sha
        if isinstance(doc, dict) and "annotations" in doc:
            grouped, sizes = read_coco(path, doc, images_file, root, problems)
            prov["format"] = "coco"
        elif isinstance(doc, list):
            grouped, sizes, images_prov = read_results(path, doc, images_file, root, problems)
            prov.update(format="coco-results", images=images_prov)
        else:
            raise UserError(f"{path}: neither a COCO keypoints file (an object with images and annotations) nor a COCO results list (a JSON list)")

    known = set(dataset_paths)
    left_out: list[str] = []
    mine: dict[str, list[tuple[str, Any]]] = {}
    for rel, entries in grouped.items():
        if rel in known:
            mine[rel] = entries
        elif (root / rel).is_file():
            left_out.append(rel)  # a file the adapter leaves out (junk, distractor rule): ignored
        else:
            problems.add(f"for images not in the {dataset_name} dataset", f"{entries[0][0] if entries else 'an images entry'} for {rel!r}")
    table = build_table(mine, sizes, problems, prov, path)
    example = min(known, default="")
    problems.raise_if_any({f"for images not in the {dataset_name} dataset": f"; paths must be relative to the dataset root {root} (e.g. {example!r})" if example else ""})
    if left_out:
        sys.stderr.write(f"{path}: {len(left_out)} entr{'y' if len(left_out) == 1 else 'ies'} for files the {dataset_name} adapter leaves out (e.g. junk images; first: {left_out[0]}) ignored\n")
    prov.update(images_with_entries=table.num_images, people=len(table.scores), outside_margin=OUTSIDE_MARGIN)
    return table
