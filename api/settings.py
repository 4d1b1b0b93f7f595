"""Server configuration: flags, else the environment, else defaults. The one place env vars are read.

The seed's variables keep their names (MODEL_AFTER_ID, MODEL_BEFORE_ID, DEVICE, HOST, PORT); the
rest are named after the vLLM option they set.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, replace

from engine.adapters import parse_adapter_arg
from engine.config import AlphaConfig, EngineOptions, LDAConfig, adapter_pair
from engine.prompts import PromptFormat

RUNTIME_ADAPTERS_ENV = "LDA_ALLOW_RUNTIME_ADAPTERS"
WEIGHT_LOADS_ENV = "LDA_ALLOW_WEIGHT_LOADS"
VLLM_RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
"""vLLM's own switch for its runtime LoRA routes; here it turns on ours (which check adapters first)."""

# (flag, env var, type, default, help). Defaults of None mean "let vLLM or the pair decide".
OPTIONS = [
    ("--model-after", "MODEL_AFTER_ID", str, None, "post-trained model id or path, or a PEFT LoRA adapter (default: the demo pair)"),
    ("--model-before", "MODEL_BEFORE_ID", str, None, "base model id or path (default: the demo pair, or the adapter's base)"),
    ("--max-lora-rank", "LDA_MAX_LORA_RANK", int, None, "largest adapter rank to accept (default: the adapters' largest; at least 16 with --allow-runtime-adapters)"),
    ("--max-loras", "LDA_MAX_LORAS", int, None, "most LoRA adapters loaded at once, each with its own slot (default: the start-up adapters; with --allow-runtime-adapters, at least 4 and one more than those)"),
    ("--device", "DEVICE", str, "auto", "cpu, cuda or auto"),
    ("--host", "HOST", str, "127.0.0.1", "address to bind"),
    ("--port", "PORT", int, 8000, "port to bind"),
    ("--default-alpha", "LDA_DEFAULT_ALPHA", float, 1.0, "alpha for requests that give none"),
    ("--max-alpha", "LDA_MAX_ALPHA", float, 100.0, "largest alpha a request may ask for"),
    ("--served-model-name", "SERVED_MODEL_NAME", str, "lda", "model name in the OpenAI API"),
    ("--max-model-len", "MAX_MODEL_LEN", int, None, "context length (default: the after model's)"),
    ("--max-num-seqs", "MAX_NUM_SEQS", int, 64, "most sequences decoded in one batch"),
    ("--max-num-batched-tokens", "MAX_NUM_BATCHED_TOKENS", int, None, "token budget of one step"),
    ("--kv-cache-memory-gb", "KV_CACHE_MEMORY_GB", float, None, "KV-cache size in GiB (CPU default 2)"),
    ("--tensor-parallel-size", "TENSOR_PARALLEL_SIZE", int, 1, "GPUs (or CPU ranks) per model"),
    ("--data-parallel-size", "DATA_PARALLEL_SIZE", int, 1, "engines, each a full copy of the pair, sharing the requests"),
    ("--data-parallel-size-local", "DATA_PARALLEL_SIZE_LOCAL", int, None, "of those engines, how many run on this node (default: all)"),
    ("--pipeline-parallel-size", "PIPELINE_PARALLEL_SIZE", int, 1, "must be 1: the pair refuses pipeline parallel (use tensor parallel)"),
    ("--distributed-executor-backend", "DISTRIBUTED_EXECUTOR_BACKEND", str, None, "mp or ray (several nodes; RAY_ADDRESS names the cluster)"),
    ("--gpu-memory-utilization", "GPU_MEMORY_UTILIZATION", float, 0.9, "fraction of GPU memory vLLM may use"),
    ("--dtype", "DTYPE", str, "auto", "weights and activations dtype"),
    ("--seed", "SEED", int, 0, "engine seed"),
    ("--cpu-bind", "LDA_CPU_BIND", str, "all", "CPU only: all (the worker on every core) or vllm (vLLM's binding)"),
    ("--api-key", "LDA_API_KEY", str, None, "key every route but /health requires (Authorization: Bearer KEY or X-API-Key: KEY)"),
    ("--prompt-format", "LDA_PROMPT_FORMAT", str, "chat", "prompt format of the original routes: chat, alpaca or raw"),
    ("--max-batch-prompts", "LDA_MAX_BATCH_PROMPTS", int, 256, "most prompts in one request"),
    ("--max-prompt-chars", "LDA_MAX_PROMPT_CHARS", int, 100_000, "longest prompt, system_prompt, continuation or message on the original and score routes, in characters"),
    ("--max-body-bytes", "LDA_MAX_BODY_BYTES", int, 16 * 2**20, "largest request body, in bytes"),
    ("--max-n", "LDA_MAX_N", int, 128, "largest n or best_of of an OpenAI request"),
    ("--max-tokens", "LDA_MAX_TOKENS", int, None, "most tokens one request may ask to generate (max_tokens, max_completion_tokens, max_output_tokens, max_new_tokens), and the default of a request that asks none (default: the context length)"),
]
BOOL_OPTIONS = [
    ("--enforce-eager", "ENFORCE_EAGER", None, "disable torch.compile and CUDA graphs (default: on for CPU)"),
    ("--no-prefix-caching", "DISABLE_PREFIX_CACHING", False, "turn prefix caching off"),
    ("--metrics-require-key", "LDA_METRICS_REQUIRE_KEY", False, "/metrics requires the API key too (default: open, for Prometheus)"),
    ("--one-pass", "LDA_ONE_PASS", False, "an adapter pair (before = the adapters' base) runs both stacks as one pass over the shared base weights (CPU; where it cannot, the engine logs why and runs two passes)"),
    ("--allow-runtime-adapters", RUNTIME_ADAPTERS_ENV, False, "serve POST /v1/load_lora_adapter and /v1/unload_lora_adapter: add and remove after-adapters while the server runs (also vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING)"),
    ("--allow-weight-loads", WEIGHT_LOADS_ENV, False, "serve POST /v1/lda/weights: load a full-weight checkpoint folder into the after or before stack while the server runs"),
]


