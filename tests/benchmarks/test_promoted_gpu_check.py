"""benchmarks/promoted_gpu_check.py on the CPU, as the lead runs it on a GPU: as a file, with --out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_runs_as_a_file_prints_a_table_and_writes_json(tmp_path):
    out = tmp_path / "check.json"
    args = [sys.executable, "benchmarks/promoted_gpu_check.py", "--device", "cpu", "--vocab", "4096",
            "--batches", "1,3", "--iters", "1", "--out", str(out)]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout and "ms/call" in done.stdout
    result = json.loads(out.read_text())
    assert [c["rows"] for c in result["cases"]] == [1, 3]
    assert all(c["promoted_diff_max_abs_error"] < 1e-4 and c["packed_shape"] == [c["rows"], 43] for c in result["cases"])


def test_without_cuda_it_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA run is the check there")
    done = subprocess.run([sys.executable, "benchmarks/promoted_gpu_check.py", "--out", str(tmp_path / "x.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--device cpu" in done.stderr
