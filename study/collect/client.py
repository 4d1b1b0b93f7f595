"""The HTTP client: the few OpenAI-shaped calls a study makes, with errors that name the URL."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import httpx

from study.config import StudyConfig
from study.errors import SampleError, StudyError


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    tokens: int | None
    finish_reason: str | None
    alpha: float | None
    """The alpha the server says it applied, or None when it does not say."""


def sample_seed(base: int, prompt_id: str, sample_index: int) -> int:
    """A per-(prompt, sample) seed: prompt i's samples must not reuse prompt j's random stream,
    or near-identical prompts give near-identical answers and the intervals come out too narrow."""
    digest = hashlib.sha256(f"{base}:{prompt_id}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def normalize_base_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class LdaClient:
    """The few OpenAI-shaped calls a study makes, with errors that name the URL."""

    def __init__(self, config: StudyConfig) -> None:
        self.base_urls = [normalize_base_url(url) for url in config.base_urls]
        self.base_url = self.base_urls[0]
        # Round robin over replicas: requests of one study are alike, so an equal share each is fair.
        self._next_url = itertools.cycle(self.base_urls).__next__
        self.sampling = config.sampling
        self.model = config.model
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
        timeout = httpx.Timeout(config.timeout, connect=10.0)
        self._client = httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout)

    async def connect(self) -> str:
        """Check every replica answers and serves the model; return the model name."""
        for base_url in self.base_urls:
            await self._connect(base_url)
        return self.model

    async def _connect(self, base_url: str) -> str:
        url = f"{base_url}/models"
        try:
            response = await self._client.get(url, timeout=10.0)
        except httpx.HTTPError as exc:
            raise StudyError(f"server at {url} is unreachable: {exc or type(exc).__name__}") from None
        served = _model_ids(response)
        if response.status_code >= 400 or served is None:
            if self.model is not None:  # a server without /models can still be studied by name
                return self.model
            raise StudyError(f"cannot list models at {url} (HTTP {response.status_code}); pass --model")
        if self.model is None:
            if not served:
                raise StudyError(f"{url} lists no models")
            self.model = served[0]
        elif self.model not in served:
            raise StudyError(f"model {self.model!r} is not served at {url}; it serves {', '.join(served)}")
        return self.model

    async def complete(self, prompt: str, alpha: float, seed: int | None) -> Completion:
        path = "/chat/completions" if self.sampling.endpoint == "chat" else "/completions"
        url = self._next_url() + path
        try:
            response = await self._client.post(url, json=self._body(prompt, alpha, seed))
        except httpx.ConnectError as exc:
            # The server answered the preflight, so it went away: stop rather than fail every job.
            message = f"lost the server at {url} ({exc}); samples drawn so far are saved, rerun to resume"
            raise StudyError(message) from None
        except httpx.HTTPError as exc:
            raise SampleError(f"request to {url} failed: {exc or type(exc).__name__}") from None
        if response.status_code >= 400:
            raise SampleError(f"HTTP {response.status_code} from {url}: {error_message(response)}")
        return self._parse(response, url)

    def _body(self, prompt: str, alpha: float, seed: int | None) -> dict[str, object]:
        s = self.sampling
        body: dict[str, object] = {
            "model": self.model,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "alpha": alpha,
        }
        if seed is not None:
            body["seed"] = seed
        if s.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        return body

    def _parse(self, response: httpx.Response, url: str) -> Completion:
        try:
            body = response.json()
            choice = body["choices"][0]
            text = choice["message"]["content"] if self.sampling.endpoint == "chat" else choice["text"]
            tokens = (body.get("usage") or {}).get("completion_tokens")
            alpha = body.get("alpha")
            return Completion(text or "", tokens, choice.get("finish_reason"), None if alpha is None else float(alpha))
        except (ValueError, KeyError, IndexError, TypeError):
            raise SampleError(f"unexpected response from {url}: {response.text[:200]}") from None

    async def score(self, prompt: str, text: str, alpha: float) -> dict | None:
        """Teacher-forced attribution of `text` after `prompt` (POST /v1/lda/score), or None when
        the server has no scoring route (HTTP 404)."""
        url = self._next_url() + "/lda/score"
        body: dict[str, object] = {"model": self.model, "continuation": text, "alpha": alpha}
        if self.sampling.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        try:
            response = await self._client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise SampleError(f"request to {url} failed: {exc or type(exc).__name__}") from None
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise SampleError(f"HTTP {response.status_code} from {url}: {error_message(response)}")
        try:
            return response.json()
        except ValueError:
            raise SampleError(f"unexpected response from {url}: {response.text[:200]}") from None

    async def aclose(self) -> None:
        await self._client.aclose()


def _model_ids(response: httpx.Response) -> list[str] | None:
    try:
        return [str(m["id"]) for m in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        return None


def error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI-style {"error": {"message": ...}}, else the body's start."""
    try:
        body = response.json()
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:300]
    except (ValueError, AttributeError):
        pass
    return response.text[:300]
