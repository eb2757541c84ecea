"""The request counter node and gateway share: each request counted by route and status; an
exception before the answer counts as 500 and, given a handler, is answered by it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from verinfer.api.counting import CountRequests


async def ok(_request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok", status_code=201)


async def broken(_request: Request) -> PlainTextResponse:
    raise RuntimeError("boom")


def counted(on_error: Callable[[Exception], ASGIApp] | None = None) -> tuple[ASGIApp, Counter]:
    """An app with the counter where node and gateway add it (inside Starlette's own error
    middleware, around the routes)."""
    counter = Counter("requests", "test", ["route", "status"], registry=CollectorRegistry())
    app = Starlette(routes=[Route("/ok", ok), Route("/broken", broken)], middleware=[
        Middleware(CountRequests, counter=counter, route_of=lambda scope: scope["path"],
                   on_error=on_error)])
    return app, counter


def get(app: ASGIApp, path: str) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get(path)
    return asyncio.run(go())


def test_each_request_is_counted_by_route_and_status() -> None:
    app, counter = counted()
    assert get(app, "/ok").status_code == 201
    assert get(app, "/ok").status_code == 201
    assert get(app, "/nowhere").status_code == 404
    assert counter.labels("/ok", "201")._value.get() == 2
    assert counter.labels("/nowhere", "404")._value.get() == 1


def test_an_escaped_exception_counts_as_500_and_goes_to_the_handler_if_any() -> None:
    app, counter = counted()
    with pytest.raises(RuntimeError, match="boom"):
        get(app, "/broken")
    assert counter.labels("/broken", "500")._value.get() == 1

    def envelope(exc: Exception) -> ASGIApp:
        return JSONResponse({"error": str(exc)}, status_code=503)

    app, counter = counted(envelope)
    response = get(app, "/broken")
    assert (response.status_code, response.json()) == (503, {"error": "boom"})
    assert counter.labels("/broken", "503")._value.get() == 1
