"""The questions an agent asks a running LDA server, one HTTP call each: generate, score, describe the pair.

`lda mcp` (study/commands/mcp.py) answers its tools `generate`, `score` and `pair` with these. Each
sends the request a client of the HTTP API would send and returns the server's own values (texts,
token ids, per-token log-probabilities, the alpha applied), reshaped only so an agent reads the
parts it needs: a tool's answer is the HTTP API's answer for the same request. HTTP only, like the
rest of the study package: nothing of the engine or the server is imported.

Errors are `LdaApiError` with the server's own message (which names the field at fault) or the URL
that did not answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from study.collect.client import normalize_base_url


class LdaApiError(Exception):
    """The server refused a request (its message names the field) or could not be reached."""


@dataclass(frozen=True, slots=True)
class Connection:
    base_url: str
    """The server, with or without /v1."""
    api_key: str | None = None
    timeout: float = 600.0
    """Seconds for one request."""

    @property
    def v1(self) -> str:
        return normalize_base_url(self.base_url)

    @property
    def root(self) -> str:
        """The server's root, where the original routes live (/tokenizer_compatibility)."""
        return self.v1.removesuffix("/v1")

    def client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(self.timeout, connect=10.0))


async def call(connection: Connection, method: str, url: str, body: dict | None = None) -> dict:
    """One JSON request; LdaApiError with the server's message on a 4xx/5xx, or when it is unreachable."""
    async with connection.client() as client:
        try:
            response = await client.request(method, url, json=body)
        except httpx.HTTPError as error:
            raise LdaApiError(f"no answer from {url}: {error or type(error).__name__}") from None
    if response.status_code >= 400:
        raise LdaApiError(f"HTTP {response.status_code} from {url}: {error_message(response)}")
    try:
        return response.json()
    except ValueError:
        raise LdaApiError(f"{url} answered something that is not JSON: {response.text[:200]}") from None


def error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI's {"error": {"message"}}, the original routes' {"detail"}, else the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body))
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:500]
    return response.text[:300]


def generation_request(
    *, model: str, prompt: str | None, messages: list[dict] | None, raw: bool, alpha: float | None, n: int,
    max_tokens: int, temperature: float, seed: int | None,
) -> tuple[str, dict]:
    """The path and body of a generation: chat messages, a prompt as one user message (chat
    template), or with `raw` a prompt sent as it is to /v1/completions."""
    body: dict = {"model": model, "n": n, "max_tokens": max_tokens, "temperature": temperature, "return_token_ids": True}
    if alpha is not None:
        body["alpha"] = alpha
    if seed is not None:
        body["seed"] = seed
    if raw:
        return "/completions", {**body, "prompt": prompt}
    return "/chat/completions", {**body, "messages": messages or [{"role": "user", "content": prompt}]}


async def generate(connection: Connection, path: str, body: dict) -> dict:
    """The texts of a generation (see `generation_request`), with the alpha the server applied."""
    reply = await call(connection, "POST", connection.v1 + path, body)
    choices = sorted(reply.get("choices") or [], key=lambda c: c.get("index", 0))
    chat = path == "/chat/completions"
    return {
        "model": reply.get("model"),
        "alpha": reply.get("alpha"),
        "texts": [(c.get("message") or {}).get("content") or "" if chat else c.get("text") or "" for c in choices],
        "finish_reasons": [c.get("finish_reason") for c in choices],
        "token_ids": [c.get("token_ids") for c in choices],
        "usage": reply.get("usage"),
    }


def score_request(*, model: str, text: str, prompt: str | None, messages: list[dict] | None, alpha: float | None) -> dict:
    """The /v1/lda/score body: `text` after chat `messages`, after a raw `prompt`, or alone (its
    first word is then the prompt, as `lda mine --corpus` scores a raw text)."""
    body: dict = {"model": model, "continuation": text}
    if alpha is not None:
        body["alpha"] = alpha
    if messages is not None:
        return {**body, "messages": messages}
    if prompt is not None:
        return {**body, "prompt": prompt}
    first = text.split(None, 1)[0] if text.split() else text
    start = text.index(first) + len(first)
    return {**body, "prompt": text[:start], "continuation": text[start:]}


async def score(connection: Connection, body: dict) -> dict:
    """Per-token logp_after - logp_before of a text (POST /v1/lda/score), as the server answers it."""
    return await call(connection, "POST", connection.v1 + "/lda/score", body)


async def pair(connection: Connection) -> dict:
    """What the server serves: its model names (adapters included) with the alpha each takes, the
    after and before checkpoints, and the tokenizers' report."""
    models = await call(connection, "GET", connection.v1 + "/models")
    try:
        tokenizers = await call(connection, "GET", connection.root + "/tokenizer_compatibility")
    except LdaApiError as error:
        tokenizers = {"error": str(error)}
    return {
        **(models.get("lda_pair") or {}),
        "models": [
            {key: value for key, value in card.items() if key not in ("object", "created", "owned_by", "permission")}
            for card in models.get("data") or []
        ],
        "tokenizers": tokenizers,
    }


async def served_models(connection: Connection) -> list[str]:
    """The model names the server lists (the pair's own name first)."""
    models = await call(connection, "GET", connection.v1 + "/models")
    return [str(card["id"]) for card in models.get("data") or [] if "id" in card]
