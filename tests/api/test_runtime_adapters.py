"""Runtime after-adapters: POST /v1/load_lora_adapter and /v1/unload_lora_adapter on a real server.

One server for the whole module: a tiny Llama base against itself, started with
`LDA_ALLOW_RUNTIME_ADAPTERS=1`, no adapter at start-up (so LoRA must be on anyway), an API key,
and room for two adapters. Every refusal is checked for its status and for naming the problem;
a loaded adapter must change /v1/models, the OpenAI and original routes and /metrics at once and
give the tokens of peft's merged model (plain transformers); a request in flight on one adapter
must finish with its own tokens while another is loaded and unloaded. Parity with the same adapter
given at start-up is in tests/api/test_lora_server.py, on that module's server.
"""

from __future__ import annotations

import json
import sys
import threading
from types import SimpleNamespace

import httpx
import pytest

from engine.reference import ReferencePair
from tests.factories import build_adapter, build_model, merge_adapter
from tests.servers import free_port, start_server, tiny_server_env

pytestmark = pytest.mark.slow

KEY = "runtime-secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = "Tell me about the weather today."
MAX_TOKENS = 12
MAX_LORAS = 2


@pytest.fixture(scope="module")
def models(models_root):
    root = models_root / "runtime-adapters"
    base = build_model(root / "base", "llama", seed=2)
    wide = build_model(root / "wide", "llama", seed=3, hidden_size=96, head_dim=48)
    bigvocab = build_model(root / "bigvocab", "llama", seed=3, vocab_size=352)
    other = build_model(root / "other", "llama", seed=4)
    good = {"one": build_adapter(base, root / "one", rank=8, seed=1), "two": build_adapter(base, root / "two", rank=16, seed=3)}
    damaged = build_adapter(base, root / "damaged", rank=8, seed=5)
    (damaged / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    return SimpleNamespace(
        base=base,
        good=good,
        merged={name: merge_adapter(base, path, root / f"merged-{name}") for name, path in good.items()},
        rank32=build_adapter(base, root / "rank32", rank=32, seed=2),
        wide=build_adapter(wide, root / "on-wide", rank=8, seed=1),
        bigvocab=build_adapter(bigvocab, root / "on-bigvocab", rank=8, seed=1),
        other=build_adapter(other, root / "on-other", rank=8, seed=1),
        damaged=damaged,
    )


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    env = tiny_server_env(
        SimpleNamespace(after=models.base, before=models.base), free_port(),
        LDA_ALLOW_RUNTIME_ADAPTERS="1", LDA_API_KEY=KEY, LDA_MAX_LORAS=str(MAX_LORAS),
    )
    handle = start_server([sys.executable, "-m", "api.cli", "serve"], env, tmp_path_factory.mktemp("runtime") / "server.log")
    yield handle
    assert handle.stop() == 0, handle.log()[-3000:]


@pytest.fixture(scope="module")
def expected(models):
    """Greedy token ids under LDA against the base: each merged adapter, and the base itself."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(models.base)(PROMPT).input_ids
    out = {name: ReferencePair(str(merged), str(models.base)).generate(ids, 1.0, MAX_TOKENS).token_ids
           for name, merged in models.merged.items()}
    out["lda"] = ReferencePair(str(models.base), str(models.base)).generate(ids, 1.0, MAX_TOKENS).token_ids
    return out


def post(server, path, body, headers=AUTH, timeout=120):
    return httpx.post(f"{server.base_url}{path}", json=body, headers=headers, timeout=timeout)


def load(server, name, path, **extra):
    return post(server, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path), **extra})


def unload(server, name):
    return post(server, "/v1/unload_lora_adapter", {"lora_name": name})


def complete(server, model, max_tokens=MAX_TOKENS, ignore_eos=False):
    r = post(server, "/v1/completions", {
        "model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "alpha": 1.0,
        "return_token_ids": True, "ignore_eos": ignore_eos,
    })
    assert r.status_code == 200, r.text
    return r.json()


def model_ids(server) -> list[str]:
    return [m["id"] for m in httpx.get(f"{server.base_url}/v1/models", headers=AUTH, timeout=30).json()["data"]]


def adapter_gauges(server) -> dict[str, float]:
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    return {line.split('"')[1]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("lda_lora_adapters{")}


@pytest.fixture
def loaded(server, models):
    """Adapter `one` loaded for one test, and unloaded after it whatever happened."""
    r = load(server, "one", models.good["one"])
    assert r.status_code == 200, r.text
    yield "one"
    unload(server, "one")


def test_the_pair_starts_with_lora_on_and_no_adapter(server, expected):
    assert model_ids(server) == ["lda"]
    assert complete(server, "lda")["choices"][0]["token_ids"] == expected["lda"]


def test_a_loaded_adapter_is_served_at_once_everywhere(server, models, expected):
    r = load(server, "one", models.good["one"])
    assert r.status_code == 200 and "one" in r.text
    try:
        assert model_ids(server) == ["lda", "one"]
        reply = complete(server, "one")
        assert reply["model"] == "one" and reply["choices"][0]["token_ids"] == expected["one"]
        # The served name still runs the after model without an adapter (rows at slot -1).
        assert complete(server, "lda")["choices"][0]["token_ids"] == expected["lda"]
        original = post(server, "/generate_lda", {"prompt": PROMPT, "model": "one", "alpha": 1.0, "do_sample": False,
                                                  "max_new_tokens": MAX_TOKENS, "apply_chat_template": False}).json()
        assert original["model"] == "one" and original["model_after"] == str(models.good["one"])
        assert original["token_ids"] == expected["one"]
        # The score route runs the adapter too: against the base, the adapter's own greedy tokens
        # differ from the base's (after == before without it: every diff is 0).
        scores = {model: post(server, "/v1/lda/score", {"model": model, "prompt": PROMPT, "continuation": expected["one"]})
                  for model in ("one", "lda")}
        assert scores["one"].status_code == 200, scores["one"].text
        assert scores["one"].json()["model"] == "one" and scores["one"].json()["summary"]["max"] > 0.1
        assert all(abs(t["diff"]) < 1e-4 for t in scores["lda"].json()["tokens"])
        assert adapter_gauges(server) == {"one": 1.0}
    finally:
        assert unload(server, "one").status_code == 200
    assert model_ids(server) == ["lda"]
    assert adapter_gauges(server) == {}
    gone = post(server, "/v1/completions", {"model": "one", "prompt": PROMPT, "max_tokens": 2})
    assert gone.status_code == 404 and "`one` does not exist" in gone.json()["error"]["message"]
    gone = post(server, "/generate_lda", {"prompt": PROMPT, "model": "one", "max_new_tokens": 2})
    assert gone.status_code == 404


def test_unloading_frees_the_slot_for_the_next_adapter(server, models, expected):
    # More loads than slots, one at a time: each unload must give its slot back.
    for _ in range(MAX_LORAS + 1):
        for name in ("one", "two"):
            assert load(server, name, models.good[name]).status_code == 200
            assert complete(server, name)["choices"][0]["token_ids"] == expected[name]
            assert unload(server, name).status_code == 200


@pytest.mark.parametrize(
    ("adapter", "words"),
    [
        ("rank32", ["rank 32", "max_lora_rank 16", "LDA_MAX_LORA_RANK"]),
        ("wide", ["hidden_size 96 vs 64"]),
        ("bigvocab", ["vocab_size 352 vs 300"]),
        ("other", ["trained on", "this server's adapters apply to"]),
        ("damaged", ["could not be loaded"]),
    ],
)
def test_an_adapter_that_does_not_fit_is_a_400_naming_the_problem(server, models, adapter, words):
    r = load(server, "bad", getattr(models, adapter))
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == 400 and error["param"] == "lora_path"
    assert all(w in error["message"] for w in words), error["message"]
    assert "bad" not in model_ids(server)


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"lora_name": "x"}, "lora_path", "lora_path: Field required"),
        ({"lora_path": "/tmp"}, "lora_name", "lora_name: Field required"),
        ({"lora_name": " ", "lora_path": "/tmp"}, "lora_name", "lora_name must not be empty"),
        ({"lora_name": "x", "lora_path": "/no/such/folder"}, "lora_path", "'/no/such/folder' is not a folder on the server"),
        ({"lora_name": "x", "lora_path": "org/some-hub-adapter"}, "lora_path", "is not a folder on the server"),
        ([1, 2], None, "the body must be a JSON object"),
    ],
)
def test_a_bad_load_body_is_a_400_naming_the_field(server, body, param, words):
    r = post(server, "/v1/load_lora_adapter", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_a_full_model_is_not_an_adapter(server, models):
    r = load(server, "x", models.base)
    assert r.status_code == 400 and "is not a PEFT adapter" in r.json()["error"]["message"]


def test_a_name_already_served_is_a_409(server, models, loaded):
    for name in (loaded, "lda"):
        r = load(server, name, models.good["two"])
        assert r.status_code == 409, r.text
        assert r.json()["error"]["param"] == "lora_name" and "already served" in r.json()["error"]["message"]
    r = load(server, loaded, models.good["one"], load_inplace=True)
    assert r.status_code == 400 and r.json()["error"]["param"] == "load_inplace"


def test_unloading_an_unknown_name_is_a_404(server):
    r = unload(server, "never-loaded")
    assert r.status_code == 404
    assert r.json()["error"]["param"] == "lora_name" and "never-loaded" in r.json()["error"]["message"]
    assert post(server, "/v1/unload_lora_adapter", {}).status_code == 400


def test_more_adapters_than_the_maximum_is_a_400_naming_the_setting(server, models, loaded):
    assert load(server, "two", models.good["two"]).status_code == 200
    try:
        r = load(server, "three", models.good["one"])
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert f"LDA_MAX_LORAS (--max-loras)={MAX_LORAS}" in message and "unload one first" in message
    finally:
        assert unload(server, "two").status_code == 200


@pytest.mark.parametrize("path", ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_the_routes_need_the_api_key(server, models, path, headers):
    r = post(server, path, {"lora_name": "sneaky", "lora_path": str(models.good["one"])}, headers=headers)
    assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationError"
    assert "sneaky" not in model_ids(server)


def test_load_and_unload_requests_are_counted(server, models):
    load(server, "counted", models.rank32)  # a 400
    unload(server, "counted")  # a 404
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).text
    assert 'lda_requests_total{endpoint="load_lora_adapter",status="4xx"}' in text
    assert 'lda_requests_total{endpoint="unload_lora_adapter",status="4xx"}' in text


def _stream(server, model: str, max_tokens: int, chunks: list, started: threading.Event):
    body = {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "alpha": 1.0,
            "ignore_eos": True, "stream": True, "return_token_ids": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, headers=AUTH, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
                started.set()


# In flight = still streaming when the load or unload is *asked for* (counted before the call): the
# calls themselves may take longer than the tiny model needs for the rest of the stream (an idle CI
# machine streamed 160 tokens before an unload returned), so counting after them was a race.
IN_FLIGHT_TOKENS = 440


def test_a_request_in_flight_on_another_adapter_finishes_unaffected(server, models, expected, loaded):
    tokens = IN_FLIGHT_TOKENS
    alone = complete(server, loaded, max_tokens=tokens, ignore_eos=True)["choices"][0]["token_ids"]
    chunks: list[dict] = []
    started = threading.Event()
    stream = threading.Thread(target=_stream, args=(server, loaded, tokens, chunks, started))
    stream.start()
    try:
        assert started.wait(120)
        during = len(chunks)
        assert load(server, "two", models.good["two"]).status_code == 200
        assert complete(server, "two")["choices"][0]["token_ids"] == expected["two"]
        assert unload(server, "two").status_code == 200
    finally:
        stream.join(300)
    # The load was asked for while the stream was running, not after it.
    assert during < tokens, "the stream had finished before the load: make it longer"
    streamed = [t for c in chunks for choice in c["choices"] for t in (choice.get("token_ids") or [])]
    assert streamed == alone


def test_a_request_in_flight_on_the_adapter_being_unloaded_finishes_with_its_tokens(server, models):
    tokens = IN_FLIGHT_TOKENS
    assert load(server, "two", models.good["two"]).status_code == 200
    try:
        alone = complete(server, "two", max_tokens=tokens, ignore_eos=True)["choices"][0]["token_ids"]
        chunks: list[dict] = []
        started = threading.Event()
        stream = threading.Thread(target=_stream, args=(server, "two", tokens, chunks, started))
        stream.start()
        assert started.wait(120)
    finally:
        during = len(chunks)
        unloaded = unload(server, "two")
    stream.join(300)
    assert unloaded.status_code == 200 and during < tokens, "the stream had finished before the unload"
    assert "two" not in model_ids(server)
    streamed = [t for c in chunks for choice in c["choices"] for t in (choice.get("token_ids") or [])]
    assert streamed == alone
