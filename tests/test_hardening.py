"""Whatever a client sends, the service answers calmly: no 5xx, no hang, no crash, no growth; faults at
startup stop it with one line; SIGTERM under load ends cleanly.

Every request these tests send is counted by status in the `tally` (tests/conftest.py), which prints a
summary at the end of the run and writes it to .pytest_cache/hardening-summary.md, with the figures the
tests report: soak latency and memory, the startup error lines, the worst-case request times."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import time
import tracemalloc
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from exports import EXPORTS_DIR
from serving.images import MAX_PIXELS, decode_image
from serving.schemas import MAX_UPLOAD_BYTES
from tests.images import encode, scene
from tests.server import Server

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=10,
)
SPELL_FIELDS = ["phonemes", "model", "decoding", "n", "top_p", "temperature", "seed", "beam_size"]
PHONEME_TEXT = st.lists(st.sampled_from(["K", "ae1", "T", "XX", " ", "", "AH0", "zh", "1", "\t"]), max_size=70)
SIDE = 7071  # 7071 x 7071 = 49,999,041 pixels: the largest square image under the limit
TIME_LIMIT = 60  # BentoML's traffic timeout in serving/service.py: past it a request gets 504


def post(tally, url: str, timeout: float = 30, **options) -> httpx.Response:
    response = httpx.post(url, timeout=timeout, **options)
    tally.record(response.status_code)
    return response


@FUZZ
@given(body=st.dictionaries(st.sampled_from([*SPELL_FIELDS, "extra"]), JSON_VALUES, max_size=8))
def test_spell_fuzzed_fields_never_5xx(server, tally, body):
    tally.case()
    response = post(tally, f"{server.url}/spell", json=body)
    assert response.status_code < 500, (body, response.text)
    if response.status_code == 200:
        assert len(response.json()["spellings"]) == body.get("n", 1)
    else:
        assert response.json()


@FUZZ
@given(
    phonemes=PHONEME_TEXT,
    as_list=st.booleans(),
    decoding=st.sampled_from(["greedy", "nucleus", "beam"]),
    n=st.integers(-2, 102),
    top_p=st.floats(-0.5, 1.5, allow_nan=False),
    temperature=st.floats(-1, 6, allow_nan=False),
    seed=st.none() | st.integers(-(2**64), 2**64),
)
def test_spell_fuzzed_values_never_5xx(server, tally, phonemes, as_list, decoding, n, top_p, temperature, seed):
    tally.case()
    body = {"phonemes": phonemes if as_list else " ".join(phonemes), "decoding": decoding, "n": n, "top_p": top_p,
            "temperature": temperature, "seed": seed}  # fmt: skip
    response = post(tally, f"{server.url}/spell", json=body)
    assert response.status_code < 500, (body, response.text)


@FUZZ
@given(
    body=st.binary(max_size=2000),
    content_type=st.sampled_from(
        [
            "application/json",
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/octet-stream",
            "",
            "image/png",
            "application/vnd.bentoml+pickle",
            "multipart/form-data",
        ]
    ),
    path=st.sampled_from(["/spell", "/classify", "/info"]),
)
def test_raw_bodies_never_5xx(server, tally, body, content_type, path):
    tally.case()
    headers = {"content-type": content_type} if content_type else {}
    response = post(tally, f"{server.url}{path}", content=body, headers=headers)
    assert response.status_code < 500, (path, content_type, body[:100], response.text)


@FUZZ
@given(data=st.binary(max_size=3000), name=st.text(max_size=20), model=st.none() | st.text(max_size=30))
def test_classify_fuzzed_files_never_5xx(server, tally, data, name, model):
    tally.case()
    response = post(tally, f"{server.url}/classify", files={"image": (name or "x", data)},
                    data={"model": model} if model is not None else {})  # fmt: skip
    assert response.status_code < 500, response.text


@FUZZ
@given(
    width=st.integers(1, 600),
    height=st.integers(1, 600),
    mode=st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "CMYK", "1", "I;16", "I", "F"]),
    fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]),
    cut=st.none() | st.floats(0.05, 0.95),
)
def test_classify_generated_images(server, tally, width, height, mode, fmt, cut):
    tally.case()
    image = scene(width, height)
    try:
        image = image.convert(mode)
        data = encode(image, fmt)
    except (OSError, ValueError, KeyError):
        return  # Pillow cannot write that mode in that format: nothing to send
    if cut is not None:
        data = data[: max(1, int(len(data) * cut))]
    response = post(tally, f"{server.url}/classify", files={"image": ("x", data)})
    assert response.status_code in (200, 400), response.text
    if cut is None and fmt != "TIFF":
        assert response.status_code == 200, (mode, fmt, response.text)


def test_animated_gif_and_huge_but_legal_image(server, tally):
    frames = [scene(64, 64, seed=i).convert("P") for i in range(3)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert post(tally, f"{server.url}/classify", files={"image": ("a.gif", gif)}).status_code == 200
    big = encode(scene(7000, 7000), "JPEG", quality=30)  # 49 megapixels: under the limit, still answered
    response = post(tally, f"{server.url}/classify", files={"image": ("big.jpg", big)}, timeout=120)
    assert response.status_code == 200, response.text
    huge = encode(scene(8000, 8000), "JPEG", quality=10)  # 64 megapixels: over it
    response = post(tally, f"{server.url}/classify", files={"image": ("huge.jpg", huge)}, timeout=60)
    assert response.status_code == 400 and "pixels" in response.json()["error"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/hosts", "cnn.onnx", "http://example.com/m.onnx"])
def test_model_names_are_never_paths(server, tally, name):
    response = post(tally, f"{server.url}/spell", json={"phonemes": "K AE T", "model": name})
    assert response.status_code == 400 and "unknown model" in response.json()["error"]
    response = post(tally, f"{server.url}/classify", files={"image": ("x.png", encode(scene()))}, data={"model": name})
    assert response.status_code == 400 and "unknown model" in response.json()["error"]


# The list of bad input, each case by name: the answer is a 4xx whose message names the problem.


def chunked(size: int, piece: int = 1 << 16):
    """A body of `size` bytes sent without Content-Length (Transfer-Encoding: chunked)."""
    for start in range(0, size, piece):
        yield b"a" * min(piece, size - start)


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


PNG = encode(scene(150, 150, seed=5), "PNG")
JPEG = encode(scene(150, 150, seed=5), "JPEG")


@pytest.mark.parametrize(
    ("body", "headers", "status", "words"),
    [
        (b"", {"content-type": "application/json"}, 400, "'phonemes': Field required"),
        (b"{nope", {"content-type": "application/json"}, 400, "not valid JSON"),
        (b'{"phonemes": "K AE T",}', {}, 400, "not valid JSON"),
        (b"\xff\xfe\x00", {"content-type": "application/json"}, 400, "not valid JSON"),
        (b'["K", "AE", "T"]', {"content-type": "application/json"}, 400, "JSON object"),
        (b'"K AE T"', {"content-type": "application/json"}, 400, "JSON object"),
        (b'{"phonemes": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, 400, "nested too deeply"),
        (b'{"phonemes": "\\ud800 K"}', {"content-type": "application/json"}, 400, "unknown ARPAbet symbols"),
        (b"a" * (MAX_UPLOAD_BYTES + 1), {"content-type": "application/json"}, 413, "10,485,760 bytes"),
        (lambda: chunked(MAX_UPLOAD_BYTES + 1), {"content-type": "application/json"}, 413, "10,485,760 bytes"),
    ],
    ids=[
        "empty",
        "invalid-json",
        "trailing-comma",
        "bad-utf8",
        "list-body",
        "string-body",
        "deep-nesting",
        "lone-surrogate",
        "huge-body",
        "huge-chunked-body",
    ],
)
def test_bad_spell_bodies_get_a_named_4xx(server, tally, body, headers, status, words):
    response = post(tally, f"{server.url}/spell", content=body() if callable(body) else body, headers=headers)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"phonemes": ["K", "AE1", " "]}, "empty symbol"),
        ({"phonemes": ["AH"] * 65}, "65 symbols, over the limit of 64"),
        ({"phonemes": "AH " * 64 + "AH"}, "65 symbols, over the limit of 64"),
        ({"phonemes": ["K", 7]}, "'phonemes'"),
        ({"phonemes": {"K": 1}}, "'phonemes'"),
        ({"phonemes": None}, "'phonemes'"),
        ({"phonemes": 4.5}, "'phonemes'"),
        ({"phonemes": "K AE T", "model": 5}, "'model'"),
        ({"phonemes": "K AE T", "decoding": None}, "'decoding'"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "n": 0}, "'n'"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "n": True}, "'n'"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "n": "5"}, "'n'"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "n": 2.5}, "'n'"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "top_p": 1.01}, "'top_p'"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "top_p": "high"}, "'top_p'"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "top_p": [0.5]}, "'top_p'"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "temperature": 0}, "'temperature'"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "temperature": True}, "'temperature'"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "seed": 2**63}, "'seed'"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "seed": 1.5}, "'seed'"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "seed": "7"}, "'seed'"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "seed": False}, "'seed'"),
        ({"phonemes": "K AE T", "decoding": "beam", "beam_size": 101}, "'beam_size'"),
        ({"phonemes": "K AE T", "decoding": "beam", "beam_size": "wide"}, "'beam_size'"),
    ],
)
def test_bad_spell_fields_get_a_named_4xx(server, tally, body, words):
    response = post(tally, f"{server.url}/spell", json=body)
    assert response.status_code == 400, response.text
    assert words in response.json()["error"]


def test_phonemes_with_odd_spacing_and_case_are_read(server, tally):
    for phonemes in [" \tk  ae1\n T ", ["k", " AE1 ", "t"], "K AE0 T", "k ae2 t"]:
        response = post(tally, f"{server.url}/spell", json={"phonemes": phonemes})
        assert response.status_code == 200, response.text
        assert response.json()["phonemes"] == ["K", "AE", "T"]


@pytest.mark.parametrize(
    ("image", "content", "headers", "status", "words"),
    [
        (lambda: half(PNG), None, {}, 400, "truncated"),
        (lambda: flip(PNG, 20), None, {}, 400, "not in an image format"),  # the IHDR chunk's checksum fails
        (lambda: flip(PNG, len(PNG) // 2), None, {}, 400, "broken data stream"),
        (lambda: half(JPEG), None, {}, 400, "truncated"),
        (lambda: JPEG[:2] + b"\x00" * 40 + JPEG[42:], None, {}, 400, "not in an image format"),
        (lambda: b"GIF89a" + b"\x00" * 30, None, {}, 400, "not in an image format"),
        (lambda: encode(Image.new("1", (SIDE + 1, SIDE)), "PNG"), None, {}, 400, "over the limit of 50,000,000"),
        (lambda: encode(Image.new("P", (12000, 12000)), "GIF"), None, {}, 400, "over the limit of 50,000,000"),
        (None, lambda: b"image=abc", {"content-type": "application/x-www-form-urlencoded"}, 400, "file upload"),
        (None, lambda: b"\x89PNG", {"content-type": "image/png"}, 400, "'image' is missing"),
        (None, lambda: b"--x--\r\n", {"content-type": "multipart/form-data; boundary=x"}, 400, "'image' is missing"),
        (None, lambda: chunked(MAX_UPLOAD_BYTES + 1), {"content-type": "image/png"}, 413, "10,485,760 bytes"),
    ],
    ids=[
        "truncated-png",
        "corrupt-png-header",
        "corrupt-png-data",
        "truncated-jpeg",
        "corrupt-jpeg-header",
        "gif-without-image",
        "bomb-png-just-over",
        "bomb-gif",
        "urlencoded-form",
        "raw-image-body",
        "form-without-fields",
        "huge-chunked-upload",
    ],
)
def test_bad_images_and_forms_get_a_named_4xx(server, tally, image, content, headers, status, words):
    """`image` makes the bytes of the file field `image`; `content`, a raw body instead (made when the test runs)."""
    files = {"image": ("x", image())} if image else None
    response = post(tally, f"{server.url}/classify", files=files, content=content and content(), headers=headers)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        (scene().convert("P"), "PNG"),  # given a transparent colour below
        (scene().convert("LA"), "PNG"),
        (scene().convert("I;16"), "TIFF"),
        (Image.fromarray(np.arange(150 * 150, dtype=np.int32).reshape(150, 150) * 90_000), "TIFF"),
        (Image.fromarray(np.linspace(-5, 300, 150 * 150, dtype=np.float32).reshape(150, 150)), "TIFF"),
        (scene().convert("CMYK"), "TIFF"),
        (scene(1, 1), "JPEG"),
        (scene(1, 1).convert("P"), "GIF"),
        (scene(3000, 2), "PNG"),
    ],
    ids=[
        "palette-png",
        "LA-png",
        "16-bit-tiff",
        "32-bit-int-tiff",
        "float-tiff",
        "CMYK-tiff",
        "1x1-jpeg",
        "1x1-gif",
        "3000x2",
    ],
)
def test_more_modes_and_sizes_are_answered(server, tally, image, fmt):
    if image.mode == "P" and fmt == "PNG":
        image.info["transparency"] = 0  # a palette image with a transparent colour
    response = post(tally, f"{server.url}/classify", files={"image": ("x", encode(image, fmt))})
    assert response.status_code == 200, response.text
    assert sum(response.json()["probabilities"].values()) == pytest.approx(1.0)


def test_every_exif_orientation_is_honoured_by_the_server(server, tally):
    """An image stored turned, with the EXIF tag that turns it back, gets exactly the upright image's answer."""
    upright = scene(120, 80, seed=2)
    T = Image.Transpose
    stored_as = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_90,
                 7: T.TRANSVERSE, 8: T.ROTATE_270}  # fmt: skip

    def answer(data: bytes) -> dict:
        response = post(tally, f"{server.url}/classify", files={"image": ("x.png", data)})
        assert response.status_code == 200, response.text
        return response.json()["probabilities"]

    expected = answer(encode(upright, "PNG"))
    ignored = []
    for orientation, transpose in stored_as.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        assert answer(encode(upright.transpose(transpose), "PNG", exif=exif)) == pytest.approx(expected, abs=1e-6)
        ignored.append(answer(encode(upright.transpose(transpose), "PNG")))  # the same pixels without the tag
    assert any(probabilities != pytest.approx(expected, abs=1e-3) for probabilities in ignored)
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = encode(upright.transpose(T.ROTATE_90), "JPEG", exif=exif, quality=95)
    with Image.open(io.BytesIO(jpeg)) as stored:  # the JPEG's own (lossy) pixels, turned back by hand
        turned_back = encode(stored.convert("RGB").transpose(T.ROTATE_270), "PNG")
    assert answer(jpeg) == pytest.approx(answer(turned_back), abs=1e-6)


