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


def read_label_png(path: str | Path) -> np.ndarray:
    """A single-channel label map (LIP parsing or a 0/255 mask) as HxW uint8."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in ("L", "P", "1", "I", "I;16"):
                raise UserError(f"{path}: expected a single-channel label PNG (mode L or P), got mode {im.mode}")
            return np.asarray(im.convert("L") if im.mode == "1" else im).astype(np.uint8)
    except FileNotFoundError:
        raise UserError(f"{path}: label PNG not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path}: unreadable label PNG ({exc})") from None
