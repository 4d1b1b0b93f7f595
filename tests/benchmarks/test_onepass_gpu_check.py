"""benchmarks/onepass_gpu_check.py as a lent GPU machine runs it: as a file, torch only; on CPU a
smoke run with the tiny shape, and without CUDA a clear refusal."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "benchmarks/onepass_gpu_check.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cpu_smoke_run_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "check.json"
    done = _run("--device", "cpu", "--models", "tiny", "--batches", "1,3", "--layers", "2", "--iters", "1", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "two/one" in done.stdout and "PASS" in done.stdout and "Expected:" in done.stdout
    result = json.loads(out.read_text())
    assert [c["rows_per_stack"] for c in result["cases"]] == [1, 3]
    assert all(c["layers"] == 2 and c["max_rel_row_error"] < 2e-2 for c in result["cases"])
    assert result["shapes"]["tiny"]["hidden"] == 64


@pytest.mark.parametrize(("args", "message"), [
    (("--models", "llama-70b"), "unknown llama-70b"),
    (("--batches", "1,x"), "comma-separated integers"),
    (("--layers", "0"), "at least 1"),
])
def test_bad_arguments_are_refused_by_name(tmp_path, args, message):
    done = _run(*args, "--device", "cpu", "--out", str(tmp_path / "x.json"))
    assert done.returncode == 2 and message in done.stderr


def test_without_cuda_it_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA run is the check there")
    done = _run("--out", str(tmp_path / "x.json"))
    assert done.returncode == 2 and "no CUDA device" in done.stderr and "--device cpu" in done.stderr
    assert not (tmp_path / "x.json").exists()
