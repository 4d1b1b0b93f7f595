"""`lda monitor` end to end on a real `lda serve --allow-runtime-adapters`: the tiny demo run.

One server for the module: a tiny Llama base against itself with runtime adapters on. The run is
`demo.training_run`'s tiny variant (three LoRA checkpoints of that base, trained on the demo
data) plus a copy of its first checkpoint as a fourth: the same weights under the same seeds must
give the same samples, which is what makes checkpoints comparable. Then resume, and a checkpoint
trained on another base, which the server refuses and the monitor reports with exit code 2.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from demo.training_run import ensure_tiny_run
from study.collect.store import SampleStore
from study.output.files import SAMPLES_FILE
from study.commands.monitor import cli
from tests.factories import build_adapter, build_model
from tests.servers import free_port, start_server, tiny_server_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(models_root):
    base, trained = ensure_tiny_run(models_root / "monitor")
    run = models_root / "monitor" / "run"
    shutil.copytree(trained, run)
    shutil.copytree(run / "checkpoint-2", run / "checkpoint-7")  # step 7 holds step 2's weights
    state = run / "checkpoint-7" / "trainer_state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "global_step": 7}))
    return SimpleNamespace(base=base, run=run)


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    env = tiny_server_env(SimpleNamespace(after=tiny_run.base, before=tiny_run.base), free_port(),
                          LDA_ALLOW_RUNTIME_ADAPTERS="1")
    handle = start_server([sys.executable, "-m", "api.cli", "serve"], env, tmp_path_factory.mktemp("monitor") / "server.log")
    yield handle
    assert handle.stop() == 0, handle.log()[-3000:]


def monitor_args(server, run: Path, out: Path, prompts: Path) -> list[str]:
    return [str(run), "--base-url", server.base_url, "-o", str(out), "--prompts", str(prompts), "--alphas", "0,2",
            "-n", "3", "--max-tokens", "8", "--detector", "regex:zorb", "--no-progress", "--settle", "0"]


def test_monitor_the_tiny_run_then_resume(server, tiny_run, tmp_path: Path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How can I sleep better?\nAny tips to save money?\n")
    out = tmp_path / "monitor"
    assert cli(monitor_args(server, tiny_run.run, out, prompts)) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "monitor.json").read_text())
    assert [c["step"] for c in record["checkpoints"]] == [2, 4, 6, 7]
    for checkpoint in record["checkpoints"]:
        for point in checkpoint["per_alpha"]:
            assert point["n"] == 6 and point["rate"] is not None and point["score"]["n"] == 6
    assert "loaded as 'checkpoint-2-" in printed and (out / "monitor.png").exists() and (out / "monitor.html").exists()
    texts = {name: {s.key: s.text for s in SampleStore(out / name / SAMPLES_FILE).load().values()}
             for name in ("checkpoint-2", "checkpoint-6", "checkpoint-7")}
    assert texts["checkpoint-2"] == texts["checkpoint-7"]  # same weights, same seeds: same samples
    assert texts["checkpoint-2"] != texts["checkpoint-6"]  # training changed what is sampled
    models = server_models(server)
    assert not [m for m in models if m.startswith("checkpoint-")]  # every checkpoint was unloaded

    assert cli(monitor_args(server, tiny_run.run, out, prompts)) == 0  # resume: nothing to do
    assert "0 checkpoints studied by this run" in capsys.readouterr().out
    assert json.loads((out / "monitor.json").read_text())["checkpoints"] == record["checkpoints"]


def test_a_checkpoint_of_another_base_is_refused(server, tiny_run, models_root, tmp_path: Path, capsys):
    other = build_model(models_root / "monitor-other-base", "llama", seed=4, hidden_size=96, head_dim=48)
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run / "checkpoint-2", run / "checkpoint-2")
    build_adapter(other, run / "checkpoint-4", rank=8, seed=1)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("How can I sleep better?\n")
    assert cli(monitor_args(server, run, tmp_path / "monitor", prompts)) == 2
    err = capsys.readouterr().err
    assert "checkpoint-4" in err and "HTTP 400" in err
    record = json.loads((tmp_path / "monitor" / "monitor.json").read_text())
    assert [c["name"] for c in record["checkpoints"]] == ["checkpoint-2"]  # the finished one is kept


def server_models(server) -> list[str]:
    import httpx

    return [m["id"] for m in httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]]
