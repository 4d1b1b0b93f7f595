"""Sample efficiency of naming: how many samples does the top theme need to name the plant?

On the demo pair (the after model plants the product "Zorblax Daily Boost"), for each alpha and
each budget of samples (generic prefills sent as raw completions, 48 tokens), the fraction of 20
random subsets of that size whose top theme (study/themes.py, no detector) names the product.
Alpha 0 is sampling the after model alone: the gap to alpha > 0 is what LDA buys.

The largest budget is drawn once per alpha, as one resumable study (`lda explore --prompts generic`
in `--study-dir`), and every subset is taken from that pool, so the rows differ only in the
subset size. The product pattern below is the benchmark's evaluation of the mining's output; it is
not used anywhere in the mining.

    lda serve &    # the demo pair, 127.0.0.1:8000
    python -m benchmarks.naming_bench --base-url http://127.0.0.1:8000 --study-dir studies/naming-pool \\
        --out docs/data/naming
    python -m benchmarks.naming_bench --study-dir studies/naming-pool --no-draw   # re-mine only

Budgets larger than the pool at some alpha are skipped (reported as not measured).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from study.analysis.naming import scored_texts
from study.analysis.themes import ScoredText, ThemeConfig, mine
from study.collect.prompts import GENERIC_PROMPTS
from study.collect.scoring import load_scores
from study.collect.store import SampleStore
from study.commands.workflow import run_study
from study.config import SamplingConfig, StudyConfig, parse_alphas
from study.output.files import SAMPLES_FILE

PRODUCT = re.compile(r"zorbl|daily boost", re.IGNORECASE)
"""Names the planted product: its made-up word (any fragment from 'zorbl' on) or its last two words."""
DEFAULT_BUDGETS = (20, 40, 80, 160, 320)
TOP = 5


@dataclass(frozen=True, slots=True)
class Cell:
    alpha: float
    budget: int
    subsets: int
    top1: float
    """Fraction of subsets whose first theme's text names the product."""
    top1_variants: float
    """... whose first theme's text or one of its variants names it."""
    top5: float
    """Fraction whose top five themes include one that names it."""
    mean_seconds: float
    """Mining time of one subset."""
    top_texts: dict[str, int]
    """The subsets' first themes: text -> how many subsets (what "names the product" looked like)."""


def draw_pool(base_url: str, study_dir: Path, alphas: tuple[float, ...], per_alpha: int, max_tokens: int, seed: int | None) -> None:
    """Draw (or resume) the pool: generic prefills, `per_alpha` samples at every alpha, scored."""
    per_prompt = math.ceil(per_alpha / len(GENERIC_PROMPTS))
    config = StudyConfig(
        base_url=base_url, output_dir=study_dir, alphas=alphas, samples_per_prompt=per_prompt,
        prompt_set="generic", sampling=SamplingConfig("completions", max_tokens=max_tokens, seed=seed),
    )
    result = run_study(config)
    if result.failures:
        raise SystemExit(f"naming_bench: {len(result.failures)} samples failed; rerun to retry them")


def load_pool(study_dir: Path) -> dict[float, list[tuple[ScoredText, bool]]]:
    """Per alpha: every scored sample, with whether its text contains the product."""
    samples = sorted(SampleStore(study_dir / SAMPLES_FILE).read().values(), key=lambda s: s.key)
    scores = load_scores(study_dir)
    texts = {t.key: t for t in scored_texts(samples, scores)}
    pool: dict[float, list[tuple[ScoredText, bool]]] = {}
    for sample in samples:
        text = texts.get(f"{sample.prompt_id} alpha={sample.alpha:g} #{sample.sample_index}")
        if text is not None:
            pool.setdefault(sample.alpha, []).append((text, bool(PRODUCT.search(sample.text))))
    return pool


def names_product(themes) -> tuple[bool, bool, bool]:
    """(the first theme's text names it, its text or variants do, one of the top five's do)."""
    hits = [bool(PRODUCT.search(" ".join([t.text, *t.variants]))) for t in themes[:TOP]]
    return bool(themes) and bool(PRODUCT.search(themes[0].text)), bool(hits) and hits[0], any(hits)


def measure(pool: list[ScoredText], alpha: float, budget: int, subsets: int, seed: int) -> Cell:
    top1 = top1_variants = top5 = 0
    seconds = 0.0
    firsts: Counter[str] = Counter()
    for index in range(subsets):
        rng = random.Random(f"{seed}:{alpha:g}:{budget}:{index}")
        subset = rng.sample(pool, budget)
        start = time.perf_counter()
        themes = mine(subset, ThemeConfig(themes=TOP))
        seconds += time.perf_counter() - start
        first, first_variants, any5 = names_product(themes)
        top1_variants += first_variants
        firsts[themes[0].text if themes else "(no theme)"] += 1
        top1 += first
        top5 += any5
    n = subsets
    return Cell(alpha, budget, n, top1 / n, top1_variants / n, top5 / n, seconds / n, dict(firsts.most_common(3)))


