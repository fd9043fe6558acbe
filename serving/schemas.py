"""Typed request and response bodies of the HTTP API, so that /docs.json documents every field."""

from __future__ import annotations

import json
from typing import Annotated, ClassVar, Literal

import bentoml
from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema, WithJsonSchema

from serving.images import MAX_PIXELS

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_SEED = 2**63 - 1
MAX_PHONEMES = 64  # documented here; each speller enforces its own max_input_length from its export
# /docs.json is OpenAPI 3.0, where an exclusive bound is `minimum` plus `exclusiveMinimum: true` and a null is
# `nullable: true` (BentoML keeps only the first branch of pydantic's `anyOf`)
ABOVE_ZERO = {"minimum": 0, "exclusiveMinimum": True}
NULLABLE = {"nullable": True}
# Numbers are strict: `true` or "5" for a number is a mistyped field and gets a 400, as the contract says


class ParsedInput(bentoml.IODescriptor):
    """An API input that parses the request itself rather than through BentoML's default parsers, which
    answer some malformed requests with a 500. What cannot be used becomes `problem`, which the API method
    turns into a 400 naming it."""

    problem: SkipJsonSchema[str | None] = None

    @classmethod
    def refuse(cls, message: str):
        return cls.model_construct(**{**dict.fromkeys(cls.model_fields), "problem": message})


def describe(error: ValidationError) -> str:
    """One line per field: `field 'n': Input should be less than or equal to 100`."""
    messages: dict[str, list[str]] = {}
    for item in error.errors(include_url=False):
        field = str(item["loc"][0]) if item["loc"] else "body"
        messages.setdefault(field, []).append(item["msg"])
    return "; ".join(f"field '{field}': {' or '.join(dict.fromkeys(msgs))}" for field, msgs in messages.items())


class ClassifyForm(ParsedInput):
    """multipart/form-data with a file field `image`."""

    media_type: ClassVar[str] = "multipart/form-data"
    image: bytes = Field(
        description=f"the image file: JPEG, PNG, WebP, BMP, GIF or TIFF, at most {MAX_UPLOAD_BYTES:,} bytes "
        f"and {MAX_PIXELS:,} pixels; any mode; EXIF orientation honoured",
    )
    model: str | None = Field(None, description="which classifier answers (names from /info); default the best")

    @classmethod
    async def from_http_request(cls, request, serde):
        try:
            form = await request.form(max_files=4, max_fields=16)
        except Exception as error:  # starlette raises several types for malformed multipart bodies
            return cls.refuse(f"body is not a multipart/form-data form with a file field 'image' ({error})")
        upload, model = form.get("image"), form.get("model")
        if upload is None:
            return cls.refuse("form field 'image' is missing")
        if isinstance(upload, str):
            return cls.refuse("form field 'image' must be a file upload, not a text value")
        if model is not None and not isinstance(model, str):
            return cls.refuse("form field 'model' must be a text value")
        return cls(image=await upload.read(), model=model)


class ClassifyResponse(BaseModel):
    label: str = Field(description="the most probable class")
    confidence: float = Field(description="its probability")
    probabilities: dict[str, float] = Field(description="every class's probability")


Phonemes = Annotated[
    str | list[str],
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": MAX_PHONEMES},
            ]
        }
    ),
    Field(
        description="ARPAbet symbols separated by spaces, or a list of them; case-insensitive; "
        f"stress digits 0/1/2 allowed; 1 to {MAX_PHONEMES} symbols",
        examples=["K AE1 T"],
    ),
]
ModelName = Annotated[
    str | None, Field(description="which speller (names from /info); default the best", json_schema_extra=NULLABLE)
]
Decoding = Annotated[
    Literal["greedy", "nucleus", "beam"],
    Field(description="greedy (n must be 1), nucleus sampling, or beam search (the n best distinct spellings)"),
]
Count = Annotated[int, Field(ge=1, le=100, strict=True, description="number of spellings; greedy allows only 1")]
BeamSize = Annotated[
    int | None,
    Field(
        ge=1,
        le=100,
        strict=True,
        description="beam width for beam search; default max(n, 5)",
        json_schema_extra=NULLABLE,
    ),
]
TopP = Annotated[
    float,
    Field(
        gt=0,
        le=1,
        strict=True,
        description="nucleus mass: sample from the smallest set of letters reaching it",
        json_schema_extra=ABOVE_ZERO,
    ),
]
Temperature = Annotated[
    float, Field(gt=0, le=5, strict=True, description="softmax temperature for sampling", json_schema_extra=ABOVE_ZERO)
]
Seed = Annotated[
    int | None,
    Field(
        ge=0,
        le=MAX_SEED,
        strict=True,
        description="same seed, same samples; null for fresh ones",
        json_schema_extra=NULLABLE,
    ),
]


class SpellRequest(ParsedInput):
    """A JSON object, read as JSON whatever the Content-Type says (curl -d sends a form type by default)."""

    phonemes: Phonemes
    model: ModelName = None
    decoding: Decoding = "greedy"
    n: Count = 1
    top_p: TopP = 0.8
    temperature: Temperature = 1.0
    seed: Seed = None
    beam_size: BeamSize = None

    @classmethod
    async def from_http_request(cls, request, serde):
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError as error:
            return cls.refuse(f"body is not valid JSON ({error})")
        except RecursionError:
            return cls.refuse("body is JSON nested too deeply to read")
        if not isinstance(data, dict):
            return cls.refuse("body must be a JSON object with a field 'phonemes'")
        data.pop("problem", None)
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            return cls.refuse(describe(error))


class SpellResponse(BaseModel):
    phonemes: list[str] = Field(
        description="the symbols the model read: upper case, stress digits removed unless it reads stress"
    )
    model: str
    decoding: str
    spellings: list[str] = Field(description="n spellings: in the order drawn (nucleus), best first (beam)")
    scores: list[float] = Field(description="each spelling's log-probability under the model")
