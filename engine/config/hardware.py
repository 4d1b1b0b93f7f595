"""What this machine offers the engine: a GPU or not, native bf16 on the CPU, and the CPU workers'
core binding.

Detection only reads (torch, the process's CPU affinity); the binding is returned as the
environment vLLM's CPU workers read, for the start-up function (`engine.config.process`) to set.
"""

from __future__ import annotations

import os

from engine.env import CPU_RESERVED_VAR, CPU_THREADS_BIND_VAR

CPU_BINDS = ("all", "vllm")
"""`EngineOptions.cpu_bind`: every core to the workers, or vLLM's own binding."""


def gpu_available() -> bool:
    """Whether torch sees a CUDA device."""
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


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


def id_ranges(ids: list[int]) -> str:
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
            f"process may use {len(ids)} ({id_ranges(ids)}): lower the parallel sizes"
        )
    per_rank = len(ids) // ranks
    lists = [id_ranges(ids[r * per_rank : (r + 1) * per_rank]) for r in range(ranks)]
    return {CPU_THREADS_BIND_VAR: "|".join(lists), CPU_RESERVED_VAR: "0"}
