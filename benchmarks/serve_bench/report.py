"""From rows to what a reader sees: medians over rounds, each ratio within a round (median and
range over rounds), the printed tables, and the CSV, JSON and PNG files of a run."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from statistics import median

from benchmarks.serve_bench.config import (
    METRICS,
    VLLM_BIND,
    BenchConfig,
    Row,
    is_original,
    server_order,
)
from engine.config import cpu_binding_env


def summary(rows: list[Row]) -> list[Row]:
    """One row per (server, level): the median of each metric over rounds (peak RSS: the maximum).

    `round` holds the number of rounds summarised."""
    groups: dict[tuple[str, int], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.server, r.concurrency), []).append(r)
    out = []
    for (server, concurrency), group in sorted(groups.items(), key=lambda item: (server_order(item[0][0]), item[0][1])):
        out.append(Row(
            server=server, concurrency=concurrency, num_prompts=group[0].num_prompts,
            completed=sum(r.completed for r in group), failed=sum(r.failed for r in group),
            duration_s=median([r.duration_s for r in group]),
            **{name: median([getattr(r, name) for r in group]) for name in METRICS},
            peak_rss_mb=max(r.peak_rss_mb for r in group), round=len(group),
        ))
    return out


def _per_round(by: dict, rounds: list[int], base: str, c: int) -> list[float]:
    return [
        by[("lda", c, k)].output_throughput / by[(base, c, k)].output_throughput
        for k in rounds
        if ("lda", c, k) in by and (base, c, k) in by and by[(base, c, k)].output_throughput > 0
    ]


def fastest_original(rows: list[Row], concurrency: int) -> str | None:
    """The original mode with the highest median output tok/s at `concurrency`, if any ran."""
    medians = {r.server: r.output_throughput for r in summary(rows) if is_original(r.server) and r.concurrency == concurrency}
    return max(medians, key=medians.get) if medians else None


BASELINES = (("single", "single"), ("vllm_bind", VLLM_BIND))
"""The `ratios` keys (`lda_over_<key>`) of the fixed baselines, and their servers."""


def ratios(rows: list[Row]) -> list[dict]:
    """LDA's output tok/s over each baseline's, per level: each round's ratio (both servers measured
    in that round), and their median, min and max. The original design's baseline is its fastest
    mode at that level (`original_server` names it); `vllm_bind` is LDA under vLLM's CPU binding."""
    by = {(r.server, r.concurrency, r.round): r for r in rows}
    rounds = sorted({r.round for r in rows})
    out = []
    for c in sorted({r.concurrency for r in rows}):
        entry: dict = {"concurrency": c}
        best = fastest_original(rows, c)
        if best is not None:
            entry["original_server"] = best
        for key, base in (*BASELINES, ("original", best)):
            per_round = _per_round(by, rounds, base, c) if base else []
            if per_round:
                entry[f"lda_over_{key}"] = median(per_round)
                entry[f"lda_over_{key}_min"] = min(per_round)
                entry[f"lda_over_{key}_max"] = max(per_round)
                entry[f"lda_over_{key}_rounds"] = per_round
        out.append(entry)
    return out


def format_table(rows: list[Row], rounds_column: str = "round") -> str:
    width = max([7, *(len(r.server) for r in rows)])
    header = f"{'server':<{width}} {'conc':>4} {rounds_column:>6} {'n':>4} {'ok':>4} {'fail':>4} {'req/s':>7} {'out tok/s':>9} " \
             f"{'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9} {'peak RSS MB':>11}"
    lines = [header]
    for r in rows:
        lines.append(
            f"{r.server:<{width}} {r.concurrency:>4} {r.round:>6} {r.num_prompts:>4} {r.completed:>4} {r.failed:>4} "
            f"{r.request_throughput:>7.3f} {r.output_throughput:>9.1f} {r.p50_ttft_ms:>9.0f} {r.p99_ttft_ms:>9.0f} "
            f"{r.p50_tpot_ms:>9.1f} {r.p99_tpot_ms:>9.1f} {r.peak_rss_mb:>11.0f}"
        )
    return "\n".join(lines)


