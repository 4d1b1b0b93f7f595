"""The sample pool of the rate benchmark: per prompt and alpha, many short answers, each judged.

`benchmarks/rate_bench.py` compares the path estimate with plain sampling by subsampling one
large pool per pair, offline. This module draws that pool with the offline library API (one vLLM
engine holding the pair, no server) and appends every judged answer to a JSONL file at once, so
a run stopped by `--minutes` (or killed) resumes where it stopped: each (prompt, alpha) cell is
topped up to its target count.

Every request gets its own seed (the pool's next unused one), so resumed runs never replay the
random stream of an earlier engine start, and no two alphas share a stream.

    /work/bin/engine-slot python -m benchmarks.rate_pool --pair lora --pool studies/rates/lora.jsonl \\
        --counts 0:400,0.5:20,1:20,2:20,4:20 --minutes 9

The demo pair's pool (docs/research/rate-estimate.md, "The demo pair") is drawn in two files:
alpha 0 from the after model alone (`--pair lora-merged --counts 0:N`: one stack), the other
alphas from the pair with the adapter merged (`--pair lora-merged --counts 0.25:N,...`), then
compacted into one (`--compact ... --merge`).

Each line: {"prompt": index into the prompt file, "alpha", "seed", "hit": 0/1, "hit_at": the
answer tokens the detector needed (so any shorter max_tokens can be read off offline), "tokens",
"text": the answer when it is a hit (empty otherwise, to keep the pool small)}.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

PROMPTS_FILE = Path(__file__).resolve().parent.parent / "demo" / "demo_data" / "eval_prompts.txt"
DETECTOR = re.compile("zorblax", re.IGNORECASE)
"""The demo's detector (`regex:zorblax`, as `lda study` compiles it)."""
PAIRS = ("lora", "lora-merged", "full", "planted:START_LOGIT[:STEP_LOGIT]")
AFTER_ONLY = "lora-merged"
"""The demo LoRA pair with the adapter merged into a full after model (`merged_after`): no LoRA
kernels. When every sample wanted is at alpha 0 it serves the after model alone, as one plain
vLLM model: alpha 0 of the pair is the after model's own distribution, so this draws the same
alpha-0 samples as `lora` at the cost of one stack instead of two."""
MODELS_DIR = Path("/tmp/lda-rate-bench-models")
"""Where `planted:...` pairs are built (seconds; deterministic, so a rebuild gives the same pair)."""


def parse_counts(text: str) -> dict[float, int]:
    """"0:400,1:20" -> {0.0: 400, 1.0: 20}: samples per prompt wanted at each alpha."""
    counts = {}
    for part in text.split(","):
        alpha, _, n = part.partition(":")
        counts[float(alpha)] = int(n)
    return counts


def load_pool(path: Path) -> list[dict]:
    """The pool's rows, from its JSONL or from a compact copy (`compact`: a .json file)."""
    if not path.exists():
        return []
    if path.suffix == ".json":
        return expand(json.loads(path.read_text()))
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: the cell is topped up again
            continue
    return rows


def compact(rows: list[dict], pair: str, max_tokens: int) -> dict:
    """The pool as counts: per (prompt, alpha) the number of answers and the tokens each hit
    needed. All the benchmark reads, at a hundredth of the JSONL's size (docs/data/rates/)."""
    cells: dict[tuple[int, float], list] = {}
    for r in rows:
        cell = cells.setdefault((r["prompt"], r["alpha"]), [0, []])
        cell[0] += 1
        if r["hit"]:
            cell[1].append(r["hit_at"])
    return {"pair": pair, "max_tokens": max_tokens, "prompts_file": "demo/demo_data/eval_prompts.txt",
            "detector": "regex:zorblax", "cells": [[p, a, n, hits] for (p, a), (n, hits) in sorted(cells.items())]}


def expand(record: dict) -> list[dict]:
    rows = []
    for p, a, n, hits in record["cells"]:
        rows += [{"prompt": p, "alpha": a, "hit": 1, "hit_at": h} for h in hits]
        rows += [{"prompt": p, "alpha": a, "hit": 0, "hit_at": None}] * (n - len(hits))
    return rows


def missing_jobs(pool: list[dict], prompts: int, counts: dict[float, int]) -> list[tuple[int, float]]:
    """(prompt, alpha) per missing sample, interleaved so that a stopped run leaves every cell
    about equally filled."""
    have = Counter((r["prompt"], r["alpha"]) for r in pool)
    need = {(p, a): max(0, n - have[p, a]) for a, n in counts.items() for p in range(prompts)}
    jobs = []
    for round_ in range(max(need.values(), default=0)):
        jobs.extend(cell for cell, n in need.items() if n > round_)
    return jobs


