"""The server end to end: a real `lda serve` process on loopback, real HTTP, the official client.

One server for the module (a tiny Llama pair with equal vocabularies); correctness is checked
against each model alone in plain transformers, which shares no code with the engine.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest

from tests.factories import build_pair
from tests.servers import free_port, start_lda_server

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
PROMPT = "Tell me about the weather today."
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def pair(models_root):
    return build_pair(models_root / "server", "llama")


@pytest.fixture(scope="module")
def server(pair, tmp_path_factory):
    handle = start_lda_server(pair, tmp_path_factory.mktemp("server") / "server.log")
    yield handle
    code = handle.stop()
    assert code == 0, f"SIGTERM should shut down cleanly, got {code}:\n{handle.log()[-3000:]}"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def alone(pair):
    """Greedy tokens of each model alone, from plain transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pair.after)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True)
    texts = {}
    for name, path in (("after", pair.after), ("before", pair.before)):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        for kind, prompt in (("plain", PROMPT), ("chat", chat)):
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False, eos_token_id=tokenizer.eos_token_id)
            texts[name, kind] = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
            texts[name, kind, "ids"] = out[0, ids.shape[1]:].tolist()
    return texts


def _complete(client, **kwargs):
    return client.completions.create(model="lda", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, **kwargs)


def test_start_up_info_lines_are_in_the_log(server):
    """`lda.*` INFO lines after the engine start (vLLM's imports set the root logger to ERROR)."""
    log = server.log()
    assert "INFO lda.server: LDA server on " in log and "INFO lda.routes: serving " in log


def test_models_lists_the_served_name(client):
    assert [m.id for m in client.models.list().data] == ["lda"]


MODEL_RULE_BODIES = {
    "/generate_lda": {"prompt": PROMPT, "max_new_tokens": 2},
    "/generate_lda_batch": {"prompts": [PROMPT], "max_new_tokens": 2},
    "/generate": {"prompt": PROMPT, "max_new_tokens": 2},
    "/v1/lda/score": {"prompt": PROMPT, "continuation": " It is"},
    "/v1/completions": {"prompt": PROMPT, "max_tokens": 2},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 2},
}


@pytest.mark.parametrize("path", MODEL_RULE_BODIES)
def test_the_served_name_is_accepted_on_every_route_and_nothing_else(server, path):
    """One `model` rule (api/adapter_routing.py): on a pair without LoRA the served name runs the
    after model on every route family, and another name is a 404 listing the names served."""
    body = MODEL_RULE_BODIES[path]
    ok = httpx.post(f"{server.base_url}{path}", json={**body, "model": "lda"}, timeout=120)
    assert ok.status_code == 200, ok.text
    missing = httpx.post(f"{server.base_url}{path}", json={**body, "model": "nope"}, timeout=60)
    assert missing.status_code == 404 and "`nope` does not exist. Models served: lda" in missing.text


@pytest.mark.parametrize("path", ["/v1/load_lora_adapter", "/v1/unload_lora_adapter"])
def test_runtime_adapter_routes_are_not_served_unless_allowed(server, pair, path):
    r = httpx.post(f"{server.base_url}{path}", json={"lora_name": "x", "lora_path": str(pair.after)}, timeout=60)
    assert r.status_code == 404 and "--allow-runtime-adapters" in r.json()["error"]["message"]


@pytest.mark.parametrize("alpha, model", [(0.0, "after"), (-1.0, "before")])
def test_completion_alpha_top_level_matches_model_alone(client, alone, alpha, model):
    response = _complete(client, extra_body={"alpha": alpha})
    assert response.choices[0].text == alone[model, "plain"]
    assert response.model_extra["alpha"] == alpha


@pytest.mark.parametrize("alpha, model", [(0.0, "after"), (-1.0, "before")])
def test_completion_alpha_in_vllm_xargs(client, alone, alpha, model):
    response = _complete(client, extra_body={"vllm_xargs": {"alpha": alpha}})
    assert response.choices[0].text == alone[model, "plain"]


def test_chat_matches_model_alone_streaming_and_not(client, alone):
    messages = [{"role": "user", "content": PROMPT}]
    kwargs = dict(model="lda", messages=messages, max_tokens=MAX_TOKENS, temperature=0)
    plain = client.chat.completions.create(**kwargs, extra_body={"alpha": 0})
    assert plain.choices[0].message.content == alone["after", "chat"]
    # Random tiny models emit partial UTF-8 bytes that streaming detokenization holds back, so
    # compare the streamed token ids rather than the text.
    chunks = list(client.chat.completions.create(**kwargs, stream=True, extra_body={"alpha": -1, "return_token_ids": True}))
    streamed = [t for c in chunks if c.choices for t in (c.choices[0].model_extra.get("token_ids") or [])]
    assert streamed == alone["before", "chat", "ids"]
    assert all(c.model_extra["alpha"] == -1 for c in chunks)


