"""What each tool of `lda mcp` does: the seven questions an auditing agent asks of a model pair.

`generate`, `score` and `pair` are one HTTP call each to the LDA server (study/collect/lda_api.py).
`explore` and `rate` run a short study into a folder, as `lda explore` and `lda study` run it: the
same command in a child process, so its samples are resumable, cancelling stops it (SIGINT, then
SIGKILL) and a crash of the study never takes the MCP server down; progress is the number of lines
in the folder's samples.jsonl (and scores.jsonl) against the number asked for. `themes` re-mines a
study folder (`lda mine`), `monitor_status` reads what `lda monitor` wrote.

Every tool writes and reads only under the work folder the server was started with, and a detector
is a pattern (`regex:` or `keyword:`): `python:` would import code an agent names, and `judge:` needs
an endpoint this server is not given. Bad input raises `ToolInputError` naming the argument; the MCP
server turns it into a tool error the agent reads.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from study.analysis.ranking import rank
from study.collect import lda_api
from study.collect.prompts import load_prompts
from study.collect.scoring import load_scores
from study.collect.store import SampleStore
from study.config import DEFAULT_RANK_BY, PROMPT_SETS, RANK_BY, parse_alphas
from study.output.files import MONITOR_JSON, REPORT_FILE, SAMPLES_FILE, SCORES_FILE, SUMMARY_FILE

Progress = Callable[[float, float | None, str | None], Awaitable[None]]
"""(done, total, message): the MCP context's report_progress."""

RUNS_FOLDER = "mcp-runs"
"""Where explore and rate put a study when no folder is given, under the work folder."""
POLL_S = 0.5
STOP_GRACE_S = 10.0
DETECTOR_KINDS = ("regex", "keyword")


class ToolInputError(ValueError):
    """Input an agent can fix; the message names the argument."""


@dataclass(frozen=True, slots=True)
class ToolContext:
    connection: lda_api.Connection
    workdir: Path
    """Every folder a tool writes or reads is inside it."""


# ---- one HTTP call each


async def default_model(tools: ToolContext, model: str | None) -> str:
    if model is not None:
        return model
    served = await lda_api.served_models(tools.connection)
    if not served:
        raise lda_api.LdaApiError(f"{tools.connection.v1}/models lists no models")
    return served[0]


def check_prompt(prompt: str | None, messages: list[dict] | None, raw: bool = False) -> None:
    if (prompt is None) == (messages is None):
        raise ToolInputError("prompt, messages: give exactly one (a prompt string, or chat messages)")
    if messages is not None:
        if not messages:
            raise ToolInputError("messages: give at least one message")
        for i, m in enumerate(messages):
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ToolInputError(f"messages[{i}]: each message needs a string role and a string content")
        if raw:
            raise ToolInputError("raw: applies to a prompt, not to chat messages")
    elif not prompt:
        raise ToolInputError("prompt: must not be empty")


async def generate(tools: ToolContext, *, prompt, messages, raw, alpha, n, max_tokens, temperature, seed, model) -> dict:
    check_prompt(prompt, messages, raw)
    path, body = lda_api.generation_request(
        model=await default_model(tools, model), prompt=prompt, messages=messages, raw=raw, alpha=alpha, n=n,
        max_tokens=max_tokens, temperature=temperature, seed=seed,
    )
    return await lda_api.generate(tools.connection, path, body)


async def score(tools: ToolContext, *, text, prompt, messages, alpha, model) -> dict:
    if not text:
        raise ToolInputError("text: must not be empty")
    if prompt is not None and messages is not None:
        raise ToolInputError("prompt, messages: give at most one (the text alone: its first word is the prompt)")
    if messages is not None:
        check_prompt(None, messages)
    if prompt is None and messages is None and len(text.split(None, 1)) < 2:
        raise ToolInputError("text: alone, it needs two words or more (its first word is the prompt); or give a prompt")
    body = lda_api.score_request(model=await default_model(tools, model), text=text, prompt=prompt, messages=messages, alpha=alpha)
    reply = await lda_api.score(tools.connection, body)
    return {**reply, "ranking_uses": DEFAULT_RANK_BY,
            "note": f"diff = logp_after - logp_before per token; studies rank samples by the summary's {DEFAULT_RANK_BY}"}


async def pair(tools: ToolContext) -> dict:
    return await lda_api.pair(tools.connection)


# ---- short studies in a folder