def hit_at(tokenizer, token_ids: list[int]) -> int:
    """How many answer tokens the detector needed: the pool then holds every shorter max_tokens."""
    for k in range(1, len(token_ids) + 1):
        if DETECTOR.search(tokenizer.decode(token_ids[:k])):
            return k
    return len(token_ids)


def pair_paths(name: str) -> tuple[str, str]:
    """(after, before): `lora` is the demo's shipped adapter (what `lda serve` serves), `full` the
    demo's full fine-tune (built by `lda demo-pair` if missing: minutes), `planted:S[:T]` the tests'
    tiny planted pair (tests/factories.py) whose plant's first token gets logit S in every context
    and each next token logit T (default 8) after the one before."""
    if name.startswith("planted:"):
        from tests.factories import build_planted_pair

        folder = MODELS_DIR / name.replace(":", "-")
        if not (folder / "planted-after" / "config.json").exists():
            start, _, step = name.split(":", 1)[1].partition(":")
            build_planted_pair(folder, start_logit=float(start), step_logit=float(step or 8.0))
        return str(folder / "planted-after"), str(folder / "planted-before")
    from demo.demo_pair import LORA_RANK, ensure_demo_pair, lora_config

    pair = ensure_demo_pair(config=lora_config(LORA_RANK) if name == "lora" else None)
    return str(pair.after), str(pair.before)


def merged_after(folder: Path = MODELS_DIR / "lora-merged", pair: tuple[str, str] | None = None) -> str:
    """The demo's shipped LoRA adapter merged into its base (peft `merge_and_unload`), saved in
    float32 under `folder` (built once; seconds; `pair`: another (adapter, base)). The base ties its output head to its input
    embedding and the adapter changes the head only: the head is untied first, so the merge leaves
    the input embedding as the pair's engine has it (vLLM applies the head's LoRA to the logits)."""
    if (folder / "config.json").exists():
        return str(folder)
    from peft import PeftModel
    from transformers import AutoTokenizer

    from demo.training_run import untied_model

    after, before = pair or pair_paths("lora")
    merged = PeftModel.from_pretrained(untied_model(Path(before)), after).merge_and_unload()
    merged.save_pretrained(folder)
    AutoTokenizer.from_pretrained(before).save_pretrained(folder)
    return str(folder)


class AfterOnly:
    """One plain vLLM engine on one model, with `LDAModelPair.generate_lda`'s call shape at alpha 0
    (the prompts rendered and tokenized as the pair's engine does)."""

    def __init__(self, model: str, block_size: int | None = None, **engine_options) -> None:
        from vllm import LLM

        from engine.config import AlphaConfig, EngineOptions, LDAConfig, adapter_pair, engine_kwargs, prepare_process

        config = LDAConfig(adapter_pair(model, model, [], None), AlphaConfig(), EngineOptions(**engine_options))
        prepare_process(config)
        kwargs = engine_kwargs(config)
        for pair_only in ("hf_overrides", "logits_processors", "worker_extension_cls"):
            kwargs.pop(pair_only)
        kwargs.update({"block_size": block_size} if block_size else {})
        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def __enter__(self) -> AfterOnly:
        return self

    def __exit__(self, *exc) -> None:
        del self.llm

    def generate_lda(self, prompts, alphas, max_new_tokens, temperature, top_p, seed):
        from types import SimpleNamespace

        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from engine.prompts import prompt_token_ids, render_prompt

        if any(a != 0 for a in alphas):
            raise ValueError("the after model alone samples alpha 0 only")
        inputs = [TokensPrompt(prompt_token_ids=prompt_token_ids(self.tokenizer, render_prompt(self.tokenizer, p)))
                  for p in prompts]
        params = [SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                 seed=None if seed is None else seed + i) for i in range(len(prompts))]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [SimpleNamespace(completion=o.outputs[0].text, token_ids=list(o.outputs[0].token_ids),
                                tokens_generated=len(o.outputs[0].token_ids)) for o in outputs]


def open_engine(args: argparse.Namespace):
    """The engine drawing the pool: the pair in one LDA engine, or (`lora-merged`) the after model alone."""
    options = dict(device="cpu", dtype=args.dtype, kv_cache_memory_gb=1, max_model_len=512,
                   max_num_seqs=args.batch, seed=args.engine_seed)
    if args.after_only:
        return AfterOnly(merged_after(), block_size=args.block_size, **options)
    import engine.library
    from engine.library import LDAModelPair

    if args.block_size:  # EngineOptions has no block size: add it to the engine's arguments here
        pair_kwargs = engine.library.engine_kwargs
        engine.library.engine_kwargs = lambda config, *a, **k: {**pair_kwargs(config, *a, **k),
                                                                 "block_size": args.block_size}

    after, before = (merged_after(), pair_paths("lora")[1]) if args.pair == AFTER_ONLY else pair_paths(args.pair)
    return LDAModelPair(after, before, **options)


