"""`lda selftest`'s verdicts and arguments, without starting an engine (tests/engine/test_compiled.py
runs its engines for real)."""

from __future__ import annotations

import pytest

from demo import selftest


def _result(mode: str, mismatches: list[str]) -> selftest.ModeResult:
    expected = [[1, 2]] * 12
    return selftest.ModeResult(mode, 1.0, expected[:-1] + [[3]] if mismatches else expected, expected, mismatches)


def test_mismatches_name_prompt_alpha_and_tokens():
    batch = [selftest.Case("p", [1], 0.0), selftest.Case("q", [2], 5.0)]
    assert selftest.mismatches(batch, [[1, 2], [3]], [[1, 2], [4]]) == ["prompt 'q' alpha 5: expected [3], got [4]"]


def test_exit_status_and_one_line_per_mode(monkeypatch, capsys):
    monkeypatch.setattr(selftest, "resolve_device", lambda device: "cpu")
    monkeypatch.setattr(
        selftest, "run", lambda device, modes, workdir: [_result("eager", []), _result("compiled-cold", ["prompt 'q' ..."])]
    )
    assert selftest.cli(["--modes", "eager,compiled-cold"]) == 1
    out = capsys.readouterr().out
    assert "PASS eager" in out and "FAIL compiled-cold" in out and "11/12 sequences match" in out
    monkeypatch.setattr(selftest, "run", lambda device, modes, workdir: [_result("eager", [])])
    assert selftest.cli(["--modes", "eager"]) == 0


@pytest.mark.parametrize("argv", [["--modes", "warm"], ["--modes", "compiled-warm"], ["--device", "tpu"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        selftest.cli(argv)
    assert exit_.value.code == 2
    assert "lda selftest: error:" in capsys.readouterr().err


def test_cuda_without_a_gpu_is_refused(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert selftest.cli(["--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_one_aot_artifact_for_two_stacks_is_a_failure(tmp_path):
    root = tmp_path / "torch_compile_cache" / "torch_aot_compile"
    assert selftest.aot_problems(tmp_path) == []  # AOT compile off: nothing to check
    (root / "a" / "rank_0_0").mkdir(parents=True)
    (root / "a" / "rank_0_0" / "model").write_bytes(b"")
    assert "both stacks use one AOT compile-cache entry" in selftest.aot_problems(tmp_path)[0]
    (root / "b" / "rank_0_0").mkdir(parents=True)
    (root / "b" / "rank_0_0" / "model").write_bytes(b"")
    assert selftest.aot_problems(tmp_path) == []


def test_lora_mode_on_cpu_says_it_ran_eager(monkeypatch, capsys):
    monkeypatch.setattr(selftest, "resolve_device", lambda device: "cpu")
    monkeypatch.setattr(selftest, "run", lambda device, modes, workdir: [_result(m, []) for m in modes])
    assert selftest.cli(["--modes", "lora"]) == 0
    out = capsys.readouterr().out
    assert "PASS lora" in out and "vLLM 0.32 runs LoRA eager on a CPU" in out
    assert selftest.cli(["--modes", "eager"]) == 0
    assert "LoRA eager" not in capsys.readouterr().out
