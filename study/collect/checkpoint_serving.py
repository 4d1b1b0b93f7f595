"""Putting one checkpoint in front of the study: loaded into the running pair, or a pair of its own.

An adapter checkpoint is loaded into the running server with vLLM's own runtime-LoRA routes
(`POST /v1/load_lora_adapter` {"lora_name", "lora_path"}, `POST /v1/unload_lora_adapter`
{"lora_name"}; `lda serve --allow-runtime-adapters`), which takes about a second instead of the
~55 s of a server restart. The server checks the adapter against the pair (base, hidden size,
vocabulary, rank) and answers 400 naming the problem; that is bad input for the monitor.

A full-weight checkpoint is loaded into one stack of the running pair in place
(`POST /v1/lda/weights` {"stack", "path", "version"}; `lda serve --allow-weight-loads`): the after
stack takes checkpoint k, and with `--compare previous` the before stack takes checkpoint k-1. The
server checks the folder against the stack (architecture, shapes, every file readable) and answers
400 naming the problem: bad input for the monitor. A server without that route can still serve a
full-weight run the slow way: `served_pair` starts `lda serve` with the checkpoint as the after
model (on loopback, a free port) and stops it afterwards, one engine start per checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from study.collect.client import normalize_base_url
from study.collect.server import (
    ServerStartError,
    free_port,
    lda_serve_command,
    lda_serve_env,
    start,
)
from study.errors import StudyError

WEIGHTS_ROUTE = "/lda/weights"
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


class FullWeights:
    """Full-weight checkpoints into one stack of every replica of a running LDA server, in place."""

    def __init__(self, base_urls: tuple[str, ...], api_key: str | None, timeout: float = 600.0) -> None:
        self.base_urls = [normalize_base_url(url) for url in base_urls]
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=10.0))

    def available(self) -> bool:
        """Whether every replica serves the route (`--allow-weight-loads`)."""
        return all(self._get(base_url).status_code == 200 for base_url in self.base_urls)

    def stacks(self) -> dict:
        """The first replica's stacks: {"after": {"version", "path", "healthy"}, "before": ...}."""
        response = self._get(self.base_urls[0])
        if response.status_code != 200:
            raise _refusal(self.base_urls[0], response, "cannot read the served weights", WEIGHTS_HELP)
        return response.json()["stacks"]

    def load(self, stack: str, path: Path, version: str) -> None:
        """Load `path` into `stack` on every replica (unless it serves that folder already)."""
        for base_url in self.base_urls:
            body = {"stack": stack, "path": str(path.resolve()), "version": version}
            for _ in range(30):  # another client's load: wait for it to answer
                response = self._request("POST", base_url + WEIGHTS_ROUTE, body)
                if response.status_code != 409:
                    break
                time.sleep(2)
            if response.status_code >= 400:
                raise _refusal(base_url, response, f"cannot load {path} into the {stack} stack", WEIGHTS_HELP)

    def _get(self, base_url: str) -> httpx.Response:
        return self._request("GET", base_url + WEIGHTS_ROUTE, None)

    def _request(self, method: str, url: str, body: dict | None) -> httpx.Response:
        try:
            return self._client.request(method, url, json=body)
        except httpx.HTTPError as exc:
            raise StudyError(f"server at {url} is unreachable: {exc or type(exc).__name__}") from None

    def close(self) -> None:
        self._client.close()


ADAPTERS_HELP = f"has no runtime adapter routes (on {LOAD_ROUTE}); start the server with `lda serve --allow-runtime-adapters`"
WEIGHTS_HELP = (f"does not load full weights (on {WEIGHTS_ROUTE}); start the server on two full checkpoints with "
                "`lda serve --model-after <checkpoint> --model-before <base> --allow-weight-loads`")


def _refusal(base_url: str, response: httpx.Response, what: str, missing: str = ADAPTERS_HELP) -> Exception:
    """A clear error for a refused load: the server's own words, or why the routes are missing."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if response.status_code == 401:
        return CheckpointRefused(f"{base_url} refused the API key (HTTP 401); pass --api-key or set LDA_API_KEY")
    if response.status_code in (404, 405) and (not isinstance(error, dict) or "is not served" in str(error.get("message"))):
        # No OpenAI-style error body, or the server's refusal of an unserved route: the route is missing.
        return CheckpointRefused(f"{base_url} {missing} (HTTP {response.status_code})")
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
        with start(lda_serve_command(), env, port, log_path, PAIR_START_TIMEOUT_S, "lda serve") as pair:
            yield pair.base_url
    except ServerStartError as exc:
        if exc.returncode is None:
            raise
        raise CheckpointRefused(str(exc)) from None
