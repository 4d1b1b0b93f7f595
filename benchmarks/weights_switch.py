"""Switching a full-weight checkpoint in place against restarting the server with it.

    python -m benchmarks.weights_switch [--rounds 2] [--cycles 6] [--max-tokens 16] [--output DIR]
    python -m benchmarks.weights_switch --after CKPT_A --other CKPT_B --before BASE   # your own checkpoints

What a full-weight training monitor pays per checkpoint. The checkpoints are the demo pair's as
full weights: the demo adapter merged into SmolLM2-135M-Instruct, and SmolLM2 itself (both with the
output head untied, written once into `--work`; 135M parameters, bf16, about 330 MB each); the
before stack holds SmolLM2 as shipped. Each round starts `lda serve --allow-weight-loads` on
(merged, SmolLM2) and times the restart: process start to the first
response of one fixed request. Then, on that server, `--cycles` times: load the other checkpoint
into the after stack (`POST /v1/lda/weights`, alternating base and merged, so every load changes
the weights), send the request (streamed: the first token's time too); and the same request again,
as one response's own cost at that moment ("warm"). Restarts and loads alternate round by round,
so a slow spell of a shared machine hits both. Everything binds to 127.0.0.1; each request is
bounded by `--max-tokens`. `--after`, `--other` and `--before` replace the demo checkpoints with
yours (after and other alternate in the after stack; on a GPU, `lda serve` picks it by itself).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from benchmarks.adapter_load_bench import Restart, start_server, timed_completion

SERVED = "lda"


@dataclass(slots=True)
class Switch:
    """One in-place load into the after stack and its first response (seconds)."""

    round: int
    checkpoint: str
    load_request_s: float
    """The whole POST: checks (every file read) + drain + engine reload + prefix-cache reset."""
    engine_load_s: float
    """The engine's reload alone, as the route reports it."""
    first_token_s: float
    first_response_s: float
    warm_response_s: float

    @property
    def switch_s(self) -> float:
        return self.load_request_s + self.first_response_s


def demo_checkpoints(work: Path) -> tuple[Path, Path, Path]:
    """(the demo adapter merged into SmolLM2, SmolLM2 of the same shape, SmolLM2 as shipped), written
    once: SmolLM2 ties its output head to its embedding, and the merge unties it (the adapter changes
    the head alone), so the base the after stack alternates with is untied too."""
    from api.settings import default_pair
    from demo.training_run import merge_into_full, save_full_base

    adapter, before = default_pair()
    merged, base = work / "demo-merged", work / "demo-base-untied"
    if not (merged / "config.json").exists():
        merge_into_full(Path(before), Path(adapter), merged)
    if not (base / "config.json").exists():
        save_full_base(Path(before), base)
    return merged, base, Path(before)


def _switch(client: httpx.Client, round_: int, checkpoint: Path, max_tokens: int) -> Switch:
    start = time.perf_counter()
    r = client.post("/v1/lda/weights", json={"stack": "after", "path": str(checkpoint)})
    load_s = time.perf_counter() - start
    if r.status_code != 200:
        raise RuntimeError(f"load {checkpoint}: {r.status_code} {r.text[:300]}")
    first_token, first_response = timed_completion(client, SERVED, max_tokens)
    _, warm = timed_completion(client, SERVED, max_tokens)
    return Switch(round_, checkpoint.name, load_s, r.json()["load_seconds"], first_token, first_response, warm)


def one_round(round_: int, merged: Path, base: Path, before: Path, args, log_dir: Path) -> tuple[Restart, list[Switch]]:
    settings = {"MODEL_AFTER_ID": str(merged), "MODEL_BEFORE_ID": str(before), "LDA_ALLOW_WEIGHT_LOADS": "1",
                "KV_CACHE_MEMORY_GB": str(args.kv_cache_gb), "MAX_MODEL_LEN": "1024", "SERVED_MODEL_NAME": SERVED}
    server = start_server(log_dir / f"server-round{round_}.log", settings, drop=("LDA_AFTER_ADAPTERS",))
    try:
        healthy = time.perf_counter() - server.started
        with httpx.Client(base_url=server.base_url, timeout=300) as client:
            timed_completion(client, SERVED, args.max_tokens)
            restart = Restart(round_, healthy, time.perf_counter() - server.started)
            order = [base if i % 2 == 0 else merged for i in range(args.cycles)]
            switches = [_switch(client, round_, checkpoint, args.max_tokens) for checkpoint in order]
    finally:
        server.stop()
    return restart, switches


