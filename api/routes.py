"""Which of vLLM's routes the pair serves: one list, and every other route answers a 404.

vLLM 0.32's app mounts about 35 routes, more with its development mode, the profiler, fault
tolerance, the Cohere API or runtime LoRA turned on. Some mean nothing for a pair of models
(`/v1/systemone` answers 501: the pair implements no structured decisions) and some are operator
controls that must not sit on the public port (`/scale_elastic_ep` asks the engine to rescale).
Deny by default: once the app is built, every route whose path is not served here is replaced by a
404 in the OpenAI error format that says why and names the routes that are served, so a vLLM
upgrade that adds a route serves nothing new until someone lists it. tests/api/test_routes.py walks
the app vLLM builds (every optional router on) and fails on a path that is neither served nor
refused here, which makes that decision explicit.

Some of vLLM's generation routes cannot pick a LoRA adapter (they never see the alpha middleware's
routing, `api/adapter_routing.py`): when the after model is adapters on a bare base, a request there
would run the bare base as the after model and LDA would amplify nothing, silently. They are served
only when the after model has its own weights. The runtime-adapter routes are served exactly when
runtime adapters are allowed (`ServerSettings.allow_runtime_adapters`).
"""

from __future__ import annotations

import logging

from api.settings import setting

logger = logging.getLogger("lda.routes")

SERVED = frozenset({
    # health, load balancers and monitoring
    "/health", "/ping", "/metrics", "/version", "/load",
    # the API's own description
    "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
    # the OpenAI routes that carry alpha, and the ones that only tokenize or list
    "/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize", "/detokenize", "/v1/messages/count_tokens",
    # the original project's routes (api/original_routes.py) and scoring (api/score_routes.py)
    "/generate_lda", "/generate_lda_batch", "/generate", "/tokenizer_compatibility",
    "/v1/lda/score",
})
"""Paths served in every configuration."""

SERVED_WITHOUT_ADAPTERS = frozenset({
    "/v1/chat/completions/batch", "/v1/responses", "/v1/responses/{response_id}", "/v1/responses/{response_id}/cancel",
    "/v1/messages", "/generative_scoring", "/invocations",
})
"""vLLM routes that generate (or serve what generating stored) but cannot pick an adapter: served when
the after model has its own weights, refused when it is LoRA adapters on a bare base."""

RUNTIME_ADAPTER_ROUTES = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})
"""Served exactly when runtime adapters are allowed (`--allow-runtime-adapters`)."""

WEIGHTS_ROUTES = frozenset({"/v1/lda/weights"})
"""Served exactly when full-weight loads are allowed (`--allow-weight-loads`)."""

GENERATION_PATHS = frozenset({
    "/v1/completions", "/v1/chat/completions", "/v1/chat/completions/batch", "/v1/responses", "/v1/messages",
    "/invocations",
})
"""The served vLLM routes that decode text, where LDA_MAX_TOKENS is checked (the original routes check
it themselves; /generative_scoring scores one next token)."""

_OPERATOR = "an operator route, not for the public port"
_DEV = "a development route (VLLM_SERVER_DEV_MODE), not for the public port"
_SCALE_OUT = ("vLLM's scale-out API for an external router (off unless --enable-scale-out); "
              "untested with the pair's composite model")
REFUSED = {
    "/v1/systemone": "vLLM's structured decisions API; the pair model does not implement it",
    "/cohere/v2/chat": "vLLM's Cohere API (VLLM_ENABLE_COHERE_API, with the cohere SDK); untested with the pair",
    "/cohere/v2/chat/render": "vLLM's Cohere API (VLLM_ENABLE_COHERE_API, with the cohere SDK); untested with the pair",
    "/scale_elastic_ep": f"it rescales elastic expert parallelism, which means nothing for the pair; {_OPERATOR}",
    "/is_scaling_elastic_ep": f"elastic expert parallelism means nothing for the pair; {_OPERATOR}",
    "/kv_event_sources": f"KV-cache event publishers for external KV-aware routers; {_OPERATOR}",
    "/start_profile": f"the profiler's control (--profiler-config); {_OPERATOR}",
    "/stop_profile": f"the profiler's control (--profiler-config); {_OPERATOR}",
    "/fault_tolerance/apply": f"fault-tolerance control (--enable-fault-tolerance); {_OPERATOR}",
    "/fault_tolerance/status": f"fault-tolerance control (--enable-fault-tolerance); {_OPERATOR}",
    "/adapters": "SageMaker's spelling of adapter loading; runtime adapters use /v1/load_lora_adapter (--allow-runtime-adapters)",
    "/adapters/{adapter_name}": "SageMaker's spelling of adapter unloading; runtime adapters use /v1/unload_lora_adapter (--allow-runtime-adapters)",
    **dict.fromkeys((
        "/v1/chat/completions/render", "/v1/completions/render", "/v1/messages/render", "/v1/responses/render",
        "/v1/chat/completions/derender", "/v1/completions/derender", "/inference/v1/generate", "/inference/v1/abort_requests",
    ), _SCALE_OUT),
    **dict.fromkeys((
        "/reset_prefix_cache", "/reset_mm_cache", "/reset_encoder_cache", "/collective_rpc", "/server_info", "/sleep",
        "/wake_up", "/is_sleeping", "/release_kv_cache_memory", "/pause", "/resume", "/is_paused", "/abort_requests",
        "/init_weight_transfer_engine", "/shutdown_weight_transfer_engine", "/start_weight_update",
        "/start_draft_weight_update", "/update_weights", "/finish_weight_update", "/update_weight_version",
        "/weight_info", "/weight_checker", "/get_world_size",
    ), _DEV),
}
"""vLLM 0.32's other paths, each with the reason it is refused (named in its 404)."""

