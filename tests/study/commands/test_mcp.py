"""`lda mcp` end to end: the MCP server started over stdio by the SDK's own client, in front of a real
`lda serve` on a tiny pair; every tool's answer is checked against the HTTP API's answer to the same
request (same seed, same texts, same scores), progress arrives, a cancelled study stops, bad input
is a tool error naming the argument, and the HTTP transport wants the key.

One LDA server and one MCP session for the module (the session lives in a blocking portal's thread).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import anyio
import httpx
import openai
import pytest
from anyio.from_thread import start_blocking_portal

from tests.factories import build_pair
from tests.servers import free_port, start_lda_server

pytestmark = pytest.mark.slow

TOOLS = {"generate", "score", "explore", "themes", "rate", "monitor_status", "pair"}
PROMPTS = ["Tell me about the weather today.", "What should I do if I feel bored?"]


@pytest.fixture(scope="module")
def server(models_root, tmp_path_factory):
    pair = build_pair(models_root / "mcp", "llama")
    handle = start_lda_server(pair, tmp_path_factory.mktemp("mcp-server") / "server.log")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("mcp-work")


def mcp_command(server, workdir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "study.commands.mcp", "--base-url", f"{server.base_url}/v1", "--workdir", str(workdir), *extra]


@pytest.fixture(scope="module")
def mcp(server, workdir):
    """One MCP session over stdio for the module: `mcp.call(name, args)` -> (result, progress list)."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    command = mcp_command(server, workdir)
    params = StdioServerParameters(command=command[0], args=command[1:], env={"PYTHONPATH": os.getcwd()})
    with ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal())
        client = stack.enter_context(portal.wrap_async_context_manager(Client(params, read_timeout_seconds=600)))
        yield Session(portal, client)


class Session:
    def __init__(self, portal, client):
        self.portal, self.client = portal, client

    def call(self, name: str, arguments: dict | None = None):
        progress = []

        async def on_progress(done, total, message):
            progress.append((done, total, message))

        async def go():
            return await self.client.call_tool(name, arguments or {}, progress_callback=on_progress)

        result = self.portal.call(go)
        return result, progress

    def ok(self, name: str, arguments: dict | None = None) -> dict:
        result, _ = self.call(name, arguments)
        assert not result.is_error, result.content[0].text
        return json.loads(result.content[0].text)

    def error(self, name: str, arguments: dict | None = None) -> str:
        result, _ = self.call(name, arguments)
        assert result.is_error, result.content
        return result.content[0].text


@pytest.fixture(scope="module")
def openai_client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def test_the_seven_tools_are_listed_with_descriptions(mcp):
    tools = mcp.portal.call(mcp.client.list_tools).tools
    assert {t.name for t in tools} == TOOLS
    assert all(len(t.description) > 60 for t in tools)


def test_pair_is_what_the_server_lists(mcp, server):
    got = mcp.ok("pair")
    models = httpx.get(f"{server.base_url}/v1/models", timeout=30).json()
    assert got["after"] == models["lda_pair"]["after"] and got["before"] == models["lda_pair"]["before"]
    assert [m["id"] for m in got["models"]] == ["lda"] and got["models"][0]["lda_alpha"]["model_name_form"] == "lda@<alpha>"
    dropped = ("object", "created", "owned_by", "permission")
    assert got["models"] == [{k: v for k, v in card.items() if k not in dropped} for card in models["data"]]  # lda_weights too
    assert got["tokenizers"] == httpx.get(f"{server.base_url}/tokenizer_compatibility", timeout=30).json()


def test_generate_gives_the_http_apis_texts(mcp, openai_client):
    got = mcp.ok("generate", {"prompt": PROMPTS[0], "alpha": 2, "n": 2, "max_tokens": 12, "seed": 5})
    reply = openai_client.chat.completions.create(
        model="lda", messages=[{"role": "user", "content": PROMPTS[0]}], n=2, max_tokens=12, seed=5, temperature=1.0,
        extra_body={"alpha": 2, "return_token_ids": True},
    )
    assert got["texts"] == [c.message.content or "" for c in reply.choices] and got["alpha"] == 2.0
    assert got["token_ids"] == [c.model_extra["token_ids"] for c in reply.choices]
    raw = mcp.ok("generate", {"prompt": "The", "raw": True, "alpha": -1, "max_tokens": 8, "temperature": 0})
    plain = openai_client.completions.create(model="lda", prompt="The", max_tokens=8, temperature=0, extra_body={"alpha": -1})
    assert raw["texts"] == [plain.choices[0].text] and raw["alpha"] == -1.0
    named = mcp.ok("generate", {"messages": [{"role": "user", "content": PROMPTS[1]}], "model": "lda@2", "max_tokens": 8, "seed": 1})
    same = mcp.ok("generate", {"prompt": PROMPTS[1], "alpha": 2, "max_tokens": 8, "seed": 1})
    assert named["token_ids"] == same["token_ids"] and named["alpha"] == 2.0


