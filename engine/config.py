"""Typed, validated configuration of an LDA engine, and its translation into vLLM engine arguments.

Three concerns, one dataclass each: the model pair, the alpha policy, and vLLM's own engine
options (named as vLLM names them, so they map one to one). `LDAConfig` gathers them and is passed
whole. Every bad value raises ValueError naming the field and the accepted range.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from engine.adapters import AdapterSpec, check_same_base, max_lora_rank, read_adapter, same_model, valid_lora_rank

SCORING_MAX_LOGPROBS = 42
"""engine.one_pass.num_columns(MAX_PROMOTED_K) - 1, written out so that this module stays free of
torch (tests/engine/test_one_pass.py checks the two agree)."""

PAIR_ARCHITECTURE = "LDAPairForCausalLM"
# Keys this project adds to the after model's hf_config through `hf_overrides`; they survive into
# `vllm_config.model_config.hf_config` in every engine process.
BEFORE_MODEL_KEY = "lda_before_model"
AFTER_ARCHITECTURES_KEY = "lda_after_architectures"
DEFAULT_ALPHA_KEY = "lda_default_alpha"
MAX_ALPHA_KEY = "lda_max_alpha"
SHARE_BASE_KEY = "lda_share_base"
ONE_PASS_KEY = "lda_one_pass"

GIB = 1024**3


@dataclass(slots=True)
class PairConfig:
    """The two checkpoints: model ids or local paths."""

    after: str
    """The post-trained model (A). Its tokenizer, chat template and generation config are used."""
    before: str
    """The base model (B)."""
    adapters: tuple[AdapterSpec, ...] = ()
    """LoRA adapters served as the after model, the first the default. `after` is then their base."""
    max_lora_rank: int | None = None
    """vLLM's `max_lora_rank` (set by `adapter_pair`); None without LoRA."""
    runtime_adapters: bool = False
    """Adapters may be loaded and unloaded while the server runs (`/v1/load_lora_adapter`): LoRA is
    then on even with no adapter at start-up, and the after stack without one is `after` itself."""
    max_loras: int | None = None
    """vLLM's `max_loras`: the most adapters loaded at once, each with its own slot, so any mix of
    them fits one batch (set by `adapter_pair`); None without LoRA."""
    one_pass: bool = False
    """Run a shared-base pair's two stacks as one pass over both stacks' rows (the base weights
    read once per step; engine/compat/shared_pass.py). Needs an adapter pair whose before model
    is the adapters' base; where one pass cannot run (a GPU with LoRA, other attention layers) the
    engine logs why and runs two passes. Off: two passes, the tested default."""

    def __post_init__(self) -> None:
        for name in ("after", "before"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} model must be a non-empty model id or path; got {value!r}")
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError(f"adapter names must be unique; got {names}")
        if self.max_loras is not None and self.max_loras < max(1, len(self.adapters)):
            raise ValueError(
                f"max_loras (LDA_MAX_LORAS, --max-loras) must be >= 1 and >= the {len(self.adapters)} adapters "
                f"given at start-up; got {self.max_loras}"
            )
        if self.one_pass and not self.shares_base:
            raise ValueError(
                "one_pass needs an adapter pair whose before model is the adapters' base (the stacks then "
                f"share the base weights); after={self.after!r}, before={self.before!r}, {len(self.adapters)} adapter(s)"
            )

    @property
    def lora_enabled(self) -> bool:
        """Whether the engine runs vLLM's LoRA layers on the after stack."""
        return bool(self.adapters) or self.runtime_adapters

    @property
    def shares_base(self) -> bool:
        """Whether the before stack runs the after stack's base weights (held once)."""
        return self.lora_enabled and same_model(self.after, self.before)

    def describe(self) -> str:
        """One line for the start-up log: which models, and whether the base weights are shared."""
        runtime = f"; runtime adapters allowed (max_loras {self.max_loras}, max_lora_rank {self.max_lora_rank})"
        runtime = runtime if self.runtime_adapters else ""
        if not self.adapters:
            return f"after={self.after} before={self.before}{runtime}"
        names = ", ".join(f"{a.name} (rank {a.rank})" for a in self.adapters)
        sharing = (
            "the before stack shares the base weights (held once)"
            if self.shares_base
            else f"the before model is not the adapters' base, so nothing is shared (base {self.after})"
        )
        return f"after = LoRA adapters {names} on {self.after}; before={self.before}; {sharing}{runtime}"


