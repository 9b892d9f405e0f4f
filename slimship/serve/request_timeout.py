"""BentoML's request timeout, without keeping every finished request alive until its timer fires.

BentoML 1.4's TimeoutMiddleware (``traffic={"timeout": ...}``) arms ``loop.call_later(timeout, ...)`` for each
request and never cancels it. The timer holds the request's future and the contextvars Context it was armed in
(with the request's tracing span), so at 600 req/s and a 30 s timeout some 18,000 finished requests stay
reachable: the event loop's timer heap grows, and each full garbage collection walks all of them. Measured on
2 cores: 60-300 ms pauses in which no request is answered (p99 at one client 60 ms instead of 5 ms).

``call_with_cancelled_timer`` takes the place of that middleware's ``__call__`` (serve/bentoml_patches.py): it
behaves the same (a 504 JSON error after ``timeout`` seconds without a response starting) and cancels the timer
once the request is done. The timeout is a required, positive setting in BentoML 1.4, so the middleware cannot
simply be left out.
"""

from __future__ import annotations

import asyncio


async def call_with_cancelled_timer(self, scope, receive, send) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    started = loop.create_future()            # set once the response starts (or on timeout, with an error)

    def time_out() -> None:
        if not started.done():
            started.set_exception(asyncio.TimeoutError())

    timer = loop.call_later(self.timeout, time_out)

    async def send_and_mark(message) -> None:
        if not started.done():
            started.set_result(None)
        await send(message)

    request = asyncio.ensure_future(self.app(scope, receive, send_and_mark))
    try:
        await started
    except asyncio.TimeoutError:
        if request.cancel():
            from starlette.responses import JSONResponse

            response = JSONResponse({"error": f"Not able to process the request in {self.timeout} seconds"},
                                    status_code=504)
            await response(scope, receive, send)
    else:
        await request
    finally:
        timer.cancel()

