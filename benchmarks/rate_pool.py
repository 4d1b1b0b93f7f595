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
PAIRS = ("lora", "full", "planted:START_LOGIT[:STEP_LOGIT]")
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


def collect(args: argparse.Namespace) -> int:
    from engine.library import LDAModelPair

    prompts = [line.strip() for line in PROMPTS_FILE.read_text().splitlines() if line.strip()]
    pool = load_pool(args.pool)
    jobs = missing_jobs(pool, len(prompts), parse_counts(args.counts))
    print(f"{len(pool)} samples in the pool, {len(jobs)} to draw", file=sys.stderr)
    if not jobs:
        return 0
    next_seed = max(args.first_seed, max((r["seed"] for r in pool), default=-1) + 1)
    after, before = pair_paths(args.pair)
    started = time.monotonic()
    args.pool.parent.mkdir(parents=True, exist_ok=True)
    with LDAModelPair(after, before, device="cpu", dtype="float32", kv_cache_memory_gb=1,
                      max_model_len=512, max_num_seqs=args.batch) as lda, args.pool.open("a") as out:
        loaded = time.monotonic()
        drawn = 0
        for start in range(0, len(jobs), args.batch):
            if time.monotonic() - started > 60 * args.minutes:
                break
            batch = jobs[start : start + args.batch]
            results = lda.generate_lda(
                [prompts[p] for p, _ in batch], [a for _, a in batch], max_new_tokens=args.max_tokens,
                temperature=1.0, top_p=1.0, seed=next_seed,
            )
            for i, ((p, a), r) in enumerate(zip(batch, results)):
                hit = bool(DETECTOR.search(r.completion))
                row = {"prompt": p, "alpha": a, "seed": next_seed + i, "hit": int(hit),
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