def _env_bool(name: str, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false; got {value!r}")


def _env_value(name: str, kind, default):
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"{name} must be of type {kind.__name__}; got {value!r}") from None


@dataclass(slots=True)
class AccessSettings:
    """Who may call the server."""

    api_key: str | None = None
    """Required by every route but /health (and /metrics unless `metrics_require_key`); None: open."""
    metrics_require_key: bool = False
    """/metrics needs the key too. Off by default so a Prometheus scraper needs no secret."""

    def __post_init__(self) -> None:
        if self.api_key is not None and (not self.api_key or any(c.isspace() for c in self.api_key)):
            # HTTP strips header values, so a key with spaces at either end could never match.
            raise ValueError("LDA_API_KEY (--api-key) must be non-empty and contain no whitespace")
        if self.metrics_require_key and self.api_key is None:
            raise ValueError("LDA_METRICS_REQUIRE_KEY (--metrics-require-key) needs LDA_API_KEY (--api-key)")


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


LIMIT_ENV = {
    "max_batch_prompts": "LDA_MAX_BATCH_PROMPTS",
    "max_prompt_chars": "LDA_MAX_PROMPT_CHARS",
    "max_body_bytes": "LDA_MAX_BODY_BYTES",
    "max_n": "LDA_MAX_N",
    "max_tokens": "LDA_MAX_TOKENS",
}
"""Each limit's setting, named in the errors that enforce it."""


@dataclass(slots=True)
class ServerSettings:
    config: LDAConfig
    host: str = "127.0.0.1"
    port: int = 8000
    vllm_args: list[str] = field(default_factory=list)
    """Extra vLLM server flags, passed after `--` on the command line."""
    access: AccessSettings = field(default_factory=AccessSettings)
    limits: RequestLimits = field(default_factory=RequestLimits)
    prompt_format: PromptFormat = PromptFormat.CHAT
    """Format of the original routes' prompts when a request names none."""
    allow_weight_loads: bool = False
    """Whether POST /v1/lda/weights is served (api/weights_routes.py)."""
    @property
    def allow_runtime_adapters(self) -> bool:
        """Whether POST /v1/load_lora_adapter and /v1/unload_lora_adapter are served (api/routes.py
        refuses them otherwise)."""
        return self.config.pair.runtime_adapters


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lda serve",
        description="Serve a model pair with logit diff amplification over an OpenAI-compatible API. "
        "Every option also reads the environment variable shown; flags win. "
        "Arguments after `--` go to vLLM's server unchanged, except `--api-key`, which becomes "
        "this server's --api-key (it then protects every route, not only /v1).",
    )
    for flag, env, kind, default, help_ in OPTIONS:
        parser.add_argument(flag, type=kind, default=None, help=f"{help_} [env {env}, default {default}]")
    for flag, env, default, help_ in BOOL_OPTIONS:
        parser.add_argument(flag, action="store_true", default=None, help=f"{help_} [env {env}]")
    parser.add_argument(
        "--after-adapter", action="append", default=None, metavar="NAME=PATH",
        help=f"a LoRA adapter served as an after model under NAME (repeatable; the OpenAI `model` field picks "
        f"one) [env {ADAPTERS_ENV}, comma-separated]",
    )
    return parser


