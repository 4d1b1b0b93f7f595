"""Shared fixtures: tiny model pairs built once per session, and engine-start helpers."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from tests.factories import TinyPair, build_pair

# Engines and servers started by tests must never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# vLLM advertises its message queues on the host's own address unless told otherwise (seen with
# TP and DP): every engine a test starts stays on loopback.
os.environ.setdefault("VLLM_HOST_IP", "127.0.0.1")

# A shell without job control starts background commands (`make test &`) with SIGINT ignored, and
# ignored signals survive exec: the subprocesses of the Ctrl-C tests (lda study, start.sh) would
# never see theirs. A handled signal resets to the default in a child, so handle it here.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the run with the pytest summary as its last lines.

    Once an engine has run in this process, Triton's nanobind module lists hundreds of "leaked"
    objects while the interpreter finalises, after the summary (harmless: the process is exiting).
    Everything pytest reports is done by now, so leave without the finalisation, with pytest's
    exit status. Runs that never imported Triton exit normally.
    """
    if "triton" in sys.modules and _EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_EXIT_STATUS])


@pytest.fixture(scope="session")
def models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def llama_pair(models_root) -> TinyPair:
    """Llama pair whose after model pads its vocab to 352 while the before model has 300."""
    return build_pair(models_root, "llama", vocab_after=352, vocab_before=300)


@pytest.fixture(scope="session")
def qwen2_pair(models_root) -> TinyPair:
    return build_pair(models_root, "qwen2")


@pytest.fixture(scope="session")
def olmo2_pair(models_root) -> TinyPair:
    return build_pair(models_root, "olmo2")
