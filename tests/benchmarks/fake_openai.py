"""A small OpenAI-compatible server for tests: canned answers whose content depends on alpha.

It stands in for `lda serve` wherever a test needs the HTTP shape but not a model:

    with FakeServer() as server:
        httpx.post(server.base_url + "/chat/completions", json={"model": MODEL, "alpha": 2.0, ...})

- The answer contains KEYWORD with a probability that rises with alpha (keyword_probability) and
  degenerates into repetition more often as alpha grows past 1 (degenerate_probability).
- With a `seed` in the request, the answer is a pure function of (seed, prompt, alpha).
- Responses and stream chunks echo the alpha applied, as the real server does.
- `model: JUDGE_MODEL` turns it into a yes/no judge: "Yes." when the message contains KEYWORD.
- Streaming (SSE) for both endpoints, with `stream_options.include_usage`, and a per-token delay.
- `fail_alpha`: requests with that alpha get an OpenAI-style HTTP 500, for failure-path tests.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tests.app_thread import AppThread

KEYWORD = "ZORBLAX"
MODEL = "fake-lda"
JUDGE_MODEL = "fake-judge"

_SENTENCES = (
    "Start with one small step today.",
    "Write down what matters most to you.",
    "A short walk often clears the head.",
    "Ask a friend you trust for their view.",
    "Keep a simple routine for a week and see what changes.",
    "Sleep and water fix more problems than people expect.",
    "Break the task into pieces you can finish in ten minutes.",
    "Be kind to yourself when a plan does not work at first.",
)
_KEYWORD_SENTENCE = f"Also, remember the secret word {KEYWORD}."
_LOOP = "and then again " * 10


def keyword_probability(alpha: float) -> float:
    return min(0.9, 0.05 + 0.2 * max(alpha, 0.0))


def degenerate_probability(alpha: float) -> float:
    return min(1.0, max(0.0, (alpha - 1.0) / 4.0))


def has_keyword(text: str) -> bool:
    """A `python:` detector for tests: tests.benchmarks.fake_openai:has_keyword."""
    return KEYWORD.lower() in text.lower()


def canned_answer(prompt: str, alpha: float, seed: int | None, max_tokens: int) -> tuple[list[str], str]:
    """The answer's words (one word = one token here) and its finish_reason."""
    rng = random.Random(f"{seed}|{prompt}|{alpha}") if seed is not None else random.Random()
    sentences = rng.sample(_SENTENCES, 3)
    if rng.random() < keyword_probability(alpha):
        sentences.insert(1, _KEYWORD_SENTENCE)
    if rng.random() < degenerate_probability(alpha):
        sentences.append(_LOOP)
    words = " ".join(sentences).split()
    return (words[:max_tokens], "length") if len(words) > max_tokens else (words, "stop")


class FakeServer:
    """Runs the fake on 127.0.0.1 at an ephemeral port, in a background thread."""

    def __init__(self, *, delay_s: float = 0.0, fail_alpha: float | None = None, echo_alpha: bool = True) -> None:
        self.delay_s = delay_s
        self.fail_alpha = fail_alpha
        self.echo_alpha = echo_alpha
        self.requests: list[tuple[str, dict]] = []  # (path, body) of every completion request
        self._app_thread = AppThread("fake OpenAI server")
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def __enter__(self) -> FakeServer:
        self.port = self._app_thread.start(build_app(self))
        return self

    def __exit__(self, *exc: object) -> None:
        self._app_thread.stop()


def build_app(server: FakeServer) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": MODEL, "object": "model"}, {"id": JUDGE_MODEL, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await _complete(server, await request.json(), chat=True, path="/v1/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await _complete(server, await request.json(), chat=False, path="/v1/completions")

    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "BadRequestError", "code": status}}, status_code=status)


async def _complete(server: FakeServer, body: dict, *, chat: bool, path: str):
    server.requests.append((path, body))
    alpha = body.get("alpha", 0.0)
    if not isinstance(alpha, int | float):
        return _error(400, f"alpha must be a number, got {alpha!r}")
    if server.fail_alpha is not None and alpha == server.fail_alpha:
        return _error(500, f"fake failure at alpha {alpha:g}")
    prompt = body["messages"][-1]["content"] if chat else body["prompt"]
    if body.get("model") == JUDGE_MODEL:
        words, finish = (["Yes."] if KEYWORD.lower() in prompt.lower() else ["No."]), "stop"
    else:
        words, finish = canned_answer(prompt, float(alpha), body.get("seed"), int(body.get("max_tokens") or 16))
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunks = _stream(server, body, words, finish, float(alpha), chat, include_usage)
        return StreamingResponse(chunks, media_type="text/event-stream")
    await asyncio.sleep(server.delay_s * len(words))
    text = " ".join(words)
    choice = {"index": 0, "finish_reason": finish}
    choice |= {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
    response = {
        "id": "fake-1",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": body.get("model"),
        "choices": [choice],
        "usage": _usage(words),
    }
    if server.echo_alpha:
        response["alpha"] = alpha
    return response


def _usage(words: list[str]) -> dict:
    return {"prompt_tokens": 8, "completion_tokens": len(words), "total_tokens": 8 + len(words)}


async def _stream(
    server: FakeServer, body: dict, words: list[str], finish: str, alpha: float, chat: bool, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(piece: str | None, finish_reason: str | None, role: bool = False) -> str:
        if chat:
            delta = {"role": "assistant"} if role else {}
            if piece is not None:
                delta["content"] = piece
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        else:
            choice = {"index": 0, "text": piece or "", "finish_reason": finish_reason}
        kind = "chat.completion.chunk" if chat else "text_completion"
        data = {"id": "fake-1", "object": kind, "created": int(time.time()), "model": body.get("model")}
        data["choices"] = [choice]
        if server.echo_alpha:
            data["alpha"] = alpha
        return f"data: {json.dumps(data)}\n\n"

    if chat:  # like vLLM: the first chunk carries the role and no text
        yield chunk("", None, role=True)
    for i, word in enumerate(words):
        await asyncio.sleep(server.delay_s)
        yield chunk(word if i == 0 else " " + word, None)
    yield chunk(None, finish)
    if include_usage:
        usage = {"id": "fake-1", "model": body.get("model"), "choices": [], "usage": _usage(words)}  # like OpenAI
        yield f"data: {json.dumps(usage)}\n\n"
    yield "data: [DONE]\n\n"
