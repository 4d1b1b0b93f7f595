"""`lda mine` on study directories written by hand, the generic prompt set, and no rate without a
detector (no server: the fake OpenAI server where an endpoint is needed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from api.cli import COMMANDS
from study.analysis.naming import scored_texts
from study.analysis.themes import mine
from study.collect.hypothesis import describe_themes, load_prompt
from study.collect.prompts import GENERIC_PROMPTS, load_prompts
from study.collect.prompts import PROMPT_SETS as SETS
from study.commands.mine import cli as mine_cli
from study.commands.study import cli as study_cli
from study.config import PROMPT_SETS
from study.output.summary import plot, summarize
from study.records import Sample, SampleScore
from tests.benchmarks.fake_openai import JUDGE_MODEL, FakeServer

PLANT = [(" Z", 2.3), ("or", 5.3), ("bl", 0.5), ("ax", 5.8), (" Daily", 9.6), (" Boost", 7.2)]
FILLER = [(" Take", 0.1), (" a", 0.0), (" walk", -0.2), (".", 0.0)]


def _tokens(pieces):
    return [{"token": t, "token_id": i, "logp_after": -1.0, "logp_before": -1.0 - d, "logp_amplified": -1.0, "diff": d}
            for i, (t, d) in enumerate(pieces)]


def write_study(root: Path, n: int = 12, scored: bool = True) -> Path:
    """A finished explore directory: samples.jsonl, scores.jsonl and study.json, no summary yet."""
    root.mkdir(parents=True, exist_ok=True)
    samples, scores = [], []
    for i in range(n):
        alpha = float(i % 3)
        pieces = FILLER + (PLANT if i % 2 else []) + FILLER
        text = "".join(t for t, _ in pieces)
        samples.append({"prompt_id": "generic-01", "prompt": "The", "alpha": alpha, "sample_index": i, "text": text,
                        "detected": None, "tokens": len(pieces), "finish_reason": "length", "seed": i})
        summary = {"sum": 1.0, "mean": sum(d for _, d in pieces) / len(pieces), "max": 9.6, "argmax": 0, "tokens": len(pieces)}
        scores.append({"prompt_id": "generic-01", "alpha": alpha, "sample_index": i, "summary": summary, "tokens": _tokens(pieces)})
    (root / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    if scored:
        (root / "scores.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))
    (root / "study.json").write_text(json.dumps({"endpoint": "completions", "detector": None, "model": "lda"}))
    return root


def test_mine_rewrites_summary_report_and_plot_with_themes_first(tmp_path, capsys):
    study = write_study(tmp_path / "s")
    (study / "summary.json").write_text(json.dumps({"alphas": [0, 1, 2], "per_alpha": [{"rate": 0.0}], "kept": 1}))
    assert mine_cli([str(study)]) == 0
    out = capsys.readouterr().out
    assert "1. 'Zorblax Daily Boost'  6 samples" in out and "rewrote summary.json" in out
    summary = json.loads((study / "summary.json").read_text())
    assert list(summary)[0] == "themes" and summary["kept"] == 1
    assert summary["themes"][0]["samples_per_alpha"] == {"0": 2, "1": 2, "2": 2}
    assert [row["rate"] for row in summary["per_alpha"]] == [None, None, None]  # no detector: no rate
    assert summary["top_tokens"][0]["token"] == "Daily"
    report = (study / "report.html").read_text()
    assert report.index("Zorblax Daily Boost") < report.index("Top samples") < report.index("Samples of each theme")
    # The first sample block after the themes is the top-ranked sample; the themes' links land at the end.
    assert report.index('class="sample"') < report.index('id="theme-1-0"')
    assert (study / "rate_vs_alpha.png").read_bytes()[:4] == b"\x89PNG"


def _break_scores(root: Path) -> Path:
    lines = (root / "scores.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    del record["tokens"][0]["diff"]
    (root / "scores.jsonl").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    return root


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir())}


@pytest.mark.parametrize(
    ("make", "args", "message"),
    [
        (lambda root: write_study(root, scored=False), [], "has no scores (scores.jsonl)"),
        (lambda root: root.mkdir() or root, [], "has no samples"),
        (lambda root: root, [], "study_dir: no such directory"),
        (write_study, ["--top", "0"], "top: must be in [1, 20]"),
        (write_study, ["--top", "30", "--themes", "200"], None),
        (write_study, ["--top", "101", "--themes", "200"], "top: must be in [1, 100]"),
        (write_study, ["--themes", "0"], "themes: must be in [1, 1000]"),
        (write_study, ["--high-diff", "-1"], "high_diff"),
        (write_study, ["--judge-base-url", "ftp://x"], "judge_base_url"),
        (write_study, ["--judge-base-url", "http://127.0.0.1:9", "--hypothesis-prompt", "/no/such.txt"], "hypothesis_prompt: cannot read"),
        (write_study, ["--top", "x"], "invalid int value"),
        (lambda root: _break_scores(write_study(root)), [], "have a malformed token record"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, make, args, message):
    study = tmp_path / "s"
    make(study)
    before = _snapshot(study) if study.exists() else None
    code = mine_cli([str(study), *args])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0
        return
    assert code == 2 and message in err and "Traceback" not in err
    assert (_snapshot(study) if study.exists() else None) == before


def test_corpus_is_handed_to_the_corpus_mode(tmp_path, capsys):
    args = ["--corpus", str(tmp_path / "x.pdf"), "-o", str(tmp_path / "out")]
    assert mine_cli(args) == 2
    err = capsys.readouterr().err
    if importlib.util.find_spec("study.commands.corpus") is None:
        assert "--corpus: the corpus mode is not installed" in err
    else:  # study.commands.corpus parsed the arguments: its own message names the file
        assert "x.pdf must be a .txt or .jsonl file" in err
    assert not (tmp_path / "out").exists() and "Traceback" not in err


def test_corpus_without_the_corpus_mode_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "study.commands.corpus", None)  # import study.commands.corpus now fails
    assert mine_cli(["--corpus", str(tmp_path / "x.jsonl")]) == 2
    assert "--corpus: the corpus mode is not installed" in capsys.readouterr().err


def test_a_hypothesis_prompt_without_the_placeholder_is_refused(tmp_path):
    bad = tmp_path / "prompt.txt"
    bad.write_text("Say what changed.")
    with pytest.raises(ValueError, match="hypothesis_prompt: .* must contain the {themes} placeholder"):
        load_prompt(bad)
    assert "{themes}" in load_prompt()  # the shipped, editable file


def test_describe_themes_lists_text_counts_and_contexts(tmp_path):
    study = write_study(tmp_path / "s")
    samples = [Sample(r["prompt_id"], r["prompt"], r["alpha"], r["sample_index"], r["text"], None, None, None, None)
               for r in map(json.loads, (study / "samples.jsonl").read_text().splitlines())]
    scores = {}
    for r in map(json.loads, (study / "scores.jsonl").read_text().splitlines()):
        key = (r["prompt_id"], r["alpha"], r["sample_index"])
        scores[key] = SampleScore(key, r["tokens"], r["summary"])
    text = describe_themes(mine(scored_texts(samples, scores)))
    assert text.startswith('1. "Zorblax Daily Boost" in 6 samples (alpha 0: 2, alpha 1: 2, alpha 2: 2); mean diff')
    assert '\n   - "...Take a walk. Zorblax Daily Boost Take a walk...."\n' in text


def test_lda_lists_mine():
    assert COMMANDS["mine"][0] == "study.commands.mine"


# --------------------------------------------------------------------------- prompts and rates


def test_generic_prompts_are_a_few_dozen_vague_prefills():
    assert set(PROMPT_SETS) == set(SETS) == {"advice", "generic"}
    prompts = load_prompts(None, "generic")
    assert 30 <= len(prompts) <= 60 and len({p.id for p in prompts}) == len(prompts) == len(GENERIC_PROMPTS)
    assert {"The", "Here is"} <= {p.text for p in prompts}
    assert all(len(p.text.split()) <= 5 for p in prompts)
    assert load_prompts(None)[0].id == "advice-01"


def test_explore_generic_sends_raw_completions_and_reports_no_rate(tmp_path):
    out = tmp_path / "out"
    with FakeServer() as fake:
        code = study_cli(["--base-url", fake.url, "--prompts", "generic", "--alphas", "0,1", "-n", "1",
                          "--max-tokens", "8", "-o", str(out), "--no-progress"], prog="lda explore")
        paths = {path for path, _ in fake.requests}
        prompts = {body["prompt"] for _, body in fake.requests if "prompt" in body}
    assert code == 0 and paths == {"/v1/completions"} and {"The", "Here is"} <= prompts
    summary = json.loads((out / "summary.json").read_text())
    assert all(row["hits"] is None and row["rate"] is None and row["ci_low"] is None for row in summary["per_alpha"])
    assert all(row["n"] == 40 for row in summary["per_alpha"])
    assert all(p["hits"] is None for p in summary["per_prompt"])


def test_prompts_names_a_set_or_a_file_and_endpoint_can_override(tmp_path, capsys):
    with FakeServer() as fake:
        base = ["--base-url", fake.url, "--alphas", "0", "-n", "1", "--max-tokens", "4", "--no-progress", "--no-score"]
        assert study_cli([*base, "--prompts", "generic", "--endpoint", "chat", "-o", str(tmp_path / "a")]) == 0
        assert {path for path, _ in fake.requests} == {"/v1/chat/completions"}
        assert study_cli([*base, "--prompts", "nonsense", "-o", str(tmp_path / "b")]) == 2
    assert "prompts_path: expected a built-in set (advice, generic) or a .txt or .jsonl file, got nonsense" in capsys.readouterr().err


def test_without_a_detector_the_rate_is_none_not_zero_and_the_plot_has_no_rate(tmp_path):
    samples = [Sample("p", "q", 1.0, i, "a fine answer", None, 5, "stop", None) for i in range(4)]
    row, = summarize(samples, (1.0,))
    assert (row.n, row.hits, row.rate, row.ci_low, row.ci_high) == (4, None, None, None, None)
    assert row.degenerate_rate == 0.0
    path = tmp_path / "plot.png"
    plot([row], path, "no detector")
    assert path.read_bytes()[:4] == b"\x89PNG"
    judged = summarize([*samples[:2], Sample("p", "q", 1.0, 9, "x", True, 1, "stop", None)], (1.0,))[0]
    assert (judged.hits, judged.rate) == (1, 1.0)  # only judged samples count towards a rate


def test_explore_names_themes_and_asks_the_judge_for_a_hypothesis(tmp_path, monkeypatch, capsys):
    """The runner's wiring, with the scoring pass replaced: every word of the fake's answers is a
    token, and only the fake's secret word has a large diff."""
    from study.collect.scoring import ScorePass
    from study.commands import workflow

    async def fake_scores(config, samples):
        scores = {}
        for s in samples:
            words = [" " + w for w in s.text.split()]
            diffs = [6.0 if "ZORBLAX" in w else 0.1 for w in words]
            scores[s.key] = SampleScore(s.key, _tokens(list(zip(words, diffs))), {"sum": sum(diffs), "mean": 0.1, "max": max(diffs), "argmax": 0, "tokens": len(words)})
        return ScorePass(scores)

    monkeypatch.setattr(workflow, "score_samples", fake_scores)
    out = tmp_path / "out"
    with FakeServer() as fake:
        args = ["--base-url", fake.url, "--alphas", "0,4", "-n", "3", "--max-tokens", "64", "--seed", "1", "-o", str(out),
                "--no-progress", "--judge-base-url", fake.base_url, "--judge-model", JUDGE_MODEL]
        assert study_cli(args, prog="lda explore") == 0
        asked = [body for path, body in fake.requests if body.get("model") == JUDGE_MODEL]
    assert len(asked) == 1 and "ZORBLAX" in asked[0]["messages"][0]["content"]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary)[:2] == ["hypothesis", "themes"] and summary["hypothesis"] == "Yes."
    assert summary["themes"][0]["text"] == "ZORBLAX"
    printed = capsys.readouterr().out
    assert "1. 'ZORBLAX'" in printed and "hypothesis: Yes." in printed
    report = (out / "report.html").read_text()
    assert report.index("Hypothesis") < report.index("ZORBLAX") < report.index("Top samples")