def test_streaming_completion_and_alpha_changes_output(client, alone):
    chunks = list(client.completions.create(model="lda", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stream=True, extra_body={"alpha": 0, "return_token_ids": True}))
    streamed = [t for c in chunks if c.choices for t in (c.choices[0].model_extra.get("token_ids") or [])]
    assert streamed == alone["after", "plain", "ids"]
    amplified = _complete(client, extra_body={"alpha": 20})
    assert amplified.choices[0].text not in (alone["after", "plain"], alone["before", "plain"])


def test_default_alpha_is_used_and_reported(client):
    response = _complete(client)
    assert response.model_extra["alpha"] == 1.0


def test_concurrent_requests_with_different_alphas(client, alone):
    results = {}

    def run(alpha):
        results[alpha] = _complete(client, extra_body={"alpha": alpha}).choices[0].text

    threads = [threading.Thread(target=run, args=(a,)) for a in (0.0, -1.0, 0.0, -1.0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0.0] == alone["after", "plain"] and results[-1.0] == alone["before", "plain"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"alpha": "high"}, "alpha"),
        ({"alpha": 1000}, "alpha"),
        ({"alpha": -2}, "alpha"),
        ({"alpha": True}, "alpha"),
        ({"vllm_xargs": {"alpha": "x"}}, "vllm_xargs.alpha"),
        ({"alpha": 1, "vllm_xargs": {"alpha": 2}}, "alpha"),
    ],
)
def test_bad_alpha_is_a_400_naming_the_field(server, body, param):
    for path, extra in (("/v1/completions", {"prompt": "hi"}), ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
        r = httpx.post(f"{server.base_url}{path}", json={"model": "lda", "max_tokens": 2, **extra, **body}, timeout=60)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param and "alpha" in error["message"]
    assert httpx.post(f"{server.base_url}/v1/completions", json={"model": "lda", "prompt": "hi", "max_tokens": 2}, timeout=60).status_code == 200


def test_alpha_in_the_model_name_gives_the_tokens_of_the_body_alpha(client, alone):
    """`model: "lda@2"`, for clients that can set only a model name: the same tokens as
    extra_body={"alpha": 2} with the same seed, and alpha -1 / 0 in the name are each model alone."""
    kwargs = dict(prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=1.0, seed=7)
    named = client.completions.create(model="lda@2", **kwargs, extra_body={"return_token_ids": True})
    body = client.completions.create(model="lda", **kwargs, extra_body={"alpha": 2, "return_token_ids": True})
    assert named.choices[0].model_extra["token_ids"] == body.choices[0].model_extra["token_ids"]
    assert named.model_extra["alpha"] == 2.0 and named.model == "lda"
    assert client.completions.create(model="lda@-1", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0).choices[0].text == alone["before", "plain"]
    messages = [{"role": "user", "content": PROMPT}]
    chunks = list(client.chat.completions.create(model="lda@0", messages=messages, max_tokens=MAX_TOKENS, temperature=0,
                                                 stream=True, extra_body={"return_token_ids": True}))
    assert [t for c in chunks if c.choices for t in (c.choices[0].model_extra.get("token_ids") or [])] == alone["after", "chat", "ids"]
    assert client.chat.completions.create(model="lda@2", messages=messages, max_tokens=2, extra_body={"alpha": 2}).model_extra["alpha"] == 2.0


@pytest.mark.parametrize("model, words", [("lda@", "got nothing"), ("lda@x", "got 'x'"), ("lda@101", "in [-1, 100]; got 101")])
def test_a_malformed_model_name_alpha_is_a_400_naming_model(client, model, words):
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=model, prompt=PROMPT, max_tokens=2)
    assert error.value.body["param"] == "model" and words in error.value.body["message"]


def test_a_conflicting_body_alpha_is_a_400_naming_both(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model="lda@2", messages=[{"role": "user", "content": "hi"}], max_tokens=2, extra_body={"alpha": 3})
    assert error.value.body["param"] == "model"
    assert "model 'lda@2' asks alpha 2 but alpha is 3" in error.value.body["message"]


def test_models_documents_the_model_name_form(client):
    [card] = client.models.list().data
    assert card.id == "lda" and card.model_extra["lda_alpha"]["model_name_form"] == "lda@<alpha>"
    assert card.model_extra["lda_alpha"]["max"] == 100.0 and card.model_extra["lda_alpha"]["default"] == 1.0


