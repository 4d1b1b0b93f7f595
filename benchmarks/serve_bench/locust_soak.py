"""`lda bench --soak`: the LDA server under closed-loop locust users for a while
(`benchmarks/locustfile.py`), then a health check and one completion; every request sent is
counted as succeeded or failed, and the server's access log gives each one's HTTP status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.serve_bench.config import SERVED_NAME, BenchConfig
from benchmarks.serve_bench.servers import RssSampler, running_server

LOCUSTFILE = Path(__file__).parent.parent / "locustfile.py"


@dataclass(slots=True)
class SoakResult:
    seconds: int
    users: int
    max_tokens: int
    requests: int
    failures: int
    status_counts: dict[str, int]
    """HTTP status of every completion request, from the server's access log."""
    healthy_after: bool
    completion_after: str
    peak_rss_mb: float
    locust_exit_code: int

    @property
    def server_errors(self) -> int:
        return sum(n for code, n in self.status_counts.items() if code.startswith("5"))


def _locust_counts(final_json: Path) -> tuple[int, int]:
    """Requests and failures of the HTTP rows (not the TTFT/TPOT/TOKENS custom events), from
    locust's --json-file, which it writes after its users stop. (Its --csv stats are written
    earlier and miss the requests that finish during --stop-timeout.)"""
    requests = failures = 0
    for entry in json.loads(final_json.read_text()):
        if entry.get("method") == "POST":
            requests += int(entry["num_requests"])
            failures += int(entry["num_failures"])
    return requests, failures


def _status_counts(log_path: Path) -> dict[str, int]:
    import re

    counts: dict[str, int] = {}
    pattern = re.compile(r'"POST /v1/(?:chat/)?completions HTTP/[\d.]+" (\d{3})')
    for line in log_path.read_text(errors="replace").splitlines():
        if match := pattern.search(line):
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def soak(config: BenchConfig, seconds: int, users: int, max_tokens: int) -> SoakResult:
    """The LDA server under `users` closed-loop locust users for `seconds`, then a health check and
    one completion. Locust's --stop-timeout lets requests in flight at the end finish, so every
    request sent is counted as succeeded or failed."""
    import httpx

    config.out_dir.mkdir(parents=True, exist_ok=True)
    log_path = config.out_dir / "server_soak.log"
    with running_server(config, "lda", log_path) as (base_url, process):
        sampler = RssSampler(process.pid, interval=1.0).start()
        env = {**os.environ, "LDA_MODEL": SERVED_NAME, "LDA_MAX_TOKENS": str(max_tokens), "LDA_ALPHAS": "0,1,4",
               "LDA_IGNORE_EOS": "1", "LDA_TIMEOUT": "600"}
        command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users),
                   "-r", str(users), "-t", f"{seconds}s", "--stop-timeout", "300", "--host", base_url,
                   "--csv", str(config.out_dir / "soak"), "--json-file", str(config.out_dir / "soak_final"),
                   "--only-summary", "--loglevel", "WARNING"]
        print("$ " + " ".join(command), flush=True)
        locust = subprocess.run(command, env=env, timeout=seconds + 420)
        peak = sampler.stop()
        healthy = httpx.get(f"{base_url}/health", timeout=30).status_code == 200
        reply = httpx.post(f"{base_url}/v1/completions", timeout=120, json={
            "model": SERVED_NAME, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "alpha": 1.0})
        reply.raise_for_status()
        text = reply.json()["choices"][0]["text"]
    requests, failures = _locust_counts(config.out_dir / "soak_final.json")
    result = SoakResult(seconds, users, max_tokens, requests, failures, _status_counts(log_path), healthy, text,
                        peak / 2**20, locust.returncode)
    (config.out_dir / "soak.json").write_text(json.dumps(
        {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **asdict(result),
         "server_errors": result.server_errors}, indent=2))
    print(json.dumps({**asdict(result), "server_errors": result.server_errors}, indent=2), flush=True)
    return result
