"""The API key and body-size middlewares on a stand-in app: every combination, in milliseconds.

The live server's routes are checked with and without the key in test_original_clients.py; here
the policy itself: which paths are open, which headers carry the key, the route's error format,
and that nothing reads the body before the key is checked.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from api.access import APIKeyMiddleware, BodyLimitMiddleware
from api.settings import AccessSettings

KEY = "s3cret-key"


async def echo_app(scope, receive, send):
    """Reads the whole body and answers 200 with its size."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({"size": size}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def _client(metrics_require_key=False, max_body_bytes=1000, key=KEY):
    app = APIKeyMiddleware(BodyLimitMiddleware(echo_app, max_body_bytes), AccessSettings(key, metrics_require_key))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _run(coro):
    return asyncio.run(coro)


async def _get_all(client, requests):
    return [await client.request(method, path, headers=headers) for method, path, headers in requests]


PROTECTED = ["/generate_lda", "/generate_lda_batch", "/generate", "/tokenizer_compatibility", "/v1/completions",
             "/v1/chat/completions", "/v1/models", "/invocations", "/tokenize", "/version", "/docs", "/metricsX", "/healthz"]


@pytest.mark.parametrize("path", PROTECTED)
def test_every_route_but_health_and_metrics_needs_the_key(path):
    async def go():
        async with _client() as c:
            return await _get_all(c, [
                ("POST", path, {}),
                ("POST", path, {"authorization": "Bearer wrong"}),
                ("POST", path, {"x-api-key": "wrong"}),
                ("POST", path, {"authorization": f"Basic {KEY}"}),
                ("POST", path, {"authorization": f"Bearer {KEY}"}),
                ("POST", path, {"x-api-key": KEY}),
                ("POST", path, {"authorization": "Bearer wrong", "x-api-key": KEY}),
            ])

    statuses = [r.status_code for r in _run(go())]
    assert statuses == [401, 401, 401, 401, 200, 200, 401]


def test_refusals_use_the_routes_error_format():
    async def go():
        async with _client() as c:
            return await c.post("/v1/completions"), await c.post("/generate_lda")

    openai_style, original = _run(go())
    assert openai_style.json()["error"]["code"] == 401 and "API key" in openai_style.json()["error"]["message"]
    assert "Authorization: Bearer" in original.json()["detail"]
    assert openai_style.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("require, expected", [(False, 200), (True, 401)])
def test_health_is_open_and_metrics_follows_its_switch(require, expected):
    async def go():
        async with _client(metrics_require_key=require) as c:
            return await _get_all(c, [("GET", "/health", {}), ("GET", "/metrics", {}), ("GET", "/metrics/", {}),
                                      ("GET", "/metrics", {"x-api-key": KEY})])

    assert [r.status_code for r in _run(go())] == [200, expected, expected, 200]


def test_only_a_real_cors_preflight_skips_the_key():
    """A bare OPTIONS would reach mounted apps (vLLM's /metrics answers any method) unchecked."""
    preflight = {"origin": "http://example.org", "access-control-request-method": "POST"}

    async def go():
        async with _client(metrics_require_key=True) as c:
            return await _get_all(c, [("OPTIONS", "/metrics", {}), ("OPTIONS", "/v1/completions", {}),
                                      ("OPTIONS", "/v1/completions", preflight)])

    assert [r.status_code for r in _run(go())] == [401, 401, 200]


def test_without_a_key_everything_is_open():
    async def go():
        async with _client(key=None) as c:
            return await _get_all(c, [("POST", p, {}) for p in PROTECTED])

    assert {r.status_code for r in _run(go())} == {200}


def test_the_key_is_checked_before_the_body_is_read():
    received = []

    async def receive():
        received.append(1)
        return {"type": "http.request", "body": b"x" * 10, "more_body": False}

    sent = []

    async def send(message):
        sent.append(message)

    app = APIKeyMiddleware(BodyLimitMiddleware(echo_app, 1000), AccessSettings(KEY))
    scope = {"type": "http", "method": "POST", "path": "/generate_lda", "headers": [(b"content-length", b"10")]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 401 and received == []


def test_body_over_the_limit_is_413_naming_it_declared_or_chunked():
    async def chunks(n):
        for _ in range(n):
            yield b"x" * 300

    async def go():
        async with _client() as c:
            headers = {"x-api-key": KEY}
            return [
                await c.post("/generate_lda", content=b"x" * 1001, headers=headers),
                await c.post("/v1/completions", content=b"x" * 1001, headers=headers),
                await c.post("/generate_lda", content=chunks(4), headers=headers),
                await c.post("/generate_lda", content=chunks(3), headers=headers),
                await c.post("/generate_lda", content=b"x" * 1000, headers=headers),
                await c.post("/generate_lda", content=b"x" * 5000),  # no key: 401 first, body unread
            ]

    declared, openai_style, chunked, chunked_ok, at_limit, keyless = _run(go())
    assert declared.status_code == 413 and "LDA_MAX_BODY_BYTES=1000" in declared.json()["detail"]
    assert openai_style.status_code == 413 and "LDA_MAX_BODY_BYTES" in openai_style.json()["error"]["message"]
    assert chunked.status_code == 413
    assert chunked_ok.json() == {"size": 900} and at_limit.json() == {"size": 1000}
    assert keyless.status_code == 401


def test_vllms_own_key_check_is_dropped_from_the_app():
    from fastapi import FastAPI
    from starlette.middleware.cors import CORSMiddleware
    from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

    from api.server import drop_vllm_key_check

    app = FastAPI()
    app.add_middleware(CORSMiddleware, allow_origins=[])
    app.add_middleware(AuthenticationMiddleware, tokens=["k"])
    drop_vllm_key_check(app)
    assert [m.cls for m in app.user_middleware] == [CORSMiddleware]


def test_refusals_are_counted_for_the_routes_endpoint():
    from prometheus_client import REGISTRY

    def count():
        return REGISTRY.get_sample_value("lda_requests_total", {"endpoint": "generate_lda_batch", "status": "4xx"}) or 0.0

    before = count()

    async def go():
        async with _client() as c:
            await c.post("/generate_lda_batch")
            await c.post("/generate_lda_batch", content=b"x" * 2000, headers={"x-api-key": KEY})

    _run(go())
    assert count() == before + 2
