"""Full-weight checkpoints into one stack of the running pair: POST /v1/lda/weights (and GET, the
versions served), only with `--allow-weight-loads`; and the gate every generation request passes.

A training run saves a full checkpoint every few hundred steps; a monitor diffs each against the
base (or against the checkpoint before it) without a server restart. The body is
`{"stack": "after" | "before", "path": <checkpoint folder on the server>, "version": <label>}`.

A load, one at a time (a second while one runs is a 409):

1. checks the folder against the stack's current checkpoint (`engine/checkpoints.py`), on a worker
   thread while the engine keeps serving: a 400 naming the field and both values, nothing touched;
2. closes the gate: new generation requests wait at it, and the load waits (at most
   `drain_timeout_s`, else a 503 and nothing touched) until every request that passed it has
   finished, on the old weights: no response mixes weights, and each is labelled with the version
   it ran on. vLLM's scheduler is paused as well (mode "wait"), for anything that reaches the
   engine around the gate;
3. reloads the stack in the engine (`engine/weights.py`), resets the prefix cache, resumes, opens
   the gate. A failure half way reloads the previous weights (a 400 that says so) or, when that
   fails too, marks the stack unhealthy: generation routes answer 503 until a load succeeds.

Every response of a gated route carries both stacks' versions in the `x-lda-weights-after` and
`x-lda-weights-before` headers; the OpenAI generation routes also in a `weights` field beside
`alpha` (`api/alpha_middleware.py` reads it from the request scope). /v1/models lists them on each
model card; /metrics has the versions, the stacks' health and a load-time histogram.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api import metrics
from api.access import WEIGHTS_PATHS, WEIGHTS_SCOPE_KEY, error_body, send_error
from engine.checkpoints import CheckpointError
from engine.weights import (
    LOAD_METHOD,
    LoadOutcome,
    PairWeights,
    WeightsLoadError,
    WeightsRefused,
    after_rank_restore,
    combined,
    split_ranks,
)

logger = logging.getLogger("lda.weights")

WEIGHTS_PATH = "/v1/lda/weights"
VERSION_HEADERS = (b"x-lda-weights-after", b"x-lda-weights-before")
DRAIN_TIMEOUT_S = 300.0

router = APIRouter()


class WeightsRouteError(Exception):
    """An answer other than success, in the OpenAI error format."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param

    def response(self) -> JSONResponse:
        error = {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}
        return JSONResponse({"error": error}, status_code=self.status)


class Gate:
    """A writer-first readers-writer lock on the event loop: generation requests read, a load writes.

    While a load waits or runs, new requests wait; the load starts once the requests already in
    have finished. Requests never wait on each other."""

    def __init__(self) -> None:
        self.readers = 0
        self.writing = False
        self.changed = asyncio.Condition()

    @asynccontextmanager
    async def reading(self):
        async with self.changed:
            await self.changed.wait_for(lambda: not self.writing)
            self.readers += 1
        try:
            yield
        finally:
            async with self.changed:
                self.readers -= 1
                self.changed.notify_all()

    @asynccontextmanager
    async def closed(self, timeout: float):
        """Closed to new readers; entered once the readers in have left (TimeoutError after `timeout`)."""
        async with self.changed:
            self.writing = True
        try:
            async with self.changed:
                await asyncio.wait_for(self.changed.wait_for(lambda: self.readers == 0), timeout)
            yield
        finally:
            async with self.changed:
                self.writing = False
                self.changed.notify_all()


