"""`lda mcp` without a server: its settings refuse what would be unsafe or wrong, the tools' own checks
name the argument, and the HTTP transport's key check. tests/study/commands/test_mcp.py runs the tools
end to end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from study.collect.lda_api import Connection, score_request
from study.collect.prompts import load_prompts
from study.commands import mcp_tools
from study.commands.mcp import KeyCheck, McpSettings, cli


def test_a_non_loopback_http_server_needs_a_key(tmp_path):
    with pytest.raises(ValueError, match="host: 0.0.0.0 is not loopback; give an API key"):
        McpSettings(Connection("http://127.0.0.1:8000"), tmp_path, "http", "0.0.0.0")
    McpSettings(Connection("http://127.0.0.1:8000", api_key="k"), tmp_path, "http", "0.0.0.0")
    McpSettings(Connection("http://127.0.0.1:8000"), tmp_path, "stdio", "0.0.0.0")  # the host is unused


@pytest.mark.parametrize("argv, words", [(["--base-url", "ftp://x"], "base_url: expected an http(s) URL"),
                                         (["--port", "70000"], "port: must be in [1, 65535]"),
                                         (["--timeout", "0"], "timeout: must be > 0")])
def test_cli_bad_input_exits_2_naming_the_flag(argv, words, capsys):
    assert cli(argv) == 2
    assert words in capsys.readouterr().err


def test_folders_stay_inside_the_work_folder(tmp_path):
    tools = mcp_tools.ToolContext(Connection("http://127.0.0.1:8000"), tmp_path)
    assert mcp_tools.inside_workdir(tools, "a/b", "explore") == tmp_path.resolve() / "a" / "b"
    assert mcp_tools.inside_workdir(tools, str(tmp_path / "c"), "explore") == tmp_path.resolve() / "c"
    assert mcp_tools.inside_workdir(tools, None, "rate").parent == tmp_path.resolve() / "mcp-runs"
    for outside in ("..", "../x", "/etc", "a/../../x"):
        with pytest.raises(mcp_tools.ToolInputError, match="folder: .* is outside the work folder"):
            mcp_tools.inside_workdir(tools, outside, "explore")


@pytest.mark.parametrize("detector", ["python:os:system", "judge:Is it rude?", "regex", "keyword:", "shell:ls"])
def test_only_pattern_detectors(detector):
    with pytest.raises(mcp_tools.ToolInputError, match="detector: expected regex:PATTERN or keyword:WORD"):
        mcp_tools.check_detector(detector)
    mcp_tools.check_detector("regex:zorblax|boost")


def test_prompt_lists_are_written_for_the_study(tmp_path):
    flags, count = mcp_tools.prompt_args(tmp_path, ["one\nline two", "three"])
    assert flags == ["--prompts", str(tmp_path / "prompts.jsonl")] and count == 2
    assert mcp_tools.prompt_args(tmp_path, "generic") == (["--prompts", "generic"], len(load_prompts(None, "generic")))
    for bad in ([], [""], "nonsense"):
        with pytest.raises(mcp_tools.ToolInputError, match="prompts: "):
            mcp_tools.prompt_args(tmp_path, bad)


def test_a_text_alone_is_scored_after_its_first_word():
    assert score_request(model="lda", text="  Sunny and warm", prompt=None, messages=None, alpha=None) == {
        "model": "lda", "prompt": "  Sunny", "continuation": " and warm"}


def test_the_http_transport_key_check():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def get(headers):
        transport = httpx.ASGITransport(app=KeyCheck(app, "sesame"))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return (await client.post("/mcp", headers=headers)).status_code

    assert asyncio.run(get({"Authorization": "Bearer sesame"})) == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}, {"X-API-Key": "sesame"}):
        assert asyncio.run(get(headers)) == 401


def test_workdir_must_be_a_folder(tmp_path):
    file = tmp_path / "f"
    file.write_text("x")
    with pytest.raises(ValueError, match="workdir: .* is not a folder"):
        McpSettings(Connection("http://127.0.0.1:8000"), Path(file))
