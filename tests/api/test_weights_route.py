"""Full-weight checkpoints loaded into a running server: POST /v1/lda/weights (api/weights_routes.py).

One server for the module: the tiny Llama pair (after vocab 352, before 300) with
`LDA_ALLOW_WEIGHT_LOADS=1` and an API key. Greedy outputs after each load must equal the independent
reference of the checkpoints now served, token for token, including a prompt whose prefix was cached
before the load; every refusal is a 4xx naming the problem with the old weights still serving; a
request in flight during a load finishes on the old weights, one sent during it runs on the new.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from engine.reference import ReferencePair
from tests.engine.engines import LONG_PROMPT, PROMPTS
from tests.factories import build_full_checkpoint, build_model, truncated_copy
from tests.servers import free_port, start_server, tiny_server_env

pytestmark = pytest.mark.slow

KEY = "weights-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_TOKENS = 10
TEXTS = [PROMPTS[1], LONG_PROMPT]
IN_FLIGHT_TOKENS = 400


@pytest.fixture(scope="module")
def models(llama_pair, tmp_path_factory):
    root = tmp_path_factory.mktemp("weights-route")
    after1 = build_full_checkpoint(root / "step-100", llama_pair.after, seed=31, max_shard_size="60KB")
    wrong_shape = build_full_checkpoint(root / "wrong-shape", llama_pair.after, seed=3, intermediate_size=96)
    shutil.copy(llama_pair.after / "config.json", wrong_shape / "config.json")
    return SimpleNamespace(
        after0=llama_pair.after, before0=llama_pair.before, after1=after1,
        after2=build_full_checkpoint(root / "step-200", llama_pair.after, seed=32),
        before1=build_full_checkpoint(root / "base-b", llama_pair.before, seed=33, max_shard_size="60KB"),
        other=build_model(root / "qwen", "qwen2", seed=3, vocab_size=352),
        wrong_shape=wrong_shape,
        truncated=truncated_copy(after1, root / "truncated"),
        root=root,
    )


@pytest.fixture(scope="module")
def server(llama_pair, tmp_path_factory):
    env = tiny_server_env(llama_pair, free_port(), LDA_ALLOW_WEIGHT_LOADS="1", LDA_API_KEY=KEY)
    import sys

    handle = start_server([sys.executable, "-m", "api.cli", "serve"], env, tmp_path_factory.mktemp("weights") / "server.log")
    yield handle
    assert handle.stop() == 0, handle.log()[-3000:]


@pytest.fixture(scope="module")
def token_ids(llama_pair):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_pair.after)
    return [tokenizer(t).input_ids for t in TEXTS]


def reference(after, before, ids, alpha, n=MAX_TOKENS):
    return ReferencePair(str(after), str(before)).generate(ids, alpha, n).token_ids


def post(server, path, body, headers=AUTH, timeout=300):
    return httpx.post(f"{server.base_url}{path}", json=body, headers=headers, timeout=timeout)


def load(server, stack, path, **extra):
    return post(server, "/v1/lda/weights", {"stack": stack, "path": str(path), **extra})


def complete(server, ids, alpha, max_tokens=MAX_TOKENS):
    r = post(server, "/v1/completions", {"model": "lda", "prompt": ids, "max_tokens": max_tokens, "temperature": 0,
                                         "alpha": alpha, "return_token_ids": True})
    assert r.status_code == 200, r.text
    return r


def serve(server, after, before):
    current = httpx.get(f"{server.base_url}/v1/lda/weights", headers=AUTH, timeout=30).json()["stacks"]
    for stack, path in (("after", after), ("before", before)):
        if current[stack]["path"] != str(path):
            r = load(server, stack, path)
            assert r.status_code == 200, r.text


def assert_serves(server, token_ids, after, before, alphas=(-1.0, 0.0, 1.0)):
    for alpha in alphas:
        for ids in token_ids:
            got = complete(server, ids, alpha).json()["choices"][0]["token_ids"]
            assert got == reference(after, before, ids, alpha), (alpha, after.name, before.name)


def test_versions_are_visible_everywhere(server, models):
    serve(server, models.after0, models.before0)
    stacks = httpx.get(f"{server.base_url}/v1/lda/weights", headers=AUTH, timeout=30).json()["stacks"]
    assert {s: v["version"] for s, v in stacks.items()} == {"after": models.after0.name, "before": models.before0.name}
    r = complete(server, [5, 6, 7], 1.0)
    assert r.json()["weights"] == {"after": models.after0.name, "before": models.before0.name}
    assert r.json()["alpha"] == 1.0
    assert r.headers["x-lda-weights-after"] == models.after0.name
    cards = httpx.get(f"{server.base_url}/v1/models", headers=AUTH, timeout=30).json()["data"]
    assert all(card["lda_weights"]["before"]["version"] == models.before0.name for card in cards)
    original = post(server, "/generate_lda", {"prompt": "hello", "max_new_tokens": 4, "temperature": 0})
    assert original.status_code == 200 and original.headers["x-lda-weights-before"] == models.before0.name
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    assert f'lda_weights_version{{stack="after",version="{models.after0.name}"}} 1.0' in metrics


def test_loads_into_after_and_before_match_the_new_checkpoints(server, models, token_ids):
    serve(server, models.after0, models.before0)
    complete(server, token_ids[1], 1.0)  # the long prompt's prefix is now cached
    r = load(server, "after", models.after1, version="run/step-100")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["stack"], body["version"], body["previous_version"]) == ("after", "run/step-100", models.after0.name)
    assert body["weights"] == {"after": "run/step-100", "before": models.before0.name}
    first = complete(server, token_ids[1], 1.0).json()  # the cached prompt first: no stale block may serve it
    assert first["weights"]["after"] == "run/step-100"
    assert first["choices"][0]["token_ids"] == reference(models.after1, models.before0, token_ids[1], 1.0)
    assert_serves(server, token_ids, models.after1, models.before0)
    assert load(server, "before", models.before1).status_code == 200
    assert_serves(server, token_ids, models.after1, models.before1)
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    assert 'lda_weights_version{stack="after",version="run/step-100"} 1.0' in metrics
    assert f'lda_weights_version{{stack="after",version="{models.after0.name}"}}' not in metrics
    count = [line for line in metrics.splitlines() if line.startswith('lda_weights_load_seconds_count{stack="after"}')]
    assert count and float(count[0].rsplit(" ", 1)[1]) >= 1


@pytest.mark.parametrize("case, status, param, words", [
    ("missing", 400, "path", "does not exist"),
    ("not a checkpoint", 400, "path", "no config.json"),
    ("other architecture", 400, "architectures", "Qwen2ForCausalLM"),
    ("wrong shape", 400, "shape", "the after stack's is [64, 128]"),
    ("truncated", 400, "path", "truncated"),
    ("other stack's vocabulary", 400, "vocab_size", "352"),
    ("no stack", 400, "stack", "stack is required"),
    ("bad stack", 400, "stack", "'after' or 'before'"),
    ("bad version", 400, "version", "version must be"),
    ("unknown field", 400, "lora_name", "unknown field"),
])
def test_bad_loads_are_4xx_naming_the_problem_and_the_old_weights_serve(server, models, token_ids, case, status, param, words):
    serve(server, models.after2, models.before0)
    body = {
        "missing": {"stack": "after", "path": str(models.root / "nowhere")},
        "not a checkpoint": {"stack": "after", "path": str(models.root)},
        "other architecture": {"stack": "after", "path": str(models.other)},
        "wrong shape": {"stack": "after", "path": str(models.wrong_shape)},
        "truncated": {"stack": "after", "path": str(models.truncated)},
        "other stack's vocabulary": {"stack": "before", "path": str(models.after1)},
        "no stack": {"path": str(models.after1)},
        "bad stack": {"stack": "middle", "path": str(models.after1)},
        "bad version": {"stack": "after", "path": str(models.after1), "version": "a b"},
        "unknown field": {"stack": "after", "path": str(models.after1), "lora_name": "x"},
    }[case]
    r = post(server, "/v1/lda/weights", body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert_serves(server, token_ids[:1], models.after2, models.before0, alphas=(1.0,))


def test_the_route_needs_the_api_key(server, models):
    r = post(server, "/v1/lda/weights", {"stack": "after", "path": str(models.after1)}, headers={})
    assert r.status_code == 401


def _stream(server, ids, chunks: list, started: threading.Event):
    body = {"model": "lda", "prompt": ids, "max_tokens": IN_FLIGHT_TOKENS, "temperature": 0, "alpha": 1.0,
            "ignore_eos": True, "stream": True, "return_token_ids": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, headers=AUTH, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
                started.set()


def test_in_flight_requests_finish_on_the_old_weights_and_a_second_load_is_a_409(server, models, token_ids):
    serve(server, models.after0, models.before0)
    ids = token_ids[0]
    alone = complete(server, ids, 1.0, max_tokens=IN_FLIGHT_TOKENS).json()  # ignore_eos off: compare a prefix
    alone_ids = alone["choices"][0]["token_ids"]
    chunks: list[dict] = []
    started = threading.Event()
    stream = threading.Thread(target=_stream, args=(server, ids, chunks, started))
    stream.start()
    answers: dict = {}
    try:
        assert started.wait(300)
        during = len(chunks)
        loader = threading.Thread(target=lambda: answers.update(first=load(server, "after", models.after1, version="v1")))
        loader.start()
        deadline = time.monotonic() + 120
        while loader.is_alive() and httpx.get(f"{server.base_url}/v1/lda/weights", headers=AUTH, timeout=30).json()["loading"] is None:
            assert time.monotonic() < deadline, "the load never started"
            time.sleep(0.05)
        waiting = loader.is_alive() and len(chunks) < IN_FLIGHT_TOKENS  # the load is waiting for the stream
        second = load(server, "before", models.before1)
        held = {}
        late = threading.Thread(target=lambda: held.update(r=complete(server, ids, 1.0)))
        late.start()  # sent while the load waits: held at the gate, then served on the new weights
        loader.join(600)
        late.join(600)
    finally:
        stream.join(600)
    assert during < IN_FLIGHT_TOKENS and waiting, "the stream had finished before the load: make it longer"
    assert second.status_code == 409 and "a weights load is running" in second.json()["error"]["message"], second.text
    assert answers["first"].status_code == 200, answers["first"].text
    streamed = [t for c in chunks for choice in c["choices"] for t in (choice.get("token_ids") or [])]
    assert streamed[: len(alone_ids)] == alone_ids, "the in-flight stream must finish on the old weights"
    assert streamed[:MAX_TOKENS] == reference(models.after0, models.before0, ids, 1.0)
    assert all(c["weights"]["after"] == models.after0.name for c in chunks)
    late_body = held["r"].json()
    assert late_body["weights"]["after"] == "v1"
    assert late_body["choices"][0]["token_ids"] == reference(models.after1, models.before0, ids, 1.0)
