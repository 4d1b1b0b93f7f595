"""After-adapters added to and removed from the running pair: POST /v1/load_lora_adapter and
POST /v1/unload_lora_adapter, served only with `--allow-runtime-adapters`.

A training run writes a checkpoint (a PEFT adapter of a few MB) every few hundred steps; a monitor
wants each one diffed against the base without a server restart (about a minute on the demo pair).
vLLM 0.32 has these two routes (`vllm/entrypoints/serve/lora/api_router.py`, behind
`VLLM_ALLOW_RUNTIME_LORA_UPDATING`), with these request bodies (`LoadLoRAAdapterRequest`:
`lora_name`, `lora_path`; `UnloadLoRAAdapterRequest`: `lora_name`) and the same text answer on
success. We reuse its handler (`OpenAIServingModels.load_lora_adapter`, which numbers the adapter,
loads it into the engine and lists it at /v1/models) and put in front of it what it lacks for the
pair:

- the start-up checks (`engine/adapters.py`: base, hidden size, vocabulary, rank, target
  modules), each a 400 naming the problem, before the engine reads any weight: vLLM's own load
  answers a rank too large with a 500 and loads an adapter of another base of the same shape
  without a word;
- a name already served is a 409 (vLLM: 400), an unknown name to unload a 404, more adapters
  than `max_loras` a 400 naming the setting (each adapter keeps a slot, so any mix fits one batch);
- unloading frees the adapter's engine slot too (vLLM's only forgets the name);
- the routing of `api/adapter_routing.py` and the `lda_lora_adapters` gauge change with it, so
  the OpenAI routes, the original routes and /metrics see the adapter with the next request.

Loads and unloads run one at a time (a lock): the count check and the load must not interleave.
Requests in flight on other adapters are untouched: each carries its own LoRARequest, and the
engine adds an adapter between steps.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.lora.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest

from api import metrics
from api.access import ADAPTER_PATHS
from api.adapter_routing import AdapterRouting
from api.settings import named_errors, setting
from engine.adapters import AdapterError, AdapterSpec, check_joins, read_adapter
from engine.config import PairConfig, lora_targets

logger = logging.getLogger("lda.runtime_adapters")

MAX_LORAS_SETTING = setting("pair.max_loras").label

router = APIRouter()


class AdapterRouteError(Exception):
    """An answer other than success, in the OpenAI error format."""

    def __init__(self, status: int, message: str, kind: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}
        return JSONResponse({"error": error}, status_code=self.status)


def _bad(message: str, param: str | None = None) -> AdapterRouteError:
    return AdapterRouteError(400, message, "BadRequestError", param)


@dataclass(slots=True)
class RuntimeAdapters:
    """What the two routes change: the pair's served adapters. Kept on `app.state.lda.runtime`."""

    pair: PairConfig
    routing: AdapterRouting
    """Shared with the middleware and the original routes: updated in place."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def max_loras(self) -> int:
        return self.pair.max_loras or len(self.pair.adapters)

    def check_name(self, name: str, served: dict) -> None:
        if name in self.routing.names() or name in served:
            raise AdapterRouteError(409, f"the name {name!r} is already served; unload it first or pick another lora_name",
                                    "ConflictError", "lora_name")
        if len(served) >= self.max_loras:
            raise _bad(f"{len(served)} adapters are loaded ({', '.join(served)}); the limit is {MAX_LORAS_SETTING}="
                       f"{self.max_loras}: unload one first", "lora_name")

    def check_adapter(self, name: str, path: str) -> AdapterSpec:
        """The start-up checks (blocking: reads configs from disk); AdapterError names the problem.

        Only folders on the server's disk: a hub id would have a client make the server download.
        """
        if not Path(path).expanduser().is_dir():
            raise AdapterError(f"adapter {name!r}: lora_path {path!r} is not a folder on the server")
        spec = read_adapter(name, path)
        pair = self.pair
        named_errors("pair", lambda: check_joins(spec, pair.after, pair.before, pair.max_lora_rank, lora_targets(pair.adapters)))
        return spec

    async def load(self, serving_models, request: LoadLoRAAdapterRequest) -> str:
        name = request.lora_name
        if request.load_inplace:
            raise _bad("load_inplace is not supported: unload the adapter, then load it (under a new name if its "
                       "weights changed, so no cached prefix of the old weights is reused)", "load_inplace")
        async with self.lock:
            self.check_name(name, serving_models.lora_requests)
            try:
                spec = await asyncio.to_thread(self.check_adapter, name, request.lora_path)
            except AdapterError as error:
                raise _bad(str(error), "lora_path") from None
            loaded = LoadLoRAAdapterRequest(lora_name=name, lora_path=spec.path,
                                            is_3d_lora_weight=request.is_3d_lora_weight)
            answer = await serving_models.load_lora_adapter(loaded)
            if isinstance(answer, ErrorResponse):
                # The engine refused the weights (a missing or damaged file, an unexpected module):
                # a property of the adapter given, never a server error.
                raise _bad(f"adapter {name!r} ({spec.path}) could not be loaded: {answer.error.message}", "lora_path")
            self.routing.add(name)
            metrics.adapter_loaded(name)
            logger.info("loaded adapter %s (rank %d) from %s", name, spec.rank, spec.path)
            return answer

    async def unload(self, serving_models, engine_client, request: UnloadLoRAAdapterRequest) -> str:
        name = request.lora_name
        async with self.lock:
            if name not in self.routing.adapters:
                served = ", ".join(self.routing.adapters) or "none"
                raise AdapterRouteError(404, f"no adapter named {name!r} is loaded (loaded: {served})",
                                        "NotFoundError", "lora_name")
            if name == self.routing.default:
                raise _bad(f"{name!r} is the default adapter (what the served name {self.routing.served_name!r} "
                           "runs); it cannot be unloaded", "lora_name")
            lora = serving_models.lora_requests.get(name)
            self.routing.remove(name)  # first: no new request picks it from here on
            answer = await serving_models.unload_lora_adapter(UnloadLoRAAdapterRequest(lora_name=name))
            if lora is not None:
                # vLLM's unload only forgets the name; free the engine's slot for the next adapter.
                # A request still running on it is unharmed: the engine loads it again for that one.
                await engine_client.remove_lora(lora.lora_int_id)
            if not isinstance(answer, str):  # our routing and the slot are free either way; say what vLLM said
                logger.warning("vLLM's unload of %s answered: %s", name, getattr(getattr(answer, "error", None), "message", answer))
            metrics.adapter_unloaded(name)
            logger.info("unloaded adapter %s", name)
            return answer if isinstance(answer, str) else f"Success: LoRA adapter '{name}' removed successfully."


async def _parse(raw_request: Request, model: type[BaseModel]):
    try:
        data = await raw_request.json()
    except ValueError:
        raise _bad("the body must be a JSON object") from None
    try:
        request = model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(map(str, first["loc"]))
        raise _bad(f"{where}: {first['msg']}" if where else f"the body must be a JSON object: {first['msg']}",
                   str(first["loc"][0]) if first["loc"] else None) from None
    for name in ("lora_name", "lora_path"):
        if name in model.model_fields and not getattr(request, name).strip():
            raise _bad(f"{name} must not be empty", name)
    return request


async def _answer(raw_request: Request, work) -> Response:
    endpoint = ADAPTER_PATHS[raw_request.url.path]
    try:
        text = await work()
    except AdapterRouteError as error:
        metrics.record_request(endpoint, error.status)
        return error.response()
    metrics.record_request(endpoint, 200)
    return Response(status_code=200, content=text)


def _body(model: type[BaseModel]) -> dict:
    """The OpenAPI description of a body the route parses itself (to answer in its own format)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


