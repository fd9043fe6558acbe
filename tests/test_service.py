"""The real `bentoml serve` on the committed exports, over HTTP."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image

from exports import EXPORTS_DIR
from exports.runtime import load_session
from serving.images import decode_image
from tests.images import encode, scene
from tests.server import Server

CLASSES = ["buildings", "forest", "glacier", "mountain", "sea", "street"]


def classify(server, data: bytes, filename="x.png", **fields):
    return httpx.post(f"{server.url}/classify", files={"image": (filename, data)}, data=fields, timeout=30)


def spell(server, **body):
    return httpx.post(f"{server.url}/spell", json=body, timeout=30)


def test_health(server):
    assert httpx.get(f"{server.url}/livez").status_code == 200
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    assert "bentoml" in httpx.get(f"{server.url}/metrics").text.lower()


def test_info_lists_every_export(server):
    info = httpx.get(f"{server.url}/info").json()
    classifiers = {c["name"]: c for c in info["classifiers"]}
    spellers = {s["name"]: s for s in info["spellers"]}
    assert {"vanilla", "bn-gap"} <= set(classifiers) and {"attention", "vanilla"} <= set(spellers)
    assert classifiers["vanilla"]["params"] == 5_340_742 and classifiers["bn-gap"]["params"] == 755_718
    assert classifiers["bn-gap"]["classes"] == CLASSES and "test_acc" in classifiers["bn-gap"]["metrics"]
    assert info["default_classifier"] in classifiers and info["default_speller"] in spellers
    assert "cer" in spellers["attention"]["metrics"]["test"]
    stressless = {name: s["metrics"]["valid"]["cer"] for name, s in spellers.items() if not s["stress"]}
    assert info["default_speller"] == min(stressless, key=stressless.get)  # the best that ignores stress digits


def test_openapi_lists_both_endpoints(server):
    paths = httpx.get(f"{server.url}/docs.json").json()["paths"]
    assert "/classify" in paths and "/spell" in paths


@pytest.mark.parametrize("model", [None, "vanilla", "bn-gap"])
def test_classify_equals_onnx_runtime_on_the_same_pixels(server, model):
    data = encode(scene(173, 111, seed=4))
    fields = {"model": model} if model else {}
    answer = classify(server, data, **fields).json()
    name = model or httpx.get(f"{server.url}/info").json()["default_classifier"]
    session = load_session(EXPORTS_DIR / f"cnn-{name}.onnx")
    (logits,) = session.run(["logits"], {"images": decode_image(data, 48, 48)[None]})
    expected = np.exp(logits[0] - logits[0].max()) / np.exp(logits[0] - logits[0].max()).sum()
    assert list(answer["probabilities"]) == CLASSES
    assert np.allclose([answer["probabilities"][c] for c in CLASSES], expected, atol=1e-5)
    assert answer["label"] == CLASSES[int(expected.argmax())]
    assert answer["confidence"] == pytest.approx(float(expected.max()), abs=1e-5)


def test_classify_real_test_images(server, intel48_data):
    """Real photos from the npz's test split, sent as PNG: the served label is the exported model's label."""
    session = load_session(EXPORTS_DIR / "cnn.onnx")
    images, labels = intel48_data.images["test"][::70], intel48_data.labels["test"][::70]
    (logits,) = session.run(["logits"], {"images": images})
    served = [classify(server, encode(Image.fromarray(image))).json()["label"] for image in images]
    assert served == [CLASSES[i] for i in logits.argmax(1)]
    assert np.mean([s == CLASSES[label] for s, label in zip(served, labels)]) > 0.6


@pytest.mark.parametrize(
    ("image", "fmt"),
    [
        (scene().convert("L"), "PNG"),
        (scene().convert("RGBA"), "PNG"),
        (scene().convert("P"), "GIF"),
        (scene().convert("CMYK"), "JPEG"),
        (scene(), "WEBP"),
        (scene(), "BMP"),
        (scene(), "TIFF"),
        (Image.fromarray(np.arange(150 * 150, dtype=np.uint16).reshape(150, 150) * 2), "PNG"),
        (scene(1, 1), "PNG"),
        (scene(4000, 30), "JPEG"),
    ],
    ids=["L", "RGBA", "P-gif", "CMYK-jpeg", "webp", "bmp", "tiff", "16-bit", "1x1", "wide"],
)
def test_classify_accepts_every_mode_and_format(server, image, fmt):
    response = classify(server, encode(image, fmt))
    assert response.status_code == 200, response.text
    assert sum(response.json()["probabilities"].values()) == pytest.approx(1.0)


def test_exif_orientation_is_honoured():
    upright = scene(120, 80, seed=2)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the viewer turns it 90 degrees clockwise
    stored = encode(upright.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=95)
    shown = encode(
        upright.transpose(Image.Transpose.ROTATE_90).transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95
    )
    difference = np.abs(decode_image(stored, 48, 48).astype(int) - decode_image(shown, 48, 48).astype(int))
    assert difference.mean() < 3


def truncated_jpeg() -> bytes:
    data = encode(scene(), "JPEG")
    return data[: len(data) // 2]


def bomb() -> bytes:
    """A PNG that declares 30000x30000 pixels but is a few KB: refused before decoding."""
    return encode(Image.new("L", (30000, 30000)), "PNG")


@pytest.mark.parametrize(
    ("files", "fields", "status", "words"),
    [
        ({"image": ("x.txt", b"hello, not an image")}, {}, 400, "image"),
        ({"image": ("x.jpg", b"")}, {}, 400, "empty"),
        ({"picture": ("x.png", encode(scene()))}, {}, 400, "'image' is missing"),
        ({}, {"image": "a text value"}, 400, "file upload"),
        ({"image": ("x.png", encode(scene()))}, {"model": "resnet-9000"}, 400, "unknown model"),
        ({"image": ("x.jpg", truncated_jpeg())}, {}, 400, "decode"),
        ({"image": ("x.png", bomb())}, {}, 400, "pixels"),
        ({"image": ("x.png", b"\x00" * (10 * 1024 * 1024 + 1))}, {}, 413, "limit"),
    ],
    ids=["not-an-image", "empty", "wrong-field", "text-field", "unknown-model", "truncated", "bomb", "too-big"],
)
def test_classify_refuses_bad_input_with_a_named_4xx(server, files, fields, status, words):
    response = httpx.post(f"{server.url}/classify", files=files or None, data=fields, timeout=30)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"not multipart at all", "multipart/form-data; boundary=xyz"), (b"{}", "application/json"), (b"", None)],
    ids=["malformed-multipart", "json", "empty"],
)
def test_classify_malformed_bodies_get_400(server, body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(f"{server.url}/classify", content=body, headers=headers, timeout=30)
    assert response.status_code == 400, response.text


def test_spell_greedy(server):
    answer = spell(server, phonemes="K AE1 T").json()
    assert answer["phonemes"] == ["K", "AE", "T"] and answer["decoding"] == "greedy"
    assert len(answer["spellings"]) == 1 and len(answer["scores"]) == 1 and answer["scores"][0] < 0
    assert answer["spellings"][0] in {"cat", "kat", "katt", "catt"}
    as_list = spell(server, phonemes=["k", "ae1", "t"], model="vanilla").json()
    assert as_list["model"] == "vanilla" and as_list["phonemes"] == ["K", "AE", "T"]


def test_spell_nucleus_is_reproducible(server):
    body = {"phonemes": "F OW1 N IY0 K S", "decoding": "nucleus", "n": 20, "top_p": 0.95, "temperature": 1.5}
    first, again = spell(server, **body, seed=7).json(), spell(server, **body, seed=7).json()
    other = spell(server, **body, seed=8).json()
    assert first["spellings"] == again["spellings"] and first["scores"] == again["scores"]
    assert len(first["spellings"]) == 20 and first["spellings"] != other["spellings"]


def test_spell_beam_returns_distinct_best_first(server):
    answer = spell(server, phonemes="T UW1", decoding="beam", n=4, beam_size=8).json()
    assert answer["decoding"] == "beam" and len(answer["spellings"]) == 4 == len(set(answer["spellings"]))
    assert all(score < 0 for score in answer["scores"])
    greedy = spell(server, phonemes="T UW1").json()["spellings"][0]
    wide = spell(server, phonemes="T UW1", decoding="beam", n=1, beam_size=1).json()["spellings"][0]
    assert wide == greedy


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"phonemes": "K AE T", "decoding": "beam", "n": 6, "beam_size": 3}, "beam_size"),
        ({"phonemes": "K AE T", "decoding": "beam", "beam_size": 0}, "beam_size"),
        ({"phonemes": "K XX T"}, "XX"),
        ({"phonemes": ""}, "empty"),
        ({"phonemes": []}, "empty"),
        ({"phonemes": " ".join(["AH"] * 65)}, "64"),
        ({"phonemes": 42}, "phonemes"),
        ({}, "phonemes"),
        ({"phonemes": "K AE T", "model": "nope"}, "unknown model"),
        ({"phonemes": "K AE T", "n": 2}, "greedy"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "n": 101}, "n"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "top_p": 0}, "top_p"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "temperature": 6}, "temperature"),
        ({"phonemes": "K AE T", "decoding": "nucleus", "seed": -1}, "seed"),
        ({"phonemes": "K AE T", "decoding": "beam-me-up"}, "decoding"),
        ({"phonemes": "K AE T", "n": "many"}, "n"),
    ],
)
def test_spell_refuses_bad_input_with_a_named_4xx(server, body, words):
    response = spell(server, **body)
    assert response.status_code in (400, 422), response.text
    assert words in response.text


def test_spell_invalid_json(server):
    response = httpx.post(f"{server.url}/spell", content=b"{nope", headers={"content-type": "application/json"})
    assert response.status_code == 400


def test_bearer_token_and_clean_shutdown():
    guarded = Server({"SCENESPELL_API_TOKEN": "s3cret"})
    try:
        guarded.wait_ready()
        body = {"phonemes": "K AE T"}
        assert httpx.post(f"{guarded.url}/spell", json=body).status_code == 401
        wrong = {"authorization": "Bearer nope"}
        assert httpx.post(f"{guarded.url}/spell", json=body, headers=wrong).status_code == 401
        assert httpx.get(f"{guarded.url}/info").status_code == 401
        assert httpx.get(f"{guarded.url}/livez").status_code == 200
        good = {"authorization": "Bearer s3cret"}
        assert httpx.post(f"{guarded.url}/spell", json=body, headers=good).status_code == 200
        assert httpx.get(f"{guarded.url}/info", headers=good).status_code == 200
    finally:
        code = guarded.stop()
    assert code == 0, guarded.output()[-2000:]


def test_each_kind_of_model_runs_on_its_own_threads(tmp_path):
    """SCENESPELL_THREADS goes to the classifiers' sessions, SCENESPELL_SPELLER_THREADS to both graphs of every
    speller (serving.service passes them to load_models)."""
    from serving.registry import REQUIRED_FILES, load_models

    for name in REQUIRED_FILES:
        (tmp_path / name).symlink_to(EXPORTS_DIR / name)
    models = load_models(tmp_path, classifier_threads=2, speller_threads=1)
    classifiers = [c.session for c in models.classifiers.values()]
    spellers = [graph for s in models.spellers.values() for graph in (s.graphs.encoder, s.graphs.decoder)]
    assert len(classifiers) == 3 and len(spellers) == 4
    assert {session.get_session_options().intra_op_num_threads for session in classifiers} == {2}
    assert {session.get_session_options().intra_op_num_threads for session in spellers} == {1}


def test_a_corrupt_export_stops_startup_with_one_line(tmp_path):
    for path in EXPORTS_DIR.glob("*.onnx"):
        (tmp_path / path.name).symlink_to(path)
    (tmp_path / "cnn-vanilla.onnx").unlink()
    (tmp_path / "cnn-vanilla.onnx").write_bytes(b"this is not onnx")
    broken = Server({"SCENESPELL_EXPORTS": str(tmp_path)})
    code = broken.process.wait(timeout=60)
    output = broken.output()
    broken.stop()
    assert code != 0
    assert f"error: {tmp_path / 'cnn-vanilla.onnx'}: cannot load ONNX model" in output
    assert "Traceback" not in output


def test_classify_many_concurrent_requests_keep_their_own_answers(server):
    """Under concurrency (so batches form), each request gets the answer for its own image, and a bad one
    in the crowd gets its own 400."""
    import concurrent.futures

    images = [encode(scene(60 + i, 50, seed=i)) for i in range(24)] + [b"junk"]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda d: classify(server, d), images))
    alone = [classify(server, d) for d in images[:3]]
    assert [r.status_code for r in together] == [200] * 24 + [400]
    for a, b in zip(alone, together[:3]):
        assert a.json()["probabilities"] == pytest.approx(b.json()["probabilities"], abs=1e-6)
    assert len({io.BytesIO(r.content).getvalue() for r in together[:24]}) > 1