def summarize(restarts: list[Restart], switches: list[Switch]) -> dict:
    switch = statistics.median(s.switch_s for s in switches)
    restart = statistics.median(r.first_response_s for r in restarts)
    return {
        "median_load_request_s": statistics.median(s.load_request_s for s in switches),
        "median_engine_load_s": statistics.median(s.engine_load_s for s in switches),
        "median_first_token_after_load_s": statistics.median(s.first_token_s for s in switches),
        "median_switch_s": switch,
        "max_switch_s": max(s.switch_s for s in switches),
        "median_warm_response_s": statistics.median(s.warm_response_s for s in switches),
        "median_restart_to_healthy_s": statistics.median(r.healthy_s for r in restarts),
        "median_restart_to_first_response_s": restart,
        "restart_over_switch": restart / switch,
    }


def report(summary: dict, restarts: list[Restart], switches: list[Switch]) -> str:
    lines = ["round  restart->first response  checkpoint  load request  engine load  load+first response  warm"]
    for r in restarts:
        for s in (s for s in switches if s.round == r.round):
            lines.append(f"{r.round:>5}  {r.first_response_s:>22.1f}  {s.checkpoint:>10}  {s.load_request_s:>12.2f}  "
                         f"{s.engine_load_s:>11.2f}  {s.switch_s:>19.2f}  {s.warm_response_s:>4.2f}")
    lines.append(f"median switch (load + first response) {summary['median_switch_s']:.2f} s (max {summary['max_switch_s']:.2f} s); "
                 f"median restart {summary['median_restart_to_first_response_s']:.1f} s: {summary['restart_over_switch']:.0f}x")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.weights_switch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="server restarts (each followed by the in-place switches)")
    parser.add_argument("--cycles", type=int, default=6, help="in-place loads, each with its first response, per round")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens of the timed response")
    parser.add_argument("--kv-cache-gb", type=float, default=0.5)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lda-weights-bench",
                        help="where the merged demo checkpoint is written (once)")
    parser.add_argument("--after", type=Path, default=None, help="a full checkpoint served in the after stack at start")
    parser.add_argument("--other", type=Path, default=None, help="a checkpoint of the same shape, alternated with --after")
    parser.add_argument("--before", type=Path, default=None, help="the before stack's checkpoint")
    parser.add_argument("--output", type=Path, default=Path("docs/data/full-weights"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rounds < 1 or args.cycles < 1 or args.max_tokens < 1:
        print("weights_switch: --rounds, --cycles and --max-tokens must be >= 1", file=sys.stderr)
        return 2
    given = [args.after, args.other, args.before]
    if any(given) and not all(given):
        print("weights_switch: give --after, --other and --before together (or none: the demo checkpoints)", file=sys.stderr)
        return 2
    if all(given):
        merged, base, before = args.after, args.other, args.before
    else:
        args.work.mkdir(parents=True, exist_ok=True)
        merged, base, before = demo_checkpoints(args.work)
    args.output.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="lda-weights-bench-"))
    print(f"server logs in {log_dir}", flush=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = args.output / f"bench-{started[:16].replace(':', '')}.json"
    load_before = os.getloadavg()
    restarts, switches = [], []
    for round_ in range(args.rounds):
        restart, mine = one_round(round_, merged, base, before, args, log_dir)
        restarts.append(restart)
        switches.extend(mine)
        print(f"round {round_}: restart {restart.first_response_s:.1f} s, switch "
              f"{', '.join(f'{s.switch_s:.2f}' for s in mine)} s", flush=True)
        summary = summarize(restarts, switches)
        result = {
            "date": started,
            "command": "python -m benchmarks.weights_switch " + " ".join(argv if argv is not None else sys.argv[1:]),
            "checkpoints": {"after": str(merged), "other": str(base), "before": str(before)},
            "max_tokens": args.max_tokens,
            "machine": {"cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
            "summary": summary,
            "restarts": [asdict(r) for r in restarts],
            "switches": [asdict(s) | {"switch_s": s.switch_s} for s in switches],
        }
        path.write_text(json.dumps(result, indent=2) + "\n")
    print(report(summary, restarts, switches))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
