"""ASGI middleware in front of every route: optional bearer-token access, and a request-body limit."""

from __future__ import annotations

import hmac
import json

OPEN_PATHS = ("/livez", "/readyz")  # health probes answer without a token


async def send_json(send, status: int, body: dict, headers: tuple = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})  # fmt: skip
    await send({"type": "http.response.body", "body": payload})


class BearerToken:
    """With a token configured, every path but the health probes needs `Authorization: Bearer <token>`."""

    def __init__(self, app, token: str | None = None):
        self.app, self.expected = app, f"Bearer {token}".encode() if token else None

    async def __call__(self, scope, receive, send):
        if self.expected is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            return await send_json(send, 401, {"error": "missing or wrong bearer token in the Authorization header"},
                                   ((b"www-authenticate", b"Bearer"),))  # fmt: skip
        return await self.app(scope, receive, send)


class BodyLimit:
    """Refuse a request body over max_bytes with 413, by Content-Length or by counting a chunked body.

    The body is read here, up to the limit, and handed on whole, so no handler ever sees a cut one.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, send):
        return send_json(send, 413, {"error": f"request body over the limit of {self.max_bytes:,} bytes"})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await (self._too_large(send) if length.isdigit() else
                          send_json(send, 400, {"error": "Content-Length header is not a number"}))  # fmt: skip
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._too_large(send)
            if not message.get("more_body", False):
                break
        body, delivered = b"".join(chunks), False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
