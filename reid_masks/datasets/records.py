"""The plain record and dataset types every adapter returns."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import NamedTuple

from reid_masks.errors import UserError

SPLITS = ("train", "query", "gallery")
MULTI_QUERY = "multi_query"  # optional images pooled per query (Market-1501's gt_bbox/), see ReIDDataset
#: Groups a mask cache may hold: the three splits, plus the multi-query images when a dataset has them.
CACHE_SPLITS = SPLITS + (MULTI_QUERY,)


class Record(NamedTuple):
    """One image: ``path`` is relative to the dataset root (POSIX separators).

    ``pid`` is relabelled to 0..N-1 in the train split only; query/gallery keep the
    dataset's own ids (distractors keep theirs, e.g. Market's 0). ``camid`` is 0-based.
    A NamedTuple so ``path, pid, camid, split = rec`` works like torchreid's tuples.
    """

    path: str
    pid: int
    camid: int
    split: str


@dataclass
class ReIDDataset:
    """A dataset's three splits, with records relative to ``root``.

    ``multi_query``: optional extra images of the query identities that multi-query
    evaluation pools per (identity, camera) -- Market-1501's hand-drawn ``gt_bbox/`` boxes;
    empty when the dataset has none. ``split("multi_query")`` returns them.
    """

    name: str
    root: Path
    train: list[Record]
    query: list[Record]
    gallery: list[Record]
    info: dict = field(default_factory=dict)
    multi_query: list[Record] = field(default_factory=list)

    def split(self, name: str) -> list[Record]:
        if name not in SPLITS + (MULTI_QUERY,):
            raise ValueError(f"unknown split {name!r}: expected one of {SPLITS + (MULTI_QUERY,)}")
        return getattr(self, name)

    def abspath(self, record: Record | str) -> Path:
        rel = record if isinstance(record, str) else record.path
        return self.root / rel

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        return len({r.camid for r in self.train})

    def summary(self) -> str:
        """A torchreid-style table of images, ids and cameras per split."""
        lines = [f"{self.name} at {self.root}", "  split   | # ids | # images | # cameras"]
        for s in SPLITS:
            recs = self.split(s)
            ids = len({r.pid for r in recs})
            cams = len({r.camid for r in recs})
            lines.append(f"  {s:<7} | {ids:5d} | {len(recs):8d} | {cams:9d}")
        return "\n".join(lines)


def relabel(records: list[Record]) -> list[Record]:
    """Training ids mapped to 0..N-1 in increasing order of the original id."""
    mapping = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [r._replace(pid=mapping[r.pid]) for r in records]


def leaves_root(entry: str) -> bool:
    """True for a path read from a file that is absolute or climbs out with ``..``.

    Adapters refuse such entries: a record's image must lie under the dataset root
    (symlinks inside the root may still point elsewhere; that is the user's own layout).
    """
    posix, windows = PurePosixPath(entry), PureWindowsPath(entry)
    return posix.is_absolute() or bool(windows.drive or windows.root) or ".." in windows.parts


def cache_splits(ds: "ReIDDataset") -> tuple[str, ...]:
    """The splits ``reid-masks generate`` covers for ``ds``: train, query, gallery and, when the
    dataset has them (Market-1501's ``gt_bbox/``), the multi-query images, so that mask-guided
    models can pool them (``test.multi_query``)."""
    return SPLITS + ((MULTI_QUERY,) if ds.multi_query else ())


def text_lines(path: Path, expected: str) -> list[str]:
    """The lines of a dataset's text file (a list file); a NUL or a non-UTF-8 byte is a one-line
    UserError naming the file, line and byte, before any work (a path with a NUL cannot be opened,
    and every record's path must be UTF-8 to be stored in the HDF5 cache)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc}; expected {expected})") from None
    lines = data.splitlines()  # bytes: only \n / \r end a line, so the numbers are an editor's
    for lineno, raw in enumerate(lines, 1):
        nul = raw.find(b"\0")
        if nul >= 0:
            raise UserError(f"{path}:{lineno}: NUL byte at column {nul + 1} (expected {expected}); is the file corrupted?")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}:{lineno}: byte 0x{raw[exc.start]:02X} at column {exc.start + 1} is not UTF-8 "
                            f"(expected {expected} in UTF-8); convert the file, e.g. iconv -f latin1 -t utf-8") from None
    return [raw.decode("utf-8") for raw in lines]


def check_file_names(files: list[Path]) -> list[Path]:
    """``files`` unchanged; a name that is not UTF-8 (Python holds it with surrogate escapes) is a
    one-line UserError naming it: record paths are stored as UTF-8 text in the mask cache."""
    for f in files:
        try:
            f.name.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"{f.parent}: file name {os.fsencode(f.name)!r} is not UTF-8; rename it "
                            f"(e.g. convmv -f latin1 -t utf-8 --notest)") from None
    return files
