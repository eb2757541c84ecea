"""ASGI middleware shared by node and gateway: every HTTP request counted by route and status.

A plain ASGI wrapper rather than `@app.middleware("http")`, which runs every response (and
every chunk of a stream) through an extra task and hides a client's going away from
`request.is_disconnected()`.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class CountRequests:
    """Counts each request in `counter` under (`route_of(scope)`, status); a request that
    raised before answering counts as 500. With `on_error`, an exception that escaped the app
    before the answer began is answered by the ASGI app `on_error(exc)` returns."""

    def __init__(self, app: ASGIApp, counter: Counter, route_of: Callable[[Scope], str],
                 on_error: Callable[[Exception], ASGIApp] | None = None) -> None:
        self.app, self.counter, self.route_of, self.on_error = app, counter, route_of, on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: int | None = None

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        except Exception as exc:
            if self.on_error is None or status is not None:
                raise  # no handler, or the answer has begun: nothing else can be sent
            await self.on_error(exc)(scope, receive, send_counted)
        finally:
            self.counter.labels(self.route_of(scope), str(status or 500)).inc()