@dataclass(slots=True)
class RuntimeWeights:
    """The pair's weight versions and the one load at a time. Kept on `app.state.lda.weights`."""

    weights: PairWeights
    allowed: bool
    """Whether POST /v1/lda/weights is served (`--allow-weight-loads`); the gate and versions work either way."""
    gate: Gate = field(default_factory=Gate)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    running: str | None = None

    def describe(self) -> dict:
        return {
            name: {"version": state.version, "path": str(state.path), "healthy": state.healthy}
            for name, state in self.weights.stacks.items()
        }

    async def load(self, engine_client, body: dict) -> dict:
        if self.lock.locked():
            raise WeightsRouteError(409, f"a weights load is running ({self.running}); send this one when it has answered",
                                    "ConflictError", "path")
        async with self.lock:
            self.running = f"{body.get('stack')} stack from {body.get('path')}"
            try:
                return await self._load(engine_client, body)
            finally:
                self.running = None

    async def _load(self, engine_client, body: dict) -> dict:
        started = time.perf_counter()
        try:
            plan = await asyncio.to_thread(self.weights.prepare, body.get("stack"), body.get("path"), body.get("version"))
        except CheckpointError as error:
            metrics.weights_load_failed(str(body.get("stack")), "refused")
            raise WeightsRouteError(400, str(error), param=error.field) from None
        except WeightsRefused as error:
            raise WeightsRouteError(400, str(error), param="stack") from None
        try:
            async with self.gate.closed(self.drain_timeout_s):
                answer = await self._reload(engine_client, plan)
        except TimeoutError:
            raise WeightsRouteError(503, f"requests in flight did not finish within {self.drain_timeout_s:g} s; nothing was "
                                    "loaded: send the load again", "ServiceUnavailableError") from None
        try:
            done = self.weights.finish(plan, answer)
        except WeightsLoadError as error:
            metrics.weights_load_failed(plan.stack, error.outcome.value)
            metrics.weights_state(self.weights)
            status = 503 if error.outcome is LoadOutcome.UNHEALTHY else 400
            raise WeightsRouteError(status, str(error), "ServiceUnavailableError" if status == 503 else "BadRequestError",
                                    "path") from None
        metrics.weights_loaded(done.stack, done.seconds)
        metrics.weights_state(self.weights)
        logger.info("loaded %s into the %s stack as %s in %.2f s", done.path, done.stack, done.version, done.seconds)
        return {
            "object": "lda.weights.load", "stack": done.stack, "version": done.version, "path": done.path,
            "previous_version": done.previous_version, "load_seconds": round(done.seconds, 4),
            "total_seconds": round(time.perf_counter() - started, 4), "bytes": done.bytes,
            "weights": self.weights.versions(),
        }

    @staticmethod
    async def _reload(engine_client, plan) -> dict:
        await engine_client.pause_generation(mode="wait", clear_cache=False)
        try:
            answers = await engine_client.collective_rpc(LOAD_METHOD, args=(plan.stack, str(plan.checkpoint.path), str(plan.previous)))
            answer = combined(answers)
            if split_ranks(answers):  # tensor parallel: some ranks loaded, some not; send all back
                back = await engine_client.collective_rpc(LOAD_METHOD, args=(plan.stack, str(plan.previous), str(plan.previous)))
                answer = after_rank_restore(answers, back)
        finally:
            # Whatever the stack holds now, no block cached from the weights before may be reused.
            await engine_client.reset_prefix_cache()
            await engine_client.resume_generation()
        return answer


async def _json_body(raw_request: Request) -> dict:
    try:
        data = await raw_request.json()
    except ValueError:
        raise WeightsRouteError(400, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise WeightsRouteError(400, "the body must be a JSON object")
    unknown = sorted(set(data) - {"stack", "path", "version"})
    if unknown:
        raise WeightsRouteError(400, f"unknown field(s) {unknown}; the body takes stack, path and version", param=unknown[0])
    if "stack" not in data:
        raise WeightsRouteError(400, "stack is required: 'after' or 'before'", param="stack")
    if "path" not in data:
        raise WeightsRouteError(400, "path is required: a checkpoint folder on the server", param="path")
    return data


@router.post(WEIGHTS_PATH)
async def load_weights(raw_request: Request) -> JSONResponse:
    state = raw_request.app.state
    try:
        body = await _json_body(raw_request)
        answer = await state.lda.weights.load(state.engine_client, body)
    except WeightsRouteError as error:
        metrics.record_request(WEIGHTS_PATHS[WEIGHTS_PATH], error.status)
        return error.response()
    metrics.record_request(WEIGHTS_PATHS[WEIGHTS_PATH], 200)
    return JSONResponse(answer)


@router.get(WEIGHTS_PATH)
async def weights_versions(raw_request: Request) -> JSONResponse:
    runtime = raw_request.app.state.lda.weights
    return JSONResponse({"object": "lda.weights", "stacks": runtime.describe(), "loading": runtime.running})


def _version_headers(versions: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(VERSION_HEADERS[0], versions["after"].encode()), (VERSION_HEADERS[1], versions["before"].encode())]


class WeightsMiddleware:
    """The gate around the routes that run the engine, the versions on their responses, the versions
    on /v1/models' model cards, and a 503 on those routes while a stack is unhealthy."""

    def __init__(self, app, runtime: RuntimeWeights, gated_paths: frozenset[str]):
        self.app = app
        self.runtime = runtime
        self.gated_paths = gated_paths

    async def __call__(self, scope, receive, send):
        path = scope.get("path") if scope["type"] == "http" else None
        if path == "/v1/models" and scope["method"] == "GET":
            return await self._models(scope, receive, send)
        if path not in self.gated_paths or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        weights = self.runtime.weights
        async with self.runtime.gate.reading():
            if bad := weights.unhealthy():
                message = (f"the {' and '.join(bad)} stack has no complete weights (a load failed and so did its "
                           f"restore): load a checkpoint with POST {WEIGHTS_PATH}")
                return await send_error(send, 503, error_body(path, 503, message, "ServiceUnavailableError"))
            versions = weights.versions()
            headers = _version_headers(versions)

            async def versioned_send(message):
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), *headers]}
                await send(message)

            await self.app({**scope, WEIGHTS_SCOPE_KEY: versions}, receive, versioned_send)

    async def _models(self, scope, receive, send):
        start, chunks = None, []

        async def buffered(message):
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body":
                return await send(message)
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            if start["status"] == 200:
                body = self._with_versions(body)
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, buffered)

    def _with_versions(self, body: bytes) -> bytes:
        try:
            data = json.loads(body)
        except ValueError:
            return body
        for card in data.get("data", []) if isinstance(data, dict) else []:
            if isinstance(card, dict):
                card["lda_weights"] = self.runtime.describe()
        return json.dumps(data).encode()
