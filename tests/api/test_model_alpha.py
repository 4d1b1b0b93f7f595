"""alpha in the model name (`lda@2`) without a server: the parser, and the alpha middleware in front of
a recording app, on every kind of route (OpenAI with alpha, our own routes with a body alpha, routes
that take none, /v1/models). tests/api/test_server.py checks the same form end to end on the engine."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from api.adapter_routing import AdapterRouting
from api.alpha_middleware import AlphaMiddleware
from api.model_alpha import ModelAlpha, ModelAlphaError, split_model_alpha
from engine.config import AlphaConfig

POLICY = AlphaConfig(default_alpha=1.0, max_alpha=20.0)


@pytest.mark.parametrize(
    "model, expected",
    [("lda@2", ModelAlpha("lda", 2.0)), ("lda@-1", ModelAlpha("lda", -1.0)), ("lda@0.5", ModelAlpha("lda", 0.5)),
     ("lda@+1e1", ModelAlpha("lda", 10.0)), ("lda@.5", ModelAlpha("lda", 0.5)), ("org/model@3", ModelAlpha("org/model", 3.0)),
     ("a@b@2", ModelAlpha("a@b", 2.0)), ("lda", None), (None, None), (3, None), ("my@adapter", None)],
)
def test_split(model, expected):
    assert split_model_alpha(model, ["lda", "my@adapter"], 20.0) == expected


@pytest.mark.parametrize(
    "model, words",
    [("lda@", "got nothing"), ("lda@x", "got 'x'"), ("lda@inf", "got 'inf'"), ("lda@nan", "got 'nan'"), ("lda@ 2", "got ' 2'"),
     ("lda@1_0", "got '1_0'"), ("lda@21", "in [-1, 20]; got 21"), ("lda@-2", "got -2"), ("lda@1e400", "got 1e400"),
     ("@2", "names no model")],
)
def test_malformed_names_model(model, words):
    with pytest.raises(ModelAlphaError) as error:
        split_model_alpha(model, ["lda"], 20.0)
    assert str(error.value).startswith(f"model {model!r}") and words in str(error.value)


class Recorder:
    """An ASGI app that keeps the JSON body it got and answers {"ok": true} (or a /v1/models list)."""

    def __init__(self):
        self.bodies: list[dict] = []

    async def __call__(self, scope, receive, send):
        message = await receive()
        if scope["path"] == "/v1/models":
            out = {"object": "list", "data": [{"id": "lda", "object": "model"}, {"id": "ad", "object": "model"}]}
        else:
            self.bodies.append(json.loads(message["body"]))
            out = {"ok": True}
        body = json.dumps(out).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def call(app, path: str, body: dict | None = None, method: str = "POST") -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, json=body)

    return asyncio.run(go())


def middleware(adapters: AdapterRouting | None = None):
    recorder = Recorder()
    app = AlphaMiddleware(recorder, POLICY, adapters=adapters, served_name="lda", pair={"after": "a", "before": "b"},
                          other_generation_paths=frozenset({"/v1/responses", "/v1/messages"}))
    return app, recorder


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_openai_routes_get_the_alpha_in_vllm_xargs_and_the_bare_name(path):
    app, recorder = middleware()
    response = call(app, path, {"model": "lda@2", "prompt": "hi"})
    assert response.status_code == 200 and response.json()["alpha"] == 2.0
    assert recorder.bodies == [{"model": "lda", "prompt": "hi", "vllm_xargs": {"alpha": 2.0}}]


@pytest.mark.parametrize("extra", [{"alpha": 2}, {"vllm_xargs": {"alpha": 2.0}}, {"alpha": 2.0, "vllm_xargs": {"seed_x": 1}}])
def test_the_same_alpha_in_the_body_agrees(extra):
    app, recorder = middleware()
    assert call(app, "/v1/completions", {"model": "lda@2", **extra}).json()["alpha"] == 2.0
    assert recorder.bodies[0]["vllm_xargs"]["alpha"] == 2.0


@pytest.mark.parametrize("extra, field", [({"alpha": 3}, "alpha is 3"), ({"vllm_xargs": {"alpha": 0}}, "vllm_xargs.alpha is 0"),
                                          ({"alpha": "2"}, "alpha is '2'")])
def test_a_conflicting_body_alpha_is_a_400_naming_both(extra, field):
    app, recorder = middleware()
    response = call(app, "/v1/chat/completions", {"model": "lda@2", "messages": [], **extra})
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "model" and recorder.bodies == []
    assert "model 'lda@2' asks alpha 2" in error["message"] and field in error["message"]


@pytest.mark.parametrize("model", ["lda@", "lda@x", "lda@21"])
def test_malformed_forms_are_400s_naming_model(model):
    app, recorder = middleware()
    response = call(app, "/v1/completions", {"model": model, "prompt": "hi"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "model" and recorder.bodies == []


def test_adapter_names_take_the_form_and_unknown_names_stay_404():
    routing = AdapterRouting("lda", ["ad", "my@ad"])
    app, recorder = middleware(routing)
    assert call(app, "/v1/completions", {"model": "ad@1.5"}).json()["alpha"] == 1.5
    assert call(app, "/v1/completions", {"model": "my@ad"}).json()["alpha"] == 1.0  # served as it is
    assert call(app, "/v1/completions", {"model": "lda@0"}).json()["alpha"] == 0.0
    assert [b["model"] for b in recorder.bodies] == ["ad", "my@ad", "ad"]  # the served name runs the default adapter
    missing = call(app, "/v1/completions", {"model": "nope@2"})
    assert missing.status_code == 404 and "Models served: lda, ad, my@ad" in missing.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/generate_lda", "/generate_lda_batch", "/v1/lda/score"])
def test_routes_with_a_body_alpha_get_it_there(path):
    app, recorder = middleware()
    assert call(app, path, {"model": "lda@-1", "prompt": "p@q"}).status_code == 200
    assert recorder.bodies == [{"model": "lda", "prompt": "p@q", "alpha": -1.0}]
    call(app, path, {"prompt": "a@b"})  # no model-name alpha: the body goes on as sent
    assert recorder.bodies[1] == {"prompt": "a@b"}


def test_original_routes_answer_in_their_own_error_format():
    app, recorder = middleware()
    response = call(app, "/generate_lda", {"model": "lda@2", "alpha": 1, "prompt": "p"})
    assert response.status_code == 400 and response.json()["detail"].startswith("model 'lda@2' asks alpha 2 but alpha is 1")
    response = call(app, "/generate", {"model": "lda@2", "prompt": "p"})
    assert response.status_code == 400 and "send it to /generate_lda" in response.json()["detail"]
    assert recorder.bodies == []


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/messages"])
def test_routes_without_alpha_refuse_a_model_name_alpha(path):
    app, recorder = middleware()
    response = call(app, path, {"model": "lda@2", "input": "hi"})
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "model" and "does not take a per-request alpha" in error["message"]
    assert call(app, path, {"model": "lda", "input": "hi"}).status_code == 200


def test_models_documents_the_form_on_each_entry_and_names_the_pair():
    app, _ = middleware()
    listing = call(app, "/v1/models", method="GET").json()
    assert listing["lda_pair"] == {"after": "a", "before": "b"}
    cards = listing["data"]
    assert [c["lda_alpha"]["model_name_form"] for c in cards] == ["lda@<alpha>", "ad@<alpha>"]
    assert cards[0]["lda_alpha"] | {"note": None} == {"default": 1.0, "min": -1.0, "max": 20.0, "model_name_form": "lda@<alpha>", "note": None}
