"""Tensor and data parallel pairs started with defaults, and a server whose engine core dies mid-study.

Two starts for the module, both with no binding variables set (the derived per-rank binding is
what is under test): a TP=2 server (`--tensor-parallel-size 2`), checked token for token against
the plain-transformers reference, whose engine core is then killed under a running `lda study`;
and the supervisor's restart of it, here as DP=2 (`-- --data-parallel-size 2`), on which the study
resumes and the data-parallel checks run (requests spread over both engines, equal greedy outputs).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from api.server import ENGINE_DIED_EXIT
from engine.env import BINDING_VARS
from study.collect.server import Server, free_port
from tests.servers import start_server, tiny_server_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ALPHAS = [-1.0, 0.0, 1.0, 3.0]
PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Numbers: 0 1 2 3 4 5 6 7 8 9."]
MAX_TOKENS = 16
UNHEALTHY_WITHIN_S = 10.0
"""How soon /health must turn non-200 after the engine core dies (vLLM's watchdog polls every 5 s)."""


def _start(pair, log_path: Path, args: list[str], **extra: str) -> Server:
    # Loopback only: vLLM's processes would otherwise advertise the host's address to each other.
    env = tiny_server_env(pair, free_port(), VLLM_HOST_IP="127.0.0.1", **extra)
    for name in BINDING_VARS:  # the defaults are under test: no binding given by hand
        env.pop(name, None)
    env.pop("LDA_CPU_BIND", None)
    return start_server([sys.executable, "-m", "api.cli", "serve", *args], env, log_path)


@pytest.fixture(scope="module")
def tp_server(llama_pair, tmp_path_factory):
    handle = _start(llama_pair, tmp_path_factory.mktemp("tp2") / "server.log", ["--tensor-parallel-size", "2"])
    yield handle
    handle.kill()  # the fault test has killed its engine; the group may still hold workers


@pytest.fixture(scope="module")
def dp_server(llama_pair, tmp_path_factory):
    handle = _start(llama_pair, tmp_path_factory.mktemp("dp2") / "server.log", ["--", "--data-parallel-size", "2"])
    yield handle
    code = handle.stop()
    assert code == 0, f"SIGTERM should shut down cleanly, got {code}:\n{handle.log()[-3000:]}"


@pytest.fixture(scope="module")
def reference(llama_pair):
    from engine.reference import ReferencePair

    return ReferencePair(str(llama_pair.after), str(llama_pair.before))


def _complete(server: Server, prompt: str, alpha: float, max_tokens: int = MAX_TOKENS) -> dict:
    body = {"model": "lda", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "alpha": alpha,
            "return_token_ids": True}
    response = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]


def _concurrently(calls) -> list:
    """Run the calls at once (so that the engine batches them); their results in order."""
    results: list = [None] * len(calls)

    def run(i, call):
        results[i] = call()

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return results


def test_tp2_greedy_matches_the_reference_at_every_alpha(tp_server, reference):
    log = tp_server.log()
    assert re.search(r"VLLM_CPU_OMP_THREADS_BIND='0\|1'", log), "each rank must get its own core"
    cases = [(p, a) for p in PROMPTS for a in ALPHAS]
    choices = _concurrently([lambda p=p, a=a: _complete(tp_server, p, a) for p, a in cases])
    for (prompt, alpha), choice in zip(cases, choices, strict=True):
        ids = reference.tokenizer(prompt).input_ids
        expected = reference.generate(ids, alpha, MAX_TOKENS).token_ids
        assert choice["token_ids"] == expected, f"alpha {alpha} prompt {prompt!r}"
    # The batch really mixes alphas: the extremes decode differently.
    assert choices[0]["token_ids"] != choices[3]["token_ids"]


def _engine_cores(server: Server) -> list[psutil.Process]:
    children = psutil.Process(server.process.pid).children(recursive=True)
    return [p for p in children if "EngineCore" in " ".join(p.cmdline())]


def _study_args(base_url: str, prompts: Path, out: Path) -> list[str]:
    return ["--base-url", base_url, "--prompts", str(prompts), "--alphas", "0,1", "-n", "12", "--seed", "3",
            "--max-tokens", "64", "--detector", "keyword:the", "-o", str(out), "--concurrency", "4",
            "--timeout", "120", "--no-progress", "--no-score"]