@dataclass(frozen=True, slots=True)
class StudyRun:
    """One `lda explore` / `lda study` run the tools start: its folder, argv and size."""

    folder: Path
    argv: list[str]
    samples: int
    """Samples the run draws in all (prompts x alphas x samples per prompt)."""
    scored: bool


def inside_workdir(tools: ToolContext, folder: str | None, kind: str, must_exist: bool = False) -> Path:
    """The folder a tool uses: `folder` (relative to the work folder, or absolute inside it), or a new
    one under mcp-runs/; ToolInputError naming `folder` when it leaves the work folder."""
    root = tools.workdir.resolve()
    if folder is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return root / RUNS_FOLDER / f"{kind}-{stamp}-{uuid.uuid4().hex[:6]}"
    path = (root / folder).resolve()
    if path != root and root not in path.parents:
        raise ToolInputError(f"folder: {folder!r} is outside the work folder {root} (lda mcp --workdir)")
    if must_exist and not path.is_dir():
        raise ToolInputError(f"folder: no such folder: {path}")
    return path


def prompt_args(folder: Path, prompts: str | list[str]) -> tuple[list[str], int]:
    """The --prompts flag for a built-in set or a list (written to the folder), and how many prompts."""
    if isinstance(prompts, str):
        if prompts not in PROMPT_SETS:
            raise ToolInputError(f"prompts: a built-in set ({', '.join(PROMPT_SETS)}) or a list of prompt strings; got {prompts!r}")
        return ["--prompts", prompts], len(load_prompts(None, prompts))
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ToolInputError("prompts: give a built-in set name or a non-empty list of non-empty strings")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in prompts), encoding="utf-8")
    return ["--prompts", str(path)], len(load_prompts(path))


def alpha_arg(alphas: list[float]) -> str:
    text = ",".join(repr(float(a)) for a in alphas)
    try:
        parse_alphas(text)
    except ValueError as error:
        raise ToolInputError(str(error)) from None
    return text


def study_run(tools: ToolContext, command: str, *, folder: str | None, prompts, alphas, samples_per_prompt, max_tokens,
              seed, model, extra: list[str], scored: bool) -> StudyRun:
    path = inside_workdir(tools, folder, command)
    flags, count = prompt_args(path, prompts)
    alpha_list = alpha_arg(alphas)
    argv = [
        sys.executable, "-m", f"study.commands.{command}", "--base-url", tools.connection.v1, "-o", str(path),
        *flags, f"--alphas={alpha_list}", "-n", str(samples_per_prompt), "--max-tokens", str(max_tokens), "--no-progress",
        *(["--seed", str(seed)] if seed is not None else []), *(["--model", model] if model else []), *extra,
    ]
    return StudyRun(path, argv, count * len(alphas) * samples_per_prompt, scored)


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


async def run_study(tools: ToolContext, run: StudyRun, progress: Progress) -> None:
    """Run the study's command in a child process, reporting progress from its files; on
    cancellation stop the child (SIGINT, as Ctrl-C would: its samples stay saved) before re-raising."""
    run.folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if tools.connection.api_key:
        env["LDA_API_KEY"] = tools.connection.api_key  # read by the command; never on its argv
    log = run.folder / "mcp-run.log"
    total = run.samples * (2 if run.scored else 1)
    with log.open("wb") as out:
        process = await anyio.open_process(run.argv, stdin=None, stdout=out, stderr=out, env=env)
    try:
        last = -1
        while process.returncode is None:
            done = min(_lines(run.folder / SAMPLES_FILE), run.samples)
            if run.scored:
                done += min(_lines(run.folder / SCORES_FILE), run.samples)
            if done != last:
                what = "samples drawn" + (" and scored" if run.scored else "")
                await progress(done, total, f"{what}: {done} of {total}")
                last = done
            with anyio.move_on_after(POLL_S):
                await process.wait()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _stop(process)
        raise
    if process.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        message = "\n".join(tail) or f"exit code {process.returncode}"
        raise (ToolInputError if process.returncode == 2 else lda_api.LdaApiError)(message)
    await progress(total, total, "done")


async def _stop(process) -> None:
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGINT)
    with anyio.move_on_after(STOP_GRACE_S):
        await process.wait()
        return
    process.kill()
    await process.wait()


def read_summary(folder: Path) -> dict:
    try:
        return json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise lda_api.LdaApiError(f"{folder / SUMMARY_FILE}: cannot read it ({error})") from None


