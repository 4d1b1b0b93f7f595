"""Rate benchmark: the path estimate at alpha 0 against plain sampling at alpha 0, per budget.

From one pool per pair (`benchmarks/rate_pool.py`: many judged answers per prompt at alpha 0,
the brute-force truth, and at a few alphas above 0), for each budget of samples and many random
subsets of that size, offline:

- plain: `budget` answers at alpha 0, spread evenly over the prompts; the rate is
  (hits + 0.5) / (n + 1) (so that 0 hits still has a log), the interval Wilson's;
- path: the same number of answers spread evenly over the prompts and the design's alphas,
  estimated at alpha 0 by `study.analysis.estimate` (each method);
- auto (the design `auto`): the sampling plan of `lda study --alphas auto`
  (`study.analysis.plan`) chooses the alphas step by step from the hits the pool gives it (each
  step at the pool's nearest alpha), spending the same budget.

Reported per budget: the median absolute error of log10(rate) against the pool's whole alpha-0
rate, the share of 95% intervals that cover it, and the per-prompt AUROC against the brute-force
labels (a prompt is positive when any of its alpha-0 pool answers is a hit). Subsets are drawn
without replacement from the pool, whose alpha-0 part is much larger than any budget.

    python -m benchmarks.rate_bench --pool docs/data/rates/pool-planted-step8.json --name planted-step8 \\
        --out docs/data/rates --reps 40 --max-tokens 6
    python -m benchmarks.rate_bench --name planted-step8 --out docs/data/rates --markdown

Writes <out>/<name>.csv, <name>.json (the table and the truth) and <name>.png (error, coverage
and AUROC against the budget).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.rate_pool import load_pool
from study.analysis.estimate import METHODS, Cell, estimate_rate, guarded_from
from study.analysis.plan import Taken, next_step
from study.analysis.stats import auroc, wilson_interval

DEFAULT_BUDGETS = (60, 120, 240, 480, 1000, 2000)
PLAIN_BUDGETS = (4000, 8000, 16000)
"""Plain sampling only (no fit is run): where plain reaches the path's error at 10x its budget."""
DESIGNS = {"0,0.5,1,2,4": (0.0, 0.5, 1.0, 2.0, 4.0), "0.5,1,2,4": (0.5, 1.0, 2.0, 4.0), "1,2,4": (1.0, 2.0, 4.0),
           "0,0.25,0.5,1,2,4": (0.0, 0.25, 0.5, 1.0, 2.0, 4.0), "auto": None}
"""Alphas a budget is spread over: the study's default, the default without alpha 0, the default
with 0.25 (close to 0, where a bend in the log-odds shows; needs a pool with 0.25); `auto` (None):
the sampling plan chooses them."""


def design(text: str) -> tuple[float, ...]:
    """A named design, or alphas written a,b,c (ValueError naming the bad one)."""
    if text in DESIGNS:
        return DESIGNS[text]
    alphas = []
    for a in text.split(","):
        try:
            alphas.append(float(a))
        except ValueError:
            raise ValueError(f"not an alpha: {a!r} (in {text!r})") from None
    return tuple(alphas)


def pool_by_cell(rows: list[dict], max_tokens: int | None) -> dict[tuple[int, float], np.ndarray]:
    """Hits (0/1) per (prompt, alpha); with `max_tokens`, a hit counts only if the detector
    needed at most that many tokens."""
    cells: dict[tuple[int, float], list[int]] = defaultdict(list)
    for r in rows:
        hit = r["hit"] and (max_tokens is None or (r.get("hit_at") or 0) <= max_tokens)
        cells[r["prompt"], float(r["alpha"])].append(int(bool(hit)))
    return {k: np.array(v) for k, v in cells.items()}


def spread(rng, budget: int, prompts: list[int], alphas: tuple[float, ...]) -> dict[tuple[int, float], int]:
    """`budget` samples over prompts x alphas as evenly as possible (the remainder at random cells)."""
    grid = [(p, a) for a in alphas for p in prompts]
    per, extra = divmod(budget, len(grid))
    counts = {cell: per for cell in grid}
    for i in rng.choice(len(grid), size=extra, replace=False):
        counts[grid[i]] += 1
    return counts


def subsample(rng, pool, counts) -> list[Cell]:
    out = []
    for (p, a), n in counts.items():
        if n:
            hits = int(rng.choice(pool[p, a], size=n, replace=False).sum())
            out.append(Cell(str(p), a, hits, n))
    return out


def planned(rng, pool, budget: int, prompts: list[int], target: float = 0.0) -> list[Cell]:
    """The sampling plan's samples: each step's answers spread over the prompts at the pool's
    alpha nearest the step's, drawn without replacement across steps."""
    alphas = sorted({a for _, a in pool})
    order: dict[tuple[int, float], np.ndarray] = {}
    used: dict[tuple[int, float], int] = defaultdict(int)
    history: list[Taken] = []
    while (step := next_step(budget, history, target)) is not None:
        alpha = min(alphas, key=lambda a: abs(a - step.alpha))
        hits = 0
        for (p, a), n in spread(rng, step.n, prompts, (alpha,)).items():
            cell = order.setdefault((p, a), rng.permutation(pool[p, a]))
            hits += int(cell[used[p, a] : used[p, a] + n].sum())
            used[p, a] += n
        history.append(Taken(step, hits))
    return [Cell(str(p), a, int(order[p, a][:n].sum()), n) for (p, a), n in sorted(used.items()) if n]


