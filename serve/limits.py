"""ASGI middleware: refuse request bodies larger than a limit (413) or not UTF-8 (400), before anything parses them,
and shed requests early (503 + Retry-After) while the batcher is overloaded.

BentoML 1.4 has no request-size limit of its own, so a client could make a worker buffer and parse an arbitrarily
large JSON document. A declared Content-Length over the limit is refused without reading the body; otherwise the
body is read up to the limit (refused as soon as it goes over), checked to be UTF-8 when it is JSON (JSON must
be; the JSON parser's own message for bad bytes is misleading), then replayed to the app.
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


class BodySizeLimit:
    def __init__(self, app, max_body_bytes: int, shed_path: str | None = None, overloaded: list | None = None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Early shedding: overloaded[0]() -> Retry-After seconds or None. Checked before the body is read or
        # parsed, so an overloaded server spends next to nothing on a request it is going to refuse anyway.
        self.shed_path = shed_path
        self.overloaded = overloaded or [None]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        check = self.overloaded[0]
        if check is not None and scope.get("path") == self.shed_path and (retry_after := check()) is not None:
            return await _send_error(send, 503, "server overloaded: retry later",
                                     [(b"retry-after", str(retry_after).encode())], close=False)
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
        content_type = dict(scope.get("headers") or []).get(b"content-type", b"application/json")
        if b"json" in content_type:
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
