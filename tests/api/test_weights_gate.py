"""The weights gate and middleware (api/weights_routes.py) without an engine: a load waits for the
requests in flight and holds new ones; each response carries the versions it ran on; an unhealthy
stack is a 503; the route is a 404 that names the flag when loads are off."""

from __future__ import annotations

import asyncio
import json

import pytest

from api.routes import refusal_message, served_paths
from api.weights_routes import Gate, RuntimeWeights, WeightsMiddleware
from engine.config import adapter_pair
from engine.weights import PairWeights


def test_a_writer_waits_for_readers_and_holds_new_ones():
    async def scenario():
        gate, events = Gate(), []

        async def reader(name, hold):
            async with gate.reading():
                events.append(f"{name} in")
                await asyncio.sleep(hold)
                events.append(f"{name} out")

        async def writer():
            async with gate.closed(timeout=5):
                events.append("load")
                await asyncio.sleep(0.05)
                events.append("loaded")

        first = asyncio.create_task(reader("old", 0.1))
        await asyncio.sleep(0.01)
        load = asyncio.create_task(writer())
        await asyncio.sleep(0.01)
        late = asyncio.create_task(reader("new", 0))
        await asyncio.gather(first, load, late)
        return events

    assert asyncio.run(scenario()) == ["old in", "old out", "load", "loaded", "new in", "new out"]


def test_a_writer_gives_up_after_its_timeout_and_reopens_the_gate():
    async def scenario():
        gate = Gate()
        async with gate.reading():
            with pytest.raises(TimeoutError):
                async with gate.closed(timeout=0.05):
                    pass
        async with gate.reading():  # open again
            return True

    assert asyncio.run(scenario())


def _runtime(tmp_path) -> RuntimeWeights:
    return RuntimeWeights(PairWeights(adapter_pair(str(tmp_path / "after-7"), str(tmp_path / "base"))), allowed=True)


def _call(middleware, path, method="POST"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "method": method, "headers": []}
    asyncio.run(middleware(scope, receive, send))
    return sent


def test_responses_carry_the_versions_they_ran_on(tmp_path):
    seen = {}

    async def app(scope, receive, send):
        seen.update(scope.get("lda.weights") or {})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}", "more_body": False})

    middleware = WeightsMiddleware(app, _runtime(tmp_path), frozenset({"/v1/completions"}))
    sent = _call(middleware, "/v1/completions")
    headers = dict(sent[0]["headers"])
    assert headers[b"x-lda-weights-after"] == b"after-7" and headers[b"x-lda-weights-before"] == b"base"
    assert seen == {"after": "after-7", "before": "base"}


def test_an_unhealthy_stack_is_a_503_on_the_gated_routes_only(tmp_path):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})

    runtime = _runtime(tmp_path)
    runtime.weights.stacks["before"].healthy = False
    middleware = WeightsMiddleware(app, runtime, frozenset({"/v1/completions"}))
    refused = _call(middleware, "/v1/completions")
    assert refused[0]["status"] == 503
    assert "before stack" in json.loads(refused[1]["body"])["error"]["message"]
    assert _call(middleware, "/health", "GET")[0]["status"] == 200


def test_models_cards_list_the_versions(tmp_path):
    async def app(scope, receive, send):
        body = json.dumps({"object": "list", "data": [{"id": "lda"}]}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    sent = _call(WeightsMiddleware(app, _runtime(tmp_path), frozenset()), "/v1/models", "GET")
    card = json.loads(sent[1]["body"])["data"][0]
    assert card["lda_weights"]["after"]["version"] == "after-7"
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(sent[1]["body"])).encode()


def test_the_route_is_refused_with_the_flag_named_when_loads_are_off():
    assert "/v1/lda/weights" not in served_paths(False, False)
    assert "/v1/lda/weights" in served_paths(False, False, allow_weight_loads=True)
    assert "--allow-weight-loads" in refusal_message("/v1/lda/weights", served_paths(False, False))
