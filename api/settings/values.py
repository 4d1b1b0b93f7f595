"""The server's own settings, one dataclass per concern: who may call, what one request may ask,
where to listen. Each field states its default once; errors name the setting as the user sets it
(`ENV (--flag)`, from `api.settings.table`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from api.settings.table import LIMIT_ENV, setting
from engine.config import LDAConfig
from engine.prompts import PromptFormat


@dataclass(slots=True)
class AccessSettings:
    """Who may call the server."""

    api_key: str | None = None
    """Required by every route but /health (and /metrics unless `metrics_require_key`); None: open."""
    metrics_require_key: bool = False
    """/metrics needs the key too. Off by default so a Prometheus scraper needs no secret."""

    def __post_init__(self) -> None:
        key = setting("access.api_key").label
        if self.api_key is not None and (not self.api_key or any(c.isspace() for c in self.api_key)):
            # HTTP strips header values, so a key with spaces at either end could never match.
            raise ValueError(f"{key} must be non-empty and contain no whitespace")
        if self.metrics_require_key and self.api_key is None:
            raise ValueError(f"{setting('access.metrics_require_key').label} needs {key}")


@dataclass(slots=True)
class RequestLimits:
    """Bounds on what one request may ask for; each is checked before the work it bounds."""

    max_batch_prompts: int = 256
    """Prompts in one /generate_lda_batch request, or in one /v1/completions prompt list."""
    max_prompt_chars: int = 100_000
    """Characters of a prompt or system_prompt on the original routes, and of a prompt, continuation
    or message on /v1/lda/score, checked before tokenizing."""
    max_body_bytes: int = 16 * 2**20
    """Bytes of a request body, checked before it is read whole."""
    max_n: int = 128
    """`n` and `best_of` of an OpenAI request."""
    max_tokens: int | None = None
    """Tokens one request may ask to generate, on every route that generates; also the default of a
    request that asks none. None: the context length (what vLLM allows on its own)."""

    def __post_init__(self) -> None:
        for name, env in LIMIT_ENV.items():
            value = getattr(self, name)
            if name == "max_tokens" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{env} must be an integer >= 1; got {value!r}")

    def too_many_tokens(self, name: str, value: object) -> str | None:
        """The error for a requested token count above `max_tokens`, or None (also for a value that
        is not an integer: its type is the route's own validation to refuse, in its own words)."""
        if self.max_tokens is None or not isinstance(value, int) or isinstance(value, bool) or value <= self.max_tokens:
            return None
        return f"{name} is {value}; the limit is {LIMIT_ENV['max_tokens']}={self.max_tokens}"

    def too_many_chars(self, texts: dict[str, str | None]) -> tuple[str, str] | None:
        """(field, error) for the first named text above `max_prompt_chars`, or None. Checked
        before tokenizing: a text's size in characters bounds the work tokenizing it costs."""
        for name, text in texts.items():
            if text is not None and len(text) > self.max_prompt_chars:
                limit = f"{LIMIT_ENV['max_prompt_chars']}={self.max_prompt_chars}"
                return name, f"{name} has {len(text)} characters; the limit is {limit}"
        return None


@dataclass(slots=True)
class ServerSettings:
    """Everything `lda serve` runs with: the engine's config and the server's own settings."""

    config: LDAConfig
    host: str = "127.0.0.1"
    port: int = 8000
    vllm_args: list[str] = field(default_factory=list)
    """Extra vLLM server flags, passed after `--` on the command line."""
    access: AccessSettings = field(default_factory=AccessSettings)
    limits: RequestLimits = field(default_factory=RequestLimits)
    prompt_format: PromptFormat = PromptFormat.CHAT
    """Format of the original routes' prompts when a request names none (a name is parsed)."""
    allow_weight_loads: bool = False
    """Whether POST /v1/lda/weights is served (api/weights_routes.py)."""

    def __post_init__(self) -> None:
        self.prompt_format = PromptFormat.parse(self.prompt_format, field=setting("server.prompt_format").label)
        if not 0 < self.port < 65536:
            raise ValueError(f"{setting('server.port').env} must be in 1..65535; got {self.port}")

    @property
    def allow_runtime_adapters(self) -> bool:
        """Whether POST /v1/load_lora_adapter and /v1/unload_lora_adapter are served (api/routes.py
        refuses them otherwise)."""
        return self.config.pair.runtime_adapters
