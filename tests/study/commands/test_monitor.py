"""`lda monitor` against a fake pair server with runtime adapters: finding checkpoints, the same
seeds at every checkpoint, outputs, the detection rule, resume, --watch and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from study.collect.checkpoints import find_checkpoints
from study.commands.monitor import cli
from study.output.monitor_report import AlphaPoint, CheckpointResult, first_detection, first_detection_by_estimate
from study.records import Checkpoint
from tests.study.fake_pair import KEYWORD, FakePair, write_checkpoint

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def fake():
    with FakePair() as server:
        yield server


def make_run(root: Path, steps=(2, 4, 6)) -> Path:
    run = root / "run"
    for step in steps:
        write_checkpoint(run / f"checkpoint-{step}", step)
    return run


def args(fake: FakePair, run: Path, prompts: Path, *extra: str) -> list[str]:
    return [str(run), "--base-url", fake.url, "--prompts", str(prompts), "--detector", f"keyword:{KEYWORD}",
            "--alphas", "0,2", "-n", "10", "--no-progress", "--settle", "0", "--concurrency", "8", *extra]


def monitor_json(run: Path) -> dict:
    return json.loads((run / "monitor" / "monitor.json").read_text())


# --------------------------------------------------------------------------- finding checkpoints


def test_trainer_layout_in_step_order(tmp_path: Path):
    run = make_run(tmp_path, steps=(10, 9, 100))
    (run / "runs").mkdir()  # the Trainer's tensorboard folder: not a checkpoint
    (run / "monitor").mkdir()
    found = find_checkpoints(run, settle_s=0, skip=(run / "monitor",))
    assert [(c.name, c.step, c.kind) for c in found] == [
        ("checkpoint-9", 9, "adapter"), ("checkpoint-10", 10, "adapter"), ("checkpoint-100", 100, "adapter")]


def test_a_plain_list_of_adapter_folders_and_a_full_model(tmp_path: Path):
    run = tmp_path / "adapters"
    write_checkpoint(run / "epoch-3", 3).joinpath("trainer_state.json").unlink()
    write_checkpoint(run / "epoch-1", 1).joinpath("trainer_state.json").unlink()
    full = run / "merged-2"
    full.mkdir()
    (full / "config.json").write_text("{}")
    (full / "model.safetensors").write_bytes(b"x")
    assert [(c.name, c.step, c.kind) for c in find_checkpoints(run, settle_s=0)] == [
        ("epoch-1", 1, "adapter"), ("merged-2", 2, "full"), ("epoch-3", 3, "adapter")]


def test_a_checkpoint_still_being_written_waits(tmp_path: Path):
    run = make_run(tmp_path, steps=(1,))
    assert find_checkpoints(run, settle_s=60) == []  # weights written just now
    (run / "checkpoint-1" / "adapter_model.safetensors").unlink()
    assert find_checkpoints(run, settle_s=0) == []  # no weights yet


# --------------------------------------------------------------------------- the rule and themes


def _result(step: int, points: list[tuple[float, float | None, float | None]]) -> CheckpointResult:
    checkpoint = Checkpoint(f"checkpoint-{step}", Path(f"/run/checkpoint-{step}"), step, "adapter")
    return CheckpointResult(checkpoint, [AlphaPoint(a, 100, 0, 0.0, low, high, None) for a, low, high in points], [])


def test_first_detection_is_the_first_lower_bound_above_the_first_upper_bound():
    results = [
        _result(10, [(0.0, 0.0, 0.04), (2.0, 0.0, 0.05)]),
        _result(20, [(0.0, 0.01, 0.06), (2.0, 0.04, 0.15)]),  # alpha 2: 0.04 < 0.05, not yet
        _result(30, [(0.0, 0.03, 0.10), (2.0, 0.06, 0.20)]),  # alpha 2 detected
        _result(40, [(0.0, 0.05, 0.12), (2.0, 0.30, 0.50)]),  # alpha 0 detected
    ]
    detected = first_detection(results, (0.0, 2.0, 4.0))
    assert detected[2.0].step == 30 and detected[0.0].step == 40
    assert detected[4.0] is None  # no samples at that alpha
    assert first_detection(results[:1], (0.0,)) == {0.0: None}  # a baseline alone detects nothing


def _estimated(step: int, rate, low, high, wilson_high_at_1: float = 0.05) -> CheckpointResult:
    result = _result(step, [(1.0, 0.0, wilson_high_at_1)])
    estimate = {"target_alpha": 0.0, "method": "hierarchical", "rate": rate, "ci_low": low, "ci_high": high,
                "reason": None if rate is not None else "no hits at any alpha"}
    return CheckpointResult(result.checkpoint, result.points, [], estimate)


def test_detection_by_the_estimate_is_the_first_lower_bound_above_the_baselines_upper_bound():
    results = [
        _estimated(10, 0.001, 0.0002, 0.004),
        _estimated(20, None, None, None),  # no estimate: never a detection
        _estimated(30, 0.003, 0.001, 0.01),  # 0.001 < 0.004: not yet
        _estimated(40, 0.02, 0.008, 0.05),
    ]
    assert first_detection_by_estimate(results).step == 40
    assert first_detection_by_estimate(results[:1]) is None
    # A baseline without an estimate (no hits yet) bounds the target's rate by the Wilson upper bound
    # at the smallest alpha sampled above the target (the rate grows with alpha).
    no_hits = _estimated(10, None, None, None, wilson_high_at_1=0.0005)
    assert first_detection_by_estimate([no_hits, *results[2:]]).step == 30


# --------------------------------------------------------------------------- end to end on the fake


def test_monitor_a_run_then_resume(fake: FakePair, tmp_path: Path, prompts: Path, capsys):
    run = make_run(tmp_path)
    assert cli(args(fake, run, prompts)) == 0
    out = capsys.readouterr().out
    record = monitor_json(run)
    assert [c["step"] for c in record["checkpoints"]] == [2, 4, 6]
    # Every checkpoint was loaded, studied on its own name, and unloaded.
    loads, unloads = fake.calls("load"), fake.calls("unload")
    assert [Path(b["lora_path"]).name for b in loads] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert [b["lora_name"] for b in unloads] == [b["lora_name"] for b in loads] and not fake.loaded
    # The same (prompt, alpha, seed) draws at every checkpoint: only the weights differ.
    draws = {}
    for body in fake.calls("chat"):
        draws.setdefault(body["model"], set()).add((body["messages"][-1]["content"], body["alpha"], body["seed"]))
    assert len(draws) == 3 and len({frozenset(d) for d in draws.values()}) == 1
    assert all(len(d) == 3 * 2 * 10 for d in draws.values())
    # Paired seeds: the fake's hit probability only rises, so every later checkpoint has at least
    # the hits of an earlier one, alpha by alpha.
    for alpha in (0.0, 2.0):
        points = [p for c in record["checkpoints"] for p in c["per_alpha"] if p["alpha"] == alpha]
        assert all(p["n"] == 30 for p in points)
        assert [p["hits"] for p in points] == sorted(p["hits"] for p in points)
        assert points[-1]["score"]["max"] == pytest.approx((0.4 * 6 + 0.3) / 4)  # the mean diff of a hit
    _check_the_rule(record)
    assert "first detection" in out and "alpha 2: " in out
    _check_the_estimate_rule(record)
    assert "first detection by the path estimate" in out and "path estimate at alpha 0" in out
    html = (run / "monitor" / "monitor.html").read_text()
    assert all(f"checkpoint-{s}" in html for s in (2, 4, 6)) and "data:image/png;base64," in html
    assert (run / "monitor" / "monitor.png").stat().st_size > 10_000

    # Resume: nothing left to do, nothing loaded or sampled; the report is the same.
    requests = len(fake.requests)
    assert cli(args(fake, run, prompts)) == 0
    assert len(fake.requests) == requests and monitor_json(run)["checkpoints"] == record["checkpoints"]
    # A new checkpoint: only it is studied.
    write_checkpoint(run / "checkpoint-8", 8)
    assert cli(args(fake, run, prompts)) == 0
    assert [Path(b["lora_path"]).name for b in fake.calls("load")][3:] == ["checkpoint-8"]
    assert [c["step"] for c in monitor_json(run)["checkpoints"]] == [2, 4, 6, 8]


def _check_the_estimate_rule(record: dict) -> None:
    """Every checkpoint has its alpha-0 estimate, and first_detection_estimate is what the stated
    rule gives on the JSON's own numbers."""
    estimates = [(c["name"], c["estimate"]) for c in record["checkpoints"]]
    assert all(e["target_alpha"] == 0.0 for _, e in estimates)
    first = estimates[0][1]
    if first["rate"] is not None:
        baseline = first["ci_high"]
    else:
        baseline = min((p for p in record["checkpoints"][0]["per_alpha"] if p["n"]), key=lambda p: p["alpha"])["ci_high"]
    expected = next((name for name, e in estimates[1:] if e["rate"] is not None and e["ci_low"] > baseline), None)
    detection = record["first_detection_estimate"]
    assert (detection and detection["checkpoint"]) == expected
    assert any(e["rate"] is not None for _, e in estimates)  # the fake's hits rise with alpha and step


