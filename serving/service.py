"""The SceneSpell HTTP service: the models of exports/ wired to typed BentoML APIs.

bentoml serve serving.service:SceneSpell
"""

from __future__ import annotations

import asyncio
import json
import os

import bentoml
from starlette.applications import Starlette
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.batching import MicroBatcher
from serving.errors import InputError
from serving.middleware import BearerToken, BodyLimit
from serving.registry import StartupError, load_models
from serving.schemas import MAX_UPLOAD_BYTES, ClassifyForm, ClassifyResponse, SpellRequest, SpellResponse

CPUS = os.cpu_count() or 1
BATCHING = os.environ.get("SCENESPELL_BATCHING", "1") != "0"


def whole_number(variable: str, default: int) -> int:
    value = os.environ.get(variable, str(default))
    if not value.isdigit() or int(value) < 1:
        raise SystemExit(f"error: {variable}={value!r}: expected a whole number >= 1")
    return int(value)


# Checked at import, before workers start: a bad export or setting stops `bentoml serve` with one line.
# A speller's session gets one thread by default: an LSTM step is too small for a second intra-op thread to pay
# (it is slower with two, measured in `make bench`), and /spell requests then run side by side, one per core.
THREADS = whole_number("SCENESPELL_THREADS", min(CPUS, 2))
SPELLER_THREADS = whole_number("SCENESPELL_SPELLER_THREADS", 1)
try:
    MODELS = load_models(classifier_threads=THREADS, speller_threads=SPELLER_THREADS)
except StartupError as error:
    raise SystemExit(f"error: {error}") from None


def error(message: str, status: int = 400) -> Response:
    """A JSON error body; ASCII-escaped, since a message may quote a client's string with lone surrogates."""
    return Response(json.dumps({"error": message}), status_code=status, media_type="application/json")


def choose(models: dict, name: str | None, default: str):
    """A model loaded at startup, by name; a client's string is only ever a key here, never a path."""
    if name is None:
        return models[default]
    if name not in models:
        raise InputError(f"field 'model': unknown model {name!r}; known: {', '.join(sorted(models))}")
    return models[name]


async def info(request):
    return JSONResponse(MODELS.describe())


info_app = Starlette(routes=[Route("/info", info, methods=["GET", "POST"])])


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(name="scenespell", workers=1, traffic={"timeout": 60}, http={"port": 3000})
class SceneSpell:
    def __init__(self) -> None:
        self.models = MODELS
        self.batchers = {name: MicroBatcher(c.predict) for name, c in MODELS.classifiers.items()}

    @bentoml.api(route="/classify", input_spec=ClassifyForm)
    async def classify(self, image: bytes, model: str | None, problem: str | None) -> ClassifyResponse:
        """Classify a scene photo: buildings, forest, glacier, mountain, sea or street."""
        if problem:
            return error(problem)
        try:
            classifier = choose(self.models.classifiers, model, self.models.default_classifier)
            pixels = await asyncio.to_thread(classifier.preprocess, image)
        except InputError as bad:
            return error(str(bad), bad.status)
        if BATCHING:
            probabilities = await self.batchers[classifier.name].submit(pixels)
        else:
            probabilities = (await asyncio.to_thread(classifier.predict, pixels[None]))[0]
        return ClassifyResponse(**classifier.answer(probabilities))

    @bentoml.api(route="/spell", input_spec=SpellRequest)
    async def spell(
        self,
        phonemes: str | list[str],
        model: str | None,
        decoding: str,
        n: int,
        top_p: float,
        temperature: float,
        seed: int | None,
        beam_size: int | None,
        problem: str | None,
    ) -> SpellResponse:
        """Spell a word from its ARPAbet pronunciation."""
        if problem:
            return error(problem)
        try:
            speller = choose(self.models.spellers, model, self.models.default_speller)
            symbols = speller.parse(phonemes)
            spellings, scores = await asyncio.to_thread(
                speller.spell, symbols, decoding, n, top_p, temperature, seed, beam_size
            )
        except InputError as bad:
            return error(str(bad), bad.status)
        return SpellResponse(
            phonemes=symbols, model=speller.name, decoding=decoding, spellings=spellings, scores=scores
        )


SceneSpell.add_asgi_middleware(BodyLimit, max_bytes=MAX_UPLOAD_BYTES)
SceneSpell.add_asgi_middleware(BearerToken, token=os.environ.get("SCENESPELL_API_TOKEN") or None)
