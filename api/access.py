"""Who may call the server, and how much a request may send: the API key and the body-size limit.

Two pure ASGI middlewares, outermost in the app, so they act before anything reads the body.

- `APIKeyMiddleware`: with a key set, every route needs it except /health (load balancers and
  Docker's health check carry no secret) and, unless `metrics_require_key`, /metrics (Prometheus
  scrapers usually carry none either). Deny by default: vLLM's server has routes beyond /v1
  (/invocations serves completions too), and a list of protected prefixes would miss some. The key
  is accepted as `Authorization: Bearer KEY` (what OpenAI clients send) or `X-API-Key: KEY` (a
  header that scripts using the original routes can add without an auth library). It is checked
  from the headers alone, before the body is read, so an unauthenticated client cannot make the
  server read or parse anything.
- `BodyLimitMiddleware`: a declared Content-Length above the limit is refused before reading; a
  chunked body is read up to the limit and refused when it goes past it.

Errors use the route's format: FastAPI's {"detail": ...} on the original project's routes (its
clients read `detail`), OpenAI's everywhere else (vLLM's server answers all its routes that way).
"""

from __future__ import annotations

import hashlib
import json
import secrets

from api import metrics
from api.settings import LIMIT_ENV, AccessSettings

OPEN_PATHS = frozenset({"/health"})
ORIGINAL_PATHS = {
    "/generate_lda": "generate_lda",
    "/generate_lda_batch": "generate_lda_batch",
    "/generate": "generate",
    "/tokenizer_compatibility": "tokenizer_compatibility",
}
"""The original project's routes, and their endpoint label in /metrics."""
OPENAI_PATHS = {"/v1/completions": "completions", "/v1/chat/completions": "chat_completions"}
"""The OpenAI routes that carry alpha, and their endpoint label in /metrics."""
ADAPTER_PATHS = {"/v1/load_lora_adapter": "load_lora_adapter", "/v1/unload_lora_adapter": "unload_lora_adapter"}
"""The runtime adapter routes (`api/runtime_adapters.py`), and their endpoint label in /metrics.
Served exactly when runtime adapters are allowed (`ServerSettings.allow_runtime_adapters`)."""
WEIGHTS_PATHS = {"/v1/lda/weights": "lda_weights"}
"""The full-weight load route (`api/weights_routes.py`), and its endpoint label in /metrics."""
WEIGHTS_SCOPE_KEY = "lda.weights"
"""Where `api.weights_routes.WeightsMiddleware` leaves, in the request's ASGI scope, the weight
versions the request runs on (the alpha middleware echoes them beside alpha)."""


def record_refusal(path: str, status: int) -> None:
    """Count a request refused here under its endpoint, as the routes' own answers are counted."""
    endpoint = ORIGINAL_PATHS.get(path) or OPENAI_PATHS.get(path) or ADAPTER_PATHS.get(path) or WEIGHTS_PATHS.get(path)
    if endpoint:
        metrics.record_request(endpoint, status)


def error_body(path: str, status: int, message: str, kind: str, param: str | None = None) -> bytes:
    """An error in the route's format: FastAPI's on the original routes, OpenAI's elsewhere."""
    if path in ORIGINAL_PATHS:
        return json.dumps({"detail": message}).encode()
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": status}}).encode()


async def send_error(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
    })
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def presented_key(scope) -> str | None:
    """The key the request carries: `Authorization: Bearer KEY`, else `X-API-Key: KEY`."""
    authorization = _header(scope, b"authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return _header(scope, b"x-api-key") or None


class APIKeyMiddleware:
    def __init__(self, app, access: AccessSettings):
        self.app = app
        self.access = access
        # Compare digests of equal length in constant time: neither the key's length nor its
        # prefix leaks through timing.
        self._digest = hashlib.sha256(access.api_key.encode()).digest() if access.api_key else None

    def _open(self, path: str) -> bool:
        if path in OPEN_PATHS:
            return True
        is_metrics = path == "/metrics" or path.startswith("/metrics/")
        return is_metrics and not self.access.metrics_require_key

    def _allowed(self, scope) -> bool:
        key = presented_key(scope)
        return key is not None and secrets.compare_digest(hashlib.sha256(key.encode()).digest(), self._digest)

    async def __call__(self, scope, receive, send):
        # CORS preflights carry no credentials by design; vLLM's CORS middleware answers them.
        # Only a real preflight passes: a bare OPTIONS would reach mounted apps (/metrics) unchecked.
        if (
            self._digest is None
            or scope["type"] not in ("http", "websocket")
            or _is_preflight(scope)
            or self._open(scope["path"])
            or self._allowed(scope)
        ):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        message = "missing or wrong API key: send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`"
        body = error_body(scope["path"], 401, message, "AuthenticationError")
        record_refusal(scope["path"], 401)
        await send_error(send, 401, body, [(b"www-authenticate", b"Bearer")])


def _is_preflight(scope) -> bool:
    headers = dict(scope.get("headers") or [])
    return scope.get("method") == "OPTIONS" and b"origin" in headers and b"access-control-request-method" in headers


class BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, send, int(declared))
        if declared is None and _header(scope, b"transfer-encoding"):
            try:
                body = await self._read_capped(receive)
            except BodyTooLarge:
                return await self._refuse(scope, send, None)
            return await self.app(scope, replay_body(body, receive), send)
        return await self.app(scope, receive, send)

    async def _read_capped(self, receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _refuse(self, scope, send, size: int | None) -> None:
        got = f"{size} bytes" if size is not None else "more bytes than that"
        message = f"request body too large: the limit is {LIMIT_ENV['max_body_bytes']}={self.limit} bytes; got {got}"
        record_refusal(scope["path"], 413)
        await send_error(send, 413, error_body(scope["path"], 413, message, "RequestTooLarge"), [(b"connection", b"close")])


def replay_body(body: bytes, receive):
    """A `receive` that gives the already-read body once, then the client's own messages."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls: the client's disconnect, if it comes

    return replay
