"""`--allow-runtime-adapters` and its limits: read from flags or the environment, validated before
anything starts, and translated into vLLM's LoRA options (LoRA on even with no start-up adapter)."""

from __future__ import annotations

import pytest

from api import server
from api.adapter_routing import AdapterRouting
from api.settings import parse_settings
from engine.config import RUNTIME_MIN_LORA_RANK, RUNTIME_MIN_LORAS, engine_kwargs

PAIR = ["--model-after", "a", "--model-before", "b"]
ENV = ("LDA_ALLOW_RUNTIME_ADAPTERS", "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "LDA_MAX_LORAS", "LDA_MAX_LORA_RANK",
       "LDA_AFTER_ADAPTERS")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tiny(llama_pair) -> list[str]:
    """A pair whose configs exist (engine_kwargs reads the after model's architectures)."""
    return ["--model-after", str(llama_pair.after), "--model-before", str(llama_pair.before)]


def test_off_by_default_and_no_lora_without_adapters(tiny):
    s = parse_settings(tiny)
    assert not s.allow_runtime_adapters and not s.config.pair.lora_enabled
    assert "enable_lora" not in engine_kwargs(s.config)


@pytest.mark.parametrize(
    ("argv", "env"),
    [(["--allow-runtime-adapters"], {}), ([], {"LDA_ALLOW_RUNTIME_ADAPTERS": "1"}),
     ([], {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"})],
)
def test_the_flag_or_either_env_var_turns_lora_on_with_room_to_add(monkeypatch, tiny, argv, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    s = parse_settings([*tiny, *argv])
    assert s.allow_runtime_adapters and s.config.pair.lora_enabled and not s.config.pair.adapters
    kwargs = engine_kwargs(s.config)
    assert kwargs["enable_lora"] and kwargs["max_lora_rank"] == RUNTIME_MIN_LORA_RANK
    assert kwargs["max_loras"] == kwargs["max_cpu_loras"] == RUNTIME_MIN_LORAS
    assert "lora_target_modules" not in kwargs  # adapters to come may target any module


def test_ours_wins_over_vllms_switch(monkeypatch):
    monkeypatch.setenv("LDA_ALLOW_RUNTIME_ADAPTERS", "0")
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "1")
    assert not parse_settings(PAIR).allow_runtime_adapters


def test_limits_are_configurable(monkeypatch, tiny):
    monkeypatch.setenv("LDA_MAX_LORAS", "9")
    s = parse_settings([*tiny, "--allow-runtime-adapters", "--max-lora-rank", "64"])
    assert (s.config.pair.max_loras, s.config.pair.max_lora_rank) == (9, 64)
    assert engine_kwargs(s.config)["max_loras"] == 9


def test_the_same_model_on_both_sides_shares_its_weights():
    s = parse_settings(["--model-after", "m", "--model-before", "m", "--allow-runtime-adapters"])
    assert s.config.pair.shares_base


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--allow-runtime-adapters", "--max-loras", "0"], {}, "max_loras must be >= 1 and >= the 0 adapters given at start-up; got 0 (set by --max-loras or LDA_MAX_LORAS)"),
        (["--allow-runtime-adapters", "--max-lora-rank", "12"], {}, "max_lora_rank must be one of"),
        ([], {"LDA_ALLOW_RUNTIME_ADAPTERS": "maybe"}, "LDA_ALLOW_RUNTIME_ADAPTERS must be true or false"),
        (["--allow-runtime-adapters"], {"LDA_MAX_LORAS": "some"}, "LDA_MAX_LORAS must be of type int"),
    ],
)
def test_bad_values_exit_2_naming_the_setting(monkeypatch, capsys, argv, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert server.cli([*PAIR, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_routing_without_a_start_up_adapter_runs_the_after_model_for_the_served_name():
    routing = AdapterRouting("lda", [], has_default=False)
    assert routing.resolve(None) is None and routing.resolve("lda") is None
    payload = {"model": "lda"}
    assert routing.route(payload) is None and payload["model"] == "lda"
    routing.add("ckpt-100")
    assert routing.resolve("ckpt-100") == "ckpt-100" and routing.resolve(None) is None
    routing.remove("ckpt-100")
    with pytest.raises(LookupError, match="`ckpt-100` does not exist. Models served: lda"):
        routing.resolve("ckpt-100")


def test_routing_with_start_up_adapters_keeps_the_first_as_default():
    routing = AdapterRouting("lda", ["small"])
    routing.add("ckpt-100")
    assert routing.resolve("lda") == "small" and routing.names() == ["lda", "small", "ckpt-100"]


@pytest.mark.parametrize("allowed", [False, True])
def test_vllms_own_adapter_routes_are_replaced_by_ours_only_when_allowed(allowed):
    """vLLM mounts its unchecked routes when VLLM_ALLOW_RUNTIME_LORA_UPDATING is set; they would
    answer before ours (the first matching route wins). Not allowed, nothing of ours is mounted:
    the refusal of every unserved path answers them (the install order of `api.server.install`)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from api.access import ADAPTER_PATHS
    from api.routes import refuse_unserved, served_paths
    from api.runtime_adapters import load_lora_adapter, replace_vllm_routes, unload_lora_adapter

    app = FastAPI()
    for path in ADAPTER_PATHS:
        app.post(path)(lambda: "vllm's")
    replace_vllm_routes(app, allowed)
    mounted = {r.path: r.endpoint for r in app.router.routes if getattr(r, "path", None) in ADAPTER_PATHS}
    ours = {"/v1/load_lora_adapter": load_lora_adapter, "/v1/unload_lora_adapter": unload_lora_adapter}
    assert mounted == (ours if allowed else {})
    if not allowed:
        refuse_unserved(app, served_paths(False, allow_runtime_adapters=False))
        for path in ADAPTER_PATHS:
            r = TestClient(app).post(path, json={"lora_name": "x", "lora_path": "y"})
            message = r.json()["error"]["message"]
            assert r.status_code == 404 and "--allow-runtime-adapters, or LDA_ALLOW_RUNTIME_ADAPTERS=1" in message
