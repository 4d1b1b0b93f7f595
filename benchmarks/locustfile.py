"""Load test for OpenAI-compatible LDA servers: streaming chat and completion users, random alphas.

Run headless for a bounded time, with CSV output:

    locust -f benchmarks/locustfile.py --headless -u 16 -r 4 -t 60s \\
        --host http://127.0.0.1:8000 --csv out/run

`-u` is the number of concurrent users, each with one request in flight at a time (closed loop,
no think time), so `-u` is the server's concurrency. Both user classes run, half the users each;
name one to run only it (`... StreamingChatUser`). Without --headless, locust serves its web UI
on http://127.0.0.1:8089.

Against a RunPod pod whose server listens on port 8000, use the pod's HTTPS proxy as host:

    LDA_API_KEY=... locust -f benchmarks/locustfile.py --headless -u 32 -r 8 -t 5m \\
        --host https://<pod-id>-8000.proxy.runpod.net --csv out/runpod

The proxy cuts requests that last longer than about 100 s, so keep LDA_MAX_TOKENS modest there,
and the numbers include the round trip to the proxy: compare runs from the same client machine.

The host is the server's root (a trailing /v1 is accepted too). Settings, from the environment:

    LDA_ALPHAS       comma-separated alphas; each request draws one at random (default 0,1,2)
    LDA_MODEL        model name (default: the first model GET /v1/models lists)
    LDA_MAX_TOKENS   max_tokens per request (default 128)
    LDA_TEMPERATURE  sampling temperature (default 1.0)
    LDA_PROMPTS      .txt (one prompt a line) or .jsonl ("prompt" field) file; default: the
                     built-in everyday-advice prompts of `lda study`
    LDA_IGNORE_EOS   1: send vLLM's ignore_eos so every answer runs to LDA_MAX_TOKENS, which
                     makes throughput comparable across alphas (default 0)
    LDA_API_KEY      sent as "Authorization: Bearer ..." when set
    LDA_TIMEOUT      seconds for one request (default 600)

Each request is reported under the name "<path> alpha=<alpha>", so every statistic is broken
down by endpoint and alpha. Besides the request itself (type POST; its time is the whole
stream, first byte to [DONE]), each successful request fires three custom events:

    TTFT    time to first token, ms: from sending the request to the first chunk with text
    TPOT    time per output token, ms: (last token - first token) / (tokens - 1)
    TOKENS  output tokens of the request; locust shows this count in its time columns (ms)

Tokens come from the usage the server sends at the end of the stream (stream_options
include_usage), else from the number of chunks with text. HTTP 4xx/5xx responses, connection
errors, error events inside the stream, streams cut before [DONE], and responses that echo an
alpha other than the one sent count as failures, with the server's message.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests
from locust import HttpUser, constant, task

from study.collect.prompts import BUILTIN_PROMPTS, load_prompts
from study.config import parse_alphas


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """The load test's settings; built from the environment once, at import (see module doc)."""

    alphas: tuple[float, ...] = (0.0, 1.0, 2.0)
    model: str | None = None
    max_tokens: int = 128
    temperature: float = 1.0
    prompts: tuple[str, ...] = field(default_factory=lambda: tuple(text for _, text in BUILTIN_PROMPTS))
    ignore_eos: bool = False
    api_key: str | None = None
    timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"LDA_MAX_TOKENS: must be >= 1, got {self.max_tokens}")
        if not self.temperature >= 0:
            raise ValueError(f"LDA_TEMPERATURE: must be >= 0, got {self.temperature}")
        if self.timeout <= 0:
            raise ValueError(f"LDA_TIMEOUT: must be > 0 seconds, got {self.timeout}")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LoadConfig:
        options: dict[str, object] = {}
        if "LDA_ALPHAS" in env:
            options["alphas"] = _parse("LDA_ALPHAS", env, parse_alphas)
        if env.get("LDA_MODEL"):
            options["model"] = env["LDA_MODEL"]
        if "LDA_MAX_TOKENS" in env:
            options["max_tokens"] = _parse("LDA_MAX_TOKENS", env, int)
        if "LDA_TEMPERATURE" in env:
            options["temperature"] = _parse("LDA_TEMPERATURE", env, float)
        if env.get("LDA_PROMPTS"):
            options["prompts"] = tuple(p.text for p in _parse("LDA_PROMPTS", env, lambda v: load_prompts(Path(v))))
        options["ignore_eos"] = env.get("LDA_IGNORE_EOS", "0").strip().lower() in ("1", "true", "yes")
        options["api_key"] = env.get("LDA_API_KEY") or None
        if "LDA_TIMEOUT" in env:
            options["timeout"] = _parse("LDA_TIMEOUT", env, float)
        return cls(**options)


def _parse(name: str, env: Mapping[str, str], convert):
    try:
        return convert(env[name])
    except ValueError as exc:
        raise ValueError(f"{name}: cannot use {env[name]!r}: {exc}") from None


try:
    CONFIG = LoadConfig.from_env(os.environ)
except ValueError as exc:  # a clear message instead of a traceback from inside locust
    sys.exit(f"locustfile: {exc}")


class StreamError(Exception):
    """The stream itself reported or showed a failure."""


@dataclass(slots=True)
class StreamTiming:
    """What one streamed response showed, in time.perf_counter() seconds."""

    first_token: float | None = None
    last_token: float | None = None
    text_chunks: int = 0
    usage_tokens: int | None = None

    @property
    def tokens(self) -> int:
        return self.usage_tokens if self.usage_tokens is not None else self.text_chunks


