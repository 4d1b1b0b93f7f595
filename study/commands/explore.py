"""`lda explore`: `lda study` without a detector; samples are scored, ranked and reported.

For behaviours nobody knew to look for: read report.html's top samples first.

    lda explore --base-url http://127.0.0.1:8000 --alphas 1,2 -n 10 --max-tokens 60 -o studies/explore
"""

from __future__ import annotations

import sys

from study.commands.study import cli as study_cli


def cli(argv: list[str]) -> int:
    if any(arg == "--detector" or arg.startswith("--detector=") for arg in argv):
        print("lda explore: error: explore takes no --detector (use `lda study --detector ...`)", file=sys.stderr)
        return 2
    return study_cli(argv, prog="lda explore")


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
