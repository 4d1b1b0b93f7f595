"""`lda serve` with LoRA adapters as the after model: a real server, real HTTP, the official client.

One server serves two adapters on a tiny Llama base (the before model defaults to that base). The
OpenAI `model` field picks the adapter, /v1/models lists them, each response names the adapter
and the alpha, an unknown name is a 404 listing the served names, and the original routes take
an optional `model`. Greedy tokens are checked against peft's merged models in plain transformers.
Runtime adapters are allowed on this server too, for the parity of an adapter loaded at runtime
with the same adapter given at start-up (the other runtime tests: test_runtime_adapters.py).
"""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import openai
import pytest

from engine.reference import ReferencePair
from tests.factories import build_adapter, build_model, merge_adapter
from tests.servers import free_port, start_server, tiny_server_env

pytestmark = pytest.mark.slow

PROMPT = "Tell me about the weather today."
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def models(models_root):
    root = models_root / "lora-server"
    base = build_model(root / "base", "llama", seed=2)
    adapters = {"small": build_adapter(base, root / "small", rank=8, seed=1), "large": build_adapter(base, root / "large", rank=32, seed=3)}
    merged = {name: merge_adapter(base, path, root / f"merged-{name}") for name, path in adapters.items()}
    return SimpleNamespace(base=base, adapters=adapters, merged=merged)


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    import sys

    env = tiny_server_env(SimpleNamespace(after=models.adapters["small"], before=""), free_port())
    del env["MODEL_BEFORE_ID"]  # defaults to the adapter's base
    env["LDA_AFTER_ADAPTERS"] = f"large={models.adapters['large']}"
    env["LDA_ALLOW_RUNTIME_ADAPTERS"] = "1"
    handle = start_server([sys.executable, "-m", "api.cli", "serve"], env, tmp_path_factory.mktemp("lora") / "server.log")
    yield handle
    assert handle.stop() == 0, handle.log()[-3000:]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def expected(models):
    """Greedy token ids of each merged adapter model under LDA against the base, per alpha."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(models.base)(PROMPT).input_ids
    out = {}
    for name, merged in models.merged.items():
        ref = ReferencePair(str(merged), str(models.base))
        for alpha in (0.0, 1.0, -1.0):
            out[name, alpha] = ref.generate(ids, alpha, MAX_TOKENS).token_ids
    return out


def _complete(client, model, alpha):
    return client.completions.create(
        model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"alpha": alpha, "return_token_ids": True},
    )


def test_models_lists_the_adapters(client):
    assert [m.id for m in client.models.list().data] == ["lda", "small", "large"]


@pytest.mark.parametrize(("model", "adapter"), [("small", "small"), ("large", "large"), ("lda", "small")])
@pytest.mark.parametrize("alpha", [0.0, 1.0, -1.0])
def test_model_field_picks_the_adapter(client, expected, model, adapter, alpha):
    reply = _complete(client, model, alpha)
    assert reply.model == adapter and reply.model_extra["alpha"] == alpha
    assert reply.choices[0].token_ids == expected[adapter, alpha]


@pytest.mark.parametrize(("model", "adapter", "alpha"), [("large@1", "large", 1.0), ("small@-1", "small", -1.0), ("lda@0", "small", 0.0)])
def test_adapter_name_with_alpha_picks_the_adapter_and_the_alpha(client, expected, model, adapter, alpha):
    reply = client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                      extra_body={"return_token_ids": True})
    assert reply.model == adapter and reply.model_extra["alpha"] == alpha
    assert reply.choices[0].token_ids == expected[adapter, alpha]


def test_unknown_adapter_is_an_openai_404_listing_the_names(server):
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, timeout=60)
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["param"] == "model" and error["code"] == 404
    assert "nope" in error["message"] and "lda, small, large" in error["message"]


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/chat/completions/batch", "/invocations", "/v1/messages"])
def test_generation_routes_that_cannot_pick_an_adapter_are_refused(server, path):
    # Without an adapter the after stack would be the bare base: LDA would amplify nothing, silently.
    r = httpx.post(f"{server.base_url}{path}", json={"model": "lda", "input": "hi"}, timeout=60)
    assert r.status_code == 404 and "not served with LoRA adapters" in r.json()["error"]["message"]
    served = r.json()["error"]["message"].split("Served routes: ")[1].split(", ")
    assert "/v1/completions" in served and path not in served


@pytest.mark.parametrize("path", ["/v1/systemone", "/scale_elastic_ep"])
def test_unserved_vllm_routes_are_refused_with_adapters_too(server, path):
    r = httpx.post(f"{server.base_url}{path}", json={}, timeout=60)
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError"
    assert "/v1/completions" in r.json()["error"]["message"].split("Served routes: ")[1]


def test_original_routes_take_a_model(server, expected):
    url = server.base_url
    body = {"prompt": PROMPT, "alpha": 1.0, "max_new_tokens": MAX_TOKENS, "do_sample": False, "apply_chat_template": False}
    large = httpx.post(f"{url}/generate_lda", json={**body, "model": "large"}, timeout=120).json()
    assert large["model"] == "large" and large["alpha"] == 1.0 and large["model_after"].endswith("large")
    assert large["token_ids"] == expected["large", 1.0]
    default = httpx.post(f"{url}/generate_lda", json=body, timeout=120).json()
    assert default["model"] == "small" and default["token_ids"] == expected["small", 1.0]
    both = httpx.post(f"{url}/generate", json={**body, "model": "large"}, timeout=120).json()
    assert both["model_1"]["model_id"].endswith("large")
    missing = httpx.post(f"{url}/generate_lda", json={**body, "model": "nope"}, timeout=60)
    # vLLM's app turns the route's HTTPException into its error body; the message is what matters.
    assert missing.status_code == 404 and "`nope` does not exist. Models served: lda, small, large" in missing.text


@pytest.mark.parametrize("alpha", [0.0, 1.0, -1.0])
def test_an_adapter_loaded_at_runtime_gives_the_tokens_of_the_same_adapter_given_at_start_up(
    server, client, models, expected, alpha
):
    url = server.base_url
    body = {"lora_name": "small-again", "lora_path": str(models.adapters["small"])}
    r = httpx.post(f"{url}/v1/load_lora_adapter", json=body, timeout=120)
    assert r.status_code == 200, r.text
    try:
        runtime = _complete(client, "small-again", alpha).choices[0].token_ids
        assert runtime == _complete(client, "small", alpha).choices[0].token_ids == expected["small", alpha]
    finally:
        assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "small-again"}, timeout=60).status_code == 200
    assert [m.id for m in client.models.list().data] == ["lda", "small", "large"]


def test_the_start_up_default_adapter_cannot_be_unloaded(server):
    r = httpx.post(f"{server.base_url}/v1/unload_lora_adapter", json={"lora_name": "small"}, timeout=60)
    assert r.status_code == 400 and "is the default adapter" in r.json()["error"]["message"]