def _check_the_rule(record: dict) -> None:
    """first_detection in the JSON is what the stated rule gives on the JSON's own numbers."""
    for alpha, detection in record["first_detection"].items():
        points = [(c["name"], p) for c in record["checkpoints"] for p in c["per_alpha"] if f"{p['alpha']:g}" == alpha]
        baseline = points[0][1]["ci_high"]
        expected = next((name for name, p in points[1:] if p["ci_low"] > baseline), None)
        assert (detection and detection["checkpoint"]) == expected


def test_themes_and_what_is_new_since_the_previous_checkpoint(fake: FakePair, tmp_path: Path, prompts: Path):
    run = make_run(tmp_path)
    assert cli(args(fake, run, prompts)) == 0
    checkpoints = monitor_json(run)["checkpoints"]
    themes = [[t["text"].lower() for t in c["per_alpha"][1]["top_themes"]] for c in checkpoints]  # alpha 2
    # The fake's keyword diff is 0.8 at step 2 (below the themes' 1.0 threshold), 1.6 at step 4.
    assert "zorblax" not in themes[0] and "zorblax" in themes[1] and "zorblax" in themes[2]
    assert [c["per_alpha"][1]["new_themes"] for c in checkpoints] == [[], [KEYWORD], []]
    hits = checkpoints[1]["per_alpha"][1]["hits"]
    assert checkpoints[1]["per_alpha"][1]["top_themes"][0]["samples_per_alpha"] == {"2": hits}