ADAPTERS_ENV = "LDA_AFTER_ADAPTERS"


def _adapter_args(args) -> list[tuple[str, str]]:
    given = args.after_adapter
    if given is None:
        given = [v for v in os.environ.get(ADAPTERS_ENV, "").split(",") if v.strip()]
    return [parse_adapter_arg(v) for v in given]


PARALLEL_FLAGS = {
    "--tensor-parallel-size": "--tensor-parallel-size", "-tp": "--tensor-parallel-size",
    "--data-parallel-size": "--data-parallel-size", "-dp": "--data-parallel-size",
    "--data-parallel-size-local": "--data-parallel-size-local", "-dpl": "--data-parallel-size-local",
    "--pipeline-parallel-size": "--pipeline-parallel-size", "-pp": "--pipeline-parallel-size",
    "--distributed-executor-backend": "--distributed-executor-backend",
}
"""vLLM's spellings of the parallel options, by the flag of ours they set. Given after `--` they
would reach vLLM behind the pair's back: the CPU binding is derived from them before vLLM starts."""


def _lift_parallel_args(vllm_args: list[str]) -> tuple[dict[str, str], list[str]]:
    """The parallel options given after `--` (by our flag names), apart from the other vLLM flags."""
    lifted, rest, i = {}, [], 0
    while i < len(vllm_args):
        name, eq, value = vllm_args[i].partition("=")
        if name not in PARALLEL_FLAGS:
            rest.append(vllm_args[i])
        elif eq:
            lifted[PARALLEL_FLAGS[name]] = value
        elif i + 1 < len(vllm_args):
            i += 1
            lifted[PARALLEL_FLAGS[name]] = vllm_args[i]
        else:
            raise ValueError(f"{name} after `--` needs a value")
        i += 1
    return lifted, rest


def _merge_parallel(args, values: dict, lifted: dict[str, str]) -> None:
    """vLLM's spelling of a parallel option (after `--`) counts as our flag: it beats the
    environment, and a different value given both ways is refused rather than one silently lost."""
    kinds = {flag: kind for flag, _, kind, _, _ in OPTIONS}
    for flag, text in lifted.items():
        try:
            value = kinds[flag](text)
        except ValueError:
            raise ValueError(f"{flag} must be of type {kinds[flag].__name__}; got {text!r}") from None
        ours = getattr(args, flag.lstrip("-").replace("-", "_"))
        if ours is not None and ours != value:
            raise ValueError(f"{flag} is given twice with different values ({ours} and {value} after `--`)")
        values[flag] = value


def _value(args, flag: str, env: str, kind, default):
    given = getattr(args, flag.lstrip("-").replace("-", "_"))
    return given if given is not None else _env_value(env, kind, default)


def default_pair() -> tuple[str, str]:
    """The embedded pair: the demo's LoRA adapter on SmolLM2, installed on first use from the copy
    shipped in the repository (no fine-tune; see `lda demo-pair --lora`)."""
    from demo.demo_pair import LORA_RANK, ensure_demo_pair, lora_config

    try:
        pair = ensure_demo_pair(config=lora_config(LORA_RANK))
    except (RuntimeError, OSError) as error:  # a damaged install, a full disk: say so, no traceback
        raise ValueError(f"cannot set up the embedded demo pair (no MODEL_AFTER_ID given): {error}") from None
    return str(pair.after), str(pair.before)


def _split_vllm_api_key(vllm_args: list[str]) -> tuple[list[str], list[str]]:
    """vLLM's `--api-key` values (it takes one or more) apart from the other vLLM flags."""
    keys, rest, i = [], [], 0
    while i < len(vllm_args):
        arg = vllm_args[i]
        if arg.startswith("--api-key="):
            keys.append(arg.split("=", 1)[1])
        elif arg == "--api-key":
            while i + 1 < len(vllm_args) and not vllm_args[i + 1].startswith("-"):
                i += 1
                keys.append(vllm_args[i])
            if not keys:
                raise ValueError("--api-key after `--` needs a value")
        else:
            rest.append(arg)
        i += 1
    return keys, rest


