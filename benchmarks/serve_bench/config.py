"""What one `lda bench` run measures: the servers it names, the original design's modes, the
workload (`BenchConfig`, validated here so a bad flag is a message, not a failed run), and the row
every measurement becomes (`Row`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SERVERS = ("lda", "lda-bind-vllm", "single", "original")
"""What `--servers` names: the pair, the pair under vLLM's own CPU binding (`LDA_CPU_BIND=vllm`:
one core reserved for the front-end processes), vLLM serving the after model alone, the original
design (its modes, `OriginalMode`)."""
DEFAULT_SERVERS = ("lda", "single", "original")
VLLM_BIND = "lda-bind-vllm"
SERVED_NAME = "lda"
ORIGINAL_DTYPES = ("float16", "bfloat16", "float32")
SHORT_DTYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


@dataclass(frozen=True, slots=True)
class OriginalMode:
    """One way to run the original design: its serving path, dtype and torch threads."""

    batched: bool
    dtype: str
    threads: int

    def __post_init__(self) -> None:
        if self.dtype not in ORIGINAL_DTYPES:
            raise ValueError(f"original mode dtype must be one of {', '.join(ORIGINAL_DTYPES)}; got {self.dtype!r}")
        if self.threads < 1:
            raise ValueError(f"original mode threads must be >= 1; got {self.threads}")

    @property
    def name(self) -> str:
        return f"original-{'batch' if self.batched else 'one'}-{SHORT_DTYPE[self.dtype]}-t{self.threads}"

    @classmethod
    def parse(cls, text: str) -> OriginalMode:
        """`batch:bfloat16:2` or `one:float32:1`."""
        try:
            path, dtype, threads = text.split(":")
            if path not in ("batch", "one"):
                raise ValueError
            return cls(path == "batch", dtype, int(threads))
        except ValueError as error:
            detail = f": {error}" if str(error) else ""
            raise ValueError(f"original mode must look like batch:bfloat16:2 or one:float32:1; got {text!r}{detail}") from None


def all_original_modes(max_threads: int = 2) -> tuple[OriginalMode, ...]:
    """Both paths in every dtype on 1 and `max_threads` threads."""
    threads = sorted({1, max(1, max_threads)})
    return tuple(OriginalMode(b, d, t) for b in (True, False) for d in ORIGINAL_DTYPES for t in threads)


def is_original(server: str) -> bool:
    return server.startswith("original")
METRICS = ("request_throughput", "output_throughput", "p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms")


@dataclass(slots=True)
class BenchConfig:
    after: str
    before: str
    out_dir: Path
    servers: tuple[str, ...] = DEFAULT_SERVERS
    concurrencies: tuple[int, ...] = (1, 4, 16, 64)
    num_prompts: int | None = None
    """Requests per concurrency level; None: max(8, 2 * concurrency) in the rounds, max(8,
    concurrency) in the probe of the original's modes."""
    original_modes: tuple[OriginalMode, ...] = field(default_factory=all_original_modes)
    """The original design's modes the probe tries; the fastest at each level joins the rounds."""
    one_at_a_time_max_prompts: int = 8
    """The original's one-at-a-time path gets at most this many requests per level (bounds its time)."""
    input_len: int = 128
    output_len: int = 64
    alpha: float = 1.0
    dtype: str = "auto"
    """Both vLLM servers' dtype; "auto" as the engine resolves it (bf16 checkpoints run in bf16 on
    a CPU with native bf16, else float32)."""
    kv_cache_gb: float = 2.0
    max_num_seqs: int = 64
    max_model_len: int = 512
    rounds: int = 3
    """Measurements of every (server, level); the report takes their median."""
    step_timing: bool = False
    """Record each vLLM worker step (`engine.compat.step_timing`) under `out_dir/steps/<server>`."""
    start_timeout_s: float = 600.0
    env: dict[str, str] = field(default_factory=dict)
    """Extra environment for every server (e.g. LDA_ENGINE_* A/B switches)."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.servers) - set(SERVERS))
        if unknown or not self.servers:
            raise ValueError(f"servers must be a non-empty subset of {', '.join(SERVERS)}; got {self.servers}")
        if not self.concurrencies or min(self.concurrencies) < 1:
            raise ValueError(f"concurrency levels must be >= 1; got {self.concurrencies}")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1; got {self.num_prompts}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1; got {self.rounds}")
        if "original" in self.servers and not self.original_modes:
            raise ValueError("servers include original but original_modes is empty")
        if self.input_len < 1 or self.output_len < 1:
            raise ValueError(f"input_len and output_len must be >= 1; got {self.input_len}, {self.output_len}")
        if self.input_len + self.output_len > self.max_model_len:
            raise ValueError(f"input_len + output_len must fit max_model_len={self.max_model_len}")

    def prompts_for(self, server: str, concurrency: int, probe: bool = False) -> int:
        """Requests per level; the probe of the original's modes sends one static batch's worth
        (max(8, concurrency)) unless `num_prompts` is set: it only picks the fastest mode."""
        default = max(8, concurrency) if probe else max(8, 2 * concurrency)
        n = self.num_prompts if self.num_prompts is not None else default
        return min(n, self.one_at_a_time_max_prompts) if server.startswith("original-one") else n

    def original_mode(self, server: str) -> OriginalMode:
        for mode in self.original_modes:
            if mode.name == server:
                return mode
        raise ValueError(f"no original mode named {server!r}")


@dataclass(slots=True)
class Row:
    server: str
    concurrency: int
    num_prompts: int
    completed: int
    failed: int
    duration_s: float
    request_throughput: float
    output_throughput: float
    p50_ttft_ms: float
    p99_ttft_ms: float
    p50_tpot_ms: float
    p99_tpot_ms: float
    peak_rss_mb: float
    round: int = 1
    """The round that measured this row; in a `summary` row, how many rounds it summarises."""



def server_order(server: str) -> tuple[int, str]:
    return ({"lda": 0, VLLM_BIND: 1, "single": 2}.get(server, 3), server)
