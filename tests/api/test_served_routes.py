"""The served routes on a real `lda serve` (tiny Llama pair): the refused ones answer an OpenAI 404,
LDA_MAX_TOKENS holds on every route that generates, and schemathesis fuzzes every served route.

One server for the module, with runtime adapters allowed (so the fuzz reaches the adapter routes
too) and small limits (LDA_MAX_TOKENS=8 among them) so the fuzz's generation requests stay short
and the limits themselves get fuzzed. Refusals with start-up adapters and without runtime adapters
are checked on the servers of test_lora_server.py and test_server.py. The fuzz runs last: it checks
`not_a_server_error` on every operation of /openapi.json, prints how many cases it ran, and the
server must still be healthy after.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import pytest

from api.routes import GENERATION_PATHS, RUNTIME_ADAPTER_ROUTES, SERVED, SERVED_WITHOUT_ADAPTERS
from tests.factories import build_pair
from tests.servers import start_lda_server

pytestmark = pytest.mark.slow

MAX_TOKENS = 8
LIMITS = dict(LDA_MAX_TOKENS=str(MAX_TOKENS), LDA_MAX_N="4", LDA_MAX_BATCH_PROMPTS="4", LDA_MAX_PROMPT_CHARS="2000")
RUNTIME = dict(LDA_ALLOW_RUNTIME_ADAPTERS="1")
FUZZ_EXAMPLES = 15
"""Cases per operation and phase: about 2 minutes over the served routes on 2 shared cores."""
FUZZ_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def server(models_root, tmp_path_factory):
    pair = build_pair(models_root / "routes", "llama")
    handle = start_lda_server(pair, tmp_path_factory.mktemp("routes") / "server.log", **LIMITS, **RUNTIME)
    yield handle
    code = handle.stop()
    assert code == 0, f"SIGTERM should shut down cleanly, got {code}:\n{handle.log()[-3000:]}"


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        yield client


@pytest.mark.parametrize(
    "method, path, body, reason",
    [
        ("POST", "/v1/systemone", {"model": "lda", "messages": [{"role": "user", "content": "pick"}], "choices": ["a", "b"]},
         "structured decisions"),
        ("POST", "/scale_elastic_ep", {"new_data_parallel_size": 2}, "operator route"),
        ("POST", "/is_scaling_elastic_ep", None, "operator route"),
        ("GET", "/kv_event_sources", None, "operator route"),
        ("POST", "/adapters", {"name": "a", "src": "/nowhere"}, "/v1/load_lora_adapter"),
        ("POST", "/inference/v1/generate", {"token_ids": [1, 2], "sampling_params": {}}, "scale-out"),
    ],
)
def test_refused_routes_answer_an_openai_404_naming_the_served_ones(http, method, path, body, reason):
    reply = http.request(method, path, json=body)
    assert reply.status_code == 404, reply.text
    error = reply.json()["error"]
    assert error["code"] == 404 and error["type"] == "NotFoundError" and reason in error["message"]
    served = error["message"].split("Served routes: ")[1].split(", ")
    assert {"/v1/completions", "/v1/chat/completions", "/generate_lda", "/v1/lda/score", "/v1/responses"} <= set(served)
    assert path not in served


def test_openapi_lists_exactly_the_served_paths(http):
    listed = set(http.get("/openapi.json").json()["paths"])
    # The docs pages and /metrics' mount are not operations; everything else served is listed.
    expected = (SERVED | SERVED_WITHOUT_ADAPTERS | RUNTIME_ADAPTER_ROUTES) - {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    assert listed == expected


def test_the_runtime_adapter_routes_are_served_when_allowed(http, tmp_path):
    reply = http.post("/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": str(tmp_path / "no-such-adapter")})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == 400, reply.text


CHAT = {"model": "lda", "messages": [{"role": "user", "content": "Tell me about the weather."}]}
GENERATION_BODIES = {
    "/v1/completions": ({"model": "lda", "prompt": "Tell me about the weather."}, "max_tokens"),
    "/v1/chat/completions": (CHAT, "max_tokens"),
    "/v1/chat/completions#new": (CHAT, "max_completion_tokens"),
    "/v1/chat/completions/batch": ({**CHAT, "messages": [CHAT["messages"]] * 2}, "max_tokens"),
    "/v1/responses": ({"model": "lda", "input": "Tell me about the weather."}, "max_output_tokens"),
    "/v1/messages": ({**CHAT, "max_tokens": 1}, "max_tokens"),
    "/invocations": ({"model": "lda", "prompt": "Tell me about the weather."}, "max_tokens"),
}


def test_every_served_vllm_generation_route_is_covered():
    assert {key.split("#")[0] for key in GENERATION_BODIES} == GENERATION_PATHS


@pytest.mark.parametrize("key", GENERATION_BODIES)
def test_vllm_generation_routes_refuse_more_than_max_tokens(http, key):
    body, field = GENERATION_BODIES[key]
    path = key.split("#")[0]
    over = http.post(path, json={**body, field: MAX_TOKENS + 1})
    assert over.status_code == 400, over.text
    error = over.json()["error"]
    assert error["param"] == field and error["message"] == f"{field} is {MAX_TOKENS + 1}; the limit is LDA_MAX_TOKENS={MAX_TOKENS}"
    at = http.post(path, json={**body, field: MAX_TOKENS, "temperature": 0})
    assert at.status_code == 200, at.text


@pytest.mark.parametrize("path", sorted(GENERATION_PATHS - {"/v1/completions", "/v1/chat/completions"}))
def test_generation_routes_without_alpha_refuse_one_rather_than_drop_it(http, path):
    body = GENERATION_BODIES[path][0]
    reply = http.post(path, json={**body, "alpha": 2.0})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "alpha" and "does not take a per-request alpha" in error["message"]


def _completion_tokens(reply: httpx.Response) -> int:
    return reply.json()["usage"]["completion_tokens"]


@pytest.mark.parametrize("path, body", [("/v1/completions", GENERATION_BODIES["/v1/completions"][0]), ("/v1/chat/completions", CHAT)])
def test_a_request_without_a_length_gets_max_tokens(http, path, body):
    # ignore_eos: the tiny random model may end early; the cap is what is checked.
    reply = http.post(path, json={**body, "temperature": 0, "ignore_eos": True})
    assert reply.status_code == 200, reply.text
    assert _completion_tokens(reply) == MAX_TOKENS  # not the context length (512)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/generate_lda", {"prompt": "Tell me about the weather."}),
        ("/generate_lda_batch", {"prompts": ["Tell me about the weather.", "Hi"]}),
        ("/generate", {"prompt": "Tell me about the weather."}),
    ],
)
def test_original_routes_refuse_more_than_max_tokens(http, path, body):
    over = http.post(path, json={**body, "max_new_tokens": MAX_TOKENS + 1})
    assert over.status_code == 400 and over.json() == {"detail": f"max_new_tokens is {MAX_TOKENS + 1}; the limit is LDA_MAX_TOKENS={MAX_TOKENS}"}
    at = http.post(path, json={**body, "max_new_tokens": MAX_TOKENS, "do_sample": False})
    assert at.status_code == 200, at.text
    default = http.post(path, json={**body, "do_sample": False})  # the original default, 80, lowered to the limit
    assert default.status_code == 200, default.text
    if path == "/generate_lda":
        assert default.json()["tokens_generated"] <= MAX_TOKENS


HUGE = 1057219800636502048768000


def test_a_top_k_past_64_bits_is_a_4xx_naming_it(http):
    # The fuzz's finding: these bodies were 500s (the engine client cannot send the integer).
    reply = http.post("/generate_lda", json={"prompt": "hi", "top_k": HUGE, "max_new_tokens": 2})
    assert reply.status_code == 422 and "top_k" in reply.text
    assert http.post("/generate_lda", json={"prompt": "hi", "top_k": 2**31 - 1, "max_new_tokens": 2}).status_code == 200
    for path, body in (("/v1/completions", GENERATION_BODIES["/v1/completions"][0]), ("/v1/responses", GENERATION_BODIES["/v1/responses"][0])):
        reply = http.post(path, json={**body, "top_k": HUGE, "max_tokens": 2})
        assert reply.status_code == 400 and reply.json()["error"]["param"] == "top_k", reply.text


def test_a_responses_input_vllm_cannot_take_is_a_400(http):
    # The long fuzz's finding: vLLM answered this body with a 500 "list index out of range".
    item = {"content": [], "role": "assistant", "type": "message"}
    reply = http.post("/v1/responses", json={"model": "lda", "max_output_tokens": 2, "input": [item]})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "input[0].content", reply.text


def test_fuzz_every_served_route_finds_no_server_error(server, tmp_path, capsys):
    """schemathesis over /openapi.json: every served route, 0 server errors, the server healthy after."""
    report_dir = tmp_path / "schemathesis"
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{server.base_url}/openapi.json",
        "--checks", "not_a_server_error", "--phases", "examples,fuzzing", "--max-examples", str(FUZZ_EXAMPLES),
        # One worker: with two threads, hypothesis's ast.parse races under CPython 3.11 ("AST
        # constructor recursion depth mismatch"), a schemathesis error that is no server answer.
        "--workers", "1", "--seed", "26", "--no-shrink", "--request-timeout", "120",
        "--report", "json", "--report-json-path", str(report_dir / "report.json"),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=FUZZ_TIMEOUT_S)
    report = json.loads((report_dir / "report.json").read_text())
    cases, operations = report["test_cases"], report["operations"]
    summary = (f"schemathesis {report['schemathesis_version']}: {cases['generated']} cases over "
               f"{operations['tested']} of {operations['total']} operations in {report['running_time']:.0f} s; "
               f"{cases['with_failures']} with failures, {cases['errored']} errored")
    with capsys.disabled():  # the count belongs in the CI log, captured or not
        print(f"\n{summary}")
    assert run.returncode == 0 and not report["failures"] and not report["errors"], f"{summary}\n{run.stdout[-6000:]}"
    assert cases["generated"] >= operations["tested"] >= 20 and operations["errored"] == 0, summary
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
    assert not re.search(r'HTTP/1\.1" 5\d\d', server.log()), server.log()[-3000:]
