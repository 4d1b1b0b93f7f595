"""alpha in the OpenAI API: a top-level `alpha` (what `extra_body={"alpha": 2}` sends) or
`vllm_xargs.alpha`, validated, moved to `vllm_xargs` (which vLLM copies into
`SamplingParams.extra_args`), and echoed back in the response. A `model` written `lda@2` carries
alpha in its name (api/model_alpha.py): on every route that takes a `model` the alpha is taken out
here, checked against any `alpha` in the body, and put where that route reads alpha; the bare name
goes on to the served-name rule. /v1/models documents the form on each of its entries. The same pass over the parsed body
enforces the request limits vLLM does not (`n`, `best_of`, the length of a prompt list), and counts
the original routes' requests for /metrics.

vLLM's server silently drops unknown top-level fields, so without this an `alpha` would be ignored
without a word. A pure ASGI middleware (not BaseHTTPMiddleware) so streams stay streams and the
handler still hears the client's disconnect: after the body, `receive` goes to the client again.
"""

from __future__ import annotations

import json

from engine.alpha import ALPHA_KEY, MIN_ALPHA, AlphaError, validate_alpha
from engine.config import AlphaConfig

from api import metrics
from api.access import OPENAI_PATHS, ORIGINAL_PATHS, WEIGHTS_SCOPE_KEY, error_body, replay_body
from api.model_alpha import SEPARATOR, ModelAlphaError, check_agrees, form, split_model_alpha
from api.settings import LIMIT_ENV, RequestLimits, setting
from api.adapter_routing import AdapterRouting

ALPHA_HEADER = b"x-lda-alpha"
DEFAULT_ALPHA_ENV = setting("alpha.default_alpha").env


class LimitError(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def openai_error(message: str, param: str | None, status: int = 400) -> bytes:
    kind = "BadRequestError" if status == 400 else "Error"
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": status}}).encode()


def resolve_alpha(payload: dict, policy: AlphaConfig) -> float:
    """The request's alpha (top level or vllm_xargs), else the default; AlphaError if invalid."""
    xargs = payload.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        raise AlphaError(f"vllm_xargs must be an object; got {type(xargs).__name__}")
    top = payload.get(ALPHA_KEY)
    inner = (xargs or {}).get(ALPHA_KEY)
    if top is not None and inner is not None and top != inner:
        raise AlphaError(f"alpha given twice with different values: alpha={top!r}, vllm_xargs.alpha={inner!r}")
    if top is not None:
        return validate_alpha(top, policy.max_alpha, field="alpha")
    if inner is not None:
        return validate_alpha(inner, policy.max_alpha, field="vllm_xargs.alpha")
    return policy.default_alpha


TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
"""How vLLM's generation routes spell the length a request asks for (chat and completions, chat's
newer name, /v1/responses)."""


def check_limits(payload: dict, limits: RequestLimits) -> None:
    """LimitError naming the field and the setting when `n`, `best_of`, a prompt list or the number of
    tokens asked for is too big.

    Only sizes are checked; values of the wrong type are left to vLLM's own validation.
    """
    for name in ("n", "best_of"):
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > limits.max_n:
            raise LimitError(f"{name} is {value}; the limit is {LIMIT_ENV['max_n']}={limits.max_n}", name)
    for name in TOKEN_FIELDS:
        if message := limits.too_many_tokens(name, payload.get(name)):
            raise LimitError(message, name)
    for name, value in payload.items():
        # vLLM's request models leave some integers unbounded (top_k); one past 64 bits cannot be
        # sent to the engine core, and vLLM answered it with a 500 (found by fuzzing).
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise LimitError(f"{name} is {value}; it must fit in a signed 64-bit integer", name)
    prompt = payload.get("prompt")
    # A list of strings or of token-id lists is a batch; a flat list of ints is one tokenized prompt.
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) and len(prompt) > limits.max_batch_prompts:
        raise LimitError(
            f"prompt lists {len(prompt)} prompts; the limit is {LIMIT_ENV['max_batch_prompts']}={limits.max_batch_prompts}",
            "prompt",
        )


