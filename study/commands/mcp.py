"""`lda mcp`: LDA's research tools for an agent, over the Model Context Protocol.

An MCP server (the official `mcp` SDK) in front of a running `lda serve`, which it reaches over HTTP
only, like every study command. Seven tools (study/commands/mcp_tools.py): generate, score,
explore, themes, rate, monitor_status, pair. The long ones (explore, rate) report progress through
MCP progress notifications and stop their study when the call is cancelled. Bad input is a tool
error whose message names the argument; the server keeps serving.

Transports: stdio (what Inspect, Claude Code and most agent frameworks start) and streamable HTTP,
bound to 127.0.0.1 by default and, with an API key, behind it (`Authorization: Bearer KEY`, the
key the LDA server takes).

    lda mcp --base-url http://127.0.0.1:8000/v1 --workdir studies
    lda mcp --transport http --port 8700 --api-key "$LDA_API_KEY"
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from study.collect.lda_api import Connection, LdaApiError
from study.commands import mcp_tools as tools_
from study.commands.base import DEFAULT_BASE_URL

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_PORT = 8700
INSTRUCTIONS = """\
Logit Diff Amplification (LDA) samples from A + alpha*(A - B): A is a post-trained ("after") model,
B its base ("before"). alpha 0 is the after model, alpha -1 the before model, alpha > 0 amplifies
what post-training changed, so rare learned behaviours show far more often (1 to 4 is typical).
A workflow: `pair` (what is served), `generate` at alpha 0 and 2 to compare, `explore` (a short
study: themes and the samples post-training favoured most), `score` a suspicious text token by
token, `rate` a behaviour you can name as a regex or keyword at several alphas, `themes` to re-mine
a study folder, `monitor_status` to read an `lda monitor` run."""

PromptSet = Annotated[
    str | list[str],
    Field(description="a built-in prompt set ('advice': everyday questions sent as chat; 'generic': vague "
                      "raw prefills such as 'The') or a list of prompt strings"),
]
Alphas = Annotated[list[float], Field(min_length=1, max_length=8, description="alphas to sample at, e.g. [0, 2]; each in [-1, the server's max]")]
Messages = Annotated[list[dict[str, str]] | None, Field(description="chat messages [{'role': 'user', 'content': ...}]; instead of prompt")]
Model = Annotated[str | None, Field(description="a served model or LoRA adapter name (see `pair`); default: the first one served")]
Folder = Annotated[str | None, Field(description="a folder inside the work folder (relative or absolute); default: a new one under mcp-runs/")]
Seed = Annotated[int | None, Field(ge=0, le=2**31 - 1, description="makes sampling reproducible")]


@dataclass(frozen=True, slots=True)
class McpSettings:
    connection: Connection
    workdir: Path
    transport: Literal["stdio", "http"] = "stdio"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port: must be in [1, 65535], got {self.port}")
        if self.transport == "http" and self.host not in LOOPBACK and not self.connection.api_key:
            raise ValueError(f"host: {self.host} is not loopback; give an API key (--api-key or LDA_API_KEY) to serve MCP there")
        if self.workdir.exists() and not self.workdir.is_dir():
            raise ValueError(f"workdir: {self.workdir} exists and is not a folder")


def build_server(settings: McpSettings) -> MCPServer:
    """The MCP server and its seven tools, bound to one LDA server and one work folder."""
    server = MCPServer("lda", instructions=INSTRUCTIONS, log_level="WARNING")
    context = tools_.ToolContext(settings.connection, settings.workdir)

    async def guarded(call):
        try:
            return await call
        except (tools_.ToolInputError, LdaApiError) as error:
            raise ToolError(str(error)) from None

    @server.tool(description="Sample texts from the pair at one alpha. Give `prompt` (sent as one chat user "
                 "message; with raw=true sent as plain text to /v1/completions) or `messages`. Returns the texts, "
                 "the alpha the server applied, finish reasons and token ids.")
    async def generate(
        prompt: Annotated[str | None, Field(description="the prompt; instead of messages")] = None,
        messages: Messages = None,
        raw: Annotated[bool, Field(description="send the prompt without the chat template")] = False,
        alpha: Annotated[float | None, Field(description="amplification; default: the server's")] = None,
        n: Annotated[int, Field(ge=1, le=16, description="how many texts")] = 1,
        max_tokens: Annotated[int, Field(ge=1, le=4096)] = 128,
        temperature: Annotated[float, Field(ge=0, le=10)] = 1.0,
        seed: Seed = None,
        model: Model = None,
    ) -> dict:
        return await guarded(tools_.generate(context, prompt=prompt, messages=messages, raw=raw, alpha=alpha, n=n,
                                             max_tokens=max_tokens, temperature=temperature, seed=seed, model=model))

    @server.tool(description="Score a text token by token: per token logp_after, logp_before and diff = "
                 "logp_after - logp_before (what post-training favoured), plus the summary (sum, mean, max) that "
                 "studies rank samples by. The text follows `messages` (chat), a raw `prompt`, or stands alone "
                 "(its first word is then the prompt).")
    async def score(
        text: Annotated[str, Field(description="the text (completion) to score")],
        prompt: Annotated[str | None, Field(description="raw text before it")] = None,
        messages: Messages = None,
        alpha: Annotated[float | None, Field(description="alpha of logp_amplified; default: the server's")] = None,
        model: Model = None,
    ) -> dict:
        return await guarded(tools_.score(context, text=text, prompt=prompt, messages=messages, alpha=alpha, model=model))

    @server.tool(description="Run a short exploration (no detector): sample prompts at several alphas, score every "
                 "sample, rank them, mine themes. Returns the themes (what post-training changed, best first), the "
                 "top-ranked samples and the folder (report.html there). Reports progress; cancelling stops it, and "
                 "calling again with the same folder resumes it. Takes about prompts x alphas x samples requests.")
    async def explore(
        ctx: Context,
        prompts: PromptSet = "advice",
        alphas: Alphas = [0.0, 2.0],  # noqa: B006 (pydantic copies defaults)
        samples_per_prompt: Annotated[int, Field(ge=1, le=100)] = 2,
        max_tokens: Annotated[int, Field(ge=1, le=4096)] = 60,
        seed: Seed = 0,
        folder: Folder = None,
        model: Model = None,
        top: Annotated[int, Field(ge=1, le=50, description="themes and samples returned")] = 10,
    ) -> dict:
        return await guarded(tools_.explore(context, ctx.report_progress, prompts=prompts, alphas=alphas,
                                            samples_per_prompt=samples_per_prompt, max_tokens=max_tokens, seed=seed,
                                            folder=folder, model=model, top=top))

    @server.tool(description="Re-mine a study folder (from explore, rate with scores, or `lda explore`): the "
                 "themes, the tokens post-training favoured most, and the hypothesis if one was made.")
    async def themes(
        folder: Annotated[str, Field(description="the study folder, inside the work folder")],
        top: Annotated[int, Field(ge=1, le=50, description="themes and tokens returned")] = 10,
    ) -> dict:
        async def mine():
            return await anyio.to_thread.run_sync(lambda: tools_.themes(context, folder=folder, top=top))

        return await guarded(mine())

    @server.tool(description="Measure how often a behaviour shows at each alpha: a detector (regex:PATTERN or "
                 "keyword:WORD, case-insensitive) over samples of the prompts. Returns per alpha n, hits, rate and "
                 "its 95% interval, and the alpha-0 estimate when the study makes one. Reports progress; cancellable.")
    async def rate(
        ctx: Context,
        detector: Annotated[str, Field(description="regex:PATTERN or keyword:WORD")],
        prompts: PromptSet = "advice",
        alphas: Alphas = [0.0, 1.0, 2.0],  # noqa: B006
        samples_per_prompt: Annotated[int, Field(ge=1, le=1000)] = 5,
        max_tokens: Annotated[int, Field(ge=1, le=4096)] = 60,
        seed: Seed = 0,
        folder: Folder = None,
        model: Model = None,
    ) -> dict:
        return await guarded(tools_.rate(context, ctx.report_progress, detector=detector, prompts=prompts, alphas=alphas,
                                         samples_per_prompt=samples_per_prompt, max_tokens=max_tokens, seed=seed,
                                         folder=folder, model=model))

    @server.tool(description="Read an `lda monitor` folder: per alpha the first checkpoint where the behaviour is "
                 "detected (and the rule), and per checkpoint and alpha the rate with its interval, the mean diff "
                 "score and the themes new since the previous checkpoint.")
    async def monitor_status(folder: Annotated[str, Field(description="the monitor's output folder, inside the work folder")]) -> dict:
        async def read():
            return tools_.monitor_status(context, folder=folder)

        return await guarded(read())

    @server.tool(description="What the LDA server serves: the after and before models, the model and adapter "
                 "names (each takes alpha also as NAME@ALPHA), the alpha range and default, each stack's weight version "
                 "(lda_weights) where the server reports it, and the tokenizers' report.")
    async def pair() -> dict:
        return await guarded(tools_.pair(context))

    return server


class KeyCheck:
    """The MCP HTTP endpoint behind the API key: `Authorization: Bearer KEY`, compared in constant time."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.digest = hashlib.sha256(api_key.encode()).digest()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not self._allowed(scope):
            body = b'{"error": "missing or wrong API key: send Authorization: Bearer <key>"}'
            await send({"type": "http.response.start", "status": 401, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer")]})
            return await send({"type": "http.response.body", "body": body})
        return await self.app(scope, receive, send)

    def _allowed(self, scope) -> bool:
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return secrets.compare_digest(hashlib.sha256(token.strip().encode()).digest(), self.digest)


async def serve_http(server, settings: McpSettings) -> None:
    import uvicorn

    app = server.streamable_http_app(host=settings.host)
    if settings.connection.api_key:
        app = KeyCheck(app, settings.connection.api_key)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", lifespan="on")
    await uvicorn.Server(config).serve()


def serve(settings: McpSettings) -> None:
    server = build_server(settings)
    if settings.transport == "stdio":
        server.run("stdio")
    else:
        anyio.run(serve_http, server, settings)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lda mcp",
        description="Serve LDA's research tools (generate, score, explore, themes, rate, monitor_status, pair) to an "
        "agent over the Model Context Protocol, in front of a running LDA server.",
    )
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help="the LDA server (default: %(default)s)")
    p.add_argument("--api-key", default=os.environ.get("LDA_API_KEY"),
                   help="the LDA server's key, also required by the HTTP transport (default: $LDA_API_KEY)")
    p.add_argument("--workdir", type=Path, default=Path("."),
                   help="tools write and read study folders only inside it (default: the current folder)")
    p.add_argument("--transport", choices=("stdio", "http"), default="stdio",
                   help="stdio (an agent starts this command) or streamable HTTP at http://HOST:PORT/mcp (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP transport only (default: %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP transport only (default: %(default)s)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for one request to the LDA server (default: %(default)s)")
    return p


def cli(argv: list[str]) -> int:
    """`lda mcp ...`: serves until its client closes stdio or, over HTTP, until Ctrl-C; 2 for bad input."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    try:
        if not args.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: expected an http(s) URL, got {args.base_url!r}")
        if args.timeout <= 0:
            raise ValueError(f"timeout: must be > 0 seconds, got {args.timeout}")
        settings = McpSettings(Connection(args.base_url, args.api_key, args.timeout), args.workdir, args.transport,
                               args.host, args.port)
    except ValueError as error:
        print(f"lda mcp: error: {error}", file=sys.stderr)
        return 2
    try:
        serve(settings)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
