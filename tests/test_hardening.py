"""Whatever a client sends, the service answers calmly: no 5xx, no hang, no crash, no growth; faults at
startup stop it with one line; SIGTERM under load ends cleanly."""

from __future__ import annotations

import asyncio
import json
import shutil

import httpx
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exports import EXPORTS_DIR
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


@FUZZ
@given(body=st.dictionaries(st.sampled_from([*SPELL_FIELDS, "extra"]), JSON_VALUES, max_size=8))
def test_spell_fuzzed_fields_never_5xx(server, body):
    response = httpx.post(f"{server.url}/spell", json=body, timeout=30)
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
def test_spell_fuzzed_values_never_5xx(server, phonemes, as_list, decoding, n, top_p, temperature, seed):
    body = {"phonemes": phonemes if as_list else " ".join(phonemes), "decoding": decoding, "n": n, "top_p": top_p,
            "temperature": temperature, "seed": seed}  # fmt: skip
    response = httpx.post(f"{server.url}/spell", json=body, timeout=30)
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
def test_raw_bodies_never_5xx(server, body, content_type, path):
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(f"{server.url}{path}", content=body, headers=headers, timeout=30)
    assert response.status_code < 500, (path, content_type, body[:100], response.text)


@FUZZ
@given(data=st.binary(max_size=3000), name=st.text(max_size=20), model=st.none() | st.text(max_size=30))
def test_classify_fuzzed_files_never_5xx(server, data, name, model):
    response = httpx.post(f"{server.url}/classify", files={"image": (name or "x", data)},
                          data={"model": model} if model is not None else {}, timeout=30)  # fmt: skip
    assert response.status_code < 500, response.text


@FUZZ
@given(
    width=st.integers(1, 600),
    height=st.integers(1, 600),
    mode=st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "CMYK", "1", "I;16", "I", "F"]),
    fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]),
    cut=st.none() | st.floats(0.05, 0.95),
)
def test_classify_generated_images(server, width, height, mode, fmt, cut):
    image = scene(width, height)
    try:
        image = image.convert(mode)
        data = encode(image, fmt)
    except (OSError, ValueError, KeyError):
        return  # Pillow cannot write that mode in that format: nothing to send
    if cut is not None:
        data = data[: max(1, int(len(data) * cut))]
    response = httpx.post(f"{server.url}/classify", files={"image": ("x", data)}, timeout=30)
    assert response.status_code in (200, 400), response.text
    if cut is None and fmt != "TIFF":
        assert response.status_code == 200, (mode, fmt, response.text)


def test_animated_gif_and_huge_but_legal_image(server):
    frames = [scene(64, 64, seed=i).convert("P") for i in range(3)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert httpx.post(f"{server.url}/classify", files={"image": ("a.gif", gif)}, timeout=30).status_code == 200
    big = encode(scene(7000, 7000), "JPEG", quality=30)  # 49 megapixels: under the limit, still answered
    response = httpx.post(f"{server.url}/classify", files={"image": ("big.jpg", big)}, timeout=120)
    assert response.status_code == 200, response.text
    huge = encode(scene(8000, 8000), "JPEG", quality=10)  # 64 megapixels: over it
    response = httpx.post(f"{server.url}/classify", files={"image": ("huge.jpg", huge)}, timeout=60)
    assert response.status_code == 400 and "pixels" in response.json()["error"]


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/hosts", "cnn.onnx", "http://example.com/m.onnx"])
def test_model_names_are_never_paths(server, name):
    response = httpx.post(f"{server.url}/spell", json={"phonemes": "K AE T", "model": name}, timeout=30)
    assert response.status_code == 400 and "unknown model" in response.json()["error"]
    response = httpx.post(f"{server.url}/classify", files={"image": ("x.png", encode(scene()))},
                          data={"model": name}, timeout=30)  # fmt: skip
    assert response.status_code == 400 and "unknown model" in response.json()["error"]


def tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])


async def mixed_load(url: str, count: int, concurrency: int) -> list[tuple[int, dict]]:
    images = [encode(scene(40 + i, 60, seed=i), "JPEG") for i in range(8)]
    bodies = [{"phonemes": "K AE1 T"}, {"phonemes": "F OW1 N IY0 K S", "decoding": "nucleus", "n": 5, "seed": 3},
              {"phonemes": "K XX T"}, {"phonemes": "S IH1 T IY0", "model": "vanilla"}]  # fmt: skip
    queue = list(range(count))
    results = []

    async def worker(client):
        while queue:
            i = queue.pop()
            if i % 2:
                r = await client.post(f"{url}/classify", files={"image": ("x.jpg", images[i % 8])})
            else:
                r = await client.post(f"{url}/spell", json=bodies[i % 8 // 2])
            results.append((r.status_code, r.json()))

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return results


def test_soak_mixed_requests(server):
    """2,000 mixed requests at concurrency 16: no 5xx, every answer well-formed, memory flat in the second half."""
    first = asyncio.run(mixed_load(server.url, 1000, 16))
    rss_half = tree_rss(server.process.pid)
    second = asyncio.run(mixed_load(server.url, 1000, 16))
    rss_end = tree_rss(server.process.pid)
    statuses = [status for status, _ in first + second]
    assert max(statuses) < 500 and set(statuses) == {200, 400}
    for status, body in first + second:
        assert ("label" in body or "spellings" in body) if status == 200 else "error" in body
    assert rss_end < rss_half * 1.10, (rss_half, rss_end)


def test_sigterm_under_load_ends_cleanly():
    running = Server()
    running.wait_ready()

    async def load_then_stop():
        task = asyncio.create_task(mixed_load_tolerant(running.url, 400, 8))
        await asyncio.sleep(1.5)
        running.process.terminate()
        return await task

    outcomes = asyncio.run(load_then_stop())
    code = running.stop()
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


def start_failure(tmp_path, prepare) -> str:
    for path in EXPORTS_DIR.glob("*.onnx"):
        shutil.copy(path, tmp_path / path.name)
    prepare(tmp_path)
    broken = Server({"SCENESPELL_EXPORTS": str(tmp_path)})
    code = broken.process.wait(timeout=60)
    output = broken.output()
    broken.stop()
    assert code != 0 and "Traceback" not in output, output
    (line,) = [line for line in output.splitlines() if line.startswith("error: ")]
    return line


def test_missing_export_stops_startup(tmp_path):
    line = start_failure(tmp_path, lambda d: (d / "p2g-vanilla.decoder.onnx").unlink())
    assert line.startswith(f"error: {tmp_path / 'p2g-vanilla.decoder.onnx'}: missing")


def test_export_whose_metadata_disagrees_is_refused(tmp_path):
    line = start_failure(tmp_path, lambda d: shutil.copy(d / "cnn-vanilla.onnx", d / "cnn-bn-gap.onnx"))
    assert "cnn-bn-gap.onnx" in line and "disagrees" in line


def test_export_from_a_newer_format_is_refused(tmp_path):
    import onnx

    def bump(directory):
        model = onnx.load(str(directory / "cnn.onnx"))
        for entry in model.metadata_props:
            if entry.key == "format_version":
                entry.value = json.dumps(99)
        onnx.save(model, str(directory / "cnn.onnx"))

    line = start_failure(tmp_path, bump)
    assert "cnn.onnx" in line and "format_version 99" in line