def check_responses_input(payload: dict) -> None:
    """LimitError for a /v1/responses `input` that vLLM 0.32 answers with a 500 ("list index out of
    range", found by fuzzing): an assistant message item with an empty `content` list."""
    items = payload.get("input")
    for i, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, dict) and item.get("type") == "message" and item.get("role") == "assistant" and item.get("content") == []:
            raise LimitError(f"input[{i}].content: an assistant message needs at least one content part", f"input[{i}].content")


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)  # a disconnect before the body ended
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _with_headers(headers, drop: bytes, add: list[tuple[bytes, bytes]]):
    return [(k, v) for k, v in headers if k.lower() != drop] + add


def _count_stream_tokens(event: dict) -> int:
    count = 0
    for choice in event.get("choices") or []:
        delta = choice.get("delta") or {}
        if choice.get("text") or delta.get("content") or delta.get("reasoning_content"):
            count += 1
    return count


class _ResponseRewriter:
    """Adds alpha to the response: a header, a field of the JSON body or of each stream event; and
    beside it, `weights`, the stacks' weight versions the request ran on (when the weights gate
    put them in the scope, `api/weights_routes.py`)."""

    def __init__(self, send, alpha: float, weights: dict | None = None):
        self.send, self.alpha = send, alpha
        self.fields = {ALPHA_KEY: alpha, **({"weights": weights} if weights else {})}
        self.status = 500
        self.mode = "pass"
        self.start: dict | None = None
        self.buffer = b""
        self.tokens = 0

    async def __call__(self, message):
        if message["type"] == "http.response.start":
            return await self._start(message)
        if message["type"] == "http.response.body":
            return await self._body(message)
        return await self.send(message)

    async def _start(self, message):
        self.status = message["status"]
        headers = dict(message.get("headers", []))
        content_type = headers.get(b"content-type", b"")
        extra = [(ALPHA_HEADER, repr(self.alpha).encode())]
        if self.status == 200 and content_type.startswith(b"application/json"):
            self.mode = "json"
            self.start = {**message, "headers": _with_headers(message["headers"], b"content-length", extra)}
            return None
        if content_type.startswith(b"text/event-stream"):
            self.mode = "sse"
        return await self.send({**message, "headers": [*message.get("headers", []), *extra]})

    async def _body(self, message):
        if self.mode == "json":
            self.buffer += message.get("body", b"")
            if message.get("more_body"):
                return None
            body = self._rewrite_json(self.buffer)
            self.start["headers"].append((b"content-length", str(len(body)).encode()))
            await self.send(self.start)
            return await self.send({"type": "http.response.body", "body": body, "more_body": False})
        if self.mode == "sse":
            message = {**message, "body": self._rewrite_events(message.get("body", b""), message.get("more_body", False))}
        return await self.send(message)

    def _rewrite_json(self, body: bytes) -> bytes:
        try:
            data = json.loads(body)
        except ValueError:
            return body
        if isinstance(data, dict):
            data.update(self.fields)
            self.tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
        return json.dumps(data).encode()

    def _rewrite_events(self, chunk: bytes, more: bool) -> bytes:
        self.buffer += chunk
        lines = self.buffer.split(b"\n")
        self.buffer = lines.pop() if more else b""
        out = []
        for line in lines:
            if line.startswith(b"data: {"):
                try:
                    event = json.loads(line[6:])
                    self.tokens += _count_stream_tokens(event)
                    event.update(self.fields)
                    line = b"data: " + json.dumps(event).encode()
                except ValueError:
                    pass
            out.append(line)
        return b"\n".join(out) + (b"\n" if lines else b"")


SCORE_PATH = "/v1/lda/score"
BODY_ALPHA_PATHS = frozenset({"/generate_lda", "/generate_lda_batch", SCORE_PATH})
"""Routes of our own whose alpha is a top-level `alpha` field: a model-name alpha becomes that field."""
MODELS_PATH = "/v1/models"


def no_alpha_reason(path: str) -> str:
    """Why a route takes no per-request alpha, for the 400 that refuses one."""
    if path == "/generate":
        return "/generate returns the after and before models' completions (alpha 0 and -1); send it to /generate_lda"
    return (f"{path} does not take a per-request alpha (it runs at the server's default, {DEFAULT_ALPHA_ENV}); "
            "send it to /v1/completions or /v1/chat/completions")