def _api_key(ours: str | None, vllm_keys: list[str]) -> str | None:
    """One key for every route: ours, or vLLM's spelling of it (after `--`, or VLLM_API_KEY).

    vLLM's own key protects only /v1; it becomes ours so that no spelling leaves a route open.
    """
    others = [*vllm_keys, *([os.environ["VLLM_API_KEY"]] if os.environ.get("VLLM_API_KEY") else [])]
    if len(set(others)) > 1:
        raise ValueError("give one API key: vLLM's --api-key (after `--`) and VLLM_API_KEY differ or list several")
    if ours is not None and others and others[0] != ours:
        raise ValueError("two different API keys: LDA_API_KEY (--api-key) and vLLM's --api-key / VLLM_API_KEY")
    return ours if ours is not None else (others[0] if others else None)


def _runtime_adapters(args) -> bool:
    """Ours (flag, then LDA_ALLOW_RUNTIME_ADAPTERS), or vLLM's spelling of the same switch."""
    if args.allow_runtime_adapters:
        return True
    ours = _env_bool(RUNTIME_ADAPTERS_ENV, None)
    return ours if ours is not None else bool(_env_bool(VLLM_RUNTIME_LORA_ENV, False))


def _limits(values: dict) -> RequestLimits:
    return RequestLimits(**{name: values["--" + name.replace("_", "-")] for name in LIMIT_ENV})


def parse_settings(argv: list[str]) -> ServerSettings:
    """Flags and environment into validated settings; raises ValueError naming the bad option."""
    ours, vllm_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(ours)
    values = {flag: _value(args, flag, env, kind, default) for flag, env, kind, default, _ in OPTIONS}
    vllm_keys, vllm_args = _split_vllm_api_key(vllm_args)
    lifted, vllm_args = _lift_parallel_args(vllm_args)
    _merge_parallel(args, values, lifted)
    access = AccessSettings(
        api_key=_api_key(values["--api-key"], vllm_keys),
        metrics_require_key=bool(args.metrics_require_key or _env_bool("LDA_METRICS_REQUIRE_KEY", False)),
    )
    limits = _limits(values)
    prompt_format = PromptFormat.parse(values["--prompt-format"], field="LDA_PROMPT_FORMAT (--prompt-format)")
    after, before = values["--model-after"], values["--model-before"]
    adapters = _adapter_args(args)
    if after is None and before is None and not adapters:
        after, before = default_pair()
    elif after is None and not adapters:
        raise ValueError("give both MODEL_AFTER_ID and MODEL_BEFORE_ID (or --model-after and --model-before), or neither")
    enforce_eager = args.enforce_eager or _env_bool("ENFORCE_EAGER", None)
    no_prefix = args.no_prefix_caching or _env_bool("DISABLE_PREFIX_CACHING", False)
    pair = adapter_pair(
        after, before, adapters, values["--max-lora-rank"],
        runtime_adapters=_runtime_adapters(args), configured_max_loras=values["--max-loras"],
    )
    if args.one_pass or _env_bool("LDA_ONE_PASS", False):
        pair = replace(pair, one_pass=True)
    config = LDAConfig(
        pair=pair,
        alpha=AlphaConfig(values["--default-alpha"], values["--max-alpha"]),
        engine=EngineOptions(
            device=values["--device"],
            dtype=values["--dtype"],
            max_model_len=values["--max-model-len"],
            max_num_seqs=values["--max-num-seqs"],
            max_num_batched_tokens=values["--max-num-batched-tokens"],
            enable_prefix_caching=not no_prefix,
            kv_cache_memory_gb=values["--kv-cache-memory-gb"],
            gpu_memory_utilization=values["--gpu-memory-utilization"],
            tensor_parallel_size=values["--tensor-parallel-size"],
            data_parallel_size=values["--data-parallel-size"],
            data_parallel_size_local=values["--data-parallel-size-local"],
            pipeline_parallel_size=values["--pipeline-parallel-size"],
            distributed_executor_backend=values["--distributed-executor-backend"],
            enforce_eager=enforce_eager,
            seed=values["--seed"],
            served_model_name=values["--served-model-name"],
            cpu_bind=values["--cpu-bind"],
        ),
    )
    port = values["--port"]
    if not 0 < port < 65536:
        raise ValueError(f"PORT must be in 1..65535; got {port}")
    return ServerSettings(
        config=config,
        host=values["--host"],
        port=port,
        vllm_args=vllm_args,
        access=access,
        limits=limits,
        prompt_format=prompt_format,
        allow_weight_loads=bool(args.allow_weight_loads or _env_bool(WEIGHT_LOADS_ENV, False)),
    )
