"""What serving a LoRA adapter as the after model costs against serving it merged, offline.

    python -m benchmarks.lora_cost [--rank 32] [--concurrency 16 64] [--rounds 3] [--alone] [--no-merged]
                                   [--onednn] [--output out.json]

Builds (once, cached under LDA_CACHE_DIR) a random LoRA adapter on SmolLM2-135M-Instruct's
attention and MLP projections and the same adapter merged into a full copy with peft's
`merge_and_unload`. Then starts two engines side by side, same settings: LDA(adapter) (the
adapter against its base, the base weights held once, with one pass on: `one_pass=True`) and
LDA(merged) (two full checkpoints). Reports, from inside each worker, the resident weight bytes
(distinct parameter and buffer storage), and output tokens/s at each concurrency (prompts decoded
as one batch, greedy, ignore_eos, alpha 1) in interleaved rounds, so a slow spell of a shared
machine hits all: the adapter pair in one pass, the same engine in two passes (one pass switched
off in the worker: `engine.compat.shared_pass.set_enabled`), the merged pair. `--alone` then
closes the pairs and measures the merged (after) model served alone by vLLM, the same rounds.
`--no-merged` starts the adapter pair alone (one engine), one pass against two passes. `--onednn`
adds the one pass with the fused CPU LoRA's products on vLLM's oneDNN handlers (`FUSED.onednn` on
in the worker; the default is aten matmuls), interleaved with the rest, to compare at the same load.

With `LDA_STEP_TIMING_DIR` set, each worker records its steps (engine/compat/step_timing.py; the
adapter pair's records say which mode ran them) and the decode step medians are printed per
engine and mode at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import partial
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


def _tokens_per_s(generate, concurrency: int) -> float:
    start = time.perf_counter()
    tokens = generate(concurrency)
    return tokens / (time.perf_counter() - start)


def _pair_generate(pair):
    def generate(concurrency: int) -> int:
        results = pair.generate_lda([PROMPT] * concurrency, alpha=1.0, max_new_tokens=OUTPUT_LEN, temperature=0,
                                    ignore_eos=True)
        return sum(r.tokens_generated for r in results)

    return generate


def _one_pass(pair, on: bool, onednn: bool = False):
    from engine.compat.lora_cpu_ops import set_onednn
    from engine.compat.shared_pass import set_enabled

    def generate(concurrency: int) -> int:
        if pair.llm.apply_model(partial(set_enabled, on=on)) != [True]:
            raise RuntimeError("the adapter pair has no one pass installed (see its worker's log)")
        pair.llm.apply_model(partial(set_onednn, on=onednn))
        return _pair_generate(pair)(concurrency)

    return generate


def _alone_generate(llm):
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=OUTPUT_LEN, ignore_eos=True)

    def generate(concurrency: int) -> int:
        outs = llm.generate([PROMPT] * concurrency, params, use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)

    return generate


def _rounds(runs: dict, concurrency: list[int], rounds: int) -> dict:
    """Output tokens/s of each run, per concurrency, runs interleaved within each round."""
    out = {}
    for c in concurrency:
        rates = {name: [] for name in runs}
        for _ in range(rounds):
            for name, generate in runs.items():
                rates[name].append(_tokens_per_s(generate, c))
        out[c] = rates
    return out


def _ratio(rates: dict, a: str, b: str) -> dict:
    ratios = [x / y for x, y in zip(rates[a], rates[b])]
    return {"median": statistics.median(ratios), "range": [min(ratios), max(ratios)]}


def _step_tables(folder: Path, workers: dict[str, int], batch_sizes: tuple[int, ...]) -> str:
    """Decode step medians per engine (and, for the adapter pair, per mode), from the step files."""
    from engine.compat.step_timing import format_summary, summarize

    rows = []
    for name, pid in workers.items():
        path = folder / f"steps-{pid}.jsonl"
        if not path.exists():
            continue
        steps = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        modes = sorted({(s.get("one_pass"), s.get("lora_onednn", False)) for s in steps}, key=str)
        for mode, onednn in modes:
            label = name if mode is None else f"{name} {'one pass' if mode else 'two passes'}"
            label += " oneDNN" if onednn else ""
            chosen = [s for s in steps if (s.get("one_pass"), s.get("lora_onednn", False)) == (mode, onednn)]
            rows += [(label, r) for r in summarize(chosen, batch_sizes) if r.kind == "decode"]
    return format_summary(rows) if rows else "(no step records)"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lora_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[16, 64], help="none: weights only")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--alone", action="store_true", help="also the merged model served alone, after the pairs")
    parser.add_argument("--no-merged", action="store_true",
                        help="the adapter pair alone, one pass against two passes (one engine: no merged pair)")
    parser.add_argument("--onednn", action="store_true",
                        help="also the one pass with the LoRA products on vLLM's oneDNN handlers")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.rounds < 1 or any(c < 1 for c in args.concurrency) or args.rank < 1:
        parser.error("--rank, --rounds and every --concurrency must be at least 1")

    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # apply_model(stack_report)
    from engine.env import default_cache_dir, step_timing_dir
    from engine.library import LDAModelPair
    from engine.compat.step_timing import worker_pid
    from engine.lora import stack_report

    base, adapter, merged = build_adapter_and_merged(args.rank, default_cache_dir())
    engine = dict(kv_cache_memory_gb=1.0, max_num_seqs=max(args.concurrency, default=16), max_model_len=512)
    pairs = {"adapter": LDAModelPair(str(adapter), one_pass=True, **engine)}
    if not args.no_merged:
        pairs["merged"] = LDAModelPair(str(merged), str(base), **engine)
    report: dict = {"rank": args.rank}
    if args.concurrency:
        report.update(output_len=OUTPUT_LEN, rounds=args.rounds)
    workers = {}
    for name, pair in pairs.items():
        (stacks,) = pair.llm.apply_model(stack_report)
        (workers[name],) = pair.llm.apply_model(worker_pid)
        report[f"{name}_weight_bytes"] = stacks["resident_weight_bytes"]
        report[f"{name}_lora_slot_bytes"] = stacks["lora_slot_bytes"]
    report["adapter_file_bytes"] = sum(f.stat().st_size for f in adapter.glob("*.safetensors"))
    if "merged" in pairs:
        report["weight_ratio"] = report["adapter_weight_bytes"] / report["merged_weight_bytes"]
    runs = {"one_pass": _one_pass(pairs["adapter"], True), "two_pass": _one_pass(pairs["adapter"], False)}
    if args.onednn:
        runs["one_pass_onednn"] = _one_pass(pairs["adapter"], True, onednn=True)
    if "merged" in pairs:
        runs["merged"] = _pair_generate(pairs["merged"])
    for generate in runs.values() if args.concurrency else ():
        generate(4)  # warm-up
    for c, rates in _rounds(runs, args.concurrency, args.rounds).items():
        ratios = {"one_pass_over_two_pass": _ratio(rates, "one_pass", "two_pass")}
        if "one_pass_onednn" in rates:
            ratios["one_pass_onednn_over_one_pass"] = _ratio(rates, "one_pass_onednn", "one_pass")
        if "merged" in rates:
            ratios.update(one_pass_over_merged=_ratio(rates, "one_pass", "merged"),
                          two_pass_over_merged=_ratio(rates, "two_pass", "merged"))
            if "one_pass_onednn" in rates:
                ratios["one_pass_onednn_over_merged"] = _ratio(rates, "one_pass_onednn", "merged")
        report[f"c{c}"] = {**{f"{name}_tok_s": r for name, r in rates.items()}, **ratios}
        line = ", ".join(f"{name} {statistics.median(r):.0f}" for name, r in rates.items())
        said = ", ".join(f"{k.replace('_over_', ' / ')} {v['median']:.2f}" for k, v in ratios.items())
        print(f"c={c}: tok/s {line}; {said}", flush=True)
    for pair in pairs.values():
        pair.close()
    if args.alone and args.concurrency:
        from vllm import LLM

        from engine.config import cpu_dtype

        # The pairs' CPU settings (dtype, eager; the thread binding they set for this process stays).
        llm = LLM(model=str(merged), dtype=cpu_dtype("auto"), kv_cache_memory_bytes=2**30,
                  max_num_seqs=engine["max_num_seqs"], max_model_len=512, enforce_eager=True, seed=0)
        (workers["alone"],) = llm.apply_model(worker_pid)
        _alone_generate(llm)(4)
        for c, rates in _rounds({"alone": _alone_generate(llm)}, args.concurrency, args.rounds).items():
            report[f"c{c}"]["alone_tok_s"] = rates["alone"]
            print(f"c={c}: the merged model alone {statistics.median(rates['alone']):.0f} tok/s (not interleaved)", flush=True)
    if (folder := step_timing_dir()) is not None and args.concurrency:
        print(_step_tables(folder, workers, tuple(args.concurrency)))
    print(json.dumps(report, indent=1))
    if args.output:
        if args.output.exists():  # keep what an earlier run measured (e.g. the speeds) unless remeasured
            report = {**json.loads(args.output.read_text()), **report}
        args.output.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
