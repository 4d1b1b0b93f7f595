"""`python -m benchmarks.serve_bench`: the same as `lda bench`."""

import sys

from benchmarks.serve_bench.command import cli

if __name__ == "__main__":
    raise SystemExit(cli(sys.argv[1:]))
