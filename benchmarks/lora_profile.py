"""torch.profiler around decode steps of an adapter pair (one pass or two) or the merged pair, in the worker.

    python -m benchmarks.lora_profile {one_pass,two_pass,merged} [--concurrency 16] [--tokens 32] [--output table.txt]

The same models as `benchmarks/lora_cost.py` (SmolLM2-135M-Instruct, a seeded random rank-32 LoRA
adapter on its attention and MLP projections, and that adapter merged). Starts one engine, warms
it up, then runs `--concurrency` identical prompts for `--tokens` greedy tokens with the CPU
profiler started and stopped inside the worker (`LLM.apply_model`), and writes the profile's op
table (by self CPU time, then by total) to `--output` (default: stdout). Divide by the steps
(tokens + 1) for per-step costs. About 3 minutes per call on 2 cores; one engine (engine-slot).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial
from pathlib import Path


def start_profiler(model) -> bool:
    """In the worker: start a CPU profiler, kept on the torch module until `stop_profiler`."""
    import torch

    torch._lda_profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    torch._lda_profiler.start()
    return True


def stop_profiler(model, rows: int) -> str:
    """In the worker: stop the profiler; its op tables, by self CPU time and by total."""
    import torch

    profiler = torch._lda_profiler
    profiler.stop()
    del torch._lda_profiler
    averages = profiler.key_averages()
    return (averages.table(sort_by="self_cpu_time_total", row_limit=rows) + "\n\nBy total CPU time\n"
            + averages.table(sort_by="cpu_time_total", row_limit=rows))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lora_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["one_pass", "two_pass", "merged"])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rows", type=int, default=45, help="ops in each table")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.tokens < 1 or args.rows < 1:
        parser.error("--concurrency, --tokens and --rows must be at least 1")

    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # apply_model with these functions
    from benchmarks.lora_cost import PROMPT, build_adapter_and_merged
    from engine.compat.shared_pass import set_enabled
    from engine.env import default_cache_dir
    from engine.library import LDAModelPair

    base, adapter, merged = build_adapter_and_merged(32, default_cache_dir())
    engine = dict(kv_cache_memory_gb=1.0, max_num_seqs=max(args.concurrency, 16), max_model_len=512)
    if args.mode == "merged":
        pair = LDAModelPair(str(merged), str(base), **engine)
    else:
        pair = LDAModelPair(str(adapter), one_pass=True, **engine)
        if pair.llm.apply_model(partial(set_enabled, on=args.mode == "one_pass")) != [True]:
            print("lora_profile: the adapter pair has no one pass installed (see its worker's log)", file=sys.stderr)
            return 1
    try:
        def generate(n: int, tokens: int) -> None:
            pair.generate_lda([PROMPT] * n, alpha=1.0, max_new_tokens=tokens, temperature=0, ignore_eos=True)

        generate(4, 8)
        generate(args.concurrency, 16)
        pair.llm.apply_model(start_profiler)
        start = time.perf_counter()
        generate(args.concurrency, args.tokens)
        seconds = time.perf_counter() - start
        (table,) = pair.llm.apply_model(partial(stop_profiler, rows=args.rows))
    finally:
        pair.close()
    head = (f"{args.mode}, {args.concurrency} prompts x {args.tokens} tokens ({args.tokens + 1} steps) in "
            f"{seconds:.2f} s under the profiler; load average {os.getloadavg()[0]:.1f}\n")
    if args.output:
        args.output.write_text(head + table + "\n")
    print(head + ("" if args.output else table))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