def run(pool, budgets, reps, designs, methods, seed=0, plain_budgets=PLAIN_BUDGETS) -> tuple[dict, list[dict]]:
    prompts = sorted({p for p, _ in pool})
    zero = [pool[p, 0.0] for p in prompts]
    hits, n = int(sum(z.sum() for z in zero)), int(sum(len(z) for z in zero))
    truth = hits / n
    labels = [bool(z.sum()) for z in zero]
    truth_info = {"alpha0_hits": hits, "alpha0_n": n, "rate": truth, "wilson": wilson_interval(hits, n),
                  "prompts": len(prompts), "positive_prompts": sum(labels),
                  "per_alpha": {a: [int(sum(pool[p, a].sum() for p in prompts)), int(sum(len(pool[p, a]) for p in prompts))]
                                for a in sorted({a for _, a in pool})}}
    rng = np.random.default_rng(seed)
    rows = []
    largest = min(len(pool[p, 0.0]) for p in prompts) * len(prompts)
    for budget in [*budgets, *(b for b in plain_budgets if b <= largest // 2)]:
        path_too = budget in budgets
        results = defaultdict(lambda: {"err": [], "cov": [], "auc": [], "null": 0, "sec": 0.0, "warned": 0})
        for _ in range(reps):
            plain = subsample(rng, pool, spread(rng, budget, prompts, (0.0,)))
            h = sum(c.hits for c in plain)
            low, high = wilson_interval(h, budget)
            r = results["plain", "-"]
            r["err"].append(abs(math.log10((h + 0.5) / (budget + 1) / truth)))
            r["cov"].append(low <= truth <= high)
            score = {c.prompt_id: c.hits / c.n for c in plain}
            r["auc"].append(auroc([score.get(str(p), 0.0) for p in prompts], labels))
            for design, alphas in designs.items() if path_too else ():
                if alphas is None:
                    cells = planned(rng, pool, budget, prompts)
                    results["lowest", design]["err"].append(min(c.alpha for c in cells if c.alpha > 0.0))
                else:
                    cells = subsample(rng, pool, spread(rng, budget, prompts, alphas))
                fitted = {}
                for method in sorted(methods, key=lambda m: m != "hierarchical"):
                    started = time.perf_counter()
                    # guarded is hierarchical with another lower bound: the same fit, not a second one
                    est = fitted[method] = (guarded_from(fitted["hierarchical"]) if method == "guarded" and "hierarchical" in fitted
                                            else estimate_rate(cells, 0.0, method))
                    r = results[method, design]
                    r["sec"] += time.perf_counter() - started
                    if est.rate is None:
                        r["null"] += 1
                        continue
                    r["warned"] += est.warning is not None
                    r["err"].append(abs(math.log10(max(est.rate, 1e-300) / truth)))
                    r["cov"].append(est.ci_low <= truth <= est.ci_high)
                    if est.per_prompt:
                        score = {pe.prompt_id: pe.rate for pe in est.per_prompt}
                        r["auc"].append(auroc([score.get(str(p), 0.0) for p in prompts], labels))
        lowest = results.pop(("lowest", "auto"), None)
        for (method, design), r in results.items():
            aucs = [a for a in r["auc"] if a is not None]
            rows.append({
                "budget": budget, "method": method, "design": design, "reps": reps,
                "null": r["null"],
                "warned": r["warned"],
                "median_abs_log10_error": float(np.median(r["err"])) if r["err"] else None,
                "coverage_95": float(np.mean(r["cov"])) if r["cov"] else None,
                "per_prompt_auroc": float(np.mean(aucs)) if aucs else None,
                "seconds_per_fit": r["sec"] / reps if method != "plain" else None,
                "lowest_alpha": float(np.median(lowest["err"])) if lowest and design == "auto" else None,
            })
            print(_line(rows[-1]), file=sys.stderr, flush=True)
    return truth_info, rows


def whole(pool, designs, methods) -> list[dict]:
    """Each method's estimate at alpha 0 from the whole pool on each design (the path at its
    largest budget), to set beside the pool's own alpha-0 rate."""
    out = []
    for design, alphas in designs.items():
        if alphas is None:
            continue
        cells = [Cell(str(p), a, int(h.sum()), len(h)) for (p, a), h in sorted(pool.items()) if a in alphas]
        for method in methods:
            est = estimate_rate(cells, 0.0, method)
            out.append({"design": design, "method": method, "rate": est.rate, "ci_low": est.ci_low,
                        "ci_high": est.ci_high, "reason": est.reason, "warning": est.warning,
                        "n": sum(c.n for c in cells)})
    return out


def _line(row: dict) -> str:
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    return (f"{row['budget']:>6} {row['method']:<13} {row['design']:<12} err {fmt(row['median_abs_log10_error'], '.3f')}"
            f"  cover {fmt(row['coverage_95'], '.2f')}  auroc {fmt(row['per_prompt_auroc'], '.3f')}  null {row['null']}"
            f"  warned {row['warned']}")


def plot(rows: list[dict], truth: dict, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    series = sorted({(r["method"], r["design"]) for r in rows})
    for method, design in series:
        mine = sorted((r for r in rows if (r["method"], r["design"]) == (method, design)), key=lambda r: r["budget"])
        label = "plain (alpha 0)" if method == "plain" else f"{method} [{design}]"
        style = "k-o" if method == "plain" else "-o"
        for ax, key in zip(axes, ("median_abs_log10_error", "coverage_95", "per_prompt_auroc")):
            points = [(r["budget"], r[key]) for r in mine if r[key] is not None]
            if points:
                ax.plot(*zip(*points), style, label=label, markersize=3)
    for ax, name in zip(axes, ("median |log10 error|", "95% interval coverage", "per-prompt AUROC")):
        ax.set_xscale("log")
        ax.set_xlabel("samples (budget)")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[1].axhline(0.95, color="gray", linestyle=":")
    axes[1].axhline(0.90, color="red", linestyle=":")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: alpha-0 rate {100 * truth['rate']:.3g}% ({truth['alpha0_hits']}/{truth['alpha0_n']})", fontsize=10)
    fig.savefig(path, dpi=110)


def markdown(record: dict) -> str:
    """The docs' tables, one per design: per budget, plain and every method on that design as
    error / coverage / AUROC."""
    rows = record["rows"]
    designs = list(dict.fromkeys(r["design"] for r in rows if r["method"] != "plain"))
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    tables = []
    for design in designs:
        methods = list(dict.fromkeys(r["method"] for r in rows if r["design"] == design))
        header = f"Alphas {design}:\n\n| budget | plain: error / cover / AUROC | " + " | ".join(methods) + " |"
        lines = [header, "|" + "---|" * (2 + len(methods))]
        for budget in sorted({r["budget"] for r in rows}):
            at = {(r["method"], r["design"]): r for r in rows if r["budget"] == budget}
            cells = []
            for key in [("plain", "-"), *((m, design) for m in methods)]:
                r = at.get(key)
                cells.append("" if r is None else
                             f"{fmt(r['median_abs_log10_error'], '.2f')} / {fmt(r['coverage_95'], '.2f')}"
                             + (f" / {fmt(r['per_prompt_auroc'], '.2f')}" if r["per_prompt_auroc"] is not None else "")
                             + (f" ({r['null']} null)" if r["null"] else "")
                             + (f" ({r['warned']} warned)" if r.get("warned") else "")
                             + (f" (lowest alpha {r['lowest_alpha']:g})" if r.get("lowest_alpha") is not None else ""))
            lines.append(f"| {budget} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", type=Path, help="the pool (JSONL or compact JSON); not needed with --markdown")
    p.add_argument("--name", required=True)
    p.add_argument("--out", type=Path, default=Path("docs/data/rates"))
    p.add_argument("--budgets", default=",".join(map(str, DEFAULT_BUDGETS)))
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--max-tokens", type=int, help="count a hit only if the detector needed at most this many tokens")
    p.add_argument("--designs", help=f"some of {'; '.join(DESIGNS)}, or any alphas a,b,c (designs separated by ';'; "
                   "default: each named one whose alphas the pool has)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--whole", action="store_true", help="print each method's estimate from the whole pool and stop")
    p.add_argument("--markdown", action="store_true", help="print the table of <out>/<name>.json and stop")
    args = p.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads((args.out / f"{args.name}.json").read_text())))
        return 0
    if args.pool is None:
        p.error("--pool is required")
    pool = pool_by_cell(load_pool(args.pool), args.max_tokens)
    have = {a for _, a in pool}
    names = args.designs.split(";") if args.designs else [d for d, alphas in DESIGNS.items() if alphas is None or have >= set(alphas)]
    try:
        designs = {d: design(d) for d in names}
    except ValueError as e:
        p.error(f"--designs: {e}")
    if args.whole:
        for a in sorted(have):
            hits, n = sum(int(h.sum()) for (_, b), h in pool.items() if b == a), sum(len(h) for (_, b), h in pool.items() if b == a)
            low, high = wilson_interval(hits, n)
            print(f"alpha {a:g}: {hits}/{n} = {100 * hits / n:.3g}% [{100 * low:.3g}, {100 * high:.3g}]")
        for row in whole(pool, designs, args.methods.split(",")):
            print(json.dumps(row))
        return 0
    started = time.monotonic()
    truth, rows = run(pool, [int(b) for b in args.budgets.split(",")], args.reps, designs, args.methods.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / f"{args.name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    record = {"pool": str(args.pool), "max_tokens": args.max_tokens, "truth": truth, "rows": rows,
              "seconds": round(time.monotonic() - started)}
    (args.out / f"{args.name}.json").write_text(json.dumps(record, indent=1) + "\n")
    plot(rows, truth, args.out / f"{args.name}.png", args.name)
    print(f"{args.name}: {time.monotonic() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