@router.post("/v1/load_lora_adapter", openapi_extra=_body(LoadLoRAAdapterRequest))
async def load_lora_adapter(raw_request: Request) -> Response:
    state = raw_request.app.state

    async def work():
        request = await _parse(raw_request, LoadLoRAAdapterRequest)
        return await state.lda.runtime.load(state.openai_serving_models, request)

    return await _answer(raw_request, work)


@router.post("/v1/unload_lora_adapter", openapi_extra=_body(UnloadLoRAAdapterRequest))
async def unload_lora_adapter(raw_request: Request) -> Response:
    state = raw_request.app.state

    async def work():
        request = await _parse(raw_request, UnloadLoRAAdapterRequest)
        return await state.lda.runtime.unload(state.openai_serving_models, state.engine_client, request)

    return await _answer(raw_request, work)


def replace_vllm_routes(app, allowed: bool) -> None:
    """Take vLLM's own adapter routes out of `app` (mounted when VLLM_ALLOW_RUNTIME_LORA_UPDATING
    was set: they would run before ours, unchecked), then mount ours if runtime adapters are
    allowed. Not allowed, the paths are left unmounted: `api.routes.refuse_unserved` answers them
    with the 404 every unserved path gets, naming the switch."""
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in ADAPTER_PATHS]
    if allowed:
        app.include_router(router)