def format_ratios(entries: list[dict]) -> str:
    """Median ratio over rounds, with the rounds' range where there was more than one."""
    def cell(e: dict, base: str, digits: int) -> str:
        value = e.get(f"lda_over_{base}")
        if value is None:
            return "-"
        low, high = e[f"lda_over_{base}_min"], e[f"lda_over_{base}_max"]
        spread = "" if len(e[f"lda_over_{base}_rounds"]) == 1 else f" ({low:.{digits}f}-{high:.{digits}f})"
        return f"{value:.{digits}f}{spread}"

    bind = any("lda_over_vllm_bind" in e for e in entries)
    extra = f" {'LDA/LDA(vLLM bind)':>18}" if bind else ""
    lines = [f"{'conc':>4} {'LDA/single':>18}{extra} {'LDA/original':>18}  fastest original mode"]
    for e in entries:
        extra = f" {cell(e, 'vllm_bind', 2):>18}" if bind else ""
        lines.append(f"{e['concurrency']:>4} {cell(e, 'single', 2):>18}{extra} {cell(e, 'original', 2):>18}  "
                     f"{e.get('original_server', '-')}")
    return "\n".join(lines)


def report(rows: list[Row]) -> str:
    """The summary table (medians over rounds) and the ratios, as printed at the end of a run."""
    return (
        "median over rounds (ok and fail: totals; peak RSS: the maximum):\n"
        + format_table(summary(rows), rounds_column="rounds")
        + "\n\nLDA output tok/s over each baseline's, median over rounds (range):\n"
        + format_ratios(ratios(rows))
    )


def write_outputs(
    config: BenchConfig, rows: list[Row], argv: list[str], sources: list[str] | None = None, probe: list[Row] | None = None
) -> dict[str, Path]:
    out = config.out_dir
    paths = {"csv": out / "serve_bench.csv", "json": out / "serve_bench.json", "png": out / "serve_bench.png"}
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k not in ("env", "original_modes")}
    meta["original_modes"] = [mode.name for mode in config.original_modes]
    meta["cpu_binding"] = cpu_binding_env()
    meta["cpu_binding_servers"] = [s for s in config.servers if s not in (VLLM_BIND, "original")]
    paths["json"].write_text(json.dumps({
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ["lda", "bench", *argv],
        "config": meta,
        "rows": [asdict(r) for r in rows],
        "summary": [asdict(r) for r in summary(rows)],
        "ratios": ratios(rows),
        "probe": [asdict(r) for r in probe or []],
        **({"combined_from": sources} if sources else {}),
    }, indent=2))
    plot(rows, paths["png"])
    return paths


def plot(rows: list[Row], path: Path) -> None:
    """Median output tok/s against concurrency per server, with the rounds' min-max as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    labels = {"lda": "LDA pair", VLLM_BIND: "LDA pair, vLLM's CPU binding", "single": "vLLM, after model alone"}
    for server in sorted({r.server for r in rows}, key=server_order):
        levels = sorted({r.concurrency for r in rows if r.server == server})
        if not levels:
            continue
        values = [[r.output_throughput for r in rows if r.server == server and r.concurrency == c] for c in levels]
        mid = [median(v) for v in values]
        spread = [[m - min(v) for m, v in zip(mid, values)], [max(v) - m for m, v in zip(mid, values)]]
        ax.errorbar(levels, mid, yerr=spread, marker="o", capsize=3, label=labels.get(server, server))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("output tokens/s (median over rounds)")
    ax.set_title("Serving throughput vs concurrency")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_rows(paths: list[Path]) -> list[Row]:
    """Rows of earlier runs' JSON files, for a table over servers measured in separate runs."""
    rows = []
    for path in paths:
        rows += [Row(**r) for r in json.loads(Path(path).read_text())["rows"]]
    return rows
