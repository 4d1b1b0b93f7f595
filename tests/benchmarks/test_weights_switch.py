"""The switch benchmark's offline parts (benchmarks/weights_switch.py): its arguments, summary and table."""

from __future__ import annotations

import pytest

from benchmarks.weights_switch import Restart, Switch, main, report, summarize


def test_bad_arguments_are_refused(capsys):
    assert main(["--rounds", "0"]) == 2
    assert main(["--after", "a"]) == 2
    assert "--after, --other and --before together" in capsys.readouterr().err


def test_summary_and_table():
    switches = [Switch(0, "base", 0.5, 0.4, 0.1, 1.5, 1.4), Switch(0, "merged", 0.7, 0.6, 0.1, 1.6, 1.5)]
    restarts = [Restart(0, 30.0, 34.0)]
    summary = summarize(restarts, switches)
    assert summary["median_switch_s"] == pytest.approx((2.0 + 2.3) / 2)
    assert summary["restart_over_switch"] == pytest.approx(34.0 / 2.15)
    table = report(summary, restarts, switches)
    assert "merged" in table and "16x" in table
