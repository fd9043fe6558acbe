"""The simplest server a user could write instead of SceneSpell, the baseline of `make bench`: a bare Starlette
app on uvicorn, one worker, serving POST /classify with the same model (exports/cnn.onnx), the same
preprocessing and the same response body, by the serving code itself (serving.classifier). No batching, no
threads: each request is decoded and classified on the event loop. uvicorn's defaults otherwise (its access
log included, as BentoML keeps its own).

python -m bench.bare_server --port 3001
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from exports import EXPORTS_DIR
from serving.classifier import SceneClassifier
from serving.errors import InputError


def create_app(model: Path, threads: int) -> Starlette:
    classifier = SceneClassifier(model, threads)

    async def classify(request: Request) -> JSONResponse:
        form = await request.form()
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            return JSONResponse({"error": "form field 'image' must be a file upload"}, status_code=400)
        try:
            pixels = classifier.preprocess(await upload.read())
        except InputError as error:
            return JSONResponse({"error": str(error)}, status_code=error.status)
        return JSONResponse(classifier.answer(classifier.predict(pixels[None])[0]))

    async def ready(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/classify", classify, methods=["POST"]), Route("/readyz", ready)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--exports", type=Path, default=Path(os.environ.get("SCENESPELL_EXPORTS") or EXPORTS_DIR))
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.exports / "cnn.onnx", args.threads), host=args.host, port=args.port, workers=1)


if __name__ == "__main__":
    main()
