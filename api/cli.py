"""The `lda` command: one subcommand per tool, each owned by the module that implements it.

Each target module exposes `cli(argv: list[str]) -> int` and parses its own flags, so this file only
routes. Imports are lazy: `lda regress --help` must not pay for importing vLLM.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "serve": ("api.server", "Start the OpenAI-compatible LDA server."),
    "regress": ("api.regress", "Run the fixed regression prompts against a running server."),
    "demo-pair": ("demo.demo_pair", "Build (or find) the embedded demo model pair."),
    "study": ("study.commands.study", "Measure a behaviour's rate per alpha, and rank samples by attribution."),
    "explore": ("study.commands.explore", "Rank samples by what post-training favoured, with no detector."),
    "mine": ("study.commands.mine", "Name what post-training changed, from a finished study's files (no server)."),
    "monitor": ("study.commands.monitor", "Watch a behaviour appear over a training run's checkpoints."),
    "mcp": ("study.commands.mcp", "Serve the study tools to an agent over the Model Context Protocol."),
    "demo-run": ("demo.training_run", "Train (or find) a demo LoRA training run with checkpoints."),
    "bench": ("benchmarks.serve_bench", "Benchmark LDA against a single model and the original design."),
    "selftest": ("demo.selftest", "Check the pair engine, eager and compiled, against the reference on this device."),
}


def _usage() -> str:
    lines = ["usage: lda <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `lda <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"lda: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.cli(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
