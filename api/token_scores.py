"""`lda_token_scores: true` on /v1/completions and /v1/chat/completions: attribution of generated text.

Each choice then carries `lda_token_scores`: for every generated token, logp_after, logp_before,
logp_amplified (at the request's alpha) and their diff, plus the sum, mean and max of the diff;
the same values as POST /v1/lda/score (engine/scoring.py). The flag is top level or in
`vllm_xargs`.

Why a scoring pass after generation rather than the same pass: vLLM 0.32's output path carries
only the sampled distribution's logprobs (`logprobs_mode` is one distribution for the whole
engine, here the amplified one), and the pair's `compute_logits` returns one merged tensor, so
neither model's own log-softmax at the sampled token leaves the worker. Getting both out in the
same pass would need a second output channel through the runner, sampler and output processor.
The scoring pass reruns prompt + generated tokens teacher-forced in one prompt-logprob request
(engine/one_pass.py; three where that patch could not install), so it costs about one prefill of
the whole sequence per choice, paid only by flagged requests.

Cost with the flag off: a request whose body does not contain the bytes `lda_token_scores` goes
through untouched (one substring scan of a body the alpha middleware has already read). Streaming
requests with the flag are refused (400): the scores exist only once the choice is complete.
"""

from __future__ import annotations

import json

from api.access import replay_body
from engine.scoring import ScoreInput, ScoringError

FLAG = "lda_token_scores"
PATHS = ("/v1/completions", "/v1/chat/completions")


def _error(message: str, param: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "BadRequestError", "param": param, "code": 400}}).encode()


def take_flag(payload: dict) -> bool:
    """Remove the flag from the top level and from vllm_xargs; True when either asks for scores."""
    xargs = payload.get("vllm_xargs") if isinstance(payload.get("vllm_xargs"), dict) else {}
    values = {"lda_token_scores": payload.pop(FLAG, None), "vllm_xargs.lda_token_scores": xargs.pop(FLAG, None)}
    for field, value in values.items():
        if value is not None and not isinstance(value, bool):
            raise ScoringError(f"{field}: must be true or false; got {value!r}")
    return any(values.values())


class TokenScoresMiddleware:
    """Adds `lda_token_scores` to each choice of flagged OpenAI requests (see the module doc)."""

    def __init__(self, app, default_alpha: float):
        self.app = app
        self.default_alpha = default_alpha

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in PATHS or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        if FLAG.encode() not in body:
            return await self.app(scope, replay_body(body, receive), send)
        try:
            payload = json.loads(body)
            flagged = take_flag(payload) if isinstance(payload, dict) else False
        except ValueError as error:  # a malformed body: vLLM answers it
            if isinstance(error, ScoringError):
                return await _send(send, 400, _error(str(error), str(error).split(":", 1)[0]))
            return await self.app(scope, replay_body(body, receive), send)
        if not isinstance(payload, dict):  # not a request object: vLLM answers it
            return await self.app(scope, replay_body(body, receive), send)
        if flagged and payload.get("stream"):
            return await _send(send, 400, _error("lda_token_scores: not available with stream=true", FLAG))
        kept_ids = bool(payload.get("return_token_ids"))
        if flagged:
            payload["return_token_ids"] = True
        body = json.dumps(payload).encode()
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        inner = {**scope, "headers": headers}
        if not flagged:
            return await self.app(inner, replay_body(body, receive), send)
        captured = _Captured()
        await self.app(inner, replay_body(body, receive), captured)
        if captured.status != 200:
            return await captured.forward(send)
        response = json.loads(captured.body)
        alpha = float((payload.get("vllm_xargs") or {}).get("alpha", self.default_alpha))
        await _attach(scope["app"], response, alpha, kept_ids, payload.get("model"))
        return await _send(send, 200, json.dumps(response).encode(), captured.headers)


async def _attach(app, response: dict, alpha: float, kept_ids: bool, model: str | None) -> None:
    from api.adapter_routing import after_adapter
    from api.score_routes import attribution

    engine, tokenizer = app.state.engine_client, app.state.lda.tokenizer
    _, lora = after_adapter(app, model)  # the alpha middleware already pointed `model` at an adapter
    shared_prompt = response.get("prompt_token_ids")  # chat: one prompt for all choices
    for choice in response.get("choices", []):
        prompt_ids = choice.get("prompt_token_ids") or shared_prompt or []
        token_ids = choice.get("token_ids") or []
        if token_ids and prompt_ids:
            choice[FLAG] = await attribution(engine, tokenizer, ScoreInput(list(prompt_ids), list(token_ids), alpha), lora)
        else:
            choice[FLAG] = None  # nothing generated
        if not kept_ids:
            choice.pop("token_ids", None)
            choice.pop("prompt_token_ids", None)
    if not kept_ids:
        response.pop("prompt_token_ids", None)


class _Captured:
    """Collects the inner app's response so the scores can be added before it is sent."""

    def __init__(self) -> None:
        self.status = 500
        self.headers: list = []
        self.body = b""
        self._messages: list = []

    async def __call__(self, message) -> None:
        self._messages.append(message)
        if message["type"] == "http.response.start":
            self.status, self.headers = message["status"], list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")

    async def forward(self, send) -> None:
        for message in self._messages:
            await send(message)


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send(send, status: int, body: bytes, headers: list | None = None) -> None:
    kept = [(k, v) for k, v in (headers or [(b"content-type", b"application/json")]) if k != b"content-length"]
    await send({"type": "http.response.start", "status": status, "headers": [*kept, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})
