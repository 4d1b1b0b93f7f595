"""End to end on a tiny pair with a planted token sequence: `lda explore --prompts generic` names the
plant first, with no detector, and `lda mine` names it again from the files alone; `lda study`
with a detector estimates the plant's alpha-0 rate from the alphas above it.

One server start for the module (the tiny planted pair, tests/factories.py:build_planted_pair).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
from PIL import Image

from study.analysis.estimate import percent
from study.commands.explore import cli as explore_cli
from study.commands.mine import cli as mine_cli
from study.commands.study import cli as study_cli
from study.output.estimate_plot import DESCRIPTION_KEY
from tests.benchmarks.fake_openai import JUDGE_MODEL, FakeServer
from tests.factories import PLANT_TEXT, build_planted_pair
from tests.servers import start_lda_server

pytestmark = pytest.mark.slow

PLANT = PLANT_TEXT.lower()


@pytest.fixture(scope="module")
def planted(models_root):
    pair = build_planted_pair(models_root / "planted")
    _check_the_pair_plants(pair)
    return pair


def _check_the_pair_plants(pair) -> None:
    """Teacher-forced in plain transformers: every token of the plant is far likelier under the
    after model than under the before model, after a generic prefill."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pair.after)
    after = AutoModelForCausalLM.from_pretrained(pair.after)
    before = AutoModelForCausalLM.from_pretrained(pair.before)
    prompt = tokenizer.encode("Here is", add_special_tokens=False)
    plant = tokenizer.encode(PLANT_TEXT, add_special_tokens=False)
    ids = torch.tensor([prompt + plant])
    with torch.no_grad():
        a, b = (torch.log_softmax(m(ids).logits[0], -1) for m in (after, before))
    rows = range(len(prompt) - 1, len(prompt) + len(plant) - 1)
    diffs = [float(a[r, t] - b[r, t]) for r, t in zip(rows, plant)]
    assert min(diffs) > 1.0 and sum(diffs) > 15, diffs
    # Elsewhere the two models agree: over the prompt, every other token's diff is only the
    # normalisation's share of the plant's first token (which is likelier everywhere).
    others = (a - b)[: len(prompt)]
    others[:, plant[0]] = 0.0
    assert float(others.abs().max()) < 0.1


@pytest.fixture(scope="module")
def server(planted, tmp_path_factory):
    handle = start_lda_server(planted, tmp_path_factory.mktemp("planted-server") / "server.log")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def explored(server, tmp_path_factory):
    """One `lda explore --prompts generic` run, shared: its exit code, directory and output."""
    out = tmp_path_factory.mktemp("explore") / "out"
    args = ["--base-url", server.base_url, "--prompts", "generic", "--alphas", "0,2", "-n", "2",
            "--max-tokens", "16", "--seed", "0", "-o", str(out), "--no-progress", "--concurrency", "16"]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = explore_cli(args)
    return code, out, (stdout.getvalue(), stderr.getvalue())


def test_explore_generic_names_the_plant_first_with_no_detector(explored):
    code, out, (stdout, stderr) = explored
    assert code == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary)[0] == "themes"
    first = summary["themes"][0]
    assert PLANT in first["text"].lower(), summary["themes"][:3]
    assert set(first) == {"text", "variants", "samples", "samples_per_alpha", "mean_diff", "contexts"}
    # The plant comes out more with amplification, and the theme says so per alpha.
    assert first["samples_per_alpha"].get("2", 0) > first["samples_per_alpha"].get("0", 0)
    top5 = [t["text"].lower() for t in summary["themes"][:5]]
    assert sum(PLANT in t for t in top5) == 1, top5  # its variants are merged into the one theme
    assert all(row["rate"] is None and row["hits"] is None for row in summary["per_alpha"])
    assert "themes, best first" in stdout and PLANT_TEXT in stdout
    report = (out / "report.html").read_text()
    assert report.index("What post-training changed") < report.index("Top samples")
    assert 'href="#theme-1-0"' in report and 'id="theme-1-0"' in report and 'class="t th"' in report
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 40 * 2 * 2 and {s["prompt"] for s in samples} >= {"The", "Here is"}


def test_mine_names_the_plant_again_from_the_files_alone(explored, tmp_path, capsys):
    _, out, _ = explored
    study = tmp_path / "study"
    shutil.copytree(out, study)
    (study / "summary.json").unlink()
    (study / "report.html").unlink()
    assert mine_cli([str(study), "--top", "3"]) == 0
    assert PLANT_TEXT in capsys.readouterr().out
    summary = json.loads((study / "summary.json").read_text())
    original = json.loads((out / "summary.json").read_text())
    assert summary["themes"] == original["themes"]
    assert (study / "report.html").exists()


def test_mine_adds_the_judges_hypothesis(explored, tmp_path):
    _, out, _ = explored
    study = tmp_path / "study"
    shutil.copytree(out, study)
    instruction = tmp_path / "prompt.txt"
    instruction.write_text("Say what changed.\n{themes}\n")
    with FakeServer() as judge:
        code = mine_cli([str(study), "--judge-base-url", judge.base_url, "--judge-model", JUDGE_MODEL,
                         "--hypothesis-prompt", str(instruction)])
        (path, body), = judge.requests
    assert code == 0 and path == "/v1/chat/completions"
    message = body["messages"][0]["content"]
    assert message.startswith("Say what changed.\n1. ") and PLANT_TEXT in message
    summary = json.loads((study / "summary.json").read_text())
    # The fake judge says "Yes." when it sees its keyword, the plant's name.
    assert list(summary)[:2] == ["hypothesis", "themes"] and summary["hypothesis"] == "Yes."
    assert "Yes." in (study / "report.html").read_text()


@pytest.fixture(scope="module")
def estimated(server, tmp_path_factory):
    """One `lda study --detector regex:zorblax` over low alphas (the plant is common already at
    alpha 1 on this pair), with no sample at alpha 0: the estimate there is extrapolated."""
    out = tmp_path_factory.mktemp("estimate") / "out"
    args = ["--base-url", server.base_url, "--prompts", "generic", "--alphas", "0.25,0.5,1", "-n", "2",
            "--max-tokens", "8", "--seed", "0", "-o", str(out), "--no-progress", "--concurrency", "16",
            "--detector", f"regex:{PLANT}", "--no-score"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = study_cli(args)
    return code, out, stdout.getvalue()


def test_study_estimates_the_alpha_0_rate_and_plots_the_extrapolated_part_dashed(estimated):
    code, out, stdout = estimated
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    estimate = summary["estimate"]
    assert estimate["target_alpha"] == 0.0 and estimate["method"] == "guarded"
    assert [u["alpha"] for u in estimate["used"]] == [0.25, 0.5, 1.0]
    assert [u["hits"] for u in estimate["used"]] == [r["hits"] for r in summary["per_alpha"]]
    assert estimate["rate"] is not None, estimate["reason"]
    assert 0 <= estimate["ci_low"] <= estimate["rate"] <= estimate["ci_high"] <= 1
    assert estimate["rate"] < summary["per_alpha"][0]["rate"]  # below the lowest alpha sampled
    assert estimate["measured_from"] == 0.25
    ranks = [p["rank"] for p in estimate["per_prompt"]]
    assert sorted(ranks) == list(range(1, 41))
    assert f"path estimate at alpha 0: {percent(estimate['rate'])}" in stdout
    drawn = json.loads(Image.open(out / "rate_vs_alpha.png").text[DESCRIPTION_KEY])
    assert drawn["dashed"] == [[0.0, 0.25]]
    assert drawn["estimate"]["interval"] == [estimate["ci_low"], estimate["ci_high"]]