class AlphaMiddleware:
    def __init__(
        self, app, policy: AlphaConfig, limits: RequestLimits | None = None, adapters: AdapterRouting | None = None,
        other_generation_paths: frozenset[str] = frozenset(), served_name: str | None = None, pair: dict | None = None,
    ):
        self.app = app
        self.policy = policy
        self.limits = limits or RequestLimits()
        self.adapters = adapters
        self.other_generation_paths = other_generation_paths
        """Served vLLM routes that generate without alpha (api/routes.py): only the limits apply."""
        self.served_name = served_name
        """The pair's own model name, which a model-name alpha may follow when no adapters are served."""
        self.pair = pair
        """What /v1/models says about the pair besides its names (`lda_pair`): the after and before models."""

    async def __call__(self, scope, receive, send):
        path = scope.get("path") if scope["type"] == "http" else None
        method = scope.get("method")
        if path in OPENAI_PATHS and method == "POST":
            return await self._openai(scope, receive, send, OPENAI_PATHS[path])
        if path in ORIGINAL_PATHS:
            return await self._counted(scope, receive, send, ORIGINAL_PATHS[path])
        if path == SCORE_PATH and method == "POST":
            return await self._model_alpha_only(scope, receive, send, self.app)
        if path in self.other_generation_paths and method == "POST":
            return await self._limited(scope, receive, send)
        if path == MODELS_PATH and method == "GET":
            return await self.app(scope, receive, _ModelsRewriter(send, self.policy, self.pair))
        return await self.app(scope, receive, send)

    def served_names(self) -> list[str]:
        if self.adapters is not None:
            return self.adapters.names()
        return [self.served_name] if self.served_name else []

    def take_model_alpha(self, payload: dict, path: str) -> None:
        """Move a model-name alpha (`lda@2`) into the body's `alpha` and leave the bare name in
        `model`; ModelAlphaError naming `model` when it is malformed, disagrees with the body, or the
        route takes no alpha."""
        model = payload.get("model")
        split = split_model_alpha(model, self.served_names(), self.policy.max_alpha)
        if split is None:
            return
        if path not in OPENAI_PATHS and path not in BODY_ALPHA_PATHS:
            raise ModelAlphaError(f"model {model!r} asks an alpha, but {no_alpha_reason(path)}")
        check_agrees(model, split.alpha, ALPHA_KEY, payload.get(ALPHA_KEY))
        xargs = payload.get("vllm_xargs")
        if isinstance(xargs, dict):
            check_agrees(model, split.alpha, "vllm_xargs.alpha", xargs.get(ALPHA_KEY))
        payload["model"] = split.name
        payload[ALPHA_KEY] = split.alpha

    async def _parsed(self, scope, receive, send, endpoint: str | None = None):
        """The body, its JSON object (None if it is not one) with any model-name alpha taken out; or
        (None, None) when a 400 naming `model` was sent."""
        body = await _read_body(receive)
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None  # the route answers malformed JSON with its own 400
        if not isinstance(payload, dict):
            return body, None
        try:
            self.take_model_alpha(payload, scope["path"])
        except ModelAlphaError as error:
            if endpoint:
                metrics.record_request(endpoint, 400)
            await _send_json(send, 400, error_body(scope["path"], 400, str(error), "BadRequestError", "model"))
            return None, None
        return body, payload

    async def _model_alpha_only(self, scope, receive, send, app):
        """A route that reads alpha from the body itself: only a model-name alpha is moved there."""
        body = await _read_body(receive)
        if SEPARATOR.encode() not in body:  # no model-name alpha possible: the body goes on untouched
            return await app(scope, replay_body(body, receive), send)
        body, payload = await self._parsed(scope, replay_body(body, receive), send, ORIGINAL_PATHS.get(scope["path"]))
        if body is None:
            return None
        if payload is not None:
            body = json.dumps(payload).encode()
        headers = _with_headers(scope["headers"], b"content-length", [(b"content-length", str(len(body)).encode())])
        return await app({**scope, "headers": headers}, replay_body(body, receive), send)

    async def _limited(self, scope, receive, send):
        """The request limits on a generation route that carries no alpha; the body goes on as sent."""
        body, payload = await self._parsed(scope, receive, send)
        if body is None:
            return None
        if payload is not None:
            if ALPHA_KEY in payload:  # vLLM would drop it silently and run the server's default alpha
                message = f"alpha: {no_alpha_reason(scope['path'])}"
                return await _send_json(send, 400, openai_error(message, ALPHA_KEY))
            try:
                check_limits(payload, self.limits)
                if scope["path"] == "/v1/responses":
                    check_responses_input(payload)
            except LimitError as error:
                return await _send_json(send, 400, openai_error(str(error), error.param))
        return await self.app(scope, replay_body(body, receive), send)

    async def _counted(self, scope, receive, send, endpoint: str):
        status = 500

        async def counting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def app(scope, receive, send):
            try:
                await self.app(scope, receive, send)
            finally:
                metrics.record_request(endpoint, status)

        if scope["method"] == "POST":
            return await self._model_alpha_only(scope, receive, counting_send, app)
        return await app(scope, receive, counting_send)

    async def _openai(self, scope, receive, send, endpoint: str):
        body, payload = await self._parsed(scope, receive, send, endpoint)
        if body is None:
            return None
        alpha = self.policy.default_alpha
        if payload is not None:
            try:
                alpha = resolve_alpha(payload, self.policy)
            except AlphaError as error:
                param = "vllm_xargs.alpha" if ALPHA_KEY not in payload else "alpha"
                metrics.record_request(endpoint, 400)
                return await _send_json(send, 400, openai_error(str(error), param))
            try:
                check_limits(payload, self.limits)
            except LimitError as error:
                metrics.record_request(endpoint, 400)
                return await _send_json(send, 400, openai_error(str(error), error.param))
            if self.adapters is not None and (missing := self.adapters.route(payload)) is not None:
                metrics.record_request(endpoint, 404)
                return await _send_json(send, 404, missing)
            payload.pop(ALPHA_KEY, None)
            payload["vllm_xargs"] = {**(payload.get("vllm_xargs") or {}), ALPHA_KEY: alpha}
            body = json.dumps(payload).encode()
        headers = _with_headers(scope["headers"], b"content-length", [(b"content-length", str(len(body)).encode())])
        rewriter = _ResponseRewriter(send, alpha, scope.get(WEIGHTS_SCOPE_KEY))
        try:
            await self.app({**scope, "headers": headers}, replay_body(body, receive), rewriter)
        finally:
            metrics.record_request(endpoint, rewriter.status)
            if rewriter.status == 200:
                metrics.record_generation(alpha, rewriter.tokens)