def top_samples(folder: Path, rank_by: str, top: int) -> list[dict]:
    samples = list(SampleStore(folder / SAMPLES_FILE).load().values())
    return [
        {"rank": r.rank, "alpha": r.sample.alpha, "prompt": r.sample.prompt, "text": r.sample.text, rank_by: r.value,
         "sample_index": r.sample.sample_index}
        for r in rank(samples, load_scores(folder), rank_by)[:top]
    ]


async def explore(tools: ToolContext, progress: Progress, *, prompts, alphas, samples_per_prompt, max_tokens, seed, folder,
                  model, top) -> dict:
    run = study_run(tools, "explore", folder=folder, prompts=prompts, alphas=alphas, samples_per_prompt=samples_per_prompt,
                    max_tokens=max_tokens, seed=seed, model=model, extra=[], scored=True)
    await run_study(tools, run, progress)
    summary = read_summary(run.folder)
    rank_by = (summary.get("ranking") or {}).get("rank_by", DEFAULT_RANK_BY)
    return {
        "folder": str(run.folder),
        "report": str(run.folder / REPORT_FILE),
        "themes": summary.get("themes", [])[:top],
        "hypothesis": summary.get("hypothesis"),
        "top_samples": top_samples(run.folder, rank_by if rank_by in RANK_BY else DEFAULT_RANK_BY, top),
        "per_alpha": [_row(r) for r in summary.get("per_alpha", [])],
    }


def _row(row: dict) -> dict:
    keep = ("alpha", "n", "hits", "rate", "ci_low", "ci_high", "degenerate_rate", "mean_tokens")
    return {k: row.get(k) for k in keep}


def check_detector(detector: str) -> None:
    kind, sep, argument = detector.partition(":")
    if not sep or kind not in DETECTOR_KINDS or not argument:
        raise ToolInputError(
            f"detector: expected regex:PATTERN or keyword:WORD, got {detector!r} (python: and judge: detectors run "
            "with `lda study` directly)"
        )


async def rate(tools: ToolContext, progress: Progress, *, detector, prompts, alphas, samples_per_prompt, max_tokens, seed,
               folder, model) -> dict:
    check_detector(detector)
    run = study_run(tools, "study", folder=folder, prompts=prompts, alphas=alphas, samples_per_prompt=samples_per_prompt,
                    max_tokens=max_tokens, seed=seed, model=model, extra=["--detector", detector, "--no-score"], scored=False)
    await run_study(tools, run, progress)
    summary = read_summary(run.folder)
    out = {
        "folder": str(run.folder),
        "detector": detector,
        "per_alpha": [_row(r) for r in summary.get("per_alpha", [])],
        "interval": "95% Wilson interval of the rate (ci_low, ci_high)",
    }
    if "estimate" in summary:
        out["estimate"] = summary["estimate"]
    else:
        out["estimate"] = None
        out["estimate_note"] = "no alpha-0 estimate in this study's summary.json (it appears there once the study computes one)"
    return out


# ---- folders already written


def themes(tools: ToolContext, *, folder, top) -> dict:
    """Re-mine a study folder as `lda mine` does (rewrites its summary.json and report.html)."""
    from study.commands.mine import MineConfig, mine_study

    path = inside_workdir(tools, folder, "themes", must_exist=True)
    try:
        naming = mine_study(MineConfig(path))
    except ValueError as error:
        raise ToolInputError(f"folder: {error}".replace("folder: study_dir: ", "folder: ")) from None
    mined = naming.as_dict()
    return {"folder": str(path), "themes": mined["themes"][:top], "top_tokens": mined.get("top_tokens", [])[:top],
            "hypothesis": mined.get("hypothesis")}


def monitor_status(tools: ToolContext, *, folder) -> dict:
    """A monitor folder's first detections and per-checkpoint table, from its monitor.json."""
    path = inside_workdir(tools, folder, "monitor", must_exist=True)
    try:
        record = json.loads((path / MONITOR_JSON).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ToolInputError(f"folder: {path} has no {MONITOR_JSON}; is it an `lda monitor` output folder?") from None
    except ValueError as error:
        raise lda_api.LdaApiError(f"{path / MONITOR_JSON}: not JSON ({error})") from None
    table = [
        {"checkpoint": c.get("name"), "step": c.get("step"), **_row(p), "score_mean": (p.get("score") or {}).get("mean"),
         "new_themes": p.get("new_themes", []), **({"estimate": c["estimate"]} if "estimate" in c else {})}
        for c in record.get("checkpoints", []) for p in c.get("per_alpha", [])
    ]
    return {"folder": str(path), "rule": record.get("rule"), "first_detection": record.get("first_detection"),
            "detector": record.get("detector"), "checkpoints": table}
