"""Putting one checkpoint in front of the study: loaded into the running pair, or a pair of its own.

An adapter checkpoint is loaded into the running server with vLLM's own runtime-LoRA routes
(`POST /v1/load_lora_adapter` {"lora_name", "lora_path"}, `POST /v1/unload_lora_adapter`
{"lora_name"}; `lda serve --allow-runtime-adapters`), which takes about a second instead of the
~55 s of a server restart. The server checks the adapter against the pair (base, hidden size,
vocabulary, rank) and answers 400 naming the problem; that is bad input for the monitor.

A full-weight checkpoint cannot be loaded at runtime: `served_pair` starts `lda serve` with it as
the after model (on loopback, a free port) and stops it afterwards. Slower (one engine start per
checkpoint), but the same study runs against it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import httpx

from study.collect import server
from study.collect.client import normalize_base_url
from study.collect.server import (
    ServerStartError,
    free_port,
    lda_serve_command,
    lda_serve_env,
)
from study.errors import StudyError

LOAD_ROUTE = "/load_lora_adapter"
UNLOAD_ROUTE = "/unload_lora_adapter"
PAIR_START_TIMEOUT_S = 900.0


class CheckpointRefused(ValueError):
    """The server cannot serve this checkpoint, or cannot load adapters at all: bad input (exit 2)."""


class RuntimeAdapters:
    """Load and unload after-adapters on every replica of a running LDA server."""

    def __init__(self, base_urls: tuple[str, ...], api_key: str | None, timeout: float = 600.0) -> None:
        self.base_urls = [normalize_base_url(url) for url in base_urls]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=10.0))

    def load(self, name: str, path: Path) -> None:
        """Load `path` as adapter `name`; one left loaded by an interrupted run is replaced."""
        for base_url in self.base_urls:
            response = self._post(base_url + LOAD_ROUTE, {"lora_name": name, "lora_path": str(path.resolve())})
            if response.status_code == 409:  # left by an interrupted monitor: its path may differ
                self._post(base_url + UNLOAD_ROUTE, {"lora_name": name})
                response = self._post(base_url + LOAD_ROUTE, {"lora_name": name, "lora_path": str(path.resolve())})
            if response.status_code >= 400:
                raise _refusal(base_url, response, f"cannot load {path} as {name!r}")

    def unload(self, name: str) -> None:
        """Unload `name`; one that is not loaded (404) is fine."""
        for base_url in self.base_urls:
            response = self._post(base_url + UNLOAD_ROUTE, {"lora_name": name})
            if response.status_code >= 400 and response.status_code != 404:
                raise _refusal(base_url, response, f"cannot unload {name!r}")

    @contextlib.contextmanager
    def loaded(self, name: str, path: Path) -> Iterator[None]:
        self.load(name, path)
        try:
            yield
        finally:
            with contextlib.suppress(StudyError, CheckpointRefused):
                self.unload(name)  # best effort: an unload that fails leaves one slot used, not wrong results

    def _post(self, url: str, body: dict) -> httpx.Response:
        try:
            return self._client.post(url, json=body)
        except httpx.HTTPError as exc:
            raise StudyError(f"server at {url} is unreachable: {exc or type(exc).__name__}") from None

    def close(self) -> None:
        self._client.close()


def _refusal(base_url: str, response: httpx.Response, what: str) -> Exception:
    """A clear error for a refused load: the server's own words, or why the routes are missing."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if response.status_code == 401:
        return CheckpointRefused(f"{base_url} refused the API key (HTTP 401); pass --api-key or set LDA_API_KEY")
    if response.status_code in (404, 405) and not isinstance(error, dict):
        # No OpenAI-style error body: the route itself is missing, not the adapter.
        return CheckpointRefused(
            f"{base_url} has no runtime adapter routes (HTTP {response.status_code} on {LOAD_ROUTE}); "
            "start the server with `lda serve --allow-runtime-adapters`"
        )
    message = error.get("message") if isinstance(error, dict) else response.text[:300]
    if response.status_code >= 500:
        return StudyError(f"{what}: HTTP {response.status_code} from {base_url}: {message}")
    return CheckpointRefused(f"{what}: HTTP {response.status_code} from {base_url}: {message}")


@contextlib.contextmanager
def served_pair(after: Path, before: str, log_path: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `lda serve` with `after` (a full-weight checkpoint) against `before` on loopback; yield
    its base URL; stop it (the whole process group) on exit. A server that exits while starting
    refused the checkpoint (CheckpointRefused, with its log's tail)."""
    port = free_port()
    env = lda_serve_env(port, **{**(extra_env or {}), "MODEL_AFTER_ID": str(after), "MODEL_BEFORE_ID": before})
    try:
        with server.running(lda_serve_command(), env, port, log_path, PAIR_START_TIMEOUT_S, "lda serve") as pair:
            yield pair.base_url
    except ServerStartError as exc:
        if exc.returncode is None:
            raise
        raise CheckpointRefused(str(exc)) from None