class _ModelsRewriter:
    """Documents alpha on each /v1/models entry (its range, default and the model-name form) and adds
    the pair (`lda_pair`: the after and before models) beside the list."""

    def __init__(self, send, policy: AlphaConfig, pair: dict | None = None):
        self.send, self.policy, self.pair = send, policy, pair
        self.start: dict | None = None
        self.buffer = b""

    async def __call__(self, message):
        if message["type"] == "http.response.start":
            if message["status"] != 200:
                return await self.send(message)
            self.start = {**message, "headers": _with_headers(message.get("headers", []), b"content-length", [])}
            return None
        if message["type"] != "http.response.body" or self.start is None:
            return await self.send(message)
        self.buffer += message.get("body", b"")
        if message.get("more_body"):
            return None
        body = self._rewrite(self.buffer)
        self.start["headers"].append((b"content-length", str(len(body)).encode()))
        await self.send(self.start)
        return await self.send({"type": "http.response.body", "body": body, "more_body": False})

    def _rewrite(self, body: bytes) -> bytes:
        try:
            data = json.loads(body)
        except ValueError:
            return body
        for card in data.get("data") or [] if isinstance(data, dict) else []:
            if isinstance(card, dict) and isinstance(card.get("id"), str):
                card["lda_alpha"] = models_entry(card["id"], self.policy)
        if isinstance(data, dict) and self.pair is not None:
            data["lda_pair"] = self.pair
        return json.dumps(data).encode()


def models_entry(model_id: str, policy: AlphaConfig) -> dict:
    """What /v1/models says about alpha for one served name."""
    return {
        "default": policy.default_alpha,
        "min": MIN_ALPHA,
        "max": policy.max_alpha,
        "model_name_form": form(model_id),
        "note": (f"alpha is the body's `alpha` (or vllm_xargs.alpha), or written in the model name as "
                 f"{form(model_id)}; both at once must agree"),
    }


async def _send_json(send, status: int, body: bytes) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body, "more_body": False})
