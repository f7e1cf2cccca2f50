"""Image decoding with one clear error for unreadable or truncated files.

:func:`read_image` is the one reader of dataset images for both tools (the mask stage, the
trainer's datasets, evaluation, inference, previews): 16-bit grey images are scaled to 8 bits
(``convert("RGB")`` would clip them to white) and a decompression bomb is an unreadable image
like any other, never PIL's traceback.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from reid_masks.errors import UserError

#: 16-bit grey modes as PIL opens them (a 16-bit grey PNG is ``I;16``; some decoders give ``I``)
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb8(im: Image.Image) -> np.ndarray:
    """An RGB uint8 HxWx3 array of a decoded image; 16-bit grey keeps its high byte (v >> 8),
    as PIL reads 16-bit RGB PNGs, so both depths of one picture give the same pixels."""
    if im.mode in WIDE_GREY_MODES:
        grey = np.asarray(im).astype(np.int64)
        if grey.size and (grey.min() < 0 or grey.max() > 0xFFFF):
            raise ValueError(f"mode {im.mode} values {grey.min()}..{grey.max()} outside the 16-bit range 0..65535")
        return np.repeat((grey >> 8).astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def read_image(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """An RGB uint8 HxWx3 array of the image at ``path`` (or of its bytes ``data``, already read).

    A missing, truncated, oversized (decompression bomb) or non-image file raises a one-line
    UserError naming ``path``. Every decoder failure counts: PIL parses untrusted bytes and
    raises many types (OSError, SyntaxError, ValueError, EOFError, DecompressionBombError ...).
    """
    try:
        with Image.open(io.BytesIO(data) if data is not None else path) as im:
            im.load()  # decodes fully, so a truncated file fails here and not later
            return to_rgb8(im)
    except FileNotFoundError:
        raise UserError(f"{path}: image not found") from None
    except Image.DecompressionBombError as exc:
        raise UserError(f"{path}: unreadable image ({exc})") from None
    except MemoryError:
        raise UserError(f"{path}: unreadable image, too large to decode in memory") from None
    except Exception as exc:  # noqa: BLE001 -- any decoder failure of this file
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
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError) as exc:
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
