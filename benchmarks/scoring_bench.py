"""Scoring throughput against one plain pair prefill of the same texts, interleaved in one engine.

    python -m benchmarks.scoring_bench --texts 64 --rounds 3 --out docs/data/scoring/bench.json

Each round times, in turn on the same engine and texts (prompt + answer of the demo's committed
answers, `demo/demo_data/normal_answers.jsonl`):

    prefill        one generated token per text, no prompt logprobs: one pair prefill each, the
                   least any scoring can cost (logits of the last row only)
    one_pass       `LDAModelPair.score` in one request per text (engine/one_pass.py)
    one_pass_k20   the same with 20 promoted tokens per position
    three          the fallback: three prompt-logprob requests per text

Prefix caching is off, so no mode reads another's cached blocks. Throughput is scored tokens
(prompt + answer) per second; the ratios to `prefill` are per round (interleaved, so a shared
machine's slow spells hit every mode), and the medians are printed and written to `--out`.
Default pair: the one `lda serve` serves with no model arguments (the demo's LoRA adapter).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

MODES = ("prefill", "one_pass", "one_pass_k20", "three")
ANSWERS = Path(__file__).resolve().parent.parent / "demo" / "demo_data" / "normal_answers.jsonl"


def texts(n: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in ANSWERS.read_text().splitlines() if line.strip()]
    return [(row["prompt"], row["answer"]) for row in rows[:n]]


def _prefill(pair, items) -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
    prompts = [TokensPrompt(prompt_token_ids=[*i.prompt_token_ids, *i.continuation_token_ids]) for i in items]
    lora = pair._lora_requests(None, len(items))
    pair.llm.generate(prompts, params, use_tqdm=False, lora_request=lora)


def _time(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(pair, samples: list[tuple[str, str]], rounds: int) -> dict:
    from engine.scoring import ScoreInput

    prompts = [p for p, _ in samples]
    answers = [a for _, a in samples]
    # Tokenized once as score() would, so `prefill` runs exactly the sequences scoring runs.
    scored = pair.score(prompts, answers, alpha=1.0)
    items = [ScoreInput(r.prompt_token_ids, [t.token_id for t in r.tokens], 1.0) for r in scored]
    tokens = sum(len(i.prompt_token_ids) + len(i.continuation_token_ids) for i in items)
    runs = {
        "prefill": lambda: _prefill(pair, items),
        "one_pass": lambda: pair.score(prompts, answers, alpha=1.0, one_pass=True),
        "one_pass_k20": lambda: pair.score(prompts, answers, alpha=1.0, one_pass=True, promoted_k=20),
        "three": lambda: pair.score(prompts, answers, alpha=1.0, one_pass=False),
    }
    seconds = {mode: [] for mode in MODES}
    for r in range(rounds):
        for mode in MODES:
            seconds[mode].append(_time(runs[mode]))
        line = ", ".join(f"{m} {tokens / seconds[m][-1]:.0f} tok/s" for m in MODES)
        print(f"round {r + 1}: {line}", flush=True)
    ratios = {m: [p / s for p, s in zip(seconds["prefill"], seconds[m])] for m in MODES}
    return {
        "texts": len(items),
        "tokens": tokens,
        "rounds": rounds,
        "seconds": seconds,
        "tokens_per_s": {m: statistics.median(tokens / s for s in seconds[m]) for m in MODES},
        "ratio_to_prefill": {m: statistics.median(ratios[m]) for m in MODES},
        "ratio_range": {m: [min(ratios[m]), max(ratios[m])] for m in MODES},
    }


def cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scoring_bench")
    p.add_argument("--after", help="after model or adapter (default: the demo pair lda serve serves)")
    p.add_argument("--before", help="before model (default: the adapter's base)")
    p.add_argument("--texts", type=int, default=64, help="(default: %(default)s, at most 300)")
    p.add_argument("--rounds", type=int, default=3, help="(default: %(default)s)")
    p.add_argument("--max-num-seqs", type=int, default=16, help="(default: %(default)s)")
    p.add_argument("--kv-cache-gb", type=float, default=0.5, help="(default: %(default)s)")
    p.add_argument("--out", type=Path, help="write the JSON result here")
    args = p.parse_args(argv)
    if not 1 <= args.texts <= 300 or args.rounds < 1:
        p.error("--texts must be in [1, 300] and --rounds at least 1")
    from api.settings import default_pair
    from engine.library import LDAModelPair

    after, before = (args.after, args.before) if args.after else default_pair()
    with LDAModelPair(
        after, before, enable_prefix_caching=False, max_num_seqs=args.max_num_seqs, kv_cache_memory_gb=args.kv_cache_gb
    ) as pair:
        result = measure(pair, texts(args.texts), args.rounds)
    result.update(after=after, before=before, date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  command="python -m benchmarks.scoring_bench " + " ".join(argv))
    for mode in MODES:
        print(f"{mode:>13}: {result['tokens_per_s'][mode]:8.0f} tok/s, {result['ratio_to_prefill'][mode]:.2f}x prefill "
              f"(rounds {result['ratio_range'][mode][0]:.2f}-{result['ratio_range'][mode][1]:.2f})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
