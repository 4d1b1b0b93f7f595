"""What every study command shares: the parser, the flag groups two commands take alike, and the one
mapping of errors to exit codes.

Exit codes: 0 done; 1 the work failed (the server, the judge, a study's files: `StudyError`); 2 bad
input (`ValueError`, or a command's own refusals; nothing was sent or written); 130 interrupted
(what was finished is kept). Every message is one line on stderr, `PROG: error: ...`, never a
traceback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from study.config import DEFAULT_RANK_BY, ENDPOINTS, RANK_BY
from study.errors import StudyError

OK, FAILED, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
HYPOTHESIS_PROMPT_HELP = "the hypothesis instruction, with a {themes} placeholder (default: study/collect/hypothesis_prompt.txt)"


def parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)


def parse(p: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """The parsed arguments, or the exit code of argparse's own exit (it has printed the message or
    the help)."""
    try:
        return p.parse_args(attach_negative_alphas(argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)


def attach_negative_alphas(argv: list[str]) -> list[str]:
    """`--alphas -1,0,1` -> `--alphas=-1,0,1`: argparse would take "-1,0,1" for an option, and
    alpha -1 (the before model) is the natural baseline to start a list with."""
    out = list(argv)
    for i in range(len(out) - 1):
        if out[i] == "--alphas" and re.match(r"-[\d.]", out[i + 1]):
            out[i : i + 2] = [f"--alphas={out[i + 1]}"]
            break
    return out


def run(
    prog: str,
    work: Callable[[], int],
    bad_input: tuple[type[BaseException], ...] = (ValueError,),
    failed_hint: str = "",
    interrupted: Callable[[], str] | None = None,
) -> int:
    """`work()`'s exit code; a `bad_input` error is 2, a StudyError 1 (with `failed_hint` after its
    message), Ctrl-C 130 with the line `interrupted()` gives (without one, Ctrl-C propagates)."""
    try:
        return work()
    except bad_input as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return BAD_INPUT
    except StudyError as exc:
        print(f"{prog}: error: {exc}{failed_hint}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(f"\n{prog}: {interrupted()}", file=sys.stderr)
        return INTERRUPTED


def add_study_flags(p: argparse.ArgumentParser, output_help: str = "results go here; reuse it to resume",
                    output_required: bool = True) -> None:
    """The flags of one study (`lda study`, `lda explore`, and `lda monitor` per checkpoint)."""
    p.add_argument(
        "--base-url", action="append", dest="base_urls", metavar="URL",
        help=f"LDA server; repeat it for replicas, which share the requests (default: {DEFAULT_BASE_URL})",
    )
    p.add_argument("--model", help="model name (default: the first one the server lists)")
    p.add_argument("--api-key", default=os.environ.get("LDA_API_KEY"), help="Bearer token (default: $LDA_API_KEY)")
    p.add_argument(
        "--prompts", default="advice", metavar="NAME|FILE",
        help="a built-in set (advice: everyday questions, via the chat template; generic: vague prefills "
        "such as 'The', sent as raw completions), or a .txt (one a line) or .jsonl ('prompt' field) "
        "file (default: %(default)s)",
    )
    p.add_argument(
        "--alphas", default="0,0.5,1,2,4",
        help="comma-separated, or auto (lda study with --detector: a sampling plan walks down from alpha 4 while "
        "the rate stays measurable and spends the rest near the target, 5 x -n samples per prompt in all, as "
        "the default; docs/research/rate-estimate.md) (default: %(default)s)",
    )
    p.add_argument("-n", "--samples-per-prompt", type=int, default=10, help="(default: %(default)s)")
    detectors = "regex:PATTERN | keyword:WORD | python:MODULE:FUNCTION | judge:QUESTION"
    p.add_argument("--detector", help=f"{detectors}; without one the samples are only scored and ranked")
    p.add_argument("-o", "--output-dir", type=Path, required=output_required, help=output_help)
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight (default: %(default)s)")
    p.add_argument("--endpoint", choices=ENDPOINTS, help="(default: completions for --prompts generic, else chat)")
    p.add_argument("--temperature", type=float, default=1.0, help="(default: %(default)s)")
    p.add_argument("--top-p", type=float, default=1.0, help="(default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=256, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, help="base seed: each (prompt, sample) gets its own seed from it, the same at every alpha (default: unseeded)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default: %(default)s)")
    p.add_argument("--log-scale", action="store_true", help="plot the rate on a log axis (automatic when rates span two decades)")
    p.add_argument(
        "--estimate-at", type=float, metavar="ALPHA",
        help="with --detector: the alpha at which the path estimate (a fit of the rate against alpha, "
        "extrapolated) reads the rate, in [-1, the largest alpha sampled] (default: 0, the after model; "
        "-1 is the before model)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--rank-by", choices=RANK_BY, default=DEFAULT_RANK_BY, help="per-sample summary of logp_after - logp_before that ranks the samples (default: %(default)s)")
    p.add_argument("--report-top", type=int, default=100, help="samples shown in report.html (default: %(default)s)")
    p.add_argument("--no-score", action="store_true", help="do not score or rank the samples (no report.html)")


def add_judge_flags(p: argparse.ArgumentParser, title: str, template: bool = True) -> None:
    """The judge endpoint's flags: the judge detector's (with `template`) and the hypothesis line's."""
    judge = p.add_argument_group(title)
    judge.add_argument("--judge-base-url", help="OpenAI-compatible endpoint, e.g. https://api.openai.com/v1")
    judge.add_argument("--judge-model", help="(default: the first model the endpoint lists)")
    judge.add_argument("--judge-api-key", default=os.environ.get("OPENAI_API_KEY"), help="(default: $OPENAI_API_KEY)")
    if template:
        judge.add_argument(
            "--judge-template",
            help="the judge's message, with {response} and optionally {prompt} and {question} (the text after judge:)",
        )
    judge.add_argument("--hypothesis-prompt", type=Path, metavar="FILE", help=HYPOTHESIS_PROMPT_HELP)
