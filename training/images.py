"""Stimulus images: listing a folder, decoding files, and making square uint8 arrays."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "list_images", "load_image", "square"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_images(folder) -> list[Path]:
    """Image files directly inside ``folder``, sorted by file name (Python string order)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"`--images` folder not found: {folder}")
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                   key=lambda p: p.name)
    if not files:
        raise ValueError(f"`--images` folder {folder} holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    return files


def square(image: Image.Image, size: int) -> np.ndarray:
    """Centre-crop ``image`` to a square and resize it to ``size`` px (bicubic); ``size=0`` keeps the crop."""
    image = image.convert("RGB")
    w, h = image.size
    side = min(w, h)
    if (w, h) != (side, side):
        left, top = (w - side) // 2, (h - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if size and side != size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def load_image(path, size: int) -> np.ndarray:
    """Decode an image file into a square uint8 ``[size, size, 3]`` array."""
    try:
        with Image.open(path) as image:
            return square(image, size)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"Cannot read image {path}: {exc}") from exc