RUNTIME_MIN_LORA_RANK = 16
"""The smallest `max_lora_rank` when adapters may be loaded at runtime: their ranks are not known at
start-up, and 16 holds the common ranks of model organisms and trainer checkpoints (8, 16). A slot's
cost grows with the rank (every adapter row computes at the slot's rank), so it is not larger."""
RUNTIME_MIN_LORAS = 4
"""The smallest `max_loras` when adapters may be loaded at runtime: room for a few checkpoints side
by side (a monitor loads one at a time) beside the start-up adapters."""


def lora_limits(
    specs: tuple[AdapterSpec, ...], runtime: bool, configured_rank: int | None, configured_loras: int | None
) -> tuple[int | None, int | None]:
    """(max_lora_rank, max_loras) for vLLM: the configured values, else what the start-up adapters
    need, raised to the runtime minimums when adapters may be added later; (None, None) without LoRA."""
    if not specs and not runtime:
        return None, None
    if specs:
        rank = max_lora_rank(specs, configured_rank)
    else:
        rank = valid_lora_rank(configured_rank) if configured_rank is not None else RUNTIME_MIN_LORA_RANK
    loras = len(specs)
    if runtime:
        rank = rank if configured_rank is not None else max(rank, RUNTIME_MIN_LORA_RANK)
        loras = max(RUNTIME_MIN_LORAS, len(specs) + 1)
    return rank, configured_loras if configured_loras is not None else loras


def adapter_pair(
    after: str | None,
    before: str | None,
    adapters: list[tuple[str, str]] | tuple = (),
    configured_max_rank: int | None = None,
    *,
    runtime_adapters: bool = False,
    configured_max_loras: int | None = None,
) -> PairConfig:
    """The pair for an after model that may be a PEFT adapter, and for extra `NAME=PATH` adapters.

    An adapter as `after` becomes the first (default) adapter, named after its folder. The before
    model defaults to the adapters' base. Raises ValueError (AdapterError) naming both models when
    an adapter cannot run against the before model, or its rank exceeds `configured_max_rank`.
    With `runtime_adapters`, LoRA is on whatever was given, with room for adapters loaded later.
    """
    from engine.adapters import default_name, is_adapter

    given = list(adapters)
    if after is not None and is_adapter(after):
        given.insert(0, (default_name(after), after))
        after = None
    if not given:
        if after is None or before is None:
            raise ValueError("give both the after and the before model (MODEL_AFTER_ID and MODEL_BEFORE_ID)")
        rank, loras = lora_limits((), runtime_adapters, configured_max_rank, configured_max_loras)
        return PairConfig(after, before, max_lora_rank=rank, runtime_adapters=runtime_adapters, max_loras=loras)
    specs = tuple(read_adapter(name, path) for name, path in given)
    base = specs[0].base
    if after is not None and not same_model(after, base):
        raise ValueError(
            f"the after model {after!r} is a full model, but adapters were given too; adapters apply to "
            f"their base {base!r}: give them alone"
        )
    before = before or base
    check_same_base(specs, before)
    rank, loras = lora_limits(specs, runtime_adapters, configured_max_rank, configured_max_loras)
    return PairConfig(base, before, specs, rank, runtime_adapters=runtime_adapters, max_loras=loras)


@dataclass(slots=True)
class AlphaConfig:
    """How alpha is chosen when a request gives none, and how far it may go."""

    default_alpha: float = 1.0
    """alpha for requests that give none."""
    max_alpha: float = 100.0
    """Upper bound on any request's alpha; the lower bound is always -1 (the before model)."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.max_alpha) or self.max_alpha < 0:
            raise ValueError(f"max_alpha must be a finite number >= 0; got {self.max_alpha!r}")
        if not math.isfinite(self.default_alpha) or not -1 <= self.default_alpha <= self.max_alpha:
            raise ValueError(
                f"default_alpha must be a finite number in [-1, max_alpha={self.max_alpha:g}]; "
                f"got {self.default_alpha!r}"
            )


DTYPES = ("auto", "bfloat16", "float16", "float32", "half", "float")
"""What vLLM's `--dtype` accepts (half = float16, float = float32)."""