def test_interrupted_checkpoint_is_redone_on_resume(fake: FakePair, tmp_path: Path, prompts: Path):
    run = make_run(tmp_path, steps=(2,))
    assert cli(args(fake, run, prompts)) == 0
    (run / "monitor" / "checkpoint-2" / "checkpoint.json").unlink()  # as if stopped before the end
    fake.loaded["checkpoint-2-stale"] = 2
    assert cli(args(fake, run, prompts)) == 0
    assert len(fake.calls("load")) == 2 and (run / "monitor" / "checkpoint-2" / "checkpoint.json").exists()
    assert len(fake.calls("chat")) == 60  # its samples were on disk: loaded again, none redrawn


def test_an_adapter_left_loaded_is_replaced(fake: FakePair, tmp_path: Path, prompts: Path):
    from study.commands.monitor import adapter_name

    run = make_run(tmp_path, steps=(2,))
    checkpoint = find_checkpoints(run, settle_s=0)[0]
    fake.loaded[adapter_name(checkpoint)] = 99  # an interrupted monitor left it, maybe another path
    assert cli(args(fake, run, prompts)) == 0
    assert [b["lora_name"] for b in fake.calls("unload")] == [adapter_name(checkpoint)] * 2 and not fake.loaded


def test_watch_picks_up_new_checkpoints_and_stops_by_itself(fake: FakePair, tmp_path: Path, prompts: Path):
    run = make_run(tmp_path, steps=(2,))

    def trainer() -> None:
        time.sleep(1.0)
        write_checkpoint(run / ".tmp-checkpoint-4", 4).rename(run / "checkpoint-4")

    thread = threading.Thread(target=trainer)
    thread.start()
    started = time.monotonic()
    assert cli(args(fake, run, prompts, "--watch", "--poll-interval", "0.2", "--watch-timeout", "3")) == 0
    thread.join()
    assert [c["step"] for c in monitor_json(run)["checkpoints"]] == [2, 4]
    assert time.monotonic() - started < 60


