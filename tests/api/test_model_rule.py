"""The `model` rule, one for every route family: no `model` or the served name runs the default
after model, an adapter's name that adapter, anything else is a 404 listing the names served
(`api.adapter_routing`). Checked here up to the choice of the after model, without an engine; the
served routes are checked end to end in tests/api/test_server.py and tests/api/test_lora_server.py."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from fastapi import HTTPException

from api.adapter_routing import after_adapter
from api.alpha_middleware import AlphaMiddleware
from api.original_routes import request_adapter
from api.server import build_routing
from api.settings import parse_settings
from engine.config import AlphaConfig

PAIR = ["--model-after", "a", "--model-before", "b"]


def _app(routing, loaded=()):
    lora_requests = {name: f"LoRARequest({name})" for name in loaded}
    return SimpleNamespace(state=SimpleNamespace(lda=SimpleNamespace(adapters=routing),
                                                 openai_serving_models=SimpleNamespace(lora_requests=lora_requests)))


@pytest.fixture
def plain():
    """A pair without LoRA, as `lda serve` builds its routing."""
    return _app(build_routing(parse_settings(PAIR)))


def test_a_pair_without_lora_takes_its_served_name_or_none(plain):
    assert after_adapter(plain, None) == after_adapter(plain, "lda") == (None, None)
    with pytest.raises(LookupError, match="The model `nope` does not exist. Models served: lda$"):
        after_adapter(plain, "nope")


def test_adapters_take_the_served_name_as_the_default_and_their_own_names():
    app = _app(build_routing(parse_settings(PAIR)), loaded=["small", "large"])
    app.state.lda.adapters.adapters[:] = ["small", "large"]  # as --after-adapter gives them
    app.state.lda.adapters.has_default = True
    assert after_adapter(app, "lda") == after_adapter(app, None) == ("small", "LoRARequest(small)")
    assert after_adapter(app, "large") == ("large", "LoRARequest(large)")
    with pytest.raises(LookupError, match="Models served: lda, small, large"):
        after_adapter(app, "nope")


def test_an_adapter_unloaded_meanwhile_is_a_404():
    app = _app(build_routing(parse_settings(PAIR)))
    app.state.lda.adapters.add("ckpt")
    with pytest.raises(LookupError, match="The model `ckpt` was just unloaded"):
        after_adapter(app, "ckpt")


def test_original_routes_take_the_served_name_without_lora(plain):
    """/generate_lda, /generate_lda_batch and /generate: `model: "lda"` on a pair without LoRA
    runs the after model (a 404 before the rule was one)."""
    assert request_adapter(SimpleNamespace(app=plain), "lda") == (None, None)
    with pytest.raises(HTTPException) as error:
        request_adapter(SimpleNamespace(app=plain), "nope")
    assert error.value.status_code == 404 and "Models served: lda" in error.value.detail


def _through_middleware(routing, body: dict) -> tuple[int, dict]:
    """POST /v1/completions through the alpha middleware: (status, the body the route got or the refusal)."""
    seen = {}

    async def route(scope, receive, send):
        seen["body"] = json.loads((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def go():
        sent = []

        async def receive():
            return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [], "app": None}
        await AlphaMiddleware(route, AlphaConfig(), adapters=routing)(scope, receive, send)
        status = sent[0]["status"]
        return status, seen.get("body") or json.loads(b"".join(m.get("body", b"") for m in sent[1:]))

    return asyncio.run(go())


def test_openai_routes_follow_the_same_rule(plain):
    routing = plain.state.lda.adapters
    status, got = _through_middleware(routing, {"model": "lda", "prompt": "hi"})
    assert status == 200 and got["model"] == "lda"
    status, got = _through_middleware(routing, {"prompt": "hi"})
    assert status == 200 and got["model"] == "lda"
    status, refusal = _through_middleware(routing, {"model": "nope", "prompt": "hi"})
    assert status == 404 and refusal["error"]["message"] == "The model `nope` does not exist. Models served: lda"
