"""The one list of served routes (api/routes.py), without an engine: vLLM's app as `lda serve`
builds it, with every optional router vLLM 0.32 has turned on, walked route by route.

A path that is neither served nor refused fails the walk, so a vLLM upgrade that mounts a new route
needs a decision here before it ships; every refused path answers a 404 in the OpenAI error format
that names the served routes.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from api.routes import (
    REFUSED,
    RUNTIME_ADAPTER_ROUTES,
    SERVED,
    SERVED_WITHOUT_ADAPTERS,
    refuse_unserved,
    served_paths,
)

# Every optional router of vLLM 0.32's app, so the walk sees all the paths it can mount.
EVERYTHING_ON = {
    "VLLM_SERVER_DEV_MODE": "1",
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1",
    "VLLM_ENABLE_COHERE_API": "1",  # mounts only where the cohere SDK is installed (not in the test extra)
}


def _vllm_app():
    """vLLM's app with every router on, plus the pair's own (the original routes and scoring)."""
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from api.score_routes import router as score_router
    from api.original_routes import router as original_router

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(
        ["--model", "unused", "--enable-scale-out", "--profiler-config", '{"profiler": "torch", "torch_profiler_dir": "/tmp/unused"}']
    )
    args.enable_fault_tolerance = True
    app = build_app(args, ("generate",), None)
    app.include_router(original_router)
    app.include_router(score_router)
    return app


@pytest.fixture(scope="module")
def all_paths():
    with pytest.MonkeyPatch.context() as patch:
        for name, value in EVERYTHING_ON.items():
            patch.setenv(name, value)
        app = _vllm_app()
    return [route.path for route in app.router.routes]


@pytest.fixture
def app():
    with pytest.MonkeyPatch.context() as patch:
        for name, value in EVERYTHING_ON.items():
            patch.setenv(name, value)
        return _vllm_app()


def test_every_mounted_path_is_served_or_refused(all_paths):
    known = SERVED | SERVED_WITHOUT_ADAPTERS | RUNTIME_ADAPTER_ROUTES | REFUSED.keys()
    unlisted = sorted(set(all_paths) - known)
    assert not unlisted, f"vLLM mounts paths api/routes.py neither serves nor refuses: {unlisted}"
    # The two, and the walk saw the optional routers (not a vacuous pass).
    for path in ("/v1/systemone", "/scale_elastic_ep", "/is_scaling_elastic_ep", "/sleep", "/start_profile",
                 "/v1/load_lora_adapter", "/fault_tolerance/status", "/inference/v1/generate"):
        assert path in all_paths


def test_the_lists_do_not_overlap():
    groups = [SERVED, SERVED_WITHOUT_ADAPTERS, RUNTIME_ADAPTER_ROUTES, frozenset(REFUSED)]
    assert sum(len(g) for g in groups) == len(frozenset().union(*groups))


@pytest.mark.parametrize("after_is_adapter", [False, True])
@pytest.mark.parametrize("runtime", [False, True])
def test_served_paths(after_is_adapter, runtime):
    served = served_paths(after_is_adapter, runtime)
    assert SERVED <= served and not served & REFUSED.keys()
    assert (SERVED_WITHOUT_ADAPTERS <= served) is not after_is_adapter
    assert not (SERVED_WITHOUT_ADAPTERS & served) or not after_is_adapter
    assert (RUNTIME_ADAPTER_ROUTES <= served) is runtime and (not RUNTIME_ADAPTER_ROUTES & served or runtime)


def _call(app, requests):
    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.request(method, path, json=body) for method, path, body in requests]

    return asyncio.run(go())


@pytest.mark.parametrize("after_is_adapter", [False, True])
def test_refused_paths_answer_an_openai_404_naming_the_served_routes(app, after_is_adapter):
    served = served_paths(after_is_adapter, allow_runtime_adapters=False)
    refused = refuse_unserved(app, served)
    assert {"/v1/systemone", "/scale_elastic_ep", "/is_scaling_elastic_ep", "/v1/load_lora_adapter"} <= set(refused)
    assert ("/v1/responses" in refused) is after_is_adapter
    assert not set(refused) & served
    requests = [
        ("POST", "/v1/systemone", {"model": "lda", "messages": [{"role": "user", "content": "hi"}]}),
        ("POST", "/scale_elastic_ep", {"new_data_parallel_size": 2}),
        ("GET", "/scale_elastic_ep", None),
        ("POST", "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/nowhere"}),
    ]
    if after_is_adapter:  # served otherwise, by a handler that needs the engine this app lacks
        requests.append(("POST", "/v1/responses", {"model": "lda", "input": "hi"}))
    replies = _call(app, requests)
    for reply in replies:
        assert reply.status_code == 404, reply.text
        error = reply.json()["error"]
        assert error["code"] == 404 and error["type"] == "NotFoundError"
        assert "Served routes: " in error["message"] and "/v1/chat/completions" in error["message"]
        assert "/v1/systemone" not in error["message"].split("Served routes: ")[1]
    assert "structured decisions" in replies[0].json()["error"]["message"]
    assert "--allow-runtime-adapters" in replies[3].json()["error"]["message"]
    if after_is_adapter:
        assert "not served with LoRA adapters" in replies[4].json()["error"]["message"]


def test_openapi_lists_only_the_served_paths(app):
    served = served_paths(False, allow_runtime_adapters=True)
    refuse_unserved(app, served)
    [reply] = _call(app, [("GET", "/openapi.json", None)])
    listed = set(reply.json()["paths"])
    assert listed <= served and {"/v1/completions", "/generate_lda", "/v1/lda/score", "/v1/load_lora_adapter"} <= listed
    assert "/v1/systemone" not in listed and "/scale_elastic_ep" not in listed


def test_listed_paths_vllm_did_not_mount_are_refused_the_same_way():
    app = _vllm_app()  # vLLM's defaults: no runtime LoRA, no development routes
    mounted = {route.path for route in app.router.routes}
    assert "/v1/load_lora_adapter" not in mounted and "/sleep" not in mounted
    refuse_unserved(app, served_paths(False, allow_runtime_adapters=False))
    lora, sleep = _call(app, [("POST", "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/x"}), ("POST", "/sleep", None)])
    assert lora.status_code == sleep.status_code == 404
    assert "--allow-runtime-adapters" in lora.json()["error"]["message"]
    assert "development route" in sleep.json()["error"]["message"]