NOT_WITH_ADAPTERS = "it is not served with LoRA adapters (it cannot pick one; use /v1/completions, /v1/chat/completions or the original routes)"
_ADAPTERS, _WEIGHTS = setting("pair.runtime_adapters"), setting("server.allow_weight_loads")
RUNTIME_ADAPTERS_OFF = f"runtime adapters are off (start the server with {_ADAPTERS.flag}, or {_ADAPTERS.env}=1)"
WEIGHT_LOADS_OFF = f"full-weight loads are off (start the server with {_WEIGHTS.flag}, or {_WEIGHTS.env}=1)"
UNLISTED = "this server does not serve it"


def served_paths(after_is_adapter: bool, allow_runtime_adapters: bool, allow_weight_loads: bool = False) -> frozenset[str]:
    """The paths served by a server whose after model is (or is not) LoRA adapters on a bare base."""
    paths = set(SERVED)
    if allow_weight_loads:
        paths |= WEIGHTS_ROUTES
    if not after_is_adapter:
        paths |= SERVED_WITHOUT_ADAPTERS
    if allow_runtime_adapters:
        paths |= RUNTIME_ADAPTER_ROUTES
    return frozenset(paths)


def refusal_reason(path: str) -> str:
    """Why a path that is not served is refused."""
    if path in SERVED_WITHOUT_ADAPTERS:
        return NOT_WITH_ADAPTERS
    if path in RUNTIME_ADAPTER_ROUTES:
        return RUNTIME_ADAPTERS_OFF
    if path in WEIGHTS_ROUTES:
        return WEIGHT_LOADS_OFF
    return REFUSED.get(path, UNLISTED)


def refusal_message(path: str, served: frozenset[str]) -> str:
    listed = ", ".join(sorted(p for p in served if p not in ("/docs/oauth2-redirect",)))
    return f"{path} is not served: {refusal_reason(path)}. Served routes: {listed}"


ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _refusal(message: str):
    from fastapi.responses import JSONResponse

    body = {"error": {"message": message, "type": "NotFoundError", "param": None, "code": 404}}

    async def refuse(request) -> JSONResponse:
        return JSONResponse(body, status_code=404)

    return refuse


def refuse_unserved(app, served: frozenset[str]) -> list[str]:
    """Replace every mounted route whose path is not in `served` by one 404 answer per path (any
    method, left out of /openapi.json); the refused paths, mounted ones first.

    The paths listed here that vLLM did not mount in this configuration (the runtime-adapter routes
    without VLLM_ALLOW_RUNTIME_LORA_UPDATING, the development routes) get the same answer, so a
    refused route reads the same whatever vLLM's own switches say. Called after every router is
    included: a route added later would be served unchecked.
    """
    from starlette.routing import Route

    kept, refused = [], []
    for route in app.router.routes:
        path = getattr(route, "path", None)
        if path in served:
            kept.append(route)
        elif path not in refused:
            refused.append(path)
    listed = sorted((SERVED_WITHOUT_ADAPTERS | RUNTIME_ADAPTER_ROUTES | WEIGHTS_ROUTES | REFUSED.keys()) - served - set(refused))
    # The refusals go last: a served route with a path parameter (/v1/responses/{response_id}, GET)
    # matches its own method first, and any other method falls through to the refusal.
    app.router.routes[:] = kept + [
        Route(path, _refusal(refusal_message(path, served)), methods=ALL_METHODS, include_in_schema=False)
        for path in [*refused, *listed]
    ]
    app.openapi_schema = None  # FastAPI caches the schema: rebuild it from the served routes
    unlisted = [p for p in refused if refusal_reason(p) == UNLISTED]
    logger.info("serving %d routes; refusing %d vLLM paths with a 404", len(kept), len(refused) + len(listed))
    if unlisted:
        logger.warning("refusing routes api/routes.py does not list (a newer vLLM?): %s", ", ".join(unlisted))
    return [*refused, *listed]
