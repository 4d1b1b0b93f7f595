"""What serving a LoRA adapter as the after model costs against serving it merged, offline.

    python -m benchmarks.lora_cost [--rank 32] [--concurrency 16 64] [--rounds 3] [--output out.json]

Builds (once, cached under LDA_CACHE_DIR) a random LoRA adapter on SmolLM2-135M-Instruct's
attention and MLP projections and the same adapter merged into a full copy with peft's
`merge_and_unload`. Then starts two engines side by side, same settings: LDA(adapter) (the
adapter against its base, the base weights held once) and LDA(merged) (two full checkpoints).
Reports, from inside each worker, the resident weight bytes (distinct parameter and buffer
storage), and output tokens/s at each concurrency (prompts decoded as one batch, greedy,
ignore_eos, alpha 1), measured in interleaved rounds so a slow spell of a shared machine hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

OUTPUT_LEN = 64
PROMPT = "Give me three tips for staying focused while working from home, with one example each."


def build_adapter_and_merged(rank: int, cache: Path) -> tuple[Path, Path, Path]:
    """(base, adapter, merged) folders; the adapter is random but seeded, so every build matches."""
    from demo.smollm2 import ensure_smollm2
    from tests.factories import build_adapter, merge_adapter

    base = ensure_smollm2()
    adapter, merged = cache / f"lora-bench-r{rank}-adapter", cache / f"lora-bench-r{rank}-merged"
    if not (adapter / "adapter_config.json").exists():
        build_adapter(base, adapter, rank=rank, seed=0, scale=0.02)
    if not (merged / "config.json").exists():
        merge_adapter(base, adapter, merged)
    return base, adapter, merged


def _tokens_per_s(pair, concurrency: int) -> float:
    start = time.perf_counter()
    results = pair.generate_lda([PROMPT] * concurrency, alpha=1.0, max_new_tokens=OUTPUT_LEN, temperature=0, ignore_eos=True)
    elapsed = time.perf_counter() - start
    return sum(r.tokens_generated for r in results) / elapsed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lora_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[16, 64], help="none: weights only")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # apply_model(stack_report)
    from engine.env import default_cache_dir
    from engine.library import LDAModelPair
    from engine.lora import stack_report

    base, adapter, merged = build_adapter_and_merged(args.rank, default_cache_dir())
    engine = dict(kv_cache_memory_gb=1.0, max_num_seqs=max(args.concurrency, default=16), max_model_len=512)
    pairs = {
        "adapter": LDAModelPair(str(adapter), **engine),
        "merged": LDAModelPair(str(merged), str(base), **engine),
    }
    report: dict = {"rank": args.rank}
    if args.concurrency:
        report.update(output_len=OUTPUT_LEN, rounds=args.rounds)
    for name, pair in pairs.items():
        (stacks,) = pair.llm.apply_model(stack_report)
        report[f"{name}_weight_bytes"] = stacks["resident_weight_bytes"]
        report[f"{name}_lora_slot_bytes"] = stacks["lora_slot_bytes"]
    report["adapter_file_bytes"] = sum(f.stat().st_size for f in adapter.glob("*.safetensors"))
    report["weight_ratio"] = report["adapter_weight_bytes"] / report["merged_weight_bytes"]
    for pair in pairs.values() if args.concurrency else ():
        _tokens_per_s(pair, 4)  # warm-up
    for c in args.concurrency:
        rates = {name: [] for name in pairs}
        for _ in range(args.rounds):
            for name, pair in pairs.items():
                rates[name].append(_tokens_per_s(pair, c))
        ratios = [a / m for a, m in zip(rates["adapter"], rates["merged"])]
        report[f"c{c}"] = {
            "adapter_tok_s": rates["adapter"],
            "merged_tok_s": rates["merged"],
            "ratio_median": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)],
        }
        print(f"c={c}: adapter {statistics.median(rates['adapter']):.0f} tok/s, merged "
              f"{statistics.median(rates['merged']):.0f} tok/s, ratio {statistics.median(ratios):.2f} "
              f"[{min(ratios):.2f}, {max(ratios):.2f}]", flush=True)
    print(json.dumps(report, indent=1))
    if args.output:
        if args.output.exists():  # keep what an earlier run measured (e.g. the speeds) unless remeasured
            report = {**json.loads(args.output.read_text()), **report}
        args.output.write_text(json.dumps(report, indent=1))
    for pair in pairs.values():
        pair.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