def cpu_has_native_bf16() -> bool:
    import torch

    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def cpu_dtype(dtype: str) -> str:
    """The dtype an engine on this CPU runs for `dtype` ("auto" resolved as EngineOptions says).

    bf16 decodes about twice as fast as float32 on an AMX CPU (docs/serving/limits.md, "CPU notes"); where the
    CPU would have to emulate it, float32 is the fast one.
    """
    if dtype != "auto":
        return dtype
    return "auto" if cpu_has_native_bf16() else "float32"


CPU_BINDS = ("all", "vllm")
EXECUTOR_BACKENDS = (None, "mp", "ray")
PIPELINE_REFUSAL = (
    "the pair model does not support pipeline parallel (vLLM needs its SupportsPP interface, which would "
    "have to carry both models' hidden states between stages); split a pair too big for one device with "
    "tensor parallel (--tensor-parallel-size, across nodes with the Ray backend), and add engines for "
    "throughput with data parallel (--data-parallel-size)"
)
"""Why pipeline_parallel_size must be 1, and what to use instead: one line at start."""
RAY_ON_CPU_REFUSAL = (
    "distributed_executor_backend=ray needs GPUs: vLLM 0.32's CPU platform has no Ray device key "
    "(vllm/v1/executor/ray_utils.py refuses it deep in the engine start); on CPU leave the backend unset (mp)"
)
BINDING_VARS = ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU")


