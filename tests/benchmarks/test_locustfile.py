"""benchmarks/locustfile.py run headless against the fake OpenAI server, as a user would run it.

Locust runs in a subprocess: importing it here would monkey-patch this test process with gevent.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from tests.benchmarks.fake_openai import FakeServer

REPO = Path(__file__).resolve().parents[2]
LOCUSTFILE = REPO / "benchmarks" / "locustfile.py"


def run_locust(host: str, csv_prefix: Path, env: dict[str, str], *, users: int, seconds: int):
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", str(users),
        "-t", f"{seconds}s", "--host", host, "--csv", str(csv_prefix), "--only-summary",
    ]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        command, cwd=csv_prefix.parent, env=full_env, capture_output=True, text=True, timeout=seconds + 60
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_streaming_users_report_ttft_tpot_and_tokens_without_failures(tmp_path):
    env = {"LDA_ALPHAS": "0,1,2", "LDA_MAX_TOKENS": "16"}
    with FakeServer(delay_s=0.005) as server:
        done = run_locust(server.url, tmp_path / "run", env, users=4, seconds=6)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [row for row in read_csv(tmp_path / "run_stats.csv") if row["Name"] != "Aggregated"]
    by_type: dict[str, set[str]] = {}
    for row in rows:
        by_type.setdefault(row["Type"], set()).add(row["Name"])
        assert row["Failure Count"] == "0", row
    endpoints = {"/v1/chat/completions", "/v1/completions"}
    for kind in ("POST", "TTFT", "TPOT", "TOKENS"):
        assert {name.split(" alpha=")[0] for name in by_type[kind]} == endpoints, kind
    assert {name.split(" alpha=")[1] for name in by_type["TTFT"]} <= {"0", "1", "2"}
    tokens = [row for row in rows if row["Type"] == "TOKENS"]
    assert all(1 <= float(row["Average Response Time"]) <= 16 for row in tokens)
    assert read_csv(tmp_path / "run_failures.csv") == []


def test_http_errors_count_as_failures_with_the_server_message(tmp_path):
    env = {"LDA_ALPHAS": "0,9", "LDA_MAX_TOKENS": "8", "LDA_MODEL": "fake-lda"}
    with FakeServer(fail_alpha=9.0) as server:
        done = run_locust(server.url + "/v1", tmp_path / "run", env, users=2, seconds=3)
    assert done.returncode == 1  # locust's exit code when any request failed
    failures = read_csv(tmp_path / "run_failures.csv")
    assert failures and all(row["Name"].endswith("alpha=9") for row in failures)
    assert all("HTTP 500: fake failure at alpha 9" in row["Error"] for row in failures)
    ok = [r for r in read_csv(tmp_path / "run_stats.csv") if r["Type"] == "POST" and r["Name"].endswith("alpha=0")]
    assert ok and all(r["Failure Count"] == "0" for r in ok)


def test_bad_settings_stop_locust_with_a_message(tmp_path):
    done = run_locust("http://127.0.0.1:9", tmp_path / "run", {"LDA_ALPHAS": "0,x"}, users=1, seconds=1)
    assert done.returncode != 0
    assert "LDA_ALPHAS" in done.stderr and "Traceback" not in done.stderr
