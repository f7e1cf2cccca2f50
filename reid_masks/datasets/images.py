"""Any folder of person crops (or a list of them): not a benchmark, no ids, one split.

For the images a user wants features or masks of -- a new camera's crops, a detector's
output, a benchmark nobody wrote an adapter for: ``reid-train extract --images DIR`` and
``reid-masks generate --dataset images --root DIR`` read them through this one adapter.
Every image is a ``query`` record with pid -1 and camera 0 (train and gallery are empty),
its path relative to the root, in sorted order.
"""
from __future__ import annotations

from pathlib import Path
from typing import Tuple

from reid_masks.datasets.records import Record, ReIDDataset
from reid_masks.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
UNKNOWN_PID = -1


def load_images(root: str | Path, *, list_file: str = "", extensions: Tuple[str, ...] = IMAGE_EXTENSIONS) -> ReIDDataset:
    """Every image under ``root`` (recursively; ``extensions``, case-insensitive), or the paths in
    ``list_file`` (one per line, relative to ``root``; blank lines and ``#`` comments skipped)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: images folder not found")
    if list_file:
        paths = read_image_list(Path(list_file), root)
    else:
        exts = tuple(e.lower() for e in extensions)
        paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                       if p.suffix.lower() in exts and (p.is_file() or p.is_symlink()))
    if not paths:
        raise UserError(f"{list_file or root}: no images" + ("" if list_file else f" with extension {'/'.join(extensions)} (searched recursively)"))
    return ReIDDataset("images", root, [], [Record(p, UNKNOWN_PID, 0, "query") for p in paths], [],
                       info={"list_file": str(list_file)} if list_file else {})


def read_image_list(list_file: Path, root: Path) -> list[str]:
    """The relative paths listed in ``list_file``; an absolute path or one leaving ``root`` is refused with its line."""
    try:
        text = list_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{list_file}: image list not found") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{list_file}: not UTF-8 text (byte {exc.start}); expected one image path per line") from None
    paths = []
    for no, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rel = Path(line)
        if rel.is_absolute() or ".." in rel.parts:
            raise UserError(f"{list_file}:{no}: {line!r} is not a path inside {root} (list paths relative to it)")
        paths.append(rel.as_posix())
    return paths
