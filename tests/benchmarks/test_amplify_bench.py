"""The amplification micro-benchmark runs at small sizes and reports sane numbers."""

import json

import torch

from benchmarks import amplify_bench


def test_effective_bytes_counts_two_reads_and_a_float32_write():
    assert amplify_bench.effective_bytes(2, 10, torch.bfloat16) == 2 * 10 * (2 + 2 + 4)
    assert amplify_bench.effective_bytes(2, 10, torch.float32) == 2 * 10 * (4 + 4 + 4)


def test_cli_runs_small_sizes_and_writes_json(tmp_path, capsys):
    out = tmp_path / "amp.json"
    code = amplify_bench.cli(["--rows", "1,4", "--vocab", "512", "--dtypes", "bf16,fp32",
                              "--device", "cpu", "--min-time", "0.005", "--json", str(out)])
    assert code == 0
    assert "GB/s" in capsys.readouterr().out
    data = json.loads(out.read_text())
    results = data["results"]
    assert {(r["rows"], r["dtype"]) for r in results} == {(1, "bf16"), (4, "bf16"), (1, "fp32"), (4, "fp32")}
    for r in results:
        assert r["device"] == "cpu" and r["vocab"] == 512
        assert r["us_per_call"] > 0 and r["gb_per_s"] > 0 and r["naive_us_per_call"] > 0
    assert data["environment"]["torch"] == torch.__version__


def test_cli_refuses_bad_arguments(capsys):
    assert amplify_bench.cli(["--dtypes", "int8"]) == 2
    assert amplify_bench.cli(["--device", "tpu"]) == 2
