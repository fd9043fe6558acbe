"""Image files made in the tests, in every mode and format the API accepts, and some it must refuse."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def scene(width=150, height=150, seed=0) -> Image.Image:
    """A smooth RGB picture (sky over ground), more photo-like than noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height)[:, None, None]
    x = np.linspace(0, 1, width)[None, :, None]
    base = np.where(y < 0.5, [90, 140, 220], [70, 110, 60]) + 40 * np.sin(6 * x + 3 * y + seed)
    pixels = np.clip(base + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