def _wait_for_lines(path: Path, count: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (path.exists() and len(path.read_text().splitlines()) >= count):
        assert process.poll() is None, f"the study ended before the fault: {process.communicate()}"
        assert time.monotonic() < deadline, "the study drew too few samples"
        time.sleep(0.05)


def _time_to_unhealthy(server: Server, since: float) -> float:
    while time.monotonic() - since < 60:
        try:
            if httpx.get(f"{server.base_url}/health", timeout=1).status_code != 200:
                break
        except httpx.HTTPError:
            break
        time.sleep(0.05)
    return time.monotonic() - since


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_engine_death_mid_study_then_the_study_resumes_on_the_restart(tp_server, request, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tell me about the weather today.\nWhat should I do if I feel bored?\nName a colour.\n")
    out = tmp_path / "study"
    samples = out / "samples.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    study = subprocess.Popen([sys.executable, "-m", "api.cli", "study", *_study_args(tp_server.base_url, prompts, out)],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lines(samples, 6, study)
        in_flight = {}
        probe = threading.Thread(target=lambda: in_flight.update(result=_long_request(tp_server)))
        probe.start()
        (core,) = _engine_cores(tp_server)
        killed_at = time.monotonic()
        core.send_signal(signal.SIGKILL)
        unhealthy_s = _time_to_unhealthy(tp_server, killed_at)
        probe.join(timeout=60)
        _, err = study.communicate(timeout=120)
    finally:
        if study.poll() is None:
            study.kill()
    assert unhealthy_s < UNHEALTHY_WITHIN_S, f"/health still 200 {unhealthy_s:.1f} s after the engine died"
    assert not probe.is_alive() and in_flight["result"] != 200, "a request in flight must end with an error"
    # Exit 1 naming the lost server (or the failed samples, if the server answered errors first).
    assert study.returncode == 1 and "rerun" in err and "Traceback" not in err, err
    code = tp_server.process.wait(timeout=120)
    exited_s = time.monotonic() - killed_at
    assert code == ENGINE_DIED_EXIT, tp_server.log()[-3000:]
    assert "lda serve: the engine core process died" in tp_server.log()
    kept = _records(samples)

    # The supervisor restarts the server (here as DP=2, which the tests below use: one start for both).
    restarted = request.getfixturevalue("dp_server")
    result = subprocess.run([sys.executable, "-m", "api.cli", "study", *_study_args(restarted.base_url, prompts, out)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    records = _records(samples)
    keys = [(r["prompt_id"], r["alpha"], r["sample_index"]) for r in records]
    assert len(keys) == len(set(keys)) == 3 * 2 * 12, "every sample once, none duplicated"
    assert records[: len(kept)] == kept, "every sample finished before the fault is kept as it was"
    print(f"\nfault figures: unhealthy after {unhealthy_s:.2f} s, server exited {code} after {exited_s:.1f} s, "
          f"{len(kept)} of {len(keys)} samples kept, {len(keys) - len(kept)} drawn on the restart")


def _long_request(server: Server) -> int | str:
    """A request in flight when the engine dies: its status, or the error that ended it."""
    body = {"model": "lda", "prompt": "Count:", "max_tokens": 400, "temperature": 0, "ignore_eos": True}
    try:
        return httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60).status_code
    except httpx.HTTPError as error:
        return type(error).__name__


def _successes_by_engine(server: Server) -> dict[str, float]:
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    counts: dict[str, float] = {}
    for match in re.finditer(r'^vllm:request_success_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
        engine = re.search(r'engine="(\d+)"', match.group(1))
        if engine:
            counts[engine.group(1)] = counts.get(engine.group(1), 0.0) + float(match.group(2))
    return counts


def test_dp2_spreads_requests_over_both_engines_with_equal_greedy_outputs(dp_server, reference):
    log = dp_server.log()
    assert re.search(r"VLLM_CPU_OMP_THREADS_BIND='0\|1'", log), "each engine must get its own core"
    before = _successes_by_engine(dp_server)
    choices = _concurrently([lambda: _complete(dp_server, PROMPTS[0], 1.0) for _ in range(8)])
    after = _successes_by_engine(dp_server)
    served = {engine: after[engine] - before.get(engine, 0.0) for engine in after}
    assert set(served) == {"0", "1"} and all(n > 0 for n in served.values()), served
    assert sum(served.values()) == 8
    expected = reference.generate(reference.tokenizer(PROMPTS[0]).input_ids, 1.0, MAX_TOKENS).token_ids
    assert all(choice["token_ids"] == expected for choice in choices)
