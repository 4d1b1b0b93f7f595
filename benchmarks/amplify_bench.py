"""Micro-benchmark of the fused amplification step, `engine.amplify.amplify`.

For each (rows, vocab, input dtype) it times one call and reports the effective memory traffic:
bytes of A and B read plus the float32 result written, over the time per call. Beside it, the
unfused formula `(1 + alpha) * A.float() - alpha * B.float()` gives the same numbers for scale.
On a CUDA machine (torch.cuda.is_available()) it times the Triton kernel with CUDA events; on CPU
the in-place `lerp_` path with the wall clock.

    python -m benchmarks.amplify_bench                          # CPU here; CUDA where there is one
    python -m benchmarks.amplify_bench --rows 1,16 --vocab 4096 --dtypes fp32 --json out.json

With float32 input the merge writes into A, so repeated calls would compound; B is a copy of A,
which makes A + alpha * (A - B) = A a fixed point with the same arithmetic per call.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from engine.amplify import amplify

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


@dataclass(slots=True)
class Case:
    rows: int
    vocab: int
    dtype: str


@dataclass(slots=True)
class Timing:
    device: str
    rows: int
    vocab: int
    dtype: str
    us_per_call: float
    gb_per_s: float
    naive_us_per_call: float
    speedup_vs_naive: float


def effective_bytes(rows: int, vocab: int, dtype: torch.dtype) -> int:
    """A and B read in their own dtype, the float32 result written once."""
    element = torch.empty((), dtype=dtype).element_size()
    return rows * vocab * (2 * element + 4)


def naive(after: torch.Tensor, before: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The unfused formula, as a plain PyTorch user would write it (no vocab-padding handling)."""
    a = alpha.float().unsqueeze(1)
    return (1 + a) * after.float() - a * before.float()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn, device: torch.device, min_time_s: float, repeats: int = 5) -> float:
    """Median seconds per call over `repeats` batches, each batch at least `min_time_s` long."""
    fn()
    _sync(device)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < min_time_s / 4 or calls < 3:
        fn()
        calls += 1
        _sync(device)
    per_call = (time.perf_counter() - start) / calls
    n = max(3, int(min_time_s / max(per_call, 1e-7)))
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            samples.append(begin.elapsed_time(end) / 1e3 / n)
        else:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples.append((time.perf_counter() - t0) / n)
    return statistics.median(samples)


def bench_case(case: Case, device: torch.device, min_time_s: float) -> Timing:
    dtype = DTYPES[case.dtype]
    gen = torch.Generator().manual_seed(0)
    after = (torch.randn(case.rows, case.vocab, generator=gen) * 5).to(device=device, dtype=dtype)
    before = after.clone()
    alpha = torch.ones(case.rows, device=device)
    seconds = time_call(lambda: amplify(after, before, alpha), device, min_time_s)
    naive_seconds = time_call(lambda: naive(after, before, alpha), device, min_time_s)
    return Timing(
        device=device.type, rows=case.rows, vocab=case.vocab, dtype=case.dtype,
        us_per_call=seconds * 1e6,
        gb_per_s=effective_bytes(case.rows, case.vocab, dtype) / seconds / 1e9,
        naive_us_per_call=naive_seconds * 1e6,
        speedup_vs_naive=naive_seconds / seconds,
    )


def run(cases: list[Case], device: torch.device, min_time_s: float) -> list[Timing]:
    results = []
    for case in cases:
        results.append(bench_case(case, device, min_time_s))
        print(format_row(results[-1]), flush=True)
    return results


HEADER = f"{'device':<6} {'rows':>5} {'vocab':>7} {'dtype':>5} {'us/call':>10} {'GB/s':>8} {'naive us':>10} {'x naive':>8}"


def format_row(t: Timing) -> str:
    return (f"{t.device:<6} {t.rows:>5} {t.vocab:>7} {t.dtype:>5} {t.us_per_call:>10.1f} {t.gb_per_s:>8.2f} "
            f"{t.naive_us_per_call:>10.1f} {t.speedup_vs_naive:>8.2f}")


def environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "processor": platform.processor()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            env["triton"] = None
    return env


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amplify_bench", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=_ints, default=[1, 16, 64, 256])
    p.add_argument("--vocab", type=_ints, default=[49152, 100352])
    p.add_argument("--dtypes", default="bf16,fp32", help=f"comma-separated, of {', '.join(DTYPES)}")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per timed batch")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write results here")
    return p


def cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    dtypes = [d for d in args.dtypes.split(",") if d]
    bad = [d for d in dtypes if d not in DTYPES]
    if bad or not dtypes or not args.rows or not args.vocab or min(args.rows + args.vocab) < 1:
        print(f"amplify_bench: rows and vocab must be positive and dtypes among {', '.join(DTYPES)}", file=sys.stderr)
        return 2
    if args.device not in ("auto", "cpu", "cuda"):
        print(f"amplify_bench: device must be cpu, cuda or auto; got {args.device!r}", file=sys.stderr)
        return 2
    name = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device = torch.device(name)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [Case(r, v, d) for d in dtypes for v in args.vocab for r in args.rows]
    print(HEADER, flush=True)
    results = run(cases, device, args.min_time)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": ["python", "-m", "benchmarks.amplify_bench", *argv],
            "environment": environment(device),
            "results": [asdict(t) for t in results],
        }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
