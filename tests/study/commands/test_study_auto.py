"""`lda study --alphas auto` end to end against the fake OpenAI server (no engine): the plan's
steps are drawn, recorded in summary.json with why, spend the budget exactly, and resume."""

from __future__ import annotations

import json

import pytest

from study.commands.monitor import cli as monitor_cli
from study.commands.study import cli
from tests.benchmarks.fake_openai import KEYWORD, FakeServer


@pytest.fixture(scope="module")
def server():
    with FakeServer() as fake:
        yield fake


def test_auto_draws_the_plans_steps_and_records_why(server, tmp_path, prompts, capsys):
    out = tmp_path / "study"
    args = ["--base-url", server.url, "--prompts", str(prompts), "--alphas", "auto", "-n", "10",
            "--detector", f"keyword:{KEYWORD.lower()}", "--seed", "7", "--max-tokens", "32", "--no-progress",
            "--no-score", "-o", str(out)]
    before = len(server.requests)
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "alphas chosen by the plan (budget 150 samples):" in printed and "start at the top alpha 4" in printed
    summary = json.loads((out / "summary.json").read_text())
    plan = summary["alpha_plan"]
    # the budget is the fixed default's: 5 alphas x 10 samples x 3 prompts, spent exactly
    assert plan["budget"] == plan["spent"] == 150 and plan["complete"]
    assert len(server.requests) - before == 150
    assert len((out / "samples.jsonl").read_text().splitlines()) == 150
    steps = plan["steps"]
    assert steps[0]["alpha"] == 4.0 and all(step["why"] for step in steps)
    assert plan["alphas"] == summary["alphas"] == sorted({step["alpha"] for step in steps})
    assert 0.0 in plan["alphas"] and min(a for a in plan["alphas"] if a > 0) < 0.5  # walked down, anchored at 0
    per_alpha = {row["alpha"]: (row["hits"], row["n"]) for row in summary["per_alpha"]}
    for alpha in plan["alphas"]:
        mine = [s for s in steps if s["alpha"] == alpha]
        assert per_alpha[alpha] == (sum(s["hits"] for s in mine), sum(s["n"] for s in mine))
    estimate = summary["estimate"]
    assert estimate["target_alpha"] == 0.0 and sum(u["n"] for u in estimate["used"]) == 150

    # A rerun replays the plan from the samples on disk and draws nothing.
    assert cli(args) == 0
    assert "\n0 new samples" in capsys.readouterr().out
    assert len(server.requests) - before == 150
    assert json.loads((out / "summary.json").read_text())["alpha_plan"] == plan


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--alphas", "auto"], "alphas: auto chooses the alphas from the detector's hits; give --detector too"),
        (["--alphas", "auto", "--detector", "keyword:x", "--estimate-at", "4"],
         "estimate_at: with --alphas auto must be in [-1, 4)"),
        (["--alphas", "auto,1", "--detector", "keyword:x"], "alphas: 'auto' is not a number"),
    ],
)
def test_bad_auto_combinations_exit_2_with_a_message(tmp_path, capsys, args, message):
    assert cli(["-o", str(tmp_path / "out"), "--base-url", "http://127.0.0.1:9", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_monitor_refuses_auto(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    code = monitor_cli([str(tmp_path / "run"), "--detector", "keyword:x", "--alphas", "auto",
                        "--base-url", "http://127.0.0.1:9"])
    assert code == 2
    err = capsys.readouterr().err
    assert "alphas: auto is for lda study" in err and "Traceback" not in err