def test_model_name_alpha_on_the_original_and_scoring_routes(server, alone):
    url = server.base_url
    lda = httpx.post(f"{url}/generate_lda", json={"prompt": PROMPT, "model": "lda@-1", "max_new_tokens": MAX_TOKENS, "do_sample": False}, timeout=60)
    assert lda.status_code == 200, lda.text
    assert lda.json()["token_ids"] == alone["before", "chat", "ids"] and lda.json()["alpha"] == -1
    both = httpx.post(f"{url}/generate", json={"prompt": PROMPT, "model": "lda@2"}, timeout=60)
    assert both.status_code == 400 and "send it to /generate_lda" in both.json()["detail"]
    score = {"prompt": PROMPT, "continuation": " sunny and warm"}
    named = httpx.post(f"{url}/v1/lda/score", json={**score, "model": "lda@2"}, timeout=60).json()
    body = httpx.post(f"{url}/v1/lda/score", json={**score, "model": "lda", "alpha": 2}, timeout=60).json()
    assert named == body and named["alpha"] == 2.0
    responses = httpx.post(f"{url}/v1/responses", json={"model": "lda@2", "input": "hi", "max_output_tokens": 2}, timeout=60)
    assert responses.status_code == 400 and responses.json()["error"]["param"] == "model"


