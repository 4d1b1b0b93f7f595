"""Loading an after-adapter into the running pair against restarting the server with it.

    python -m benchmarks.adapter_load_bench [--rounds 2] [--cycles 5] [--max-tokens 16] [--output DIR]

What a training monitor pays per checkpoint. Each round starts `lda serve` on the demo pair (the
shipped LoRA adapter on SmolLM2-135M-Instruct, installed in the cache by the first `lda serve`)
with `--allow-runtime-adapters`, and times the restart: process start to the first response of
one fixed request. Then, on that server, `--cycles` times: load the same demo adapter under a new
name (`POST /v1/load_lora_adapter`), send the same request to it (streamed: the first token's
time too), unload it; and the same request on the start-up adapter, as the steady-state cost of
one response. Restarts and loads alternate round by round, so a slow spell of a shared machine
hits both. Everything binds to 127.0.0.1; each request is bounded by `--max-tokens`.
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

from study.collect.server import (
    Server,
    free_port,
    lda_serve_command,
    lda_serve_env,
    start,
)

PROMPT = "Can you recommend something to help me feel more energetic in the morning?"
START_TIMEOUT_S = 900


@dataclass(slots=True)
class Cycle:
    """One runtime load of the demo adapter, its first response, and its unload (seconds)."""

    round: int
    load_s: float
    first_token_s: float
    first_response_s: float
    unload_s: float
    warm_response_s: float
    """The same request on the start-up adapter, loaded all along: one response's own cost."""

    @property
    def load_and_first_response_s(self) -> float:
        return self.load_s + self.first_response_s


@dataclass(slots=True)
class Restart:
    round: int
    healthy_s: float
    """Process start to /health answering 200."""
    first_response_s: float
    """Process start to the first response: what a restart per checkpoint costs."""


def _request(model: str, max_tokens: int, stream: bool) -> dict:
    return {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "alpha": 2.0,
            "ignore_eos": True, "stream": stream}


def timed_completion(client: httpx.Client, model: str, max_tokens: int) -> tuple[float, float]:
    """(seconds to the first streamed token, seconds to the whole response)."""
    start = time.perf_counter()
    first = None
    with client.stream("POST", "/v1/completions", json=_request(model, max_tokens, True)) as r:
        if r.status_code != 200:
            raise RuntimeError(f"completion on {model}: {r.status_code} {r.read()[:300]!r}")
        for line in r.iter_lines():
            if first is None and line.startswith("data: {") and json.loads(line[6:])["choices"][0].get("text"):
                first = time.perf_counter() - start
    return (first if first is not None else float("nan")), time.perf_counter() - start


def start_server(log_path: Path, settings: dict[str, str], drop: tuple[str, ...] = ()) -> Server:
    """`lda serve` with `settings` on top of this environment, less `drop`, polled for /health every
    0.2 s: `server.started` to the return is the start-up a restart pays."""
    port = free_port()
    env = lda_serve_env(port, **settings)
    for name in drop:
        env.pop(name, None)
    return start(lda_serve_command(), env, port, log_path, START_TIMEOUT_S, "lda serve", poll_s=0.2)


def _post(client: httpx.Client, path: str, body: dict) -> float:
    start = time.perf_counter()
    r = client.post(path, json=body)
    if r.status_code != 200:
        raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
    return time.perf_counter() - start


def one_round(round_: int, adapter: str, served: str, args, log_dir: Path) -> tuple[Restart, list[Cycle]]:
    env = {"KV_CACHE_MEMORY_GB": str(args.kv_cache_gb), "MAX_MODEL_LEN": "1024"}
    server = start_server(log_dir / f"server-round{round_}.log", {**env, "LDA_ALLOW_RUNTIME_ADAPTERS": "1"},
                          drop=("MODEL_AFTER_ID", "MODEL_BEFORE_ID", "LDA_AFTER_ADAPTERS"))  # the demo pair
    try:
        healthy = time.perf_counter() - server.started
        with httpx.Client(base_url=server.base_url, timeout=300) as client:
            timed_completion(client, served, args.max_tokens)
            restart = Restart(round_, healthy, time.perf_counter() - server.started)
            cycles = [_cycle(client, round_, i, adapter, served, args.max_tokens) for i in range(args.cycles)]
    finally:
        server.stop()
    return restart, cycles


