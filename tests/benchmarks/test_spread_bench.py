"""benchmarks/spread_bench.py without servers: how the setups split the cores, the rotation, the
per-round ratios and the report; the servers and the study it drives are tested elsewhere."""

from __future__ import annotations

import json
import os

import pytest

from benchmarks import spread_bench
from benchmarks.spread_bench import Row, SpreadConfig


def test_two_servers_get_disjoint_halves():
    assert spread_bench.halves({0, 1}) == ({0}, {1})
    assert spread_bench.halves({0, 1, 2, 3, 4}) == ({0, 1}, {2, 3})


def test_every_round_runs_every_setup_starting_elsewhere():
    orders = [spread_bench.rotated(("one", "dp2", "two"), k) for k in range(3)]
    assert [o[0] for o in orders] == ["one", "dp2", "two"]
    assert all(sorted(o) == ["dp2", "one", "two"] for o in orders)


def test_ratios_pair_setups_within_a_round():
    rows = [
        Row("one", 0, 10, 1000, 10.0, 0), Row("dp2", 0, 10, 1000, 5.0, 0), Row("two", 0, 10, 1000, 4.0, 0),
        Row("one", 1, 10, 1000, 20.0, 0), Row("dp2", 1, 10, 1000, 10.0, 0),
    ]
    by = {e["ratio"]: e for e in spread_bench.ratios(rows)}
    assert by["dp2/one"]["per_round"] == [2.0, 2.0]
    assert by["two/one"]["per_round"] == [2.5]  # round 1 has no "two"
    assert by["two/dp2"]["median"] == pytest.approx(1.25)
    report = spread_bench.format_report(rows)
    assert "| dp2/one | 2.00 | 2.00 | 2.00 | 2 |" in report and "| one | 1 | 10 | 1000 | 20.0 | 0.50 | 50.0 | 0 |" in report


def test_outputs_record_the_command_date_and_every_round(tmp_path):
    config = SpreadConfig("a", "b", tmp_path)
    paths = spread_bench.write_outputs(config, [Row("one", 0, 4, 400, 2.0, 0)], ["--rounds", "1"])
    data = json.loads(paths["json"].read_text())
    assert data["meta"]["command"] == "python -m benchmarks.spread_bench --rounds 1" and data["meta"]["date"]
    assert "shared machine" in data["meta"]["note"]
    assert data["rows"][0]["tokens_per_s"] == 200.0
    assert paths["csv"].read_text().splitlines()[0].startswith("setup,round,samples,tokens,seconds")


@pytest.mark.parametrize(
    "overrides, message",
    [({"setups": ("one", "three")}, "setups must be some of one, dp2, two"), ({"rounds": 0}, "rounds must be >= 1"),
     ({"prompts": 99}, "prompts must be <= 20")],
)
def test_bad_settings_name_the_field(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        SpreadConfig("a", "b", tmp_path, **overrides)


def test_servers_get_their_own_binding_and_loopback(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    env = spread_bench.server_env(SpreadConfig("a", "b", tmp_path), 8123, data_parallel=2)
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env, "each server derives its binding from its own cores"
    assert env["DATA_PARALLEL_SIZE"] == "2" and env["HOST"] == env["VLLM_HOST_IP"] == "127.0.0.1"
    assert env["PORT"] == "8123" and os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
