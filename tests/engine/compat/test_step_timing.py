"""The step-timing diagnostic's records and summary (the worker hooks run in tests/benchmarks)."""

import json

import pytest

from engine.compat import step_timing


def _step(tokens, requests, step, **parts):
    return {"tokens": tokens, "requests": requests, "step": step, **parts}


def test_step_log_writes_each_step_at_once_and_skips_empty_steps(tmp_path):
    log = step_timing.StepLog(tmp_path)
    log.end()  # no step begun: nothing recorded, no file
    assert not log.path.exists()
    written = []
    for tokens in (4, 0, 4, 4):
        log.begin(tokens, 4)
        log.add("forward", 0.25)
        log.add("forward", 0.25)  # parts add up within a step (the pair's two stacks, say)
        log.end()
        written.append(len(log.path.read_text().splitlines()))  # on disk at once, no flush
    assert written == [1, 1, 2, 3]
    records = [json.loads(line) for line in log.path.read_text().splitlines()]
    assert len(records) == 3
    assert all(r["forward"] == 0.5 and r["step"] >= 0 and r["tokens"] == 4 for r in records)
    assert step_timing.load_steps(tmp_path) == records


def test_summary_takes_decode_medians_per_batch_size_and_prefill_totals():
    steps = [_step(64, 64, s, forward=s - 0.01) for s in (0.2, 0.3, 0.9)]
    steps += [_step(16, 16, 0.1)] * 2 + [_step(2048, 17, 2.0, forward=1.9), _step(1024, 8, 1.0, forward=0.9)]
    decode64, prefill = step_timing.summarize(steps, batch_sizes=(64, 4))
    assert (decode64.kind, decode64.requests, decode64.steps, decode64.tokens) == ("decode", 64, 3, 192)
    assert decode64.ms["step"] == pytest.approx(300) and decode64.ms["forward"] == pytest.approx(290)
    assert "after" not in decode64.ms and "logits" not in prefill.ms  # parts no step recorded
    assert (prefill.kind, prefill.steps, prefill.tokens, prefill.requests) == ("prefill", 2, 3072, 25)
    assert prefill.ms["step"] == pytest.approx(3.0) and prefill.ms["forward"] == pytest.approx(2.8)
    # Without batch sizes: every size seen at least min_steps times.
    assert [r.requests for r in step_timing.summarize(steps, min_steps=2) if r.kind == "decode"] == [16, 64]


def test_cli_prints_the_table_or_says_what_is_wrong(tmp_path, capsys):
    assert step_timing.main([str(tmp_path / "missing")]) == 2
    assert step_timing.main([str(tmp_path)]) == 1
    assert "no steps" in capsys.readouterr().err
    (tmp_path / "steps-1.jsonl").write_text("".join(json.dumps(_step(8, 8, 0.05)) + "\n" for _ in range(5)))
    assert step_timing.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "decode" in out and "50.0" in out and " - " in out