def _id_ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5" (vLLM's CPU id list syntax)."""
    parts, start = [], None
    for i, value in enumerate(ids):
        if start is None:
            start = value
        if i + 1 == len(ids) or ids[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ",".join(parts)


def cpu_binding_env(cores: set[int] | None = None, ranks: int = 1) -> dict[str, str]:
    """The CPU workers' binding for `cpu_bind="all"`: the cores this process may use (`cores`,
    default its affinity) split evenly over the `ranks` local workers, none reserved for the API
    server and engine core.

    vLLM's default reserves one core per rank for those processes; on a 2-core machine that leaves
    the model one core. Both cores for the worker served 1.07x, 1.39x and 1.56x the output tokens/s
    of vLLM's binding at concurrency 1, 16 and 64 (`lda bench --servers lda,lda-bind-vllm`,
    interleaved rounds, docs/performance/serving.md); the front-end processes mostly wait on the worker.

    With tensor, pipeline or data parallel, vLLM wants one core list per local rank, separated by
    `|`, in its rank order (data, pipeline, tensor; each data-parallel engine takes its slice): one
    list for several ranks fails at start. Each rank gets `len(cores) // ranks` cores; the
    remainder stays unbound, for the front-end processes. Raises ValueError when there are fewer
    cores than ranks (a rank without a core cannot run).
    """
    ids = sorted(os.sched_getaffinity(0) if cores is None else cores)
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1; got {ranks}")
    if len(ids) < ranks:
        raise ValueError(
            f"{ranks} CPU ranks (tensor x pipeline x data parallel size) need at least {ranks} cores; this "
            f"process may use {len(ids)} ({_id_ranges(ids)}): lower the parallel sizes"
        )
    per_rank = len(ids) // ranks
    lists = [_id_ranges(ids[r * per_rank : (r + 1) * per_rank]) for r in range(ranks)]
    return {"VLLM_CPU_OMP_THREADS_BIND": "|".join(lists), "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def _gpu_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


@dataclass(slots=True)
class EngineOptions:
    """vLLM engine options passed through unchanged (vLLM's names)."""

    device: str = "auto"
    """"cpu", "cuda", or "auto" (cuda when a GPU is visible)."""
    dtype: str = "auto"
    """"auto": the checkpoint's dtype, except on a CPU without native bf16 (AVX512-BF16 or AMX),
    where it is float32 (see `cpu_dtype` and docs/serving/limits.md, "CPU notes")."""
    max_model_len: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True
    kv_cache_memory_gb: float | None = None
    """KV-cache size in GiB. Required in practice on CPU (default there: 2 GiB)."""
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    """Engines, each with a full copy of the pair, that share the requests (vLLM's internal load
    balancing); the server only (`vllm.LLM` serves one engine)."""
    data_parallel_size_local: int | None = None
    """Of those engines, how many run on this node (multi-node data parallel); None: all."""
    pipeline_parallel_size: int = 1
    """Must be 1: the pair model does not implement vLLM's `SupportsPP` (see PIPELINE_REFUSAL)."""
    distributed_executor_backend: str | None = None
    """vLLM's executor for the ranks: None (vLLM decides: processes on one node), "mp" or "ray"
    (ranks on several nodes of a Ray cluster; `RAY_ADDRESS` names it)."""
    enforce_eager: bool | None = None
    """None: eager on CPU (compiling costs minutes there and decodes no faster), compiled on GPU."""
    seed: int = 0
    served_model_name: str | None = None
    cpu_bind: str = "all"
    """CPU only: "all" binds the worker's threads to every core this process may use and reserves
    none (see `cpu_binding_env`); "vllm" keeps vLLM's own binding (one core reserved per rank)."""

    def __post_init__(self) -> None:
        if self.cpu_bind not in CPU_BINDS:
            raise ValueError(f"cpu_bind must be one of {', '.join(CPU_BINDS)}; got {self.cpu_bind!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be one of auto, cpu, cuda; got {self.device!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1; got {self.max_num_seqs}")
        if self.max_model_len is not None and self.max_model_len < 16:
            raise ValueError(f"max_model_len must be >= 16; got {self.max_model_len}")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 8:
            raise ValueError(f"max_num_batched_tokens must be >= 8; got {self.max_num_batched_tokens}")
        if self.kv_cache_memory_gb is not None and not self.kv_cache_memory_gb > 0:
            raise ValueError(f"kv_cache_memory_gb must be > 0; got {self.kv_cache_memory_gb}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1]; got {self.gpu_memory_utilization}")
        for name in ("tensor_parallel_size", "data_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        local = self.data_parallel_size_local
        if local is not None and not 0 <= local <= self.data_parallel_size:
            raise ValueError(f"data_parallel_size_local must be in 0..data_parallel_size={self.data_parallel_size}; got {local}")
        if self.pipeline_parallel_size != 1:
            raise ValueError(f"pipeline_parallel_size={self.pipeline_parallel_size}: {PIPELINE_REFUSAL}")
        if self.distributed_executor_backend not in EXECUTOR_BACKENDS:
            raise ValueError(
                f"distributed_executor_backend must be one of mp, ray; got {self.distributed_executor_backend!r}"
            )

    @property
    def local_ranks(self) -> int:
        """Worker processes on this node: tensor x pipeline x this node's data-parallel engines."""
        local = self.data_parallel_size if self.data_parallel_size_local is None else self.data_parallel_size_local
        return self.tensor_parallel_size * self.pipeline_parallel_size * max(local, 1)

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if _gpu_available() else "cpu"
        return self.device


@dataclass(slots=True)
class LDAConfig:
    pair: PairConfig
    alpha: AlphaConfig = field(default_factory=AlphaConfig)
    engine: EngineOptions = field(default_factory=EngineOptions)


def _architectures(model: str, trust_remote_code: bool = False) -> list[str]:
    from transformers import AutoConfig

    archs = getattr(AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code), "architectures", None)
    if not archs:
        raise ValueError(f"model {model!r} has no `architectures` in its config; cannot pick a vLLM class")
    return list(archs)


def hf_overrides(config: LDAConfig) -> dict[str, Any]:
    """What turns the after model's config into the pair's: our class, plus the before model."""
    return {
        "architectures": [PAIR_ARCHITECTURE],
        AFTER_ARCHITECTURES_KEY: _architectures(config.pair.after),
        BEFORE_MODEL_KEY: config.pair.before,
        SHARE_BASE_KEY: config.pair.shares_base,
        ONE_PASS_KEY: config.pair.one_pass,
        DEFAULT_ALPHA_KEY: config.alpha.default_alpha,
        MAX_ALPHA_KEY: config.alpha.max_alpha,
    }


def lora_targets(adapters: tuple[AdapterSpec, ...]) -> list[str] | None:
    """The modules vLLM should give LoRA layers: those the adapters target, when all name modules.

    Left to vLLM, every linear layer, the embedding and the lm_head get one, and each costs a
    LoRA pass per step even where no adapter has weights; the lm_head's spans the vocabulary.
    None (no restriction) when an adapter targets by pattern ("all-linear", a regex).
    """
    names = {t for a in adapters for t in a.target_modules}
    if not names or not all(t.isidentifier() for t in names):
        return None
    return sorted(names)


def engine_kwargs(config: LDAConfig, tokenizer: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(...)` / `AsyncEngineArgs(...)` serving the pair."""
    opts = config.engine
    device = opts.resolved_device()
    kwargs: dict[str, Any] = dict(
        model=config.pair.after,
        tokenizer=tokenizer or config.pair.after,
        hf_overrides=hf_overrides(config),
        logits_processors=["engine.alpha:AlphaLogitsProcessor"],
        dtype=cpu_dtype(opts.dtype) if device == "cpu" else opts.dtype,
        max_num_seqs=opts.max_num_seqs,
        enable_prefix_caching=opts.enable_prefix_caching,
        tensor_parallel_size=opts.tensor_parallel_size,
        enforce_eager=(device == "cpu") if opts.enforce_eager is None else opts.enforce_eager,
        seed=opts.seed,
        # Stats feed /metrics and per-request prefix-cache counts; the cost is negligible.
        disable_log_stats=False,
        # One-pass scoring packs its values into prompt-logprob columns (engine/one_pass.py); vLLM
        # refuses more than max_logprobs of them (default 20). Costs nothing unless requested.
        max_logprobs=SCORING_MAX_LOGPROBS,
        # What collective_rpc reaches in the worker: loading full weights into one stack (engine/weights.py).
        worker_extension_cls="engine.weights.StackWeightsWorker",
    )
    if config.pair.lora_enabled:
        n = config.pair.max_loras or len(config.pair.adapters)
        # Every adapter keeps a slot, so any mix of adapters fits one batch.
        kwargs.update(enable_lora=True, max_loras=n, max_cpu_loras=n, max_lora_rank=config.pair.max_lora_rank)
        if (targets := lora_targets(config.pair.adapters)) is not None:
            kwargs["lora_target_modules"] = targets
    kwargs.update(parallel_kwargs(opts))
    if opts.max_model_len is not None:
        kwargs["max_model_len"] = opts.max_model_len
    if opts.max_num_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = opts.max_num_batched_tokens
    if opts.served_model_name:
        kwargs["served_model_name"] = opts.served_model_name
    if device == "cpu":
        kwargs["kv_cache_memory_bytes"] = int((opts.kv_cache_memory_gb or 2.0) * GIB)
    else:
        kwargs["gpu_memory_utilization"] = opts.gpu_memory_utilization
        if opts.kv_cache_memory_gb is not None:
            kwargs["kv_cache_memory_bytes"] = int(opts.kv_cache_memory_gb * GIB)
    return kwargs


def parallel_kwargs(opts: EngineOptions) -> dict[str, Any]:
    """The data-parallel and executor options, only where they differ from vLLM's defaults (so that
    `vllm.LLM`, which takes no data parallel, sees none)."""
    kwargs: dict[str, Any] = {}
    if opts.data_parallel_size != 1:
        kwargs["data_parallel_size"] = opts.data_parallel_size
    if opts.data_parallel_size_local is not None:
        kwargs["data_parallel_size_local"] = opts.data_parallel_size_local
    if opts.distributed_executor_backend is not None:
        kwargs["distributed_executor_backend"] = opts.distributed_executor_backend
    return kwargs


def prepare_process(config: LDAConfig) -> None:
    """Process-wide settings our entry points need before an engine starts.

    The pair's per-request alpha rides on the V1 model runner's logits-processor hooks; vLLM 0.32
    picks Model Runner V2 on GPUs, whose hooks differ, so we select V1 (the model refuses V2).
    On CPU, the workers get every core, split over the local ranks (`cpu_binding_env`), unless the
    user set vLLM's binding variables; fewer cores than ranks raises ValueError.
    """
    from engine.alpha import LIMITS

    os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")
    LIMITS.max_alpha = config.alpha.max_alpha
    opts = config.engine
    user_bound = any(name in os.environ for name in BINDING_VARS)
    if opts.resolved_device() == "cpu" and opts.distributed_executor_backend == "ray":
        raise ValueError(RAY_ON_CPU_REFUSAL)
    if opts.resolved_device() == "cpu" and opts.cpu_bind == "all" and not user_bound:
        os.environ.update(cpu_binding_env(ranks=opts.local_ranks))
