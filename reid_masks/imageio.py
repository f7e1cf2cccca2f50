"""Image decoding with one clear error for unreadable or truncated files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from reid_masks.errors import UserError


def read_image(path: str | Path) -> np.ndarray:
    """An RGB uint8 HxWx3 array; a missing, truncated or non-image file raises UserError."""
    try:
        with Image.open(path) as im:
            im.load()  # decodes fully, so a truncated file fails here and not later
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise UserError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: unreadable image, expected a complete JPEG/PNG ({exc})") from None


LABEL_MODES = ("L", "P", "1", "I", "I;16", "I;16L", "I;16B", "I;16N")  # single channel, 1 to 32 bits


def read_label_png(path: str | Path, num_labels: int | None = None, what: str = "label") -> np.ndarray:
    """A single-channel label map, 8- or 16-bit, with its values as stored (no modulo-256 wrap).

    With ``num_labels`` every value must lie in 0..num_labels-1 (a UserError naming the file
    otherwise) and the map comes back as uint8; without, person masks keep their values
    (any nonzero value is the person).
    """
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in LABEL_MODES:
                labels = np.asarray(im.convert("L") if mode == "1" else im)
    except FileNotFoundError:
        raise UserError(f"{path}: {what} PNG not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: unreadable {what} PNG ({exc})") from None
    if mode not in LABEL_MODES:
        raise UserError(f"{path}: expected a single-channel {what} PNG (8- or 16-bit grey or palette), got mode {mode}")
    if num_labels is None:
        return labels
    bad = (labels < 0) | (labels >= num_labels)
    if bad.any():
        values = ", ".join(str(v) for v in np.unique(labels[bad])[:5])
        raise UserError(f"{path}: {int(bad.sum())} pixel(s) with {what} value(s) {values} outside 0..{num_labels - 1}")
    return labels.astype(np.uint8)


def read_parsing_png(path: str | Path) -> np.ndarray:
    """LIP parsing labels (0..19) as HxW uint8; any other value is refused with the file's name."""
    from reid_masks.derive import LIP_LABELS

    return read_label_png(path, num_labels=len(LIP_LABELS), what="LIP parsing label")
