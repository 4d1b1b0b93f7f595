"""What the pair costs against vLLM serving one model, offline, with no server in the way.

    python -m benchmarks.pair_cost [--prompts 64] [--rounds 2]

Alternates rounds of `vllm.LLM` serving the after model alone and `LDAModelPair` serving the pair
(alpha 1), both in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) with the same engine
settings, on the same prompts: a prefill pass (1 output token) and a full pass (64 output
tokens, greedy, ignore_eos), timed separately; decode is their difference. In the pair it also
times the model's forward (both stacks), `compute_logits` (both heads and the merge) and the
merge alone, during the full pass. Defaults: SmolLM2-135M-Instruct as both models, dtype auto.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections import defaultdict

PROMPT_LEN = 128
OUTPUT_LEN = 64


class PairTimers:
    """Wall time and calls inside the pair model's forward, compute_logits and merge (this process only)."""

    def __init__(self) -> None:
        import engine.pair_model as pair_model

        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        pair = pair_model.LDAPairForCausalLM
        pair.forward = self._timed(pair.forward, "forward")
        pair.compute_logits = self._timed(pair.compute_logits, "compute_logits")
        pair_model.amplify = self._timed(pair_model.amplify, "merge")

    def _timed(self, fn, key: str):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - start
                self.calls[key] += 1

        return timed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def timed_passes(llm, prompts: list, extra: dict, timers: PairTimers | None = None) -> dict[str, float]:
    """Seconds for the prefill and full passes; `timers` then hold the full pass alone."""
    from vllm import SamplingParams

    out = {}
    for name, max_tokens in (("prefill", 1), ("full", OUTPUT_LEN)):
        params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True, **extra)
        llm.generate(prompts[:2], params, use_tqdm=False)  # warm-up
        llm.reset_prefix_cache()
        if timers is not None:
            timers.reset()
        start = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        out[name] = time.perf_counter() - start
        llm.reset_prefix_cache()
    out["decode"] = out["full"] - out["prefill"]
    return out


def run_single(path: str, prompts: list, engine: dict) -> dict[str, float]:
    from vllm import LLM

    from engine.config import cpu_dtype

    llm = LLM(model=path, dtype=cpu_dtype("auto"), kv_cache_memory_bytes=engine["kv_cache_memory_gb"] * 2**30,
              max_model_len=engine["max_model_len"], enforce_eager=True)
    try:
        return timed_passes(llm, prompts, {})
    finally:
        llm.llm_engine.engine_core.shutdown()


def run_pair(after: str, before: str, prompts: list, engine: dict, timers: PairTimers) -> dict[str, float]:
    from engine.library import LDAModelPair

    with LDAModelPair(after, before, **engine) as pair:
        return timed_passes(pair.llm, prompts, {"extra_args": {"alpha": 1.0}}, timers)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pair_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--after", help="after model (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--before", help="before model (default: the after model)")
    parser.add_argument("--prompts", type=int, default=64, help="prompts per pass, all in one batch")
    parser.add_argument("--rounds", type=int, default=2, help="alternating single/pair rounds")
    args = parser.parse_args(argv)
    if args.prompts < 1 or args.rounds < 1:
        print("pair_cost: --prompts and --rounds must be >= 1", file=sys.stderr)
        return 2
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the timers must run where the model runs
    from demo.smollm2 import ensure_smollm2

    after = args.after or str(ensure_smollm2())
    before = args.before or after
    timers = PairTimers()
    engine = dict(kv_cache_memory_gb=2, max_model_len=512)
    prompts = [{"prompt_token_ids": [1000 + i + 7 * j for j in range(PROMPT_LEN)]} for i in range(args.prompts)]
    print(f"{args.prompts} prompts x {PROMPT_LEN} tokens, {OUTPUT_LEN} output tokens; seconds")
    for round_ in range(1, args.rounds + 1):
        single = run_single(after, prompts, engine)
        pair = run_pair(after, before, prompts, engine, timers)
        print(f"round {round_}: single prefill {single['prefill']:.2f} decode {single['decode']:.2f} full {single['full']:.2f} | "
              f"pair prefill {pair['prefill']:.2f} decode {pair['decode']:.2f} full {pair['full']:.2f} | "
              f"pair/single prefill {pair['prefill'] / single['prefill']:.2f}x decode {pair['decode'] / single['decode']:.2f}x "
              f"full {pair['full'] / single['full']:.2f}x (LDA/single throughput {single['full'] / pair['full']:.2f})")
        t = timers.seconds
        print(f"         pair, full pass: forward {t['forward']:.2f}, compute_logits {t['compute_logits']:.2f}, "
              f"merge {t['merge']:.3f} ({1000 * t['merge'] / max(1, timers.calls['merge']):.2f} ms a call, "
              f"{timers.calls['merge']} calls)",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