@pytest.mark.parametrize(
    "path, content, status",
    [
        ("/v1/completions", b"{not json", (400, 422)),
        ("/v1/completions", json.dumps({"model": "lda"}).encode(), (400, 422)),
        ("/v1/completions", json.dumps({"model": "lda", "prompt": "hi", "max_tokens": -5}).encode(), (400, 422)),
        ("/v1/completions", json.dumps({"model": "lda", "prompt": "hi", "max_tokens": "many"}).encode(), (400, 422)),
        ("/v1/completions", json.dumps({"model": "lda", "prompt": "word " * 2000, "max_tokens": 4}).encode(), (400,)),
        ("/v1/chat/completions", json.dumps({"model": "lda", "messages": "hi"}).encode(), (400, 422)),
        ("/generate_lda", b"{not json", (400, 422)),
        ("/generate_lda", json.dumps({"alpha": 1}).encode(), (400, 422)),
        ("/generate_lda", json.dumps({"prompt": "hi", "alpha": "2"}).encode(), (400, 422)),
        ("/generate_lda", json.dumps({"prompt": "hi", "alpha": 500}).encode(), (400,)),
        ("/generate_lda", json.dumps({"prompt": "hi", "max_new_tokens": -1}).encode(), (400, 422)),
        ("/generate_lda", json.dumps({"prompt": "word " * 2000}).encode(), (400,)),
        ("/generate_lda", json.dumps({"prompt": "hi", "seed": 2**70}).encode(), (400, 422)),
        ("/generate", json.dumps({"prompt": ""}).encode(), (400, 422)),
    ],
)
def test_bad_input_is_4xx_never_500(server, path, content, status):
    r = httpx.post(f"{server.base_url}{path}", content=content, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code in status, r.text
    assert r.text  # a message, not an empty body


def test_seed_endpoints_keep_the_seed_field_names(server, alone):
    url = server.base_url
    lda = httpx.post(f"{url}/generate_lda", json={"prompt": PROMPT, "alpha": 0, "max_new_tokens": MAX_TOKENS, "do_sample": False}, timeout=60).json()
    assert {"prompt", "formatted_prompt", "completion", "text", "alpha", "model_after", "model_before", "tokens_generated", "stopped_early"} <= set(lda)
    assert lda["token_ids"] == alone["after", "chat", "ids"] and lda["alpha"] == 0
    before = httpx.post(f"{url}/generate_lda", json={"prompt": PROMPT, "alpha": -1, "max_new_tokens": MAX_TOKENS, "do_sample": False}, timeout=60).json()
    assert before["token_ids"] == alone["before", "chat", "ids"]
    both = httpx.post(f"{url}/generate", json={"prompt": PROMPT, "max_new_tokens": MAX_TOKENS, "do_sample": False}, timeout=60).json()
    assert both["model_1"]["completion"] == lda["completion"]
    assert both["model_2"]["completion"] == before["completion"]
    assert both["model_1"]["completion"] != both["model_2"]["completion"]
    assert both["model_1"]["model_id"].endswith("llama-after-300")
    compat = httpx.get(f"{url}/tokenizer_compatibility", timeout=10).json()
    assert compat["compatible"] is True and compat["vocab_size_1"] == compat["vocab_size_2"] == 300
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200


def test_batch_route_needs_no_key_when_none_is_set(server, alone):
    """No LDA_API_KEY: the original clients work unchanged; the batch decodes each prompt as alone."""
    body = {"prompts": [PROMPT, PROMPT], "alpha": -1, "max_new_tokens": MAX_TOKENS, "do_sample": False}
    r = httpx.post(f"{server.base_url}/generate_lda_batch", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert [x["token_ids"] for x in r.json()["results"]] == [alone["before", "chat", "ids"]] * 2
    assert httpx.get(f"{server.base_url}/metrics", timeout=10).status_code == 200


def _metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_expose_vllm_and_lda_and_move(server, client):
    before = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    _complete(client, extra_body={"alpha": 2.0})
    after = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert "vllm:num_requests_running" in after and "vllm:generation_tokens_total" in after
    assert _metric(after, "lda_requests_total", endpoint="completions", status="2xx") == _metric(before, "lda_requests_total", endpoint="completions", status="2xx") + 1
    assert _metric(after, "lda_request_alpha_count") == _metric(before, "lda_request_alpha_count") + 1
    assert _metric(after, "lda_amplified_tokens_total") >= _metric(before, "lda_amplified_tokens_total") + 1


def test_client_disconnect_mid_stream_leaves_server_healthy(server, client):
    body = {"model": "lda", "prompt": PROMPT, "max_tokens": 400, "stream": True, "alpha": 1, "ignore_eos": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 3:
                break  # closing the stream here disconnects mid-generation
    assert _complete(client, extra_body={"alpha": 0}).choices[0].text
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
    running = _metric(httpx.get(f"{server.base_url}/metrics", timeout=10).text, "vllm:num_requests_running")
    assert running == 0, "the abandoned request must be aborted, not left decoding"


def test_regress_writes_json_and_compares(server, tmp_path):
    out = tmp_path / "base.json"
    cmd = [sys.executable, "-m", "api.cli", "regress", "--url", server.base_url, "--alpha", "0.5", "--max-new-tokens", "6"]
    first = subprocess.run([*cmd, "--output", str(out)], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    data = json.loads(out.read_text())
    assert data["alpha"] == 0.5 and len(data["results"]) == 5
    assert "Tokens:" in first.stdout and "Stopped early:" in first.stdout
    again = subprocess.run([*cmd, "--compare", str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "Compared with the baseline" in again.stdout and "unchanged" in again.stdout


def test_regress_without_server_fails_fast():
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "api.cli", "regress", "--url", f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert f"no LDA server answering at http://127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


def _has_letter_e(text: str) -> bool:
    """A fake detector: fires on any 'e' (random tiny models emit it often enough)."""
    return "e" in text


def test_study_against_the_live_server(server, tmp_path):
    from study.commands.workflow import run_study
    from study.config import SamplingConfig, StudyConfig

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tell me about the weather today.\nWhat should I do if I feel bored?\n")
    config = StudyConfig(
        base_url=server.base_url,
        output_dir=tmp_path / "study",
        detector="python:tests.api.test_server:_has_letter_e",
        alphas=(0.0, 2.0),
        samples_per_prompt=3,
        prompts_path=prompts,
        concurrency=8,
        sampling=SamplingConfig(max_tokens=8, seed=0),
        progress=False,
    )
    result = run_study(config)
    assert not result.failures and result.new_samples == 2 * 2 * 3 and result.alpha_unconfirmed == 0
    lines = [json.loads(line) for line in result.samples_path.read_text().splitlines()]
    assert len(lines) == 12 and {line["alpha"] for line in lines} == {0.0, 2.0}
    for row in result.rows:
        hits = sum(line["detected"] for line in lines if line["alpha"] == row.alpha)
        assert row.n == 6 and row.hits == hits
    assert result.plot_path.stat().st_size > 1000
    again = run_study(config)  # resumable: nothing left to draw
    assert again.new_samples == 0


def _readme_block(language: str, containing: str) -> str:
    """The README's one ```language block that contains `containing`, as written."""
    blocks = [b for b in re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S) if containing in b]
    assert len(blocks) == 1, f"expected one {language} block with {containing!r} in README.md, found {len(blocks)}"
    return blocks[0]


def test_the_readme_openai_snippet_runs(server):
    """The front door's first call, pointed at this server instead of 127.0.0.1:8000, unchanged otherwise."""
    snippet = _readme_block("python", "OpenAI(")
    assert '"http://127.0.0.1:8000/v1"' in snippet
    code = snippet.replace("http://127.0.0.1:8000/v1", f"{server.base_url}/v1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "alpha used: 2.0"


def test_the_readme_explore_command_runs(server, tmp_path):
    """The front door's `lda explore`, against this server, into a temporary folder."""
    argv = shlex.split(_readme_block("bash", "lda explore").strip())
    assert argv[:2] == [".venv/bin/lda", "explore"] and "--base-url" not in argv  # the default server
    argv[argv.index("-o") + 1] = str(tmp_path / "explore")
    command = [sys.executable, "-m", "api.cli", *argv[1:], "--base-url", f"{server.base_url}/v1", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "explore" / "summary.json").read_text())
    per_alpha = {row["alpha"]: row["n"] for row in summary["per_alpha"]}
    assert per_alpha == {0.0: 40, 2.0: 40}  # 20 built-in prompts x 2 samples at each alpha
    assert "logp_after" in (tmp_path / "explore" / "report.html").read_text()
