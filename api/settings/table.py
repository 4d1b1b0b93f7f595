"""Every setting of `lda serve` in one table: its flag, its environment variable, where it lands.

A setting is one `Setting` row: the flag, the environment variable (its one spelling in the
project), the field it sets (`group.field`, the group naming the dataclass that holds it), the
value's type and the help line. Its default is that field's default, stated once on the dataclass
(`engine.config` for the engine's, `api.settings.values` for the server's); a row states one only
where the server's differs from the library's. Adding a setting: a field (default, docstring,
validation) on its dataclass, and one row here; flags, environment, help and the errors follow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.env import RUNTIME_LORA_VAR

GROUPS = ("pair", "alpha", "engine", "access", "limits", "server")
"""Where a setting lands: `engine.config`'s PairConfig (through `adapter_pair`), AlphaConfig and
EngineOptions; `api.settings.values`' AccessSettings, RequestLimits and ServerSettings."""
FIELD_DEFAULT = object()
"""A row's default when the field's own default applies (almost every row)."""


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: a flag, an environment variable, the field it sets."""

    flag: str
    env: str
    field: str
    """`group.name`: the dataclass group (GROUPS) and the field it sets."""
    help: str
    kind: type = str
    """str, int or float (a flag with a value), bool (a switch), or list (a repeatable flag; the
    environment variable then holds the values comma-separated)."""
    aliases: tuple[str, ...] = ()
    """Other environment variables read, in order, when `env` is unset (vLLM's spelling)."""
    negates: bool = False
    """A switch that turns its field off (`--no-prefix-caching` sets enable_prefix_caching=False)."""
    default: object = FIELD_DEFAULT
    """The server's default where it differs from the field's (FIELD_DEFAULT: the field's)."""
    metavar: str | None = None
    """How `--help` shows the flag's value (None: argparse's)."""

    def __post_init__(self) -> None:
        group, _, name = self.field.partition(".")
        if group not in GROUPS or not name:
            raise ValueError(f"setting {self.flag}: field must be group.name with group one of {', '.join(GROUPS)}; got {self.field!r}")

    @property
    def group(self) -> str:
        return self.field.partition(".")[0]

    @property
    def name(self) -> str:
        return self.field.partition(".")[2]

    @property
    def dest(self) -> str:
        """The argparse attribute of the flag."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def label(self) -> str:
        """How errors name the setting: `ENV (--flag)`."""
        return f"{self.env} ({self.flag})"


SETTINGS = (
    # The pair.
    Setting("--model-after", "MODEL_AFTER_ID", "pair.after", "post-trained model id or path, or a PEFT LoRA adapter (default: the demo pair)"),
    Setting("--model-before", "MODEL_BEFORE_ID", "pair.before", "base model id or path (default: the demo pair, or the adapter's base)"),
    Setting("--after-adapter", "LDA_AFTER_ADAPTERS", "pair.adapters", "a LoRA adapter served as an after model under NAME (repeatable; the OpenAI `model` field picks one)", kind=list, metavar="NAME=PATH"),
    Setting("--max-lora-rank", "LDA_MAX_LORA_RANK", "pair.max_lora_rank", "largest adapter rank to accept (default: the adapters' largest; at least 16 with --allow-runtime-adapters)", kind=int),
    Setting("--max-loras", "LDA_MAX_LORAS", "pair.max_loras", "most LoRA adapters loaded at once, each with its own slot (default: the start-up adapters; with --allow-runtime-adapters, at least 4 and one more than those)", kind=int),
    Setting("--one-pass", "LDA_ONE_PASS", "pair.one_pass", "an adapter pair (before = the adapters' base) runs both stacks as one pass over the shared base weights (CPU; where it cannot, the engine logs why and runs two passes)", kind=bool),
    Setting("--allow-runtime-adapters", "LDA_ALLOW_RUNTIME_ADAPTERS", "pair.runtime_adapters", f"serve POST /v1/load_lora_adapter and /v1/unload_lora_adapter: add and remove after-adapters while the server runs (also vLLM's {RUNTIME_LORA_VAR})", kind=bool, aliases=(RUNTIME_LORA_VAR,)),
    # Alpha.
    Setting("--default-alpha", "LDA_DEFAULT_ALPHA", "alpha.default_alpha", "alpha for requests that give none", kind=float),
    Setting("--max-alpha", "LDA_MAX_ALPHA", "alpha.max_alpha", "largest alpha a request may ask for", kind=float),
    # vLLM's engine options.
    Setting("--device", "DEVICE", "engine.device", "cpu, cuda or auto"),
    Setting("--served-model-name", "SERVED_MODEL_NAME", "engine.served_model_name", "model name in the OpenAI API", default="lda"),
    Setting("--max-model-len", "MAX_MODEL_LEN", "engine.max_model_len", "context length (default: the after model's)", kind=int),
    Setting("--max-num-seqs", "MAX_NUM_SEQS", "engine.max_num_seqs", "most sequences decoded in one batch", kind=int),
    Setting("--max-num-batched-tokens", "MAX_NUM_BATCHED_TOKENS", "engine.max_num_batched_tokens", "token budget of one step", kind=int),
    Setting("--kv-cache-memory-gb", "KV_CACHE_MEMORY_GB", "engine.kv_cache_memory_gb", "KV-cache size in GiB (default: 2 on CPU, vLLM's share on GPU)", kind=float),
    Setting("--tensor-parallel-size", "TENSOR_PARALLEL_SIZE", "engine.tensor_parallel_size", "GPUs (or CPU ranks) per model", kind=int),
    Setting("--data-parallel-size", "DATA_PARALLEL_SIZE", "engine.data_parallel_size", "engines, each a full copy of the pair, sharing the requests", kind=int),
    Setting("--data-parallel-size-local", "DATA_PARALLEL_SIZE_LOCAL", "engine.data_parallel_size_local", "of those engines, how many run on this node (default: all)", kind=int),
    Setting("--pipeline-parallel-size", "PIPELINE_PARALLEL_SIZE", "engine.pipeline_parallel_size", "must be 1: the pair refuses pipeline parallel (use tensor parallel)", kind=int),
    Setting("--distributed-executor-backend", "DISTRIBUTED_EXECUTOR_BACKEND", "engine.distributed_executor_backend", "mp or ray (several nodes; RAY_ADDRESS names the cluster)"),
    Setting("--gpu-memory-utilization", "GPU_MEMORY_UTILIZATION", "engine.gpu_memory_utilization", "fraction of GPU memory vLLM may use", kind=float),
    Setting("--dtype", "DTYPE", "engine.dtype", "weights and activations dtype"),
    Setting("--seed", "SEED", "engine.seed", "engine seed", kind=int),
    Setting("--cpu-bind", "LDA_CPU_BIND", "engine.cpu_bind", "CPU only: all (the worker on every core) or vllm (vLLM's binding)"),
    Setting("--enforce-eager", "ENFORCE_EAGER", "engine.enforce_eager", "disable torch.compile and CUDA graphs (default: on for CPU)", kind=bool),
    Setting("--block-size", "BLOCK_SIZE", "engine.block_size", "tokens per KV-cache block, the unit of a prefix-cache hit (default: vLLM's, 128 on CPU)", kind=int),
    Setting("--no-prefix-caching", "DISABLE_PREFIX_CACHING", "engine.enable_prefix_caching", "turn prefix caching off", kind=bool, negates=True),
    # Who may call.
    Setting("--api-key", "LDA_API_KEY", "access.api_key", "key every route but /health requires (Authorization: Bearer KEY or X-API-Key: KEY)"),
    Setting("--metrics-require-key", "LDA_METRICS_REQUIRE_KEY", "access.metrics_require_key", "/metrics requires the API key too (default: open, for Prometheus)", kind=bool),
    # What one request may ask.
    Setting("--max-batch-prompts", "LDA_MAX_BATCH_PROMPTS", "limits.max_batch_prompts", "most prompts in one request", kind=int),
    Setting("--max-prompt-chars", "LDA_MAX_PROMPT_CHARS", "limits.max_prompt_chars", "longest prompt, system_prompt, continuation or message on the original and score routes, in characters", kind=int),
    Setting("--max-body-bytes", "LDA_MAX_BODY_BYTES", "limits.max_body_bytes", "largest request body, in bytes", kind=int),
    Setting("--max-n", "LDA_MAX_N", "limits.max_n", "largest n or best_of of an OpenAI request", kind=int),
    Setting("--max-tokens", "LDA_MAX_TOKENS", "limits.max_tokens", "most tokens one request may ask to generate (max_tokens, max_completion_tokens, max_output_tokens, max_new_tokens), and the default of a request that asks none (default: the context length)", kind=int),
    # The server.
    Setting("--host", "HOST", "server.host", "address to bind"),
    Setting("--port", "PORT", "server.port", "port to bind", kind=int),
    Setting("--prompt-format", "LDA_PROMPT_FORMAT", "server.prompt_format", "prompt format of the original routes: chat, alpaca or raw"),
    Setting("--allow-weight-loads", "LDA_ALLOW_WEIGHT_LOADS", "server.allow_weight_loads", "serve POST /v1/lda/weights: load a full-weight checkpoint folder into the after or before stack while the server runs", kind=bool),
)
"""Every setting, in `lda serve --help` order."""

BY_FIELD = {s.field: s for s in SETTINGS}
BY_FLAG = {s.flag: s for s in SETTINGS}


def setting(field: str) -> Setting:
    """The row of `group.name`."""
    return BY_FIELD[field]


def named_errors(group: str, build):
    """`build()`, with a ValueError that names one of `group`'s fields (the engine's dataclasses
    speak their fields) ending in the setting that sets it: "max_num_seqs must be >= 1; got 0 (set
    by --max-num-seqs or MAX_NUM_SEQS)", or "... above max_lora_rank 16; raise max_lora_rank
    (max_lora_rank is set by --max-lora-rank or LDA_MAX_LORA_RANK)" for a field named further on."""
    try:
        return build()
    except ValueError as error:
        error.args = (with_setting(group, str(error)),)  # its type (AdapterError, ...) stays
        raise


def with_setting(group: str, message: str) -> str:
    """`message` ending in the setting of the first of `group`'s fields it names (see `named_errors`)."""
    for row in SETTINGS:
        if row.group != group:
            continue
        if message.startswith(f"{row.name} "):
            return f"{message} (set by {row.flag} or {row.env})"
        if "_" in row.name and re.search(rf"\b{row.name}\b", message):  # a field's name, not a word
            return f"{message} ({row.name} is set by {row.flag} or {row.env})"
    return message


LIMIT_ENV = {s.name: s.env for s in SETTINGS if s.group == "limits"}
"""Each request limit's environment variable, named in the errors that enforce it."""
