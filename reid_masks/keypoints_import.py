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
from typing import Any, Iterable

import numpy as np

from reid_masks.backends.base import Instances
from reid_masks.derive import KEYPOINT_MIN_SCORE
from reid_masks.errors import UserError

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
    digest: str  # sha256 of this image's entries as read (canonical JSON, or the pifpaf file)


@dataclass
class Problems:
    """Bad entries of one source, counted per kind, reported as one line."""

    source: Path
    found: dict[str, list[str]] = field(default_factory=dict)  # kind -> examples (first few)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, example: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.found.setdefault(kind, [])) < 1:
            self.found[kind].append(example)

    def raise_if_any(self, hints: dict[str, str] | None = None) -> None:
        if not self.counts:
            return
        parts = []
        for kind, n in self.counts.items():
            hint = (hints or {}).get(kind, "")
            parts.append(f"{n} entr{'y' if n == 1 else 'ies'} {kind} (first: {self.found[kind][0]}){hint}")
        raise UserError(f"{self.source}: " + "; ".join(parts))


class KeypointTable:
    """Image relative path -> :class:`People`; what generate's workers look keypoints up in."""

    def __init__(self, people: dict[str, People], sizes: dict[str, tuple[int, int]], provenance: dict[str, Any], source: Path):
        self.people, self.sizes, self.source = people, sizes, source
        self._provenance = provenance

    def provenance(self) -> dict[str, Any]:
        """Format, resolved path and sha256 of what was read (a folder: one digest over its files)."""
        return dict(self._provenance)

    def entry_digest(self, rel: str) -> str:
        """sha256 of the entries of image ``rel`` ("" without any): a per-row input fingerprint."""
        p = self.people.get(rel)
        return p.digest if p is not None else ""

    def instances(self, rel: str, height: int, width: int) -> Instances:
        """The people of image ``rel`` as keypoint-only :class:`Instances` (empty without an entry).

        Raises a one-line :class:`UserError` when a present keypoint lies outside the image by
        more than the margin (checked here with the decoded image's size).
        """
        p = self.people.get(rel)
        if p is None or len(p.scores) == 0:
            return Instances.empty(height, width, with_masks=False)
        for k in range(len(p.scores)):
            bad = outside(p.keypoints[k], height, width)
            if bad:
                raise UserError(f"{self.source}: {rel} {p.entries[k]}: {bad}")
        return Instances(p.boxes.copy(), p.scores.copy(), None, p.keypoints.copy())


# --- one entry --------------------------------------------------------------------------------


def numbers(value: Any, n: int | None = None) -> np.ndarray | None:
    """``value`` as finite float64s (``n`` of them when given), None when it is not that."""
    if not isinstance(value, (list, tuple)) or (n is not None and len(value) != n):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    arr = np.asarray(value, np.float64)
    return arr if np.isfinite(arr).all() else None


def person_of(entry: Any) -> tuple[np.ndarray, float, np.ndarray] | str:
    """``(keypoints (17, 3), score, box xyxy)`` of one entry, or what is wrong with it (a problem kind).

    A box of zero size (OpenPifPaf writes ``[0, 0, 0, 0]`` for a person without keypoints) is
    as no box; without a box or any keypoint with ``c > 0`` the person carries nothing and
    ``"empty"`` is returned.
    """
    if not isinstance(entry, dict):
        return "that are not JSON objects"
    raw = entry.get("keypoints")
    if not isinstance(raw, (list, tuple)):
        return "without a keypoints list"
    if len(raw) != 3 * NUM_KEYPOINTS:
        return f"with other than {NUM_KEYPOINTS} keypoints"
    vals = numbers(raw)
    if vals is None:
        return "with keypoint values that are not finite numbers"
    kps = vals.reshape(NUM_KEYPOINTS, 3).astype(np.float32)
    kps[:, 2] = np.clip(kps[:, 2], 0.0, 1.0)
    score = entry.get("score", 1.0)
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
        return "with a score that is not a number"
    box = None
    if entry.get("bbox") is not None:
        b = numbers(entry["bbox"], 4)
        if b is None or b[2] < 0 or b[3] < 0:
            return "with a bbox that is not [x, y, width, height]"
        if b[2] > 0 and b[3] > 0:
            box = np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]], np.float32)
    seen = kps[kps[:, 2] > 0]
    if box is None:
        if not len(seen):
            return "empty"
        box = np.array([*seen[:, :2].min(axis=0), *seen[:, :2].max(axis=0)], np.float32)
    return kps, float(score), box


