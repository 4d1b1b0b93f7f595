"""Server configuration: flags, else the environment, else defaults. The one place env vars are read.

The seed's variables keep their names (MODEL_AFTER_ID, MODEL_BEFORE_ID, DEVICE, HOST, PORT); the
rest are named after the vLLM option they set.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from engine.adapters import parse_adapter_arg
from engine.config import AlphaConfig, EngineOptions, LDAConfig, adapter_pair

# (flag, env var, type, default, help). Defaults of None mean "let vLLM or the pair decide".
OPTIONS = [
    ("--model-after", "MODEL_AFTER_ID", str, None, "post-trained model id or path, or a PEFT LoRA adapter (default: the demo pair)"),
    ("--model-before", "MODEL_BEFORE_ID", str, None, "base model id or path (default: the demo pair, or the adapter's base)"),
    ("--max-lora-rank", "LDA_MAX_LORA_RANK", int, None, "largest adapter rank to accept (default: the adapters' largest)"),
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
    ("--gpu-memory-utilization", "GPU_MEMORY_UTILIZATION", float, 0.9, "fraction of GPU memory vLLM may use"),
    ("--dtype", "DTYPE", str, "auto", "weights and activations dtype"),
    ("--seed", "SEED", int, 0, "engine seed"),
]
BOOL_OPTIONS = [
    ("--enforce-eager", "ENFORCE_EAGER", None, "disable torch.compile and CUDA graphs (default: on for CPU)"),
    ("--no-prefix-caching", "DISABLE_PREFIX_CACHING", False, "turn prefix caching off"),
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
class ServerSettings:
    config: LDAConfig
    host: str = "127.0.0.1"
    port: int = 8000
    vllm_args: list[str] = field(default_factory=list)
    """Extra vLLM server flags, passed after `--` on the command line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lda serve",
        description="Serve a model pair with logit diff amplification over an OpenAI-compatible API. "
        "Every option also reads the environment variable shown; flags win. "
        "Arguments after `--` go to vLLM's server unchanged.",
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


def _value(args, flag: str, env: str, kind, default):
    given = getattr(args, flag.lstrip("-").replace("-", "_"))
    return given if given is not None else _env_value(env, kind, default)


def default_pair() -> tuple[str, str]:
    """The embedded pair, built offline on first use (see `lda demo-pair`)."""
    from engine.demo_pair import ensure_demo_pair

    pair = ensure_demo_pair()
    return str(pair.after), str(pair.before)


def parse_settings(argv: list[str]) -> ServerSettings:
    """Flags and environment into validated settings; raises ValueError naming the bad option."""
    ours, vllm_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    args = build_parser().parse_args(ours)
    values = {flag: _value(args, flag, env, kind, default) for flag, env, kind, default, _ in OPTIONS}
    after, before = values["--model-after"], values["--model-before"]
    adapters = _adapter_args(args)
    if after is None and before is None and not adapters:
        after, before = default_pair()
    elif after is None and not adapters:
        raise ValueError("give both MODEL_AFTER_ID and MODEL_BEFORE_ID (or --model-after and --model-before), or neither")
    enforce_eager = args.enforce_eager or _env_bool("ENFORCE_EAGER", None)
    no_prefix = args.no_prefix_caching or _env_bool("DISABLE_PREFIX_CACHING", False)
    config = LDAConfig(
        pair=adapter_pair(after, before, adapters, values["--max-lora-rank"]),
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
            enforce_eager=enforce_eager,
            seed=values["--seed"],
            served_model_name=values["--served-model-name"],
        ),
    )
    port = values["--port"]
    if not 0 < port < 65536:
        raise ValueError(f"PORT must be in 1..65535; got {port}")
    return ServerSettings(config=config, host=values["--host"], port=port, vllm_args=vllm_args)
