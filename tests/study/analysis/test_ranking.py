"""Ranking statistics and the HTML report, checked in a real headless browser (Chromium)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from study.analysis.ranking import rank, separation
from study.analysis.stats import auroc, auroc_interval, top_fraction
from study.output.report import token_colour, write_report
from study.records import Sample, SampleScore


def test_auroc_counts_pairs_and_half_ties():
    assert auroc([3, 2, 1], [True, False, False]) == 1.0
    assert auroc([1, 2, 3], [True, False, False]) == 0.0
    # Positive 2 beats negative 1, ties the other 2 (half), loses to 3: (1 + 0.5 + 0) / 3.
    assert auroc([2, 1, 2, 3], [True, False, False, False]) == pytest.approx(0.5)
    assert auroc([1, 2], [True, True]) is None


def test_auroc_interval_is_hanley_mcneil():
    low, high = auroc_interval(0.9, 10, 90)
    q1, q2 = 0.9 / 1.1, 2 * 0.81 / 1.9
    se = ((0.9 * 0.1 + 9 * (q1 - 0.81) + 89 * (q2 - 0.81)) / 900) ** 0.5
    assert low == pytest.approx(0.9 - 1.959964 * se, abs=1e-5)
    assert high == min(1.0, 0.9 + 1.959964 * se) == 1.0  # clamped to [0, 1]


def test_top_fraction_precision_and_recall():
    scores = list(range(20))
    labels = [i >= 17 for i in range(20)]  # the three highest are positive
    assert top_fraction(scores, labels, 0.1) == (2, 2, 1.0, 2 / 3)


def _sample(i: int, detected: bool | None, alpha: float = 1.0) -> Sample:
    return Sample(f"p{i}", "How do I sleep better?", alpha, i, f"answer {i}", detected, 3, "length", None)


def _score(sample: Sample, diffs: list[float]) -> SampleScore:
    tokens = [
        {"token": f" tok{j}", "logp_after": -1.0 + d / 2, "logp_before": -1.0 - d / 2, "logp_amplified": -1.0 + d, "diff": d}
        for j, d in enumerate(diffs)
    ]
    summary = {"sum": sum(diffs), "mean": sum(diffs) / len(diffs), "max": max(diffs), "argmax": diffs.index(max(diffs)), "tokens": len(diffs)}
    return SampleScore(sample.key, tokens, summary)


def test_rank_orders_by_the_chosen_summary_and_measures_separation():
    samples = [_sample(0, False), _sample(1, True), _sample(2, False)]
    scores = {s.key: _score(s, d) for s, d in zip(samples, ([0.1, 0.1, 0.1], [0.0, 0.0, 5.0], [0.2, 0.2, 0.2]))}
    assert [r.sample.sample_index for r in rank(samples, scores, "max")] == [1, 2, 0]
    assert [r.sample.sample_index for r in rank(samples, scores, "mean")] == [1, 2, 0]
    assert [r.sample.sample_index for r in rank(samples, scores, "sum")] == [1, 2, 0]
    measured = separation(samples, scores)
    assert measured["max"]["auroc"] == 1.0 and measured["max"]["hits"] == 1
    assert separation([_sample(0, None)], {samples[0].key: scores[samples[0].key]}) == {}


def test_token_colours_run_from_blue_through_white_to_red():
    assert token_colour(0.0) == "rgb(255,255,255)"
    assert token_colour(10.0) == "rgb(255,0,0)"
    assert token_colour(-10.0) == "rgb(0,0,255)"
    assert token_colour(1e-9) == "rgb(255,255,255)"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("Chromium is needed for the report test: apt-get install -y chromium (`make test` does it as root)")


def test_report_tokens_are_coloured_in_a_real_browser(tmp_path: Path):
    """Render the report in headless Chromium and find the token colours in the screenshot."""
    samples = [_sample(0, True), _sample(1, False)]
    scores = {samples[0].key: _score(samples[0], [6.0] * 12), samples[1].key: _score(samples[1], [-6.0] * 12)}
    ranked = rank(samples, scores, "mean")
    page = write_report(tmp_path / "report.html", ranked, "mean", "test report", 10, {"all": separation(samples, scores)})
    text = page.read_text()
    assert "detector: hit" in text and "logp_amplified" in text and "<script" not in text
    shot = tmp_path / "shot.png"
    command = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--screenshot={shot}", "--window-size=1200,1400", page.as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    from matplotlib.image import imread

    pixels = (imread(shot)[..., :3] * 255).round().astype(np.int16)
    red = np.all(np.abs(pixels - [255, 0, 0]) <= 8, axis=-1).sum()
    blue = np.all(np.abs(pixels - [0, 0, 255]) <= 8, axis=-1).sum()
    # Twelve saturated tokens each way: hundreds of pixels of each colour, not a stray one.
    assert red > 500, f"no red (favoured) tokens in the screenshot: {red} px"
    assert blue > 500, f"no blue (disfavoured) tokens in the screenshot: {blue} px"
    # The favoured (ranked first) sample is drawn above the other one.
    rows = lambda mask: np.nonzero(mask.any(axis=1))[0]  # noqa: E731
    assert rows(np.all(np.abs(pixels - [255, 0, 0]) <= 8, axis=-1)).min() < rows(np.all(np.abs(pixels - [0, 0, 255]) <= 8, axis=-1)).min()


def test_explore_refuses_a_detector(tmp_path, capsys):
    from study.commands.explore import cli

    assert cli(["--detector", "keyword:x", "-o", str(tmp_path)]) == 2
    assert "explore takes no --detector" in capsys.readouterr().err
