"""`lda study` against the fake OpenAI server: statistics, detectors, resume, outputs, errors."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.analysis.stats import distinct_n, is_degenerate, wilson_interval
from study.collect.detectors import JudgeConfig, parse_detector
from study.collect.prompts import BUILTIN_PROMPTS, load_prompts
from study.collect.server import free_port
from study.commands.study import cli
from study.commands.workflow import run_study
from study.config import SamplingConfig, StudyConfig, parse_alphas
from study.output.summary import format_table, plot, summarize
from study.records import Sample
from tests.benchmarks.fake_openai import JUDGE_MODEL, KEYWORD, FakeServer, has_keyword

REPO = Path(__file__).resolve().parents[3]
Z = 1.959963984540054  # the standard normal's 97.5% quantile


@pytest.fixture(scope="module")
def server():
    with FakeServer() as fake:
        yield fake


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    lines = [
        {"id": "sleep", "prompt": "How do I sleep better?"},
        {"prompt": "How do I save money?"},
        {"prompt": "Any tips for running?"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def make_config(server: FakeServer, out: Path, prompts: Path | None, **overrides) -> StudyConfig:
    options = dict(
        base_url=server.url,
        output_dir=out,
        detector=f"keyword:{KEYWORD.lower()}",
        alphas=(0.0, 2.0, 4.0),
        samples_per_prompt=8,
        prompts_path=prompts,
        concurrency=16,
        sampling=SamplingConfig(seed=7, max_tokens=64),
        progress=False,
    )
    options.update(overrides)
    return StudyConfig(**options)


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("hits", "n", "expected"),
    [
        # Published Wilson 95% intervals (e.g. statsmodels proportion_confint(method="wilson")).
        (0, 100, (0.0, 0.0370)),
        (5, 100, (0.0215, 0.1118)),
        (50, 100, (0.4038, 0.5962)),
        (100, 100, (0.9630, 1.0)),
        (1, 10, (0.0179, 0.4042)),
    ],
)
def test_wilson_interval_matches_known_values(hits, n, expected):
    low, high = wilson_interval(hits, n)
    assert low == pytest.approx(expected[0], abs=1e-4)
    assert high == pytest.approx(expected[1], abs=1e-4)


@pytest.mark.parametrize(("hits", "n"), [(0, 100), (5, 100), (50, 100), (100, 100), (3, 7), (999, 1000)])
def test_wilson_bounds_are_where_the_score_test_reaches_z(hits, n):
    # The Wilson interval inverts the score test: at either finite bound p, |p_hat - p| equals
    # z * sqrt(p (1 - p) / n). This checks the implementation against its definition.
    p_hat = hits / n
    for bound in wilson_interval(hits, n):
        if bound in (0.0, 1.0):
            assert bound == (0.0 if hits == 0 else 1.0)
            continue
        assert abs(p_hat - bound) == pytest.approx(Z * math.sqrt(bound * (1 - bound) / n), rel=1e-9)


@pytest.mark.parametrize(("hits", "n"), [(0, 0), (5, 4), (-1, 10)])
def test_wilson_interval_rejects_impossible_counts(hits, n):
    with pytest.raises(ValueError):
        wilson_interval(hits, n)


def sample(alpha: float, index: int, detected: bool, text: str = "A fine answer about sleep.") -> Sample:
    return Sample("p", "prompt", alpha, index, text, detected, tokens=10, finish_reason="stop", seed=None)


def test_summarize_counts_hits_rates_and_coherence_per_alpha():
    loop = "and then again " * 10
    samples = [sample(0.0, i, detected=(i == 0)) for i in range(10)]
    samples += [sample(1.0, 0, True, loop), sample(1.0, 1, True), sample(1.0, 2, False), sample(1.0, 3, False)]
    rows = summarize(samples, (0.0, 1.0, 2.0))

    zero, one, two = rows
    assert (zero.n, zero.hits, zero.rate) == (10, 1, 0.1)
    assert (zero.ci_low, zero.ci_high) == wilson_interval(1, 10)
    assert zero.degenerate_rate == 0.0 and zero.mean_distinct_2 == 1.0
    assert (one.n, one.hits, one.rate) == (4, 2, 0.5)
    assert one.degenerate_rate == 0.25
    assert one.mean_distinct_2 == pytest.approx((3 / 29 + 3 * 1.0) / 4)
    assert (two.n, two.rate, two.ci_low) == (0, None, None)
    table = format_table(rows)
    assert "10.00%" in table and "50.00%" in table and "25.00%" in table


def test_coherence_measures():
    assert is_degenerate("and then again " * 10)
    assert is_degenerate("I think I think I think I think " * 2)
    assert not is_degenerate("Start small. Drink water. Sleep well. Walk daily. Call a friend.")
    bullets = "\n".join(f"- **Tip {i}:** do thing number {i} today." for i in range(12))
    assert not is_degenerate(bullets)
    assert distinct_n("a b a b") == pytest.approx(2 / 3)
    assert distinct_n("one") is None and distinct_n("") is None


# --------------------------------------------------------------------------- input parsing


def test_parse_alphas():
    assert parse_alphas("0, 0.5,1,2,4") == (0.0, 0.5, 1.0, 2.0, 4.0)
    assert parse_alphas("-1,0,20") == (-1.0, 0.0, 20.0)
    for bad, reason in [("", "not a number"), ("0,x", "'x'"), ("1,1", "more than once"), ("0,inf", "finite"), ("-2,0", "below -1")]:
        with pytest.raises(ValueError, match=reason) as error:
            parse_alphas(bad)
        assert str(error.value).startswith("alphas:")


@pytest.mark.parametrize(
    ("spec", "text", "hit"),
    [
        ("regex:zorb\\w+", "the word ZORBLAX.", True),
        ("regex:^no$", "not this", False),
        ("keyword:Zorblax", "…zorblax…", True),
        ("keyword:a.b", "axb", False),  # a keyword is literal, not a pattern
        ("python:tests.benchmarks.fake_openai:has_keyword", "ZORBLAX!", True),
        ("python:tests.benchmarks.fake_openai:has_keyword", "plain", False),
    ],
)
def test_detector_specs(spec, text, hit):
    assert asyncio.run(parse_detector(spec).detect("prompt", text)) is hit


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("zorblax", "expected one of"),
        ("grep:x", "expected one of"),
        ("regex:", "needs a pattern"),
        ("regex:(", "invalid regular expression"),
        ("keyword:", "needs a word"),
        ("python:os", "module:function"),
        ("python:no_such_module_xyz:f", "cannot import"),
        ("python:os:no_such_function", "no callable"),
        ("judge:", "needs a yes/no question"),
        ("judge:Is it rude?", "--judge-base-url"),
    ],
)
def test_bad_detector_specs_name_the_field(spec, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_detector(spec)
    assert str(error.value).startswith(("detector:", "judge_base_url:"))


def test_judge_template_is_checked():
    with pytest.raises(ValueError, match="{response}"):
        JudgeConfig(base_url="http://127.0.0.1:1/v1", template="Is {prompt} ok?")
    with pytest.raises(ValueError, match="unknown placeholder"):
        JudgeConfig(base_url="http://127.0.0.1:1/v1", template="{response} {answer}")
    whole_question = JudgeConfig(base_url="http://127.0.0.1:1/v1", template="Is this rude, yes or no? {response}")
    assert parse_detector("judge:", whole_question).spec == "judge:"


def test_judge_detector_asks_the_endpoint(server):
    judge = JudgeConfig(base_url=server.base_url, model=JUDGE_MODEL)
    detector = parse_detector("judge:Does the answer mention a secret word?", judge)

    async def verdicts() -> list[bool]:
        await detector.prepare()
        try:
            return [await detector.detect("q", text) for text in ("It is ZORBLAX.", "Nothing here.")]
        finally:
            await detector.aclose()

    assert asyncio.run(verdicts()) == [True, False]


def test_load_prompts(tmp_path, prompts_file):
    builtin = load_prompts(None)
    assert len(builtin) == len(BUILTIN_PROMPTS) >= 20
    prompts = load_prompts(prompts_file)
    assert [p.id for p in prompts][0] == "sleep"
    assert prompts[1].id.startswith("p-") and prompts[1].text == "How do I save money?"
    txt = tmp_path / "p.txt"
    txt.write_text("first\n\nsecond\n")
    assert [p.text for p in load_prompts(txt)] == ["first", "second"]
    txt.write_text("same\nother\nsame\n")
    with pytest.raises(ValueError, match="p.txt:3 repeats"):
        load_prompts(txt)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt field"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_prompts(bad)


# --------------------------------------------------------------------------- studies against the fake


def test_study_writes_samples_summary_and_plot(server, tmp_path, prompts_file):
    out = tmp_path / "study"
    result = run_study(make_config(server, out, prompts_file))

    records = read_samples(out / "samples.jsonl")
    assert len(records) == 3 * 3 * 8 == result.new_samples
    fields = {"prompt_id", "prompt", "alpha", "sample_index", "text", "detected", "tokens", "finish_reason"}
    assert set(records[0]) >= fields
    assert all(r["detected"] == has_keyword(r["text"]) for r in records)
    assert not result.failures and result.alpha_unconfirmed == 0
    rates = [row.rate for row in result.rows]
    assert rates[0] < rates[1] < rates[2]  # the fake's keyword probability rises with alpha
    assert result.rows[2].degenerate_rate > result.rows[0].degenerate_rate == 0.0
    summary = json.loads((out / "summary.json").read_text())
    assert [row["alpha"] for row in summary["per_alpha"]] == [0.0, 2.0, 4.0]
    assert summary["settings"]["model"] == "fake-lda"
    assert summary["per_alpha"][1]["hits"] == result.rows[1].hits
    assert (out / "rate_vs_alpha.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # alpha 0 is sampled here: the estimate there is read off the fit, not extrapolated.
    estimate = summary["estimate"]
    assert estimate == result.estimate.as_dict() and estimate["target_alpha"] == 0.0
    assert [u["n"] for u in estimate["used"]] == [row["n"] for row in summary["per_alpha"]]
    assert (estimate["rate"] is None) == (estimate["reason"] is not None)


def test_study_is_deterministic_per_seed_and_uses_the_completions_endpoint(server, tmp_path, prompts_file):
    first = run_study(make_config(server, tmp_path / "a", prompts_file, log_scale=True))
    sampling = SamplingConfig("completions", seed=7, max_tokens=64)
    config = make_config(server, tmp_path / "b", prompts_file, sampling=sampling)
    before = len(server.requests)
    second = run_study(config)
    assert {path for path, _ in server.requests[before:]} == {"/v1/completions"}
    assert [r.hits for r in first.rows] == [r.hits for r in second.rows]
    assert (tmp_path / "a" / "rate_vs_alpha.png").exists()


def test_rerun_resumes_after_a_partial_file_without_duplicates(server, tmp_path, prompts_file):
    out = tmp_path / "study"
    config = make_config(server, out, prompts_file)
    run_study(config)
    samples_path = out / "samples.jsonl"
    lines = samples_path.read_text().splitlines()
    # As if killed mid-write: 30 complete lines, then half a line.
    samples_path.write_text("\n".join(lines[:30]) + "\n" + lines[30][:25])

    before = len(server.requests)
    result = run_study(config)
    assert len(server.requests) - before == len(lines) - 30 == result.new_samples
    records = read_samples(samples_path)
    keys = [(r["prompt_id"], r["alpha"], r["sample_index"]) for r in records]
    assert len(keys) == len(set(keys)) == len(lines)

    before = len(server.requests)
    assert run_study(config).new_samples == 0
    assert len(server.requests) == before  # nothing left to draw: the server is not even asked


def test_rerun_with_more_samples_draws_only_the_new_ones(server, tmp_path, prompts_file):
    out = tmp_path / "study"
    run_study(make_config(server, out, prompts_file, samples_per_prompt=2))
    result = run_study(make_config(server, out, prompts_file, samples_per_prompt=3))
    assert result.new_samples == 3 * 3 and sum(r.n for r in result.rows) == 3 * 3 * 3


def test_rerun_with_other_sampling_settings_is_refused(server, tmp_path, prompts_file, capsys):
    out = tmp_path / "study"
    args = ["--base-url", server.url, "--prompts", str(prompts_file), "--alphas", "0,1", "-n", "1",
            "--detector", "keyword:x", "-o", str(out), "--no-progress"]
    assert cli(args) == 0
    assert cli([*args, "--temperature", "0.5"]) == 1
    assert "temperature=1.0 (now 0.5)" in capsys.readouterr().err


def test_judge_detector_study(server, tmp_path, prompts_file):
    config = make_config(
        server, tmp_path / "judged", prompts_file, samples_per_prompt=2,
        detector="judge:Does the answer mention a secret word?",
        judge=JudgeConfig(base_url=server.base_url, model=JUDGE_MODEL),
    )
    run_study(config)
    records = read_samples(tmp_path / "judged" / "samples.jsonl")
    assert any(r["detected"] for r in records)
    assert all(r["detected"] == has_keyword(r["text"]) for r in records)


def test_failed_samples_exit_non_zero_and_are_retried(tmp_path, prompts_file, capsys):
    out = tmp_path / "study"
    with FakeServer(fail_alpha=4.0) as failing:
        args = ["--base-url", failing.url, "--prompts", str(prompts_file), "--alphas", "0,4", "-n", "2",
                "--detector", "keyword:x", "-o", str(out), "--no-progress"]
        assert cli(args) == 1
    err = capsys.readouterr().err
    assert "6 samples failed" in err and "  6 x HTTP 500 from" in err and "fake failure at alpha 4" in err
    assert {r["alpha"] for r in read_samples(out / "samples.jsonl")} == {0.0}
    with FakeServer() as healthy:
        args[1] = healthy.url
        assert cli(args) == 0
        assert len(healthy.requests) == 6  # only the samples that failed
    assert len(read_samples(out / "samples.jsonl")) == 12


def test_a_server_that_does_not_echo_alpha_is_reported(tmp_path, prompts_file):
    with FakeServer(echo_alpha=False) as silent:
        result = run_study(make_config(silent, tmp_path / "s", prompts_file, samples_per_prompt=1))
    assert result.alpha_unconfirmed == result.new_samples == 9


def test_unreachable_server_fails_at_once_naming_the_url(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    code = cli(["--base-url", url, "--detector", "keyword:x", "-o", str(tmp_path / "out"), "--no-progress"])
    assert code == 1 and time.monotonic() - start < 5
    err = capsys.readouterr().err
    assert f"{url}/v1/models is unreachable" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--alphas", "0,one"], "alphas: 'one' is not a number"),
        (["--alphas", "1,1"], "alphas: 1 given more than once"),
        (["--detector", "bogus"], "detector: expected one of"),
        (["--prompts", "/no/such/prompts.txt"], "prompts_path: no such file"),
        (["--samples-per-prompt", "0"], "samples_per_prompt: must be >= 1"),
        (["--top-p", "0"], "top_p"),
        (["--estimate-at", "7"], "estimate_at: must be in [-1, 4] (the before model to the largest alpha sampled), got 7"),
        (["--estimate-at=-2", "--alphas=-1,0,1"], "estimate_at: must be in [-1, 1]"),
        (["--estimate-at", "nan"], "estimate_at: must be in"),
        (["--estimate-at", "zero"], "--estimate-at: invalid float value"),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, args, message):
    base = ["--detector", "keyword:x", "-o", str(tmp_path / "out"), "--base-url", "http://127.0.0.1:9"]
    assert cli([*base, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_an_estimate_without_a_detector_is_refused(tmp_path, capsys):
    assert cli(["-o", str(tmp_path / "out"), "--base-url", "http://127.0.0.1:9", "--estimate-at", "0"]) == 2
    err = capsys.readouterr().err
    assert "estimate_at: the estimate is of a detector's rate; give --detector too" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_interrupt_keeps_finished_samples_and_rerun_completes(server, tmp_path, prompts_file):
    out = tmp_path / "study"
    # 40 ms per word makes each answer take about a second, so the interrupt lands mid-study.
    with FakeServer(delay_s=0.04) as slow:
        args = ["--base-url", slow.url, "--prompts", str(prompts_file), "--alphas", "0,1", "-n", "3",
                "--detector", "keyword:x", "-o", str(out), "--concurrency", "2", "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        process = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "study", *args], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True
        )
        samples_path = out / "samples.jsonl"
        deadline = time.monotonic() + 30
        while not (samples_path.exists() and len(samples_path.read_text().splitlines()) >= 2):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=20)
        assert process.returncode == 130, err
        assert "rerun the same command to resume" in err and "Traceback" not in err
        saved = len(read_samples(samples_path))
        assert 2 <= saved < 18
    args[1] = server.url  # finish on the fast server: base_url is not part of the study's settings
    assert cli(args) == 0
    records = read_samples(samples_path)
    keys = {(r["prompt_id"], r["alpha"], r["sample_index"]) for r in records}
    assert len(records) == len(keys) == 18


def test_negative_alphas_need_no_equals_sign(server, tmp_path, prompts_file):
    args = ["--base-url", server.url, "--prompts", str(prompts_file), "--alphas", "-1,0", "-n", "1",
            "--detector", "keyword:x", "-o", str(tmp_path / "out"), "--no-progress"]
    assert cli(args) == 0
    assert {r["alpha"] for r in read_samples(tmp_path / "out" / "samples.jsonl")} == {-1.0, 0.0}


def test_log_scale_plot_shows_alphas_without_hits(tmp_path):
    samples = [sample(0.0, i, False) for i in range(50)] + [sample(2.0, i, i < 5) for i in range(50)]
    path = tmp_path / "plot.png"
    plot(summarize(samples, (0.0, 2.0)), path, "zero hits at alpha 0", log_scale=True)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_sample_seeds_differ_across_prompts_and_samples():
    from study.collect.client import sample_seed

    seeds = {sample_seed(0, p, i) for p in ("a", "b", "c") for i in range(5)}
    assert len(seeds) == 15
    assert sample_seed(0, "a", 1) == sample_seed(0, "a", 1) != sample_seed(1, "a", 1)


def test_several_base_urls_share_the_requests(tmp_path, prompts_file):
    with FakeServer() as one, FakeServer() as two:
        config = make_config(one, tmp_path / "out", prompts_file, base_url=(one.base_url, two.base_url))
        result = run_study(config)
        assert result.new_samples == len(one.requests) + len(two.requests)
        # Round robin: an even split, whatever order the requests finished in.
        assert abs(len(one.requests) - len(two.requests)) <= 1 and len(one.requests) > 0
        # The fake servers have no scoring route: the study still succeeds, unranked.
        assert result.ranking is not None and result.ranking.unsupported and not result.failures


def test_repeated_base_url_and_bad_rank_by_are_refused(tmp_path):
    with pytest.raises(ValueError, match="base_url"):
        StudyConfig(base_url=("http://a:1", "http://a:1"), output_dir=tmp_path)
    with pytest.raises(ValueError, match="rank_by"):
        StudyConfig(base_url="http://a:1", output_dir=tmp_path, rank_by="median")


def test_without_a_detector_there_is_no_estimate(server, tmp_path, prompts_file):
    out = tmp_path / "explore"
    result = run_study(make_config(server, out, prompts_file, detector=None, samples_per_prompt=2, score=False))
    assert result.estimate is None
    assert "estimate" not in json.loads((out / "summary.json").read_text())


def test_estimate_at_reads_the_fit_at_another_alpha(server, tmp_path, prompts_file):
    result = run_study(make_config(server, tmp_path / "study", prompts_file, estimate_at=-1.0, alphas=(-1.0, 0.0, 2.0, 4.0)))
    assert result.estimate.target_alpha == -1.0
    assert result.estimate.curve[0][0] == -1.0