def read_stream(lines: Iterable[bytes], alpha: float, chat: bool) -> StreamTiming:
    """Consume an OpenAI-style SSE stream to its [DONE]; raise StreamError on any failure."""
    timing = StreamTiming()
    for raw in lines:
        line = raw.decode("utf-8", errors="replace").strip()
        if not line.startswith("data:"):
            continue  # blank keep-alive lines, SSE comments
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return timing
        _read_chunk(_decode(data), alpha, chat, timing)
    raise StreamError("stream ended before [DONE]")


def _decode(data: str) -> dict:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        raise StreamError(f"unreadable stream chunk: {data[:200]}") from None
    if not isinstance(chunk, dict):
        raise StreamError(f"unexpected stream chunk: {data[:200]}")
    if "error" in chunk:
        error = chunk["error"]
        raise StreamError(f"error in stream: {error.get('message', error) if isinstance(error, dict) else error}")
    return chunk


def _read_chunk(chunk: dict, alpha: float, chat: bool, timing: StreamTiming) -> None:
    echoed = chunk.get("alpha")
    # The tolerance allows a server that keeps alpha as float32 (0.3 -> 0.30000001).
    if echoed is not None and abs(float(echoed) - alpha) > 1e-6 * max(1.0, abs(alpha)):
        raise StreamError(f"server applied alpha {echoed}, asked for {alpha:g}")
    usage = chunk.get("usage")
    if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
        timing.usage_tokens = int(usage["completion_tokens"])
    for choice in chunk.get("choices") or []:
        text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
        if text:
            now = time.perf_counter()
            timing.first_token = timing.first_token or now
            timing.last_token = now
            timing.text_chunks += 1


def error_message(response: requests.Response) -> str:
    """The server's own words for a failed request (OpenAI-style {"error": {"message": ...}})."""
    error = getattr(response, "error", None)  # locust's stand-in response for a connection error
    if error is not None:
        return f"connection error: {error}"
    try:
        body = response.json()
        detail = body.get("error", body) if isinstance(body, dict) else body
        message = detail.get("message", detail) if isinstance(detail, dict) else detail
    except ValueError:
        message = response.text
    return f"HTTP {response.status_code}: {str(message)[:300]}"


_discovered_model: str | None = None


class _StreamingUser(HttpUser):
    """One request in flight at a time; what differs between endpoints is the body and the chunk shape."""

    abstract = True
    wait_time = constant(0)
    chat: bool
    path: str

    def on_start(self) -> None:
        if CONFIG.api_key:
            self.client.headers["Authorization"] = f"Bearer {CONFIG.api_key}"
        # The documented host is the server root; accept one that already ends in /v1.
        self.prefix = "" if (self.host or "").rstrip("/").endswith("/v1") else "/v1"

    @task
    def generate(self) -> None:
        model = self._model()
        if model is None:
            time.sleep(1.0)  # no model to ask for: do not spin on the failing discovery call
            return
        alpha = random.choice(CONFIG.alphas)
        name = f"/v1{self.path} alpha={alpha:g}"
        start = time.perf_counter()
        timing = self._request(name, self._body(model, alpha), alpha, start)
        if timing is not None:
            self._fire_token_events(name, timing, start)

    def _body(self, model: str, alpha: float) -> dict:
        prompt = random.choice(CONFIG.prompts)
        body = {
            "model": model,
            "alpha": alpha,
            "max_tokens": CONFIG.max_tokens,
            "temperature": CONFIG.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if CONFIG.ignore_eos:
            body["ignore_eos"] = True
        if self.chat:
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body

    def _request(self, name: str, body: dict, alpha: float, start: float) -> StreamTiming | None:
        url = self.prefix + self.path
        post = self.client.post(url, json=body, stream=True, catch_response=True, name=name, timeout=CONFIG.timeout)
        with post as response:
            try:
                return self._read(response, alpha, start)
            finally:
                response.close()  # a stream left unread would hold its pooled connection

    def _read(self, response, alpha: float, start: float) -> StreamTiming | None:
        if response.status_code != 200:
            response.failure(error_message(response))
            return None
        try:
            timing = read_stream(response.iter_lines(chunk_size=None), alpha, self.chat)
        except (StreamError, requests.RequestException) as exc:
            response.failure(str(exc) or type(exc).__name__)
            return None
        # locust timed the response headers; the request's time is the whole stream.
        response.request_meta["response_time"] = (time.perf_counter() - start) * 1000
        response.success()
        return timing

    def _fire_token_events(self, name: str, timing: StreamTiming, start: float) -> None:
        if timing.first_token is None:
            return  # an empty answer has no first token to time
        self._fire("TTFT", name, (timing.first_token - start) * 1000)
        if timing.tokens > 1 and timing.last_token is not None:
            self._fire("TPOT", name, (timing.last_token - timing.first_token) * 1000 / (timing.tokens - 1))
        self._fire("TOKENS", name, timing.tokens)

    def _fire(self, request_type: str, name: str, value: float) -> None:
        self.environment.events.request.fire(
            request_type=request_type, name=name, response_time=value, response_length=0, exception=None, context={}
        )

    def _model(self) -> str | None:
        global _discovered_model
        if CONFIG.model or _discovered_model:
            return CONFIG.model or _discovered_model
        with self.client.get(f"{self.prefix}/models", name="/v1/models", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(error_message(response))
                return None
            try:
                _discovered_model = str(response.json()["data"][0]["id"])
            except (ValueError, KeyError, IndexError, TypeError):
                response.failure(f"cannot read a model from /models: {response.text[:200]}; set LDA_MODEL")
        return _discovered_model


class StreamingChatUser(_StreamingUser):
    """POST /v1/chat/completions, stream=True, the prompt as one user message."""

    chat = True
    path = "/chat/completions"


class StreamingCompletionUser(_StreamingUser):
    """POST /v1/completions, stream=True, the prompt as raw text."""

    chat = False
    path = "/completions"
