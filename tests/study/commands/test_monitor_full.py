"""`lda monitor` on full-weight runs against a fake pair that loads full weights in place (no
engine): one server for the run, `--compare base` and `--compare previous`, resume, bad input, and
the detector-free first detection (a rank-sum shift of the diff scores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.commands.monitor import cli
from tests.study.commands.test_monitor import args, monitor_json
from tests.study.fake_pair import FakePair, write_checkpoint


def make_full_run(root: Path, steps=(2, 4, 6)) -> Path:
    """A full-weight run as `lda demo-run --full` writes it: checkpoint-<step>/ and base/."""
    run = root / "run"
    for step in steps:
        folder = run / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"x")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (run / "base").mkdir()
    (run / "base" / "config.json").write_text("{}")
    return run


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return make_full_run(tmp_path)


@pytest.fixture
def fake(run: Path):
    with FakePair(runtime=False, weights=True, base=str((run / "base").resolve())) as server:
        yield server


def loads(fake: FakePair) -> list[tuple[str, str]]:
    return [(b["stack"], Path(b["path"]).name) for b in fake.calls("weights")]


def test_compare_base_loads_each_checkpoint_into_the_after_stack_then_resumes(fake, run, prompts, capsys):
    assert cli(args(fake, run, prompts)) == 0
    out = capsys.readouterr().out
    assert loads(fake) == [("after", "checkpoint-2"), ("after", "checkpoint-4"), ("after", "checkpoint-6")]
    record = monitor_json(run)
    assert record["compare"] == "base" and [c["step"] for c in record["checkpoints"]] == [2, 4, 6]
    hits = [p["hits"] for c in record["checkpoints"] for p in c["per_alpha"] if p["alpha"] == 2.0]
    assert hits == sorted(hits) and hits[-1] > hits[0]
    # The diff scores rise with the step: the rank-sum rule names a checkpoint, as its own p-values say.
    shift = record["first_shift_detection"]["2"]
    assert shift is not None and "rank-sum" in record["shift_rule"]
    first_low = next(c["name"] for c in record["checkpoints"][1:]
                     for p in c["per_alpha"] if p["alpha"] == 2.0 and p["shift_p"] < 0.01)
    assert shift["checkpoint"] == first_low
    assert "first shift of the diff scores" in out
    requests = len(fake.requests)
    assert cli(args(fake, run, prompts)) == 0  # resume: nothing loaded or sampled again
    assert len(fake.requests) == requests
    assert monitor_json(run)["checkpoints"] == record["checkpoints"]


def test_compare_previous_holds_checkpoint_k_minus_1_in_the_before_stack(fake, run, prompts):
    assert cli(args(fake, run, prompts, "--compare", "previous")) == 0
    assert loads(fake) == [("after", "checkpoint-2"),
                           ("after", "checkpoint-4"), ("before", "checkpoint-2"),
                           ("after", "checkpoint-6"), ("before", "checkpoint-4")]
    record = monitor_json(run)
    assert record["compare"] == "previous"
    # Each interval is 2 steps: the fake's amplified change is the same for every checkpoint.
    hits = [p["hits"] for c in record["checkpoints"] for p in c["per_alpha"] if p["alpha"] == 2.0]
    assert len(set(hits)) == 1
    done = json.loads((run / "monitor" / "checkpoint-4" / "checkpoint.json").read_text())
    assert done["compare"] == "previous"
    # A new checkpoint on resume: the before stack goes back to its predecessor first.
    write_checkpoint_full = make_full_run(run.parent / "more", steps=(8,)) / "checkpoint-8"
    write_checkpoint_full.rename(run / "checkpoint-8")
    assert cli(args(fake, run, prompts, "--compare", "previous")) == 0
    assert loads(fake)[5:] == [("after", "checkpoint-8"), ("before", "checkpoint-6")]


def test_a_resume_with_the_other_comparison_is_refused(fake, run, prompts, capsys):
    assert cli(args(fake, run, prompts)) == 0
    capsys.readouterr()
    assert cli(args(fake, run, prompts, "--compare", "previous")) == 2
    err = capsys.readouterr().err
    assert "--compare base" in err and "--output-dir" in err


def test_compare_previous_refuses_adapter_checkpoints(tmp_path, prompts, capsys):
    run = tmp_path / "adapters"
    write_checkpoint(run / "checkpoint-2", 2)
    with FakePair() as server:
        assert cli(args(server, run, prompts, "--compare", "previous")) == 2
    assert "--compare previous needs full-weight checkpoints" in capsys.readouterr().err


def test_a_checkpoint_the_server_refuses_is_bad_input_and_the_finished_ones_stay(fake, run, prompts, capsys):
    (run / "checkpoint-4" / "config.json").write_text(json.dumps({"intermediate_size": 96}))
    assert cli(args(fake, run, prompts)) == 2
    assert "intermediate_size is 96" in capsys.readouterr().err
    assert [c["name"] for c in monitor_json(run)["checkpoints"]] == ["checkpoint-2"]


def test_a_server_without_weight_loads_names_the_flag(run, prompts, capsys):
    with FakePair(runtime=False) as server:
        assert cli(args(server, run, prompts)) == 2
    assert "--allow-weight-loads" in capsys.readouterr().err
