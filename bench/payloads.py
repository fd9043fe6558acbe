"""The request bodies of the load: scene photos as multipart uploads, pronunciations as JSON.

The photos are synthetic 150x150 JPEGs, the size of the Intel Image Classification originals, smooth
like a landscape rather than noise (decoding cost depends on the content); the service decodes and
resizes each one to 48x48. Pronunciations are real CMUdict words, spelled greedily by the default speller.
"""

from __future__ import annotations

import io
import json
import mimetypes

import numpy as np
from PIL import Image

from bench.load import Request

BOUNDARY = "scenespell-bench-boundary"
SIDE = 150


def scene_jpeg(seed: int, side: int = SIDE) -> bytes:
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, side)[:, None, None]
    x = np.linspace(0, 1, side)[None, :, None]
    sky, ground = rng.integers(40, 230, 3), rng.integers(20, 160, 3)
    base = np.where(y < rng.uniform(0.3, 0.7), sky, ground) + 40 * np.sin(rng.uniform(3, 12) * x + 3 * y + seed)
    pixels = np.clip(base + rng.normal(0, 12, (side, side, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def multipart_request(filename: str, data: bytes) -> Request:
    """POST /classify with the file as form field `image`, encoded once, sent as often as needed."""
    content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    return Request("/classify", body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})


def classify_requests(count: int = 16) -> list[Request]:
    return [multipart_request(f"scene-{i}.jpg", scene_jpeg(i)) for i in range(count)]


def spell_requests(pronunciations: list[tuple[str, ...]]) -> list[Request]:
    headers = {"Content-Type": "application/json"}
    return [Request("/spell", json.dumps({"phonemes": " ".join(p)}).encode(), headers) for p in pronunciations]