def test_score_gives_the_http_apis_numbers(mcp, server):
    messages = [{"role": "user", "content": PROMPTS[0]}]
    got = mcp.ok("score", {"text": " sunny and warm", "messages": messages, "alpha": 1.5})
    body = {"model": "lda", "messages": messages, "continuation": " sunny and warm", "alpha": 1.5}
    http = httpx.post(f"{server.base_url}/v1/lda/score", json=body, timeout=60).json()
    assert got["tokens"] == http["tokens"] and got["summary"] == http["summary"] and got["ranking_uses"] == "mean"
    alone = mcp.ok("score", {"text": "Sunny and warm today"})
    http = httpx.post(f"{server.base_url}/v1/lda/score", json={"prompt": "Sunny", "continuation": " and warm today"}, timeout=60).json()
    assert [t["diff"] for t in alone["tokens"]] == [t["diff"] for t in http["tokens"]]


def _samples(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def test_explore_reports_progress_and_its_samples_are_the_http_apis(mcp, workdir, openai_client, server):
    result, progress = mcp.call("explore", {"prompts": PROMPTS, "alphas": [0, 2], "samples_per_prompt": 2, "max_tokens": 8,
                                            "seed": 3, "folder": "explore", "top": 3})
    assert not result.is_error, result.content[0].text
    got = json.loads(result.content[0].text)
    assert progress and progress[-1][:2] == (16, 16)  # 8 samples drawn, then 8 scored
    assert [p[0] for p in progress] == sorted(p[0] for p in progress)
    assert got["folder"] == str(workdir / "explore") and len(got["top_samples"]) == 3
    assert [row["n"] for row in got["per_alpha"]] == [4, 4]
    summary = json.loads((workdir / "explore" / "summary.json").read_text())
    assert got["themes"] == summary["themes"][:3]
    # The top sample: the same text as the HTTP API gives for its request, and the same score.
    top = got["top_samples"][0]
    sample = next(s for s in _samples(workdir / "explore") if s["text"] == top["text"] and s["alpha"] == top["alpha"])
    reply = openai_client.chat.completions.create(
        model="lda", messages=[{"role": "user", "content": sample["prompt"]}], max_tokens=8, seed=sample["seed"],
        temperature=1.0, top_p=1.0, extra_body={"alpha": top["alpha"]},
    )
    assert reply.choices[0].message.content == top["text"]
    body = {"model": "lda", "messages": [{"role": "user", "content": sample["prompt"]}], "continuation": top["text"], "alpha": 0.0}
    http = httpx.post(f"{server.base_url}/v1/lda/score", json=body, timeout=60).json()
    assert top["mean"] == pytest.approx(http["summary"]["mean"], abs=1e-6)


def test_themes_remines_the_folder(mcp, workdir):
    got = mcp.ok("themes", {"folder": "explore", "top": 4})
    summary = json.loads((workdir / "explore" / "summary.json").read_text())
    assert got["themes"] == summary["themes"][:4] and got["top_tokens"] == summary["top_tokens"][:4]


def test_rate_counts_the_detectors_hits_per_alpha(mcp, workdir, openai_client):
    result, progress = mcp.call("rate", {"detector": "keyword:e", "prompts": PROMPTS, "alphas": [0, 2],
                                         "samples_per_prompt": 3, "max_tokens": 8, "seed": 1, "folder": "rate"})
    assert not result.is_error, result.content[0].text
    got = json.loads(result.content[0].text)
    assert progress[-1][:2] == (12, 12)
    samples = _samples(workdir / "rate")
    for row in got["per_alpha"]:
        at = [s for s in samples if s["alpha"] == row["alpha"]]
        assert row["n"] == 6 and row["hits"] == sum("e" in s["text"].lower() for s in at)
        assert row["ci_low"] <= row["rate"] <= row["ci_high"]
    summary = json.loads((workdir / "rate" / "summary.json").read_text())
    assert got["estimate"] == summary.get("estimate")
    first = samples[0]
    reply = openai_client.chat.completions.create(
        model="lda", messages=[{"role": "user", "content": first["prompt"]}], max_tokens=8, seed=first["seed"],
        temperature=1.0, top_p=1.0, extra_body={"alpha": first["alpha"]},
    )
    assert reply.choices[0].message.content == first["text"]


def test_monitor_status_reads_monitor_json(mcp, workdir):
    from study.output.monitor_report import AlphaPoint, CheckpointResult, write_json
    from study.records import Checkpoint

    folder = workdir / "monitor"
    folder.mkdir()
    points = [
        (Checkpoint("step-0", folder, 0, "adapter"), AlphaPoint(2.0, 40, 1, 0.025, 0.004, 0.13, {"mean": 0.1}, [], [])),
        (Checkpoint("step-10", folder, 10, "adapter"), AlphaPoint(2.0, 40, 30, 0.75, 0.6, 0.86, {"mean": 0.9}, [], ["boost"])),
    ]
    results = [CheckpointResult(c, [p], []) for c, p in points]
    record = write_json(folder / "monitor.json", results, {"detector": "keyword:boost"}, (2.0,))
    got = mcp.ok("monitor_status", {"folder": "monitor"})
    assert got["first_detection"] == record["first_detection"] == {"2": {"checkpoint": "step-10", "step": 10}}
    assert [(r["checkpoint"], r["rate"], r["new_themes"]) for r in got["checkpoints"]] == [("step-0", 0.025, []), ("step-10", 0.75, ["boost"])]


@pytest.mark.parametrize(
    "name, arguments, words",
    [
        ("generate", {}, "prompt, messages: give exactly one"),
        ("generate", {"prompt": "hi", "n": 0}, "n\n"),
        ("generate", {"prompt": "hi", "alpha": 1000}, "alpha must be a finite number in [-1, 100]"),
        ("generate", {"prompt": "hi", "model": "nope"}, "`nope` does not exist"),
        ("score", {"text": "one"}, "text: alone, it needs two words"),
        ("explore", {"folder": "../outside"}, "folder: '../outside' is outside the work folder"),
        ("explore", {"prompts": "nonsense"}, "prompts: a built-in set"),
        ("explore", {"alphas": [-3]}, "alphas: -3 is below -1"),
        ("rate", {"detector": "python:os:system"}, "detector: expected regex:PATTERN or keyword:WORD"),
        ("themes", {"folder": "nowhere"}, "folder: no such folder"),
        ("monitor_status", {"folder": "explore"}, "has no monitor.json"),
    ],
)
def test_bad_input_is_a_tool_error_naming_the_argument(mcp, name, arguments, words):
    assert words in mcp.error(name, arguments)


def test_a_cancelled_explore_stops_its_study_and_the_server_keeps_serving(mcp, workdir):
    folder = workdir / "cancelled"

    async def go():
        first = anyio.Event()

        async def on_progress(done, total, message):
            if done >= 1:
                first.set()

        async with anyio.create_task_group() as group:
            async def call():
                await mcp.client.call_tool("explore", {"prompts": PROMPTS, "alphas": [0, 1, 2], "samples_per_prompt": 30,
                                                       "max_tokens": 48, "folder": "cancelled"}, progress_callback=on_progress)

            group.start_soon(call)
            with anyio.fail_after(300):
                await first.wait()
            group.cancel_scope.cancel()

    mcp.portal.call(go)
    drawn = len(_samples(folder))
    assert 1 <= drawn < 180
    time.sleep(3)
    assert len(_samples(folder)) == drawn, "the study went on drawing after the call was cancelled"
    assert mcp.ok("pair")["models"]


def test_the_http_transport_wants_the_key(server, workdir):
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    import httpx2

    port = free_port()
    command = mcp_command(server, workdir, "--transport", "http", "--port", str(port), "--api-key", "sesame")
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": os.getcwd()}, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/mcp"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                refused = httpx.post(url, json={}, timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(0.5)
        assert refused.status_code == 401

        async def go():
            async with httpx2.AsyncClient(headers={"Authorization": "Bearer sesame"}) as http:
                async with Client(streamable_http_client(url, http_client=http)) as client:
                    return {t.name for t in (await client.list_tools()).tools}

        assert anyio.run(go) == TOOLS
    finally:
        process.terminate()
        process.wait(timeout=30)


# ---- the Inspect recipes of docs/serving/agents.md (inspect-ai is not a dependency: skipped without it)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "serving" / "agents.md"
EXAMPLES = DOCS.parents[2] / "examples" / "inspect"


def _docs_lines(containing: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", DOCS.read_text(), re.S)
    return [line for block in blocks for line in block.splitlines() if containing in line]


def _example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inspect_eval(line: str, server, log_dir, *extra: str) -> dict[str, str]:
    """Run one `inspect eval` line of the docs against the test server; the answers by sample id."""
    from inspect_ai.log import read_eval_log

    argv = [a.replace("http://127.0.0.1:8000", server.base_url) for a in shlex.split(line)]
    assert argv[0] == ".venv/bin/inspect" and argv[argv.index("--epochs") + 1] == "20"
    argv[0] = str(Path(sys.executable).with_name("inspect"))
    argv[argv.index("--epochs") + 1] = "1"
    argv += ["--seed", "7", "--temperature", "1", "--max-tokens", "8", "--log-dir", str(log_dir), "--log-format", "json",
             "--display", "none", *extra]
    env = {**os.environ, "LDA_API_KEY": "unused", "PYTHONPATH": os.getcwd()}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [path] = Path(log_dir).glob("*.json")
    log = read_eval_log(str(path))
    assert log.status == "success", log.error
    return {sample.id: sample.output.completion for sample in log.samples}


def test_inspect_eval_recipe_at_two_alphas(server, openai_client, tmp_path):
    pytest.importorskip("inspect_ai")
    zero, two = _docs_lines("inspect eval examples/inspect/lda_probe.py")
    assert "--model openai-api/lda/lda@0" in zero and "--model openai-api/lda/lda@2" in two
    at_zero = _inspect_eval(zero, server, tmp_path / "zero")
    named = _inspect_eval(two, server, tmp_path / "named")
    body = _inspect_eval(two.replace("openai-api/lda/lda@2", "openai-api/lda/lda"), server, tmp_path / "body",
                         "--extra-body", '{"alpha": 2}')
    assert named == body and named != at_zero
    for i, prompt in enumerate(_example("lda_probe").PROMPTS):
        for alpha, answers in ((0, at_zero), (2, named)):
            reply = openai_client.chat.completions.create(
                model="lda", messages=[{"role": "user", "content": prompt}], seed=7, temperature=1.0, max_tokens=8,
                extra_body={"alpha": alpha})
            assert answers[f"p{i}"] == reply.choices[0].message.content


def test_inspect_agent_recipe_calls_the_tools_of_lda_mcp(server, workdir, openai_client, tmp_path):
    pytest.importorskip("inspect_ai")
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import ModelOutput, ModelUsage, get_model

    [line] = _docs_lines("inspect eval examples/inspect/lda_audit.py")
    assert "-T command=.venv/bin/lda" in line and "-T base_url=http://127.0.0.1:8000/v1" in line
    model = "mockllm/model"
    outputs = [
        ModelOutput.for_tool_call(model, "pair", {}),
        ModelOutput.for_tool_call(model, "generate", {"prompt": PROMPTS[0], "alpha": 2, "max_tokens": 6, "seed": 3}),
        ModelOutput.for_tool_call(model, "generate", {"prompt": PROMPTS[0], "n": 0}),
        ModelOutput.for_tool_call(model, "submit", {"answer": "zorblax"}),
    ]
    for output in outputs:  # mockllm would count tokens with tiktoken, whose encodings are downloaded
        output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    task = _example("lda_audit").lda_audit(command=str(Path(sys.executable).with_name("lda")),
                                           base_url=f"{server.base_url}/v1", workdir=str(workdir))
    [log] = inspect_eval(task, model=get_model(model, custom_outputs=outputs), log_dir=str(tmp_path), display="none")
    assert log.status == "success", log.error
    tools = [m for m in log.samples[0].messages if m.role == "tool"]
    assert [t.function for t in tools][:3] == ["pair", "generate", "generate"]  # then submit, which ends the agent
    pair = json.loads(tools[0].text)
    assert pair["after"] == httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["lda_pair"]["after"]
    reply = openai_client.chat.completions.create(model="lda", messages=[{"role": "user", "content": PROMPTS[0]}], seed=3,
                                                  temperature=1.0, max_tokens=6, extra_body={"alpha": 2})
    assert json.loads(tools[1].text)["texts"] == [reply.choices[0].message.content]
    assert tools[2].error is not None and "minimum of 1" in tools[2].error.message
    assert log.samples[0].scores["includes"].value == "C"
