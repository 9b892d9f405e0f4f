"""ASGI middleware: shed requests early (503 + Retry-After) while the batcher is overloaded, refuse a body that
is not JSON (415), and refuse request bodies larger than a limit (413) or not UTF-8 (400) before anything
parses them.

BentoML 1.4 has no request-size limit of its own, so a client could make a worker buffer and parse an arbitrarily
large JSON document. A declared Content-Length over the limit is refused without reading the body; otherwise the
body is read up to the limit (refused as soon as it goes over), checked to be UTF-8 when it is JSON (JSON must
be; the JSON parser's own message for bad bytes is misleading), then replayed to the app.
BentoML also picks a request's parser by its Content-Type, whatever the API takes: a multipart form sent to a
JSON API failed inside it (500, with a traceback in the log), and text/plain was parsed as JSON anyway.
"""

from __future__ import annotations

import json


async def _send_error(send, status: int, message: str, headers: list[tuple[bytes, bytes]] = (),
                      close: bool = True) -> None:
    """A JSON error; ``close`` ends the connection (the unread body of a refused upload is not worth draining)."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ShedWhenOverloaded:
    """503 + Retry-After for the ``paths`` while ``overloaded()`` says so, before anything else looks at the request.

    Meant to run outermost (bentoml_patches.Service.add_outermost_middleware): under overload most requests are
    shed, and each one that first went through BentoML's metrics, tracing and timeout layers cost the event loop
    several times what the refusal itself does, CPU that the requests being served needed."""

    def __init__(self, app, paths: tuple[str, ...], overloaded):
        self.app = app
        self.paths = paths
        self.overloaded = overloaded   # () -> Retry-After seconds, or None to let the request in

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and scope["path"] in self.paths and scope["method"] == "POST"
                and (retry_after := self.overloaded()) is not None):
            return await _send_error(send, 503, "server overloaded: retry later",
                                     [(b"retry-after", str(retry_after).encode())], close=False)
        return await self.app(scope, receive, send)


def media_type(headers) -> bytes | None:
    """The Content-Type without its parameters, lower case; None when the request has none."""
    value = dict(headers or []).get(b"content-type")
    return None if value is None else value.split(b";", 1)[0].strip().lower()


class JsonBodyOnly:
    """415 for a request to one of ``paths`` whose body is declared as anything but JSON. A request without a
    Content-Type is taken as JSON (BentoML's own default, and what a bare HTTP client sends)."""

    def __init__(self, app, paths: tuple[str, ...]):
        self.app = app
        self.paths = paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] in self.paths:
            kind = media_type(scope.get("headers"))
            if kind not in (None, b"application/json"):
                return await _send_error(send, 415, f"unsupported Content-Type {kind.decode('latin-1')!r}: send "
                                                    "the body as JSON, with Content-Type: application/json")
        return await self.app(scope, receive, send)


class BodySizeLimit:
    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                return await _send_error(send, 400, "invalid Content-Length header")
            if length > limit:
                return await _send_error(send, 413, f"request body of {length} bytes exceeds the limit of "
                                                    f"{limit} bytes (SLIMSHIP_MAX_BODY_BYTES)")

        # Read it all (a chunked body has no declared length), but never more than the limit.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await _send_error(send, 413, f"request body exceeds the limit of {limit} bytes "
                                                    "(SLIMSHIP_MAX_BODY_BYTES)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False
        if media_type(scope.get("headers")) in (None, b"application/json"):
            try:
                body.decode("utf-8")
            except UnicodeDecodeError as e:
                return await _send_error(send, 400, f"request body is not valid UTF-8 (byte {e.start}): "
                                                    "JSON must be UTF-8 encoded")

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