def test_ctrl_c_while_watching_stops_cleanly(fake: FakePair, tmp_path: Path, prompts: Path):
    run = make_run(tmp_path, steps=(2,))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "api.cli", "monitor", *args(fake, run, prompts, "--watch", "--poll-interval", "0.2",
                                                                  "--watch-timeout", "120")]
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in process.stdout:  # bounded: the monitor stops by itself after --watch-timeout
            lines.append(line)
            if line.startswith("watching "):
                break
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    out = "".join(lines) + out
    assert process.returncode == 0, err
    assert "stopped watching" in out and monitor_json(run)["checkpoints"][0]["step"] == 2


# --------------------------------------------------------------------------- bad input


def test_a_run_without_checkpoints(fake: FakePair, tmp_path: Path, prompts: Path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli(args(fake, tmp_path / "empty", prompts)) == 2
    assert "no checkpoints in" in capsys.readouterr().err and not (tmp_path / "empty" / "monitor").exists()
    assert cli(args(fake, tmp_path / "missing", prompts)) == 2


def test_a_server_without_runtime_adapters(tmp_path: Path, prompts: Path, capsys):
    run = make_run(tmp_path)
    with FakePair(runtime=False) as server:
        assert cli(args(server, run, prompts)) == 2
    assert "--allow-runtime-adapters" in capsys.readouterr().err


def test_a_checkpoint_of_another_base_keeps_the_finished_ones(fake: FakePair, tmp_path: Path, prompts: Path, capsys):
    run = make_run(tmp_path, steps=(2,))
    write_checkpoint(run / "checkpoint-4", 4, base="some-other-model")
    write_checkpoint(run / "checkpoint-6", 6)
    assert cli(args(fake, run, prompts)) == 2
    err = capsys.readouterr().err
    assert "checkpoint-4" in err and "some-other-model" in err and "HTTP 400" in err
    assert [c["step"] for c in monitor_json(run)["checkpoints"]] == [2]
    assert not fake.loaded


def test_a_wrong_api_key(tmp_path: Path, prompts: Path, capsys):
    run = make_run(tmp_path, steps=(2,))
    with FakePair(api_key="secret") as server:
        assert cli(args(server, run, prompts, "--api-key", "wrong")) == 2
        assert "API key" in capsys.readouterr().err
        assert cli(args(server, run, prompts, "--api-key", "secret")) == 0


def test_a_full_weight_checkpoint_needs_the_before_model(fake: FakePair, tmp_path: Path, prompts: Path, capsys):
    run = tmp_path / "run"
    full = run / "checkpoint-1"
    full.mkdir(parents=True)
    (full / "config.json").write_text("{}")
    (full / "model.safetensors").write_bytes(b"x")
    assert cli(args(fake, run, prompts)) == 2
    assert "--before" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "field"), [
    (["--model", "lda"], "model"), (["--poll-interval", "0"], "poll_interval"), (["--watch-timeout", "-1"], "watch_timeout"),
])
def test_bad_flags_name_the_field(fake: FakePair, tmp_path: Path, prompts: Path, capsys, flags, field):
    assert cli(args(fake, make_run(tmp_path), prompts, *flags)) == 2
    assert field in capsys.readouterr().err
