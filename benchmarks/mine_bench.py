"""How fast `lda mine` is: a synthetic study of 10,000 samples of 64 tokens, mined from its files.

The target (issue 22): under 10 s on one core. The study is synthetic but shaped like a real one:
word-piece tokens from a vocabulary of a few thousand, diffs mostly near zero (sd 0.7 nats, so
about 8% of tokens reach the 1-nat phrase threshold), and a planted product name in 5% of the
samples. Mining is single-threaded Python; the time printed covers what `lda mine` does (read
samples.jsonl and scores.jsonl, mine, rewrite summary.json, report.html and the plot) and, apart,
the mining alone.

    python -m benchmarks.mine_bench [--samples 10000] [--tokens 64] [--dir /tmp/mine-bench]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from study.analysis.naming import scored_texts
from study.analysis.themes import mine, token_stats
from study.collect.scoring import load_scores
from study.collect.store import SampleStore
from study.commands.mine import MineConfig, mine_study
from study.output.files import SAMPLES_FILE

PLANT = [(" Z", 2.3), ("or", 5.3), ("bl", 11.8), ("ax", 5.8), (" Daily", 9.6), (" Boost", 7.2)]
SYLLABLES = ("ba", "ko", "ri", "ten", "mo", "sa", "lin", "du", "ve", "ra", "po", "ni", "gel", "fa", "tor")


def _vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    words = {" " + "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(size)}
    return sorted(words) + [".", ",", " 1", " 2", "\n", "ing", "ed", "s"]


def write_study(root: Path, samples: int, tokens: int, seed: int = 0) -> Path:
    """A finished explore directory with `samples` scored samples of `tokens` tokens each."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    root.mkdir(parents=True, exist_ok=True)
    with (root / SAMPLES_FILE).open("w") as sample_file, (root / "scores.jsonl").open("w") as score_file:
        for i in range(samples):
            alpha = float((0, 1, 2, 4)[i % 4])
            pieces = [(rng.choice(vocab), rng.gauss(0.0, 0.7)) for _ in range(tokens)]
            if rng.random() < 0.05:
                at = rng.randrange(tokens - len(PLANT))
                pieces[at : at + len(PLANT)] = PLANT
            text = "".join(t for t, _ in pieces)
            key = {"prompt_id": f"generic-{i % 40:02d}", "alpha": alpha, "sample_index": i // 40}
            sample = {**key, "prompt": "The", "text": text, "detected": None, "tokens": tokens,
                      "finish_reason": "length", "seed": i}
            records = [{"token_id": 0, "token": t, "logp_after": -1.0, "logp_before": -1.0 - d,
                        "logp_amplified": -1.0 + d, "diff": d} for t, d in pieces]
            diffs = [d for _, d in pieces]
            summary = {"sum": sum(diffs), "mean": sum(diffs) / tokens, "max": max(diffs),
                       "argmax": diffs.index(max(diffs)), "tokens": tokens}
            sample_file.write(json.dumps(sample) + "\n")
            score_file.write(json.dumps({**key, "summary": summary, "tokens": records}) + "\n")
    (root / "study.json").write_text(json.dumps({"endpoint": "completions", "detector": None, "model": "synthetic"}))
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mine_bench", description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--dir", type=Path, help="where the synthetic study goes (default: a temporary folder)")
    args = p.parse_args(argv)
    if args.samples < 1 or args.tokens < len(PLANT) + 1:
        print(f"mine_bench: error: --samples must be >= 1 and --tokens >= {len(PLANT) + 1}", file=sys.stderr)
        return 2
    root = args.dir or Path(tempfile.mkdtemp(prefix="mine-bench-"))
    write_study(root, args.samples, args.tokens)
    start, cpu = time.perf_counter(), time.process_time()
    naming = mine_study(MineConfig(root))
    whole, whole_cpu = time.perf_counter() - start, time.process_time() - cpu
    samples = list(SampleStore(root / SAMPLES_FILE).read().values())
    texts = scored_texts(samples, load_scores(root))
    start, cpu = time.perf_counter(), time.process_time()
    mine(texts)
    token_stats(texts)
    alone, alone_cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"{args.samples} samples x {args.tokens} tokens ({args.samples * args.tokens:,} tokens), one process:")
    # CPU seconds say what one core spends; on a machine shared with other work the wall clock
    # also counts the time this process waited for a core.
    print(f"  lda mine (read files, mine, write summary, report, plot): {whole:.2f} s wall, {whole_cpu:.2f} s CPU")
    print(f"  mining alone (themes + token aggregates):                  {alone:.2f} s wall, {alone_cpu:.2f} s CPU")
    print(f"  first theme: {naming.themes[0].text!r} in {naming.themes[0].samples} samples")
    print(f"  target: under 10 s on one core -> {'met' if whole_cpu < 10 else 'NOT met'} (CPU time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
