"""Shared file helpers for the data set readers: robust image loading and JSON reading.

``load_image`` turns whatever is on disk (JPEG/PNG in grayscale, RGB, RGBA, palette,
16-bit, CMYK; with or without an EXIF orientation tag) into an upright 8-bit RGB
``PIL.Image``, and reports unreadable files by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

_INT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in _INT_MODES or img.mode == "F":
        # PIL's own conversion clips 16-bit values at 255 instead of rescaling, which
        # would turn most 16-bit images white.
        arr = np.asarray(img).astype(np.float64)
        if img.mode != "F" and arr.max(initial=0) > 255:
            arr = arr / 257.0
        elif img.mode == "F" and arr.max(initial=0) <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        # Composite over white: the colour stored under transparent pixels is arbitrary
        # (often black), so simply dropping alpha can produce garbage.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path) -> Image.Image:
    """Load ``path`` as an upright 8-bit RGB image.

    Raises ``FileNotFoundError`` if the file does not exist and
    ``ValueError("cannot read image <path>: ...")`` if it cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now so truncated files fail here, not later
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def read_json(path, what: str):
    """Parse a JSON file, with errors naming the file and what it was expected to hold."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{what} {path} is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from e


def check_format(ok: bool, message: str) -> None:
    """A malformed annotation file is a bad *value* (ValueError), whatever the check was."""
    if not ok:
        raise ValueError(message)


def require_file(path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path