def outside(kps: np.ndarray, height: int, width: int) -> str:
    """What is wrong when a present keypoint (score >= KEYPOINT_MIN_SCORE) lies outside the image by more than the margin ("" if none)."""
    present = kps[:, 2] >= KEYPOINT_MIN_SCORE
    mx, my = OUTSIDE_MARGIN * width, OUTSIDE_MARGIN * height
    far = present & ((kps[:, 0] < -mx) | (kps[:, 0] > width + mx) | (kps[:, 1] < -my) | (kps[:, 1] > height + my))
    if not far.any():
        return ""
    k = int(np.argmax(far))
    return (f"{int(far.sum())} keypoint(s) outside the {width}x{height} image by more than {OUTSIDE_MARGIN:.0%} of its size "
            f"(first: keypoint {k} at ({kps[k, 0]:.1f}, {kps[k, 1]:.1f})); keypoints must be in the image's pixels")


def people_of(entries: list[tuple[str, Any]]) -> tuple[People, list[tuple[str, str]]]:
    """:class:`People` of one image's ``(label, entry)`` pairs, and the ``(kind, label)`` of bad ones."""
    kps, scores, boxes, labels, bad = [], [], [], [], []
    for label, entry in entries:
        got = person_of(entry)
        if isinstance(got, str):
            if got != "empty":
                bad.append((got, label))
            continue
        kps.append(got[0])
        scores.append(got[1])
        boxes.append(got[2])
        labels.append(label)
    digest = hashlib.sha256(json.dumps([e for _, e in entries], sort_keys=True).encode()).hexdigest()
    people = People(
        np.asarray(kps, np.float32).reshape(-1, NUM_KEYPOINTS, 3), np.asarray(scores, np.float32),
        np.asarray(boxes, np.float32).reshape(-1, 4), labels, digest,
    )
    return people, bad


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
            problems.add("without an id and a file_name", f"images[{i}]")
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
                problems.add(f"(files) {err}", fname)
                continue
            doc, sha = got
            digest.update(f"{rel}\t{sha}\n".encode())
            if not isinstance(doc, list):
                problems.add("(files) that are not a JSON list of predictions", fname)
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
    people: dict[str, People] = {}
    example = next(iter(sorted(known)), "")
    for rel, entries in grouped.items():
        if rel not in known:
            if (root / rel).is_file():
                left_out.append(rel)  # a file the adapter leaves out (junk, distractor rule): ignored
            else:
                problems.add(f"for images not in the {dataset_name} dataset", f"{entries[0][0] if entries else 'image'} for {rel!r}")
            continue
        p, bad = people_of(entries)
        for kind, label in bad:
            problems.add(kind, f"{label} for {rel}")
        hw = sizes.get(rel)
        if hw is not None:
            for k in range(len(p.scores)):
                far = outside(p.keypoints[k], *hw)
                if far:
                    problems.add("with keypoints outside the image", f"{p.entries[k]} for {rel}: {far}")
        people[rel] = p
    hint = f"; paths must be relative to the dataset root {root} (e.g. {example!r})" if example else ""
    problems.raise_if_any({f"for images not in the {dataset_name} dataset": hint})
    if left_out:
        sys.stderr.write(f"{path}: {len(left_out)} entr{'y' if len(left_out) == 1 else 'ies'} for files the {dataset_name} adapter leaves out (e.g. junk images; first: {left_out[0]}) ignored\n")
    n_people = sum(len(p.scores) for p in people.values())
    prov.update(images_with_entries=len(people), people=n_people, outside_margin=OUTSIDE_MARGIN)
    return KeypointTable(people, sizes, prov, path)
