"""vLLM's own engine options, as vLLM names them, and `LDAConfig`, which gathers the three concerns.

`EngineOptions` maps one to one onto vLLM's engine arguments (`engine.config.vllm_args` does the
translation); each field states its default here, once, and every bad value raises ValueError naming
the field and the accepted range. `LDAConfig` (pair, alpha, engine options) is passed whole.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.config.alpha import AlphaConfig
from engine.config.hardware import CPU_BINDS, gpu_available
from engine.config.pair import PairConfig

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "bfloat16", "float16", "float32", "half", "float")
"""What vLLM's `--dtype` accepts (half = float16, float = float32)."""
EXECUTOR_BACKENDS = ("mp", "ray")
CPU_KV_CACHE_GB = 2.0
"""The KV-cache size on CPU when none is given: vLLM's own default asks for 92% of a NUMA node and fails."""
PIPELINE_REFUSAL = (
    "the pair model does not support pipeline parallel (vLLM needs its SupportsPP interface, which would "
    "have to carry both models' hidden states between stages); split a pair too big for one device with "
    "tensor parallel (--tensor-parallel-size, across nodes with the Ray backend), and add engines for "
    "throughput with data parallel (--data-parallel-size)"
)
"""Why pipeline_parallel_size must be 1, and what to use instead: one line at start."""


@dataclass(slots=True)
class EngineOptions:
    """vLLM engine options passed through unchanged (vLLM's names)."""

    device: str = "auto"
    """"cpu", "cuda", or "auto" (cuda when a GPU is visible)."""
    dtype: str = "auto"
    """"auto": the checkpoint's dtype, except on a CPU without native bf16 (AVX512-BF16 or AMX),
    where it is float32 (see `cpu_dtype` and docs/serving/limits.md, "CPU notes")."""
    max_model_len: int | None = None
    """Context length; None: the after model's."""
    max_num_seqs: int = 64
    """Most sequences decoded in one batch."""
    max_num_batched_tokens: int | None = None
    """Token budget of one step; None: vLLM's."""
    enable_prefix_caching: bool = True
    block_size: int | None = None
    """Tokens per KV-cache block, the unit of a prefix-cache hit; None: vLLM's (128 on CPU, 16 on
    most GPUs). On CPU a prompt shorter than one block is never reused from the cache, so a study
    that samples each short prompt many times prefills it again every time: 32 lets prompts of
    32 tokens and more hit (measured on the demo pair's 37-44-token prompts, docs/research/rate-estimate.md)."""
    kv_cache_memory_gb: float | None = None
    """KV-cache size in GiB. None: CPU_KV_CACHE_GB on CPU, vLLM's `gpu_memory_utilization` share on GPU."""
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
    """The model's name in the OpenAI API; None: the after model's path (vLLM's default)."""
    cpu_bind: str = "all"
    """CPU only: "all" binds the worker's threads to every core this process may use and reserves
    none (see `cpu_binding_env`); "vllm" keeps vLLM's own binding (one core reserved per rank)."""

    def __post_init__(self) -> None:
        _one_of("cpu_bind", self.cpu_bind, CPU_BINDS)
        _one_of("device", self.device, DEVICES)
        _one_of("dtype", self.dtype, DTYPES)
        if self.distributed_executor_backend is not None:
            _one_of("distributed_executor_backend", self.distributed_executor_backend, EXECUTOR_BACKENDS)
        _at_least("max_num_seqs", self.max_num_seqs, 1)
        _at_least("max_model_len", self.max_model_len, 16)
        _at_least("max_num_batched_tokens", self.max_num_batched_tokens, 8)
        _at_least("tensor_parallel_size", self.tensor_parallel_size, 1)
        _at_least("data_parallel_size", self.data_parallel_size, 1)
        if self.block_size is not None and (self.block_size < 16 or self.block_size % 16):
            raise ValueError(f"block_size must be a multiple of 16 (16, 32, ... 256); got {self.block_size}")
        if self.kv_cache_memory_gb is not None and not self.kv_cache_memory_gb > 0:
            raise ValueError(f"kv_cache_memory_gb must be > 0; got {self.kv_cache_memory_gb}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1]; got {self.gpu_memory_utilization}")
        local = self.data_parallel_size_local
        if local is not None and not 0 <= local <= self.data_parallel_size:
            raise ValueError(f"data_parallel_size_local must be in 0..data_parallel_size={self.data_parallel_size}; got {local}")
        if self.pipeline_parallel_size != 1:
            raise ValueError(f"pipeline_parallel_size={self.pipeline_parallel_size}: {PIPELINE_REFUSAL}")

    @property
    def local_ranks(self) -> int:
        """Worker processes on this node: tensor x pipeline x this node's data-parallel engines."""
        local = self.data_parallel_size if self.data_parallel_size_local is None else self.data_parallel_size_local
        return self.tensor_parallel_size * self.pipeline_parallel_size * max(local, 1)

    def resolved_device(self) -> str:
        if self.device == "auto":
            return "cuda" if gpu_available() else "cpu"
        return self.device


def _one_of(name: str, value: object, accepted: tuple) -> None:
    if value not in accepted:
        raise ValueError(f"{name} must be one of {', '.join(accepted)}; got {value!r}")


def _at_least(name: str, value: int | None, low: int) -> None:
    """None passes: it means "vLLM decides"."""
    if value is not None and value < low:
        raise ValueError(f"{name} must be >= {low}; got {value}")


@dataclass(slots=True)
class LDAConfig:
    """Everything an LDA engine is built from, passed whole."""

    pair: PairConfig
    alpha: AlphaConfig = field(default_factory=AlphaConfig)
    engine: EngineOptions = field(default_factory=EngineOptions)