def test_openapi_documents_every_limit(server):
    docs = httpx.get(f"{server.url}/docs.json").json()["paths"]
    spell = docs["/spell"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert (spell["n"]["minimum"], spell["n"]["maximum"]) == (1, 100)
    assert (spell["beam_size"]["minimum"], spell["beam_size"]["maximum"]) == (1, 100)
    for field, top in (("top_p", 1), ("temperature", 5)):  # OpenAPI 3.0's form of 0 < x <= top
        assert (spell[field]["minimum"], spell[field]["exclusiveMinimum"], spell[field]["maximum"]) == (0, True, top)
    assert spell["seed"]["minimum"] == 0 and spell["seed"]["nullable"] is True
    assert set(spell["decoding"]["enum"]) == {"greedy", "nucleus", "beam"}
    text, listed = spell["phonemes"]["oneOf"]
    assert text["type"] == "string" and (listed["type"], listed["minItems"], listed["maxItems"]) == ("array", 1, 64)
    assert "1 to 64 symbols" in spell["phonemes"]["description"]
    form = docs["/classify"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["image"] and form["properties"]["image"]["format"] == "binary"
    assert f"{MAX_UPLOAD_BYTES:,} bytes" in form["properties"]["image"]["description"]
    assert f"{MAX_PIXELS:,} pixels" in form["properties"]["image"]["description"]


def test_a_16_bit_image_at_the_pixel_limit_costs_no_float_copies(tally):
    """A 95 KB PNG of 50 megapixels at 16 bits used to cost 1.1 GiB of float copies and seconds of CPU."""
    data = encode(Image.fromarray(np.zeros((SIDE, SIDE), np.uint16)), "PNG")
    tracemalloc.start()
    started = time.perf_counter()
    try:
        pixels = decode_image(data, 48, 48)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tally.figure(
        f"16-bit {SIDE}x{SIDE} PNG of {len(data):,} bytes: decoded in {time.perf_counter() - started:.1f} s, "
        f"peak {peak / 2**20:,.0f} MiB traced (one float64 copy would be {8 * SIDE * SIDE / 2**20:,.0f})"
    )
    assert pixels.shape == (48, 48, 3) and pixels.dtype == np.uint8
    assert peak < 8 * SIDE * SIDE


def test_worst_case_requests_finish_far_inside_the_time_limit(server, tally):
    """No limit of our own on request time: BentoML answers 504 past its traffic timeout (60 s). The most
    expensive valid requests cost the server far less than that, and many at once are all answered.

    The bound is on the server's CPU time per request, which does not depend on what else the machine runs."""
    names = [speller["name"] for speller in httpx.get(f"{server.url}/info").json()["spellers"]]
    phonemes = " ".join(["S", "T", "R", "EH1", "NG", "K", "TH", "AH0"] * 8)  # 64 symbols
    spells = {}
    for name in names:
        spells[f"/spell {name}, 64 phonemes, nucleus n=100 top_p=1 temperature=5"] = dict(
            phonemes=phonemes, model=name, decoding="nucleus", n=100, top_p=1, temperature=5
        )
        spells[f"/spell {name}, 64 phonemes, beam n=100 beam_size=100"] = dict(
            phonemes=phonemes, model=name, decoding="beam", n=100, beam_size=100
        )
    smooth = Image.linear_gradient("L").resize((SIDE, SIDE))
    images = {
        f"/classify 16-bit PNG {SIDE}x{SIDE}": encode(Image.fromarray(np.zeros((SIDE, SIDE), np.uint16)), "PNG"),
        f"/classify RGBA PNG {SIDE}x{SIDE}": encode(smooth.convert("RGBA"), "PNG"),
        f"/classify JPEG {SIDE}x{SIDE}": encode(smooth.convert("RGB"), "JPEG", quality=30),
    }

    def send(label: str) -> tuple[int, float]:
        started = time.perf_counter()
        if label in spells:
            response = post(tally, f"{server.url}/spell", json=spells[label], timeout=2 * TIME_LIMIT)
        else:
            files = {"image": ("x", images[label])}
            response = post(tally, f"{server.url}/classify", files=files, timeout=2 * TIME_LIMIT)
        return response.status_code, time.perf_counter() - started

    alone = {}
    for label in [*spells, *images]:
        cpu = tree_cpu(server.process.pid)
        status, seconds = send(label)
        alone[label] = status, seconds, tree_cpu(server.process.pid) - cpu
        size = f" ({len(images[label]):,} bytes)" if label in images else ""
        tally.figure(f"{label}{size}: {status} in {seconds:.2f} s, server CPU {alone[label][2]:.2f} s")

    def together(labels: list[str]) -> tuple[list[tuple[int, float]], float]:
        started = time.perf_counter()
        with ThreadPoolExecutor(len(labels)) as pool:
            answers = list(pool.map(send, labels))
        return answers, time.perf_counter() - started

    crowds = {"16 worst /spell at once": ([*spells] * 16)[:16], "6 worst /classify at once": [*images] * 2}
    for crowd, labels in crowds.items():
        answers, wall = together(labels)
        statuses = Counter(status for status, _ in answers)
        tally.figure(f"{crowd}: {dict(statuses)} in {wall:.1f} s, slowest {max(s for _, s in answers):.1f} s")
        assert statuses == {200: len(labels)}, answers
    assert all(status == 200 for status, _, _ in alone.values()), alone
    assert max(cpu for _, _, cpu in alone.values()) < TIME_LIMIT / 4, alone


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its children."""
    process = psutil.Process(pid)
    return sum(sum(p.cpu_times()[:2]) for p in [process, *process.children(recursive=True)])


def tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


async def mixed_load(url: str, count: int, concurrency: int) -> list[tuple[int, dict, float]]:
    """(status, answer, seconds) of `count` requests, half /classify and half /spell, `concurrency` at a time."""
    images = [encode(scene(40 + i, 60, seed=i), "JPEG") for i in range(8)]
    bodies = [{"phonemes": "K AE1 T"}, {"phonemes": "F OW1 N IY0 K S", "decoding": "nucleus", "n": 5, "seed": 3},
              {"phonemes": "K XX T"}, {"phonemes": "S IH1 T IY0", "model": "vanilla"}]  # fmt: skip
    queue = list(range(count))
    results = []

    async def worker(client):
        while queue:
            i = queue.pop()
            started = time.perf_counter()
            if i % 2:
                r = await client.post(f"{url}/classify", files={"image": ("x.jpg", images[i % 8])})
            else:
                r = await client.post(f"{url}/spell", json=bodies[i % 8 // 2])
            results.append((r.status_code, r.json(), time.perf_counter() - started))

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results


def test_soak_mixed_requests(server, tally):
    """2,000 mixed requests at concurrency 16: no 5xx, every answer well-formed, memory flat in the second half."""
    rss_start = tree_rss(server.process.pid)
    started = time.perf_counter()
    first = asyncio.run(mixed_load(server.url, 1000, 16))
    rss_half = tree_rss(server.process.pid)
    second = asyncio.run(mixed_load(server.url, 1000, 16))
    rss_end = tree_rss(server.process.pid)
    elapsed = time.perf_counter() - started
    statuses = [status for status, _, _ in first + second]
    tally.record(*statuses)
    p50, p99 = np.percentile([seconds for *_, seconds in first + second], [50, 99]) * 1000
    mib = 2**20
    tally.figure(
        f"{len(statuses):,} requests (half /classify, half /spell) at concurrency 16 in {elapsed:.1f} s "
        f"({len(statuses) / elapsed:.0f} req/s); statuses {dict(sorted(Counter(statuses).items()))}"
    )
    tally.figure(f"latency p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    tally.figure(
        f"server RSS (process tree): start {rss_start / mib:.0f} MiB, half {rss_half / mib:.0f} MiB, "
        f"end {rss_end / mib:.0f} MiB; second half {100 * (rss_end / rss_half - 1):+.1f}% (limit +10%)"
    )
    assert max(statuses) < 500 and set(statuses) == {200, 400}
    for status, body, _ in first + second:
        assert ("label" in body or "spellings" in body) if status == 200 else "error" in body
    assert rss_end < rss_half * 1.10, (rss_half, rss_end)


def test_sigterm_under_load_ends_cleanly(tally):
    running = Server()

    async def load_then_stop():
        task = asyncio.create_task(mixed_load_tolerant(running.url, 400, 8))
        await asyncio.sleep(1.5)
        running.process.terminate()
        stopped = time.perf_counter()
        await asyncio.to_thread(running.process.wait, 30)
        return await task, time.perf_counter() - stopped

    try:
        running.wait_ready()
        outcomes, exit_seconds = asyncio.run(load_then_stop())
    finally:
        code = running.stop()
    tally.record(*outcomes)
    tally.figure(f"SIGTERM after 1.5 s of load at concurrency 8: exit code {code} within {exit_seconds:.1f} s; "
                 f"outcomes {dict(Counter(map(str, outcomes)))}")  # fmt: skip
    assert code == 0, running.output()[-2000:]
    assert all(o == "refused" or o < 500 for o in outcomes), outcomes
    assert any(o == 200 for o in outcomes)


async def mixed_load_tolerant(url: str, count: int, concurrency: int) -> list:
    """Like mixed_load, but a refused or dropped connection counts as 'refused' (the server is going away)."""
    outcomes = []

    async def worker(client, n):
        for _ in range(n):
            try:
                r = await client.post(f"{url}/spell", json={"phonemes": "K AE1 T"})
                outcomes.append(r.status_code)
            except httpx.TransportError:
                outcomes.append("refused")
                await asyncio.sleep(0.05)

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(worker(client, count // concurrency) for _ in range(concurrency)))
    return outcomes


def start_failure(tally, tmp_path, prepare, env: dict | None = None) -> str:
    """Start the server on a broken copy of exports/: it must exit non-zero with exactly one `error: ` line and
    no traceback, and /readyz must never answer 200 meanwhile. Returns that line."""
    for path in EXPORTS_DIR.glob("*.onnx"):
        shutil.copy(path, tmp_path / path.name)
    prepare(tmp_path)
    broken = Server({"SCENESPELL_EXPORTS": str(tmp_path), **(env or {})})
    started, probes = time.monotonic(), []
    try:
        while broken.process.poll() is None and time.monotonic() < started + 60:
            try:
                probes.append(httpx.get(f"{broken.url}/readyz", timeout=1).status_code)
            except httpx.HTTPError:
                probes.append("refused")
            time.sleep(0.2)
        code = broken.process.poll()
        output = broken.output()
    finally:
        broken.stop()
    seconds = time.monotonic() - started
    assert code is not None, f"still running after 60 s:\n{output}"
    assert 200 not in probes, probes
    assert code != 0 and "Traceback" not in output, output
    (line,) = [line for line in output.splitlines() if line.startswith("error: ")]
    tally.figure(f"`{line}` (exit code {code} after {seconds:.1f} s; /readyz probed {len(probes)} times, never 200)")
    return line


def edit_metadata(file: str, key: str, change):
    """A `prepare` for start_failure: rewrite one metadata entry of one export (None removes it)."""

    def prepare(directory):
        import onnx

        model = onnx.load(str(directory / file))
        for entry in list(model.metadata_props):
            if entry.key == key:
                value = change(json.loads(entry.value))
                if value is None:
                    model.metadata_props.remove(entry)
                else:
                    entry.value = json.dumps(value)
        onnx.save(model, str(directory / file))

    return prepare


def test_missing_export_stops_startup(tally, tmp_path):
    line = start_failure(tally, tmp_path, lambda d: (d / "p2g-vanilla.decoder.onnx").unlink())
    assert line.startswith(f"error: {tmp_path / 'p2g-vanilla.decoder.onnx'}: missing")


@pytest.mark.parametrize(
    ("file", "prepare"),
    [
        ("cnn-vanilla.onnx", lambda path: path.write_bytes(b"this is not onnx")),
        ("cnn.onnx", lambda path: path.write_bytes(b"")),
        ("p2g-attention.decoder.onnx", lambda path: path.write_bytes(half(path.read_bytes()))),
    ],
    ids=["not-onnx", "empty", "truncated"],
)
def test_corrupt_export_stops_startup(tally, tmp_path, file, prepare):
    line = start_failure(tally, tmp_path, lambda d: prepare(d / file))
    assert line.startswith(f"error: {tmp_path / file.split('.')[0]}") and "cannot load ONNX model" in line
    assert str(tmp_path / file) in line  # a speller's line starts with its name and quotes the file at fault


def test_export_whose_metadata_disagrees_is_refused(tally, tmp_path):
    line = start_failure(tally, tmp_path, lambda d: shutil.copy(d / "cnn-vanilla.onnx", d / "cnn-bn-gap.onnx"))
    assert "cnn-bn-gap.onnx" in line and "disagrees" in line


def test_export_from_a_newer_format_is_refused(tally, tmp_path):
    line = start_failure(tally, tmp_path, edit_metadata("cnn.onnx", "format_version", lambda _: 99))
    assert "cnn.onnx" in line and "format_version 99" in line


@pytest.mark.parametrize(
    ("prepare", "file", "words"),
    [
        (edit_metadata("cnn-vanilla.onnx", "params", lambda _: None), "cnn-vanilla.onnx", "metadata lacks params"),
        (edit_metadata("cnn-bn-gap.onnx", "class_names", lambda names: names[:5]), "cnn-bn-gap.onnx",
         "does not match its metadata"),
        (edit_metadata("p2g-vanilla.encoder.onnx", "graphemes", lambda letters: letters[:-1]),
         "p2g-vanilla.decoder.onnx", "log_probs has 30 letters, metadata 'graphemes' 29"),
        (edit_metadata("p2g-attention.encoder.onnx", "kind", lambda _: "classifier"), "p2g-attention.encoder.onnx",
         "metadata lacks"),
    ],
    ids=["key-missing", "classes-disagree-with-graph", "letters-disagree-with-graph", "wrong-kind"],
)  # fmt: skip
def test_export_whose_metadata_disagrees_with_the_code_is_refused(tally, tmp_path, prepare, file, words):
    line = start_failure(tally, tmp_path, prepare)
    assert line.startswith(f"error: {tmp_path / file}: ") and words in line, line


@pytest.mark.parametrize(("variable", "value"), [("SCENESPELL_THREADS", "0"), ("SCENESPELL_SPELLER_THREADS", "two")])
def test_a_bad_setting_stops_startup(tally, tmp_path, variable, value):
    line = start_failure(tally, tmp_path, lambda d: None, {variable: value})
    assert line == f"error: {variable}={value!r}: expected a whole number >= 1"
