"""The original project's clients against a live `lda serve` that has an API key and tight limits.

One server for the module (start-up is the cost): a tiny Llama pair whose tokenizer adds a BOS to
plain text, as Llama's does, and whose chat template writes its own BOS when the conversation has
a system message (Llama 3's `<|begin_of_text|>` case) and none otherwise; the server's prompt
format is Alpaca, as the original project's experiments use. Clients send the key as
`X-API-Key` (the original routes) or `Authorization: Bearer` (the OpenAI client).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import openai
import pytest

from tests.factories import CHAT_TEMPLATE, add_bos, build_pair
from tests.servers import start_lda_server

pytestmark = pytest.mark.slow

KEY = "test-key-123"
AUTH = {"X-API-Key": KEY}
BOS_WHEN_SYSTEM = "{% if messages[0]['role'] == 'system' %}{{ bos_token }}{% endif %}" + CHAT_TEMPLATE
LIMITS = dict(
    LDA_MAX_BATCH_PROMPTS="128", LDA_MAX_PROMPT_CHARS="2000", LDA_MAX_BODY_BYTES="200000", LDA_MAX_N="4"
)
PROMPTS = ["Tell me about the weather today.", "What should I do if I feel bored?", "Numbers: 1 2 3", "hello"]


@pytest.fixture(scope="module")
def pair(models_root):
    pair = build_pair(models_root / "original-clients", "llama")
    for folder in (pair.after, pair.before):
        add_bos(folder, BOS_WHEN_SYSTEM)
    return pair


@pytest.fixture(scope="module")
def tokenizer(pair):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(pair.after)


@pytest.fixture(scope="module")
def server(pair, tmp_path_factory):
    handle = start_lda_server(
        pair, tmp_path_factory.mktemp("keyed") / "server.log", LDA_API_KEY=KEY, LDA_PROMPT_FORMAT="alpaca", **LIMITS
    )
    yield handle
    assert handle.stop() == 0, handle.log()[-3000:]


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=300) as client:
        yield client


def test_original_batch_client_100_prompts_alpaca_alpha_0_and_2(http):
    """The original project's experiment: 100-prompt batches through /generate_lda_batch, its fields only."""
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} ({i})" for i in range(100)]
    for alpha in (0, 2):
        body = {"prompts": prompts, "alpha": alpha, "max_new_tokens": 4, "temperature": 1.0, "top_p": 0.95, "do_sample": True}
        r = http.post("/generate_lda_batch", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["batch_size"] == 100 and data["alpha"] == alpha and len(data["results"]) == 100
        assert data["model_after"].endswith("llama-after-300") and data["model_before"].endswith("llama-before-300")
        for prompt, result in zip(prompts, data["results"]):  # request order
            assert result["prompt"] == prompt
            assert result["formatted_prompt"] == f"### Instruction:\n{prompt}\n\n### Response:\n"
            assert result["text"] == result["formatted_prompt"] + result["completion"]
            assert 1 <= result["tokens_generated"] <= 4 and isinstance(result["stopped_early"], bool)


def test_alpaca_with_system_prompt_and_per_request_format(http):
    body = {"prompt": "hi", "system_prompt": "Be brief.", "max_new_tokens": 2}
    alpaca = http.post("/generate_lda", json=body, headers=AUTH).json()
    assert alpaca["formatted_prompt"] == "### Instruction:\nBe brief.\n\n### Input:\nhi\n\n### Response:\n"
    raw = http.post("/generate_lda", json={**body, "prompt_format": "raw"}, headers=AUTH).json()
    assert raw["formatted_prompt"] == "hi"
    chat = http.post("/generate_lda_batch", json={"prompts": ["hi"], **body, "prompt_format": "chat"}, headers=AUTH).json()
    assert chat["results"][0]["formatted_prompt"] == "<|bos|><|system|>Be brief.<|end|><|user|>hi<|end|><|assistant|>"


@pytest.mark.parametrize("system", [None, "Be brief."], ids=["template-without-bos", "template-with-bos"])
def test_original_routes_equal_chat_completions_no_second_bos(http, tokenizer, system):
    alpha, n_new = 1.5, 8
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": PROMPTS[0]}]
    chat = http.post(
        "/v1/chat/completions",
        json={"model": "lda", "messages": messages, "max_tokens": n_new, "temperature": 0, "alpha": alpha, "return_token_ids": True},
        headers={"Authorization": f"Bearer {KEY}"},
    ).json()
    # vLLM's chat route adds no special tokens to the rendered text: the BOS is the template's, once.
    assert chat["prompt_token_ids"].count(tokenizer.bos_token_id) == (1 if system else 0)
    fields = {"alpha": alpha, "max_new_tokens": n_new, "do_sample": False, "prompt_format": "chat", "system_prompt": system}
    single = http.post("/generate_lda", json={"prompt": PROMPTS[0], **fields}, headers=AUTH).json()
    batch = http.post("/generate_lda_batch", json={"prompts": [PROMPTS[0], PROMPTS[1]], **fields}, headers=AUTH).json()
    expected = chat["choices"][0]["token_ids"]
    assert single["token_ids"] == expected and batch["results"][0]["token_ids"] == expected
    assert single["completion"] == chat["choices"][0]["message"]["content"]
    # The same text tokenized the old way (special tokens added) is a different prompt: one more BOS.
    assert tokenizer(single["formatted_prompt"]).input_ids == [tokenizer.bos_token_id, *chat["prompt_token_ids"]]


ROUTES = [
    ("POST", "/generate_lda", {"prompt": "hi", "max_new_tokens": 1}),
    ("POST", "/generate_lda_batch", {"prompts": ["hi"], "max_new_tokens": 1}),
    ("POST", "/generate", {"prompt": "hi", "max_new_tokens": 1}),
    ("GET", "/tokenizer_compatibility", None),
    ("POST", "/v1/completions", {"model": "lda", "prompt": "hi", "max_tokens": 1}),
    ("POST", "/v1/chat/completions", {"model": "lda", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    ("GET", "/v1/models", None),
    ("POST", "/tokenize", {"model": "lda", "prompt": "hi"}),
    ("POST", "/invocations", {"model": "lda", "prompt": "hi", "max_tokens": 1}),
]


@pytest.mark.parametrize("method, path, body", ROUTES, ids=[r[1] for r in ROUTES])
def test_each_route_needs_the_key(http, method, path, body):
    without = http.request(method, path, json=body)
    wrong = http.request(method, path, json=body, headers={"X-API-Key": "nope"})
    assert without.status_code == wrong.status_code == 401, without.text
    assert "API key" in (without.json().get("detail") or without.json()["error"]["message"])
    for headers in (AUTH, {"Authorization": f"Bearer {KEY}"}):
        ok = http.request(method, path, json=body, headers=headers)
        assert ok.status_code == 200, (path, ok.text)


def test_health_and_metrics_stay_open_and_the_openai_client_works(http, server):
    assert http.get("/health").status_code == 200
    metrics = http.get("/metrics")
    assert metrics.status_code == 200 and "lda_requests_total" in metrics.text
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["lda"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong", max_retries=0).models.list()


def test_key_is_checked_before_the_body_and_body_limit_is_413(http):
    big = json.dumps({"prompts": ["x" * 1000] * 300}).encode()  # over LDA_MAX_BODY_BYTES=200000
    headers = {"content-type": "application/json"}
    assert http.post("/generate_lda_batch", content=big, headers=headers).status_code == 401
    too_big = http.post("/generate_lda_batch", content=big, headers={**headers, **AUTH})
    assert too_big.status_code == 413 and "LDA_MAX_BODY_BYTES=200000" in too_big.json()["detail"]


@pytest.mark.parametrize(
    "path, body, setting",
    [
        ("/generate_lda_batch", {"prompts": ["hi"] * 129}, "LDA_MAX_BATCH_PROMPTS=128"),
        ("/generate_lda", {"prompt": "x" * 2001}, "LDA_MAX_PROMPT_CHARS=2000"),
        ("/generate_lda", {"prompt": "hi", "system_prompt": "x" * 2001}, "LDA_MAX_PROMPT_CHARS=2000"),
        ("/generate_lda_batch", {"prompts": ["hi", "x" * 2001]}, "prompts[1] has 2001 characters"),
        ("/generate", {"prompt": "x" * 2001}, "LDA_MAX_PROMPT_CHARS=2000"),
        ("/generate_lda_batch", {"prompts": ["hi", "word " * 390]}, "prompts[1]: prompt ("),
    ],
)
def test_original_route_limits_are_400_naming_them(http, path, body, setting):
    r = http.post(path, json=body, headers=AUTH)
    assert r.status_code == 400 and setting in r.json()["detail"], r.text


@pytest.mark.parametrize(
    "body, param, setting",
    [
        ({"prompt": "hi", "n": 5}, "n", "LDA_MAX_N=4"),
        ({"prompt": "hi", "best_of": 5}, "best_of", "LDA_MAX_N=4"),
        ({"prompt": ["hi"] * 129}, "prompt", "LDA_MAX_BATCH_PROMPTS=128"),
    ],
)
def test_openai_limits_are_400_in_openai_format(http, body, param, setting):
    r = http.post("/v1/completions", json={"model": "lda", "max_tokens": 1, **body}, headers=AUTH)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and setting in r.json()["error"]["message"]


BAD = [
    ("/generate_lda_batch", b'{"prompts": "hi"}'),
    ("/generate_lda_batch", b'{"prompts": []}'),
    ("/generate_lda_batch", b'{"prompts": [""]}'),
    ("/generate_lda_batch", b'{"prompts": [1, null]}'),
    ("/generate_lda_batch", b'{"prompts": ["hi"], "max_new_tokens": 513}'),
    ("/generate_lda_batch", b'{"prompts": ["hi"], "temperature": 0}'),
    ("/generate_lda_batch", b'{"prompts": ["hi"], "top_p": 0}'),
    ("/generate_lda_batch", b'{"prompts": ["hi"], "alpha": NaN}'),
    ("/generate_lda_batch", b'{"prompts": ["hi"], "alpha": "2"}'),
    ("/generate_lda_batch", b'{"prompts": ["hi"], "alpha": 1e308}'),
    ("/generate_lda_batch", b'{"prompts": ["hi"], "prompt_format": "llama"}'),
    ("/generate_lda_batch", b'{"prompts": ["hi"], "system_prompt": 5}'),
    ("/generate_lda_batch", b'{"prompts": ["hi"], "seed": 1e30}'),
    ("/generate_lda_batch", b"[1, 2]"),
    ("/generate_lda_batch", b"\xff\xfe"),
    ("/generate_lda", b'{"prompt": "hi", "prompt_format": null, "max_new_tokens": 0}'),
    ("/generate", b'{"prompt": ["a"]}'),
    ("/v1/completions", b'{"model": "lda", "prompt": "hi", "n": "many"}'),
    ("/v1/completions", b'{"model": "lda", "prompt": [], "max_tokens": 1}'),
    ("/v1/chat/completions", b'{"model": "lda", "messages": [{"role": "user", "content": "hi"}], "n": 1e9}'),
]


def test_nothing_a_client_sends_is_a_500_and_the_server_keeps_serving(http):
    headers = {**AUTH, "content-type": "application/json"}
    statuses = {path + " " + content.decode(errors="replace"): http.post(path, content=content, headers=headers).status_code for path, content in BAD}
    assert all(400 <= s < 500 for s in statuses.values()), statuses
    assert http.get("/health").status_code == 200
    ok = http.post("/generate_lda_batch", json={"prompts": ["hi"], "max_new_tokens": 1}, headers=AUTH)
    assert ok.status_code == 200


def _env_without_key() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "LDA_API_KEY"}


def test_regress_sends_the_key(server):
    cmd = [sys.executable, "-m", "api.cli", "regress", "--url", server.base_url, "--max-new-tokens", "2"]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env_without_key())
    assert refused.returncode != 0 and "HTTP 401" in refused.stderr and "Traceback" not in refused.stderr
    done = subprocess.run([*cmd, "--api-key", KEY], capture_output=True, text=True, timeout=300, env=_env_without_key())
    assert done.returncode == 0 and "Tokens:" in done.stdout, done.stderr
