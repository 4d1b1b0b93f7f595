"""The plugin gives `lda.*` INFO lines a handler in vLLM's engine and worker processes (which
configure vLLM's logger only), and leaves a process that set up its own logging alone.

Each case runs in a fresh interpreter: logging's state is process-wide.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = """
import logging, sys
if sys.argv[1] == "root":
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout)
from engine.plugin import configure_project_logging
configure_project_logging()
configure_project_logging()  # vLLM loads plugins more than once per process
logging.getLogger("lda.pair_model").info("one pass on")
print("handlers", len(logging.getLogger("lda").handlers))
"""


def run(mode: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env}, check=True)


def test_info_lines_reach_stderr_in_a_process_without_logging_setup():
    done = run("bare")
    assert "INFO" in done.stderr and "lda.pair_model: one pass on" in done.stderr
    assert "handlers 1" in done.stdout  # once, however often the plugin loads


@pytest.mark.parametrize(("mode", "env"), [("root", {}), ("bare", {"VLLM_CONFIGURE_LOGGING": "0"})])
def test_a_process_with_its_own_logging_is_left_alone(mode, env):
    done = run(mode, **env)
    assert "one pass on" not in done.stderr + done.stdout  # root at WARNING drops INFO, as configured
    assert "handlers 0" in done.stdout