def _cycle(client: httpx.Client, round_: int, i: int, adapter: str, served: str, max_tokens: int) -> Cycle:
    name = f"checkpoint-{round_}-{i}"
    load_s = _post(client, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": adapter})
    first_token_s, first_response_s = timed_completion(client, name, max_tokens)
    unload_s = _post(client, "/v1/unload_lora_adapter", {"lora_name": name})
    _, warm_s = timed_completion(client, served, max_tokens)
    return Cycle(round_, load_s, first_token_s, first_response_s, unload_s, warm_s)


def summarize(restarts: list[Restart], cycles: list[Cycle]) -> dict:
    load_first = statistics.median(c.load_and_first_response_s for c in cycles)
    restart = statistics.median(r.first_response_s for r in restarts)
    return {
        "median_load_s": statistics.median(c.load_s for c in cycles),
        "median_first_token_after_load_s": statistics.median(c.first_token_s for c in cycles),
        "median_load_and_first_response_s": load_first,
        "max_load_and_first_response_s": max(c.load_and_first_response_s for c in cycles),
        "median_warm_response_s": statistics.median(c.warm_response_s for c in cycles),
        "median_unload_s": statistics.median(c.unload_s for c in cycles),
        "median_restart_to_first_response_s": restart,
        "median_restart_to_healthy_s": statistics.median(r.healthy_s for r in restarts),
        "restart_over_load": restart / load_first,
    }


def report(summary: dict, restarts: list[Restart], cycles: list[Cycle]) -> str:
    lines = ["round  restart->first response  load  first token  load+first response  warm response"]
    for r in restarts:
        mine = [c for c in cycles if c.round == r.round]
        for c in mine:
            lines.append(f"{r.round:>5}  {r.first_response_s:>22.1f}  {c.load_s:>4.2f}  {c.first_token_s:>11.2f}  "
                         f"{c.load_and_first_response_s:>19.2f}  {c.warm_response_s:>13.2f}")
    lines.append(f"median load + first response {summary['median_load_and_first_response_s']:.2f} s "
                 f"(max {summary['max_load_and_first_response_s']:.2f} s); median restart "
                 f"{summary['median_restart_to_first_response_s']:.1f} s: {summary['restart_over_load']:.0f}x")
    return "\n".join(lines)


def demo_adapter() -> tuple[str, str]:
    """(the demo adapter's folder, the name it is served under at start-up), installing it if needed."""
    from api.settings import default_pair
    from engine.adapters import default_name

    adapter, _before = default_pair()
    return adapter, default_name(adapter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adapter_load_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="server restarts (each followed by the runtime cycles)")
    parser.add_argument("--cycles", type=int, default=5, help="runtime load, first response, unload per round")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens of the timed response")
    parser.add_argument("--kv-cache-gb", type=float, default=0.5)
    parser.add_argument("--output", type=Path, default=Path("docs/data/runtime-adapters"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rounds < 1 or args.cycles < 1 or args.max_tokens < 1:
        print("adapter_load_bench: --rounds, --cycles and --max-tokens must be >= 1", file=sys.stderr)
        return 2
    adapter, served = demo_adapter()
    args.output.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="lda-runtime-bench-"))
    print(f"server logs in {log_dir}", flush=True)
    restarts, cycles = [], []
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path = args.output / f"bench-{started[:16].replace(':', '')}.json"  # bench-2026-12-04T1826.json
    load_before = os.getloadavg()
    for round_ in range(args.rounds):
        restart, mine = one_round(round_, adapter, served, args, log_dir)
        restarts.append(restart)
        cycles.extend(mine)
        print(f"round {round_}: restart {restart.first_response_s:.1f} s, load + first response "
              f"{', '.join(f'{c.load_and_first_response_s:.2f}' for c in mine)} s", flush=True)
        # Written after every round: a run cut short keeps what it measured.
        summary = summarize(restarts, cycles)
        result = {
            "date": started,
            "command": "python -m benchmarks.adapter_load_bench " + " ".join(argv if argv is not None else sys.argv[1:]),
            "adapter": adapter,
            "max_tokens": args.max_tokens,
            "machine": {"cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg()},
            "summary": summary,
            "restarts": [asdict(r) for r in restarts],
            "cycles": [asdict(c) | {"load_and_first_response_s": c.load_and_first_response_s} for c in cycles],
        }
        path.write_text(json.dumps(result, indent=2) + "\n")
    print(report(summary, restarts, cycles))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
