"""Tensor, data and pipeline parallel settings, without an engine: the per-rank CPU binding, vLLM's
spellings after `--`, and the start-up refusals (pipeline parallel, fewer cores than ranks)."""

from __future__ import annotations

import os

import pytest

from api import server
from api.settings import parse_settings
from engine.env import BINDING_VARS
from engine.config import EngineOptions, LDAConfig, PairConfig, cpu_binding_env, parallel_kwargs, prepare_process

PAIR = ["--model-after", "a", "--model-before", "b"]
PARALLEL_ENV = ("TENSOR_PARALLEL_SIZE", "DATA_PARALLEL_SIZE", "DATA_PARALLEL_SIZE_LOCAL", "PIPELINE_PARALLEL_SIZE",
                "DISTRIBUTED_EXECUTOR_BACKEND")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (*PARALLEL_ENV, *BINDING_VARS):
        monkeypatch.setenv(name, "")  # so that monkeypatch restores each afterwards
        monkeypatch.delenv(name)


def test_one_core_list_per_rank():
    assert cpu_binding_env({0, 1}, ranks=2)["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert cpu_binding_env({0, 1, 2, 3}, ranks=2)["VLLM_CPU_OMP_THREADS_BIND"] == "0-1|2-3"
    assert cpu_binding_env(set(range(8)), ranks=4)["VLLM_CPU_OMP_THREADS_BIND"] == "0-1|2-3|4-5|6-7"
    # The remainder stays unbound (for the API server and engine core), never a rank with more.
    assert cpu_binding_env({0, 1, 2}, ranks=2)["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    assert cpu_binding_env({0, 1, 2, 3}, ranks=1)["VLLM_CPU_OMP_THREADS_BIND"] == "0-3"


def test_fewer_cores_than_ranks_is_refused_naming_both():
    with pytest.raises(ValueError, match=r"4 CPU ranks .* need at least 4 cores; this process may use 2 \(0-1\)"):
        cpu_binding_env({0, 1}, ranks=4)


@pytest.mark.parametrize(
    "engine, ranks",
    [
        (EngineOptions(device="cpu", tensor_parallel_size=2), 2),
        (EngineOptions(device="cpu", data_parallel_size=2), 2),
        (EngineOptions(device="cpu", tensor_parallel_size=2, data_parallel_size=2), 4),
        (EngineOptions(device="cpu", tensor_parallel_size=2, data_parallel_size=4, data_parallel_size_local=1), 2),
    ],
)
def test_prepare_process_binds_every_local_rank(monkeypatch, engine, ranks):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert engine.local_ranks == ranks
    prepare_process(LDAConfig(PairConfig("a", "b"), engine=engine))
    lists = os.environ["VLLM_CPU_OMP_THREADS_BIND"].split("|")
    assert len(lists) == ranks and os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"


def test_tp2_on_one_core_exits_2_before_the_engine_starts(monkeypatch, capsys):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.setattr(server, "check_pair", lambda after, before: type("Report", (), {"warnings": []})())
    assert server.cli([*PAIR, "--device", "cpu", "--tensor-parallel-size", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lda serve: 2 CPU ranks") and "lower the parallel sizes" in err and "Traceback" not in err


def test_vllm_spellings_after_the_separator_set_the_pair_options():
    settings = parse_settings([*PAIR, "--", "--data-parallel-size", "2", "-tp=2", "--max-logprobs", "5"])
    assert settings.config.engine.data_parallel_size == 2
    assert settings.config.engine.tensor_parallel_size == 2
    assert settings.vllm_args == ["--max-logprobs", "5"]  # the rest still goes to vLLM unchanged
    assert parallel_kwargs(settings.config.engine) == {"data_parallel_size": 2}


def test_environment_sets_parallel_sizes_and_the_ray_backend(monkeypatch):
    monkeypatch.setenv("DATA_PARALLEL_SIZE", "4")
    monkeypatch.setenv("DATA_PARALLEL_SIZE_LOCAL", "2")
    monkeypatch.setenv("DISTRIBUTED_EXECUTOR_BACKEND", "ray")
    engine = parse_settings(PAIR).config.engine
    assert (engine.data_parallel_size, engine.data_parallel_size_local, engine.distributed_executor_backend) == (4, 2, "ray")
    assert parallel_kwargs(engine) == {"data_parallel_size": 4, "data_parallel_size_local": 2, "distributed_executor_backend": "ray"}
    assert parallel_kwargs(EngineOptions()) == {}, "defaults pass nothing: vllm.LLM (no data parallel) is unchanged"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tensor-parallel-size", "2", "--", "-tp", "4"], "--tensor-parallel-size is given twice with different values (2 and 4"),
        (["--", "--data-parallel-size"], "--data-parallel-size after `--` needs a value"),
        (["--", "--data-parallel-size", "two"], "--data-parallel-size must be of type int; got 'two'"),
        (["--data-parallel-size", "0"], "data_parallel_size must be >= 1; got 0"),
        (["--data-parallel-size", "2", "--data-parallel-size-local", "3"], "data_parallel_size_local must be in 0..data_parallel_size=2"),
        (["--distributed-executor-backend", "slurm"], "distributed_executor_backend must be one of mp, ray"),
        (["--pipeline-parallel-size", "2"], "pipeline_parallel_size=2: the pair model does not support pipeline parallel"),
        (["--", "-pp", "2"], "pipeline_parallel_size=2: the pair model does not support"),
    ],
)
def test_bad_parallel_settings_exit_2_in_one_line(capsys, argv, message):
    assert server.cli([*PAIR, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lda serve: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_pipeline_refusal_says_what_to_use_instead(capsys):
    assert server.cli([*PAIR, "--", "--pipeline-parallel-size", "2"]) == 2
    err = capsys.readouterr().err
    assert "tensor parallel (--tensor-parallel-size" in err and "data parallel (--data-parallel-size)" in err


def test_the_ray_backend_on_cpu_is_refused_at_start(monkeypatch, capsys):
    monkeypatch.setattr(server, "check_pair", lambda after, before: type("Report", (), {"warnings": []})())
    assert server.cli([*PAIR, "--device", "cpu", "--distributed-executor-backend", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lda serve: distributed_executor_backend=ray needs GPUs") and "Traceback" not in err