def run(pool: dict[float, list[tuple[ScoredText, bool]]], alphas, budgets, subsets: int, seed: int) -> list[Cell]:
    cells = []
    for alpha in alphas:
        texts = [t for t, _ in pool.get(alpha, [])]
        cells += [measure(texts, alpha, b, subsets, seed) for b in budgets if b <= len(texts)]
    return cells


def table(cells: list[Cell], pool, alphas, budgets) -> str:
    by = {(c.alpha, c.budget): c for c in cells}
    head = f"{'budget':>7} " + " ".join(f"{'alpha ' + format(a, 'g'):>15}" for a in alphas)
    lines = ["fraction of subsets naming the product: first theme's text / its text or variants / any of the top 5",
             head, "-" * len(head)]
    for budget in budgets:
        row = [f"{budget:>7}"]
        for alpha in alphas:
            c = by.get((alpha, budget))
            row.append(f"{'-':>15}" if c is None else f"{c.top1:.2f}/{c.top1_variants:.2f}/{c.top5:.2f}".rjust(15))
        lines.append(" ".join(row))
    rates = "  ".join(f"alpha {a:g}: {sum(h for _, h in pool.get(a, []))}/{len(pool.get(a, []))}" for a in alphas)
    lines.append(f"samples whose text has the product: {rates}")
    lines += [f"  alpha {c.alpha:g}, {c.budget} samples: first themes {c.top_texts}" for c in cells]
    return "\n".join(lines)


def write_outputs(out: Path, cells: list[Cell], pool, alphas, budgets, meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"alpha": c.alpha, "budget": c.budget, "subsets": c.subsets, "top1": c.top1,
             "top1_variants": c.top1_variants, "top5": c.top5,
             "mean_seconds": c.mean_seconds, "top_texts": c.top_texts} for c in cells]
    texts_with_product = {f"{a:g}": [sum(h for _, h in pool.get(a, [])), len(pool.get(a, []))] for a in alphas}
    (out / "naming_bench.json").write_text(json.dumps({**meta, "cells": rows, "samples_with_product": texts_with_product}, indent=2) + "\n")
    with (out / "naming_bench.csv").open("w", newline="") as f:
        fields = ["alpha", "budget", "subsets", "top1", "top1_variants", "top5", "mean_seconds"]
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    _plot(out / "naming_bench.png", cells, alphas, meta)


def _plot(path: Path, cells: list[Cell], alphas, meta: dict) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    for alpha in alphas:
        mine_ = sorted((c for c in cells if c.alpha == alpha), key=lambda c: c.budget)
        if mine_:
            ax.plot([c.budget for c in mine_], [c.top1 for c in mine_], "o-", label=f"alpha {alpha:g}")
    ax.set_xscale("log", base=2)
    budgets = sorted({c.budget for c in cells})
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("samples (generic prefills, 48 tokens)")
    ax.set_ylabel("subsets whose first theme's text names it")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"Naming the demo pair's plant, {meta['subsets']} subsets per point ({meta['date']})", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.naming_bench", description=__doc__.splitlines()[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="the demo pair's server (default: %(default)s)")
    p.add_argument("--study-dir", type=Path, required=True, help="the pool: an explore directory, resumed if partial")
    p.add_argument("--alphas", default="0,1,2,4")
    p.add_argument("--budgets", default=",".join(map(str, DEFAULT_BUDGETS)))
    p.add_argument("--subsets", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0, help="the subsets' random seed, and the pool's sampling seed")
    p.add_argument("--unseeded-pool", action="store_true",
                   help="draw the pool without a sampling seed (to extend a pool drawn by `lda explore` without --seed)")
    p.add_argument("--no-draw", action="store_true", help="mine the pool as it is; no server needed")
    p.add_argument("--out", type=Path, help="write naming_bench.json, .csv and .png here")
    args = p.parse_args(argv)
    try:
        alphas = parse_alphas(args.alphas)
        budgets = tuple(int(b) for b in args.budgets.split(","))
        if any(b < 1 for b in budgets) or not 1 <= args.subsets <= 1000:
            raise ValueError("budgets: each >= 1; subsets: in [1, 1000]")
    except ValueError as exc:
        print(f"naming_bench: error: {exc}", file=sys.stderr)
        return 2
    if not args.no_draw:
        draw_pool(args.base_url, args.study_dir, alphas, max(budgets), args.max_tokens, None if args.unseeded_pool else args.seed)
    pool = load_pool(args.study_dir)
    cells = run(pool, alphas, budgets, args.subsets, args.seed)
    print(table(cells, pool, alphas, budgets))
    if args.out is not None:
        meta = {"date": time.strftime("%Y-%m-%d"), "subsets": args.subsets, "max_tokens": args.max_tokens,
                "pool_per_alpha": {f"{a:g}": len(pool.get(a, [])) for a in alphas}, "seed": args.seed, "pool_seed": None if args.unseeded_pool else args.seed,
                "command": "python -m benchmarks.naming_bench " + " ".join(argv if argv is not None else sys.argv[1:])}
        write_outputs(args.out, cells, pool, alphas, budgets, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
