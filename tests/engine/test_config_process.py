"""The start-up function: what it sets, that nothing else sets it, and that a refusal changes nothing."""

from __future__ import annotations

import os

import pytest

from api.server import server_env
from api.settings import parse_settings
from engine.alpha import LIMITS
from engine.config import AlphaConfig, EngineOptions, LDAConfig, PairConfig, prepare_process
from engine.config.process import RAY_ON_CPU_REFUSAL, process_env
from engine.env import BINDING_VARS, CPU_THREADS_BIND_VAR, HOST_IP_VAR, RUNTIME_LORA_VAR, V2_RUNNER_VAR


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    for name in (*BINDING_VARS, V2_RUNNER_VAR, HOST_IP_VAR, RUNTIME_LORA_VAR):
        monkeypatch.setenv(name, "")  # so that monkeypatch restores each afterwards
        monkeypatch.delenv(name)
    monkeypatch.setattr(LIMITS, "max_alpha", LIMITS.max_alpha)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})


def _config(**engine) -> LDAConfig:
    return LDAConfig(PairConfig("a", "b"), AlphaConfig(max_alpha=7.0), EngineOptions(device="cpu", **engine))


def test_process_env_only_says_what_would_be_set():
    before = dict(os.environ)
    assert process_env(_config(), os.environ) == {V2_RUNNER_VAR: "0", CPU_THREADS_BIND_VAR: "0-1", BINDING_VARS[1]: "0"}
    assert dict(os.environ) == before
    assert process_env(_config(), {CPU_THREADS_BIND_VAR: "1", V2_RUNNER_VAR: "1"}) == {}  # a user's own stands
    assert process_env(_config(cpu_bind="vllm"), {}) == {V2_RUNNER_VAR: "0"}


def test_prepare_process_sets_the_environment_and_the_alpha_bound():
    prepare_process(_config(), {"LDA_TEST_EXTRA": "x"})
    assert os.environ[V2_RUNNER_VAR] == "0" and os.environ[CPU_THREADS_BIND_VAR] == "0-1"
    assert os.environ.pop("LDA_TEST_EXTRA") == "x"
    assert LIMITS.max_alpha == 7.0


def test_a_refusal_changes_nothing():
    with pytest.raises(ValueError, match="distributed_executor_backend=ray needs GPUs"):
        prepare_process(_config(distributed_executor_backend="ray"), {"LDA_TEST_EXTRA": "x"})
    assert RAY_ON_CPU_REFUSAL.startswith("distributed_executor_backend=ray")
    assert V2_RUNNER_VAR not in os.environ and "LDA_TEST_EXTRA" not in os.environ and LIMITS.max_alpha != 7.0


def test_the_server_turns_vllms_adapter_routes_off_and_keeps_loopback_traffic_local(monkeypatch):
    pair = ["--model-after", "a", "--model-before", "b"]
    assert server_env(parse_settings(pair), {}) == {RUNTIME_LORA_VAR: "0", HOST_IP_VAR: "127.0.0.1"}
    assert server_env(parse_settings(pair), {HOST_IP_VAR: "10.0.0.2"}) == {RUNTIME_LORA_VAR: "0"}
    assert server_env(parse_settings([*pair, "--host", "0.0.0.0"]), {}) == {RUNTIME_LORA_VAR: "0"}


def _runtime_lora(adapters=()) -> LDAConfig:
    pair = PairConfig("a", "b", adapters=adapters, max_lora_rank=16, runtime_adapters=True, max_loras=4)
    return LDAConfig(pair, engine=EngineOptions(device="cpu"))


def test_rows_without_an_adapter_are_refused_where_the_cpu_guard_cannot_hold(monkeypatch):
    """With runtime adapters and none at start-up, the served name runs at LoRA slot -1; on CPU only
    the grouped ops leave such rows alone (vLLM's give them the last slot's weights)."""
    from engine.adapters import AdapterSpec
    from engine.compat import lora_cpu_ops

    assert lora_cpu_ops.grouped_ops_mismatch() is None  # the pinned vLLM: the guard holds, start
    process_env(_runtime_lora(), {})
    monkeypatch.setattr(lora_cpu_ops, "grouped_ops_mismatch", lambda: "vLLM is 0.33.0, the patch is written for 0.32.0")
    with pytest.raises(ValueError, match=r"cannot be installed here \(vLLM is 0.33.0.*LoRA slot -1.*last loaded adapter"):
        process_env(_runtime_lora(), {})
    spec = AdapterSpec("small", "/x", "a", 8, ("q_proj",))
    process_env(_runtime_lora(adapters=(spec,)), {})  # every row carries the default adapter
    gpu = _runtime_lora()
    gpu.engine.device = "cuda"
    process_env(gpu, {})  # the GPU kernels skip slot -1


def test_the_server_refuses_to_start_naming_the_slot(monkeypatch, capsys):
    from api import server
    from engine.compat import lora_cpu_ops

    monkeypatch.setattr(lora_cpu_ops, "grouped_ops_mismatch", lambda: "vLLM is 0.33.0, the patch is written for 0.32.0")
    monkeypatch.setattr(server, "check_pair", lambda after, before: type("Report", (), {"warnings": []})())
    assert server.cli(["--model-after", "a", "--model-before", "b", "--device", "cpu", "--allow-runtime-adapters"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lda serve: runtime adapters with no adapter at start-up") and "Traceback" not in err