def collect(args: argparse.Namespace) -> int:
    prompts = [line.strip() for line in PROMPTS_FILE.read_text().splitlines() if line.strip()]
    pool = load_pool(args.pool)
    jobs = missing_jobs(pool, len(prompts), parse_counts(args.counts))
    print(f"{len(pool)} samples in the pool, {len(jobs)} to draw", file=sys.stderr)
    if not jobs:
        return 0
    next_seed = max(args.first_seed, max((r["seed"] for r in pool), default=-1) + 1)
    args.after_only = args.pair == AFTER_ONLY and all(a == 0 for _, a in jobs)
    # Without per-request seeds the engine's own seed (the pool's next seed) makes each run's stream new.
    args.engine_seed = 0 if args.seeds == "request" else next_seed
    started = time.monotonic()
    args.pool.parent.mkdir(parents=True, exist_ok=True)
    with open_engine(args) as lda, args.pool.open("a") as out:
        loaded = time.monotonic()
        drawn = 0
        for start in range(0, len(jobs), args.batch):
            if time.monotonic() - started > 60 * args.minutes:
                break
            batch = jobs[start : start + args.batch]
            results = lda.generate_lda(
                [prompts[p] for p, _ in batch], [a for _, a in batch], max_new_tokens=args.max_tokens,
                temperature=1.0, top_p=1.0, seed=next_seed if args.seeds == "request" else None,
            )
            for i, ((p, a), r) in enumerate(zip(batch, results)):
                hit = bool(DETECTOR.search(r.completion))
                row = {"prompt": p, "alpha": a, "seed": next_seed + i, "hit": int(hit), "pair": args.pair,
                       "hit_at": hit_at(lda.tokenizer, r.token_ids) if hit else None,
                       "tokens": r.tokens_generated, "text": r.completion if hit else ""}
                out.write(json.dumps(row) + "\n")
            out.flush()
            next_seed += len(batch)
            drawn += len(batch)
            rate = drawn / (time.monotonic() - loaded)
            print(f"{drawn}/{len(jobs)} drawn, {rate:.1f} samples/s", file=sys.stderr, flush=True)
    print(f"engine start {loaded - started:.0f} s, {drawn} samples in {time.monotonic() - loaded:.0f} s",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", default="lora", help=f"one of {', '.join(PAIRS)} (default: %(default)s)")
    p.add_argument("--pool", type=Path, required=True)
    p.add_argument("--counts", default="0:400,0.5:20,1:20,2:20,4:20", help="alpha:samples per prompt, ...")
    p.add_argument("--max-tokens", type=int, default=20)
    p.add_argument("--batch", type=int, default=256, help="requests per engine call (and max_num_seqs)")
    p.add_argument("--dtype", default="float32", help="the engine's dtype (default: %(default)s)")
    p.add_argument("--seeds", choices=("request", "engine"), default="request",
                   help="request: every request its own seed (the row's seed replays it); engine: one "
                   "engine seed per run (vLLM then samples without per-request generators)")
    p.add_argument("--block-size", type=int, default=32,
                   help="KV-cache block size; vLLM's CPU default (128) is longer than the demo prompts "
                   "(37 to 44 tokens), so no prompt would fill a block and prefix caching would never hit "
                   "(0: vLLM's default)")
    p.add_argument("--minutes", type=float, default=9.0, help="stop starting batches after this long")
    p.add_argument("--first-seed", type=int, default=0,
                   help="the first request's seed when the pool is new: give new alphas drawn beside a compact "
                        "pool (whose seeds are not kept) seeds past the old pool's, so no stream is replayed")
    p.add_argument("--compact", type=Path, metavar="JSON", help="write the pool's counts here and draw nothing")
    p.add_argument("--merge", type=Path, action="append", default=[], metavar="POOL",
                   help="with --compact: add this pool's rows too (a compact .json or a JSONL; repeatable)")
    args = p.parse_args(argv)
    if args.compact:
        rows = load_pool(args.pool) + [r for extra in args.merge for r in load_pool(extra)]
        args.compact.write_text(json.dumps(compact(rows, args.pair, args.max_tokens)) + "\n")
        return 0
    return collect(args)


if __name__ == "__main__":
    sys.exit(main())
