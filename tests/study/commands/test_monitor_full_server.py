"""`lda monitor` end to end on a full-weight run and a real `lda serve --allow-weight-loads`.

One server for the module, started on the tiny demo run written as full weights (`lda demo-run
--full --tiny`: each LoRA checkpoint merged into its base, and `base/`), after = its last
checkpoint, before = base. The monitor loads each checkpoint in place (`--compare base`, then
`--compare previous` into another folder), resumes without loading or sampling again, and the
samples of `--compare base` equal those of a checkpoint served from the start (same weights, same
seeds): what makes in-place loads comparable with restarts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from demo.training_run import FULL_BASE, FULL_SUFFIX, ensure_full_run, ensure_tiny_run
from study.collect.store import SampleStore
from study.commands.monitor import cli
from study.output.files import SAMPLES_FILE
from tests.servers import free_port, start_server, tiny_server_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_run(models_root):
    base, run = ensure_tiny_run(models_root / "monitor-full")
    full = ensure_full_run(run, base)
    assert full.name == run.name + FULL_SUFFIX
    return full


@pytest.fixture(scope="module")
def server(full_run, tmp_path_factory):
    env = tiny_server_env(SimpleNamespace(after=full_run / "checkpoint-6", before=full_run / FULL_BASE), free_port(),
                          LDA_ALLOW_WEIGHT_LOADS="1")
    handle = start_server([sys.executable, "-m", "api.cli", "serve"], env, tmp_path_factory.mktemp("monitor-full") / "server.log")
    yield handle
    assert handle.stop() == 0, handle.log()[-3000:]


def monitor_args(server, run: Path, out: Path, prompts: Path, *extra: str) -> list[str]:
    return [str(run), "--base-url", server.base_url, "-o", str(out), "--prompts", str(prompts), "--alphas", "0,2",
            "-n", "3", "--max-tokens", "8", "--detector", "regex:zorb", "--no-progress", "--settle", "0", *extra]


def stacks(server) -> dict:
    return {s: Path(v["path"]).name for s, v in httpx.get(f"{server.base_url}/v1/lda/weights", timeout=30).json()["stacks"].items()}


def texts(folder: Path) -> dict:
    return {s.key: s.text for s in SampleStore(folder / SAMPLES_FILE).load().values()}


def test_compare_base_then_previous_on_one_server_with_resume(server, full_run, tmp_path: Path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How can I sleep better?\nAny tips to save money?\n")
    # Checkpoint-6 as served from the start, before any load: the reference for its in-place load.
    reference = tmp_path / "served-at-start"
    from study.commands.study import cli as study_cli

    assert study_cli(["--base-url", server.base_url, "-o", str(reference), "--prompts", str(prompts), "--alphas", "0,2",
                      "-n", "3", "--max-tokens", "8", "--detector", "regex:zorb", "--no-progress", "--seed", "0"]) == 0

    base_out = tmp_path / "base"
    assert cli(monitor_args(server, full_run, base_out, prompts)) == 0
    printed = capsys.readouterr().out
    assert "loaded in place against base" in printed and "first shift of the diff scores" in printed
    record = json.loads((base_out / "monitor.json").read_text())
    assert [c["step"] for c in record["checkpoints"]] == [2, 4, 6] and record["compare"] == "base"
    assert all(p["n"] == 6 and p["score"]["n"] == 6 for c in record["checkpoints"] for p in c["per_alpha"])
    assert stacks(server) == {"after": "checkpoint-6", "before": FULL_BASE}
    assert texts(base_out / "checkpoint-6") == texts(reference)  # in place == served from the start
    assert texts(base_out / "checkpoint-2") != texts(base_out / "checkpoint-6")

    previous_out = tmp_path / "previous"
    assert cli(monitor_args(server, full_run, previous_out, prompts, "--compare", "previous")) == 0
    assert stacks(server) == {"after": "checkpoint-6", "before": "checkpoint-4"}
    assert json.loads((previous_out / "monitor.json").read_text())["compare"] == "previous"
    # checkpoint-2 is compared with the base under both: the same samples.
    assert texts(previous_out / "checkpoint-2") == texts(base_out / "checkpoint-2")
    assert texts(previous_out / "checkpoint-6") != texts(base_out / "checkpoint-6")

    capsys.readouterr()
    assert cli(monitor_args(server, full_run, base_out, prompts)) == 0  # resume: nothing to do
    assert "0 checkpoints studied by this run" in capsys.readouterr().out
    assert cli(monitor_args(server, full_run, base_out, prompts, "--compare", "previous")) == 2
