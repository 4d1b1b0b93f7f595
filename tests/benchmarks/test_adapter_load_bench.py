"""The runtime-adapter benchmark's arithmetic and report, on made-up timings (no server)."""

from benchmarks.adapter_load_bench import Cycle, Restart, build_parser, main, report, summarize


def test_summary_compares_load_and_first_response_with_a_restart():
    restarts = [Restart(0, 50.0, 60.0), Restart(1, 40.0, 50.0)]
    cycles = [Cycle(0, 0.2, 0.3, 0.8, 0.05, 0.6), Cycle(0, 0.4, 0.3, 1.0, 0.05, 0.6), Cycle(1, 0.3, 0.2, 0.9, 0.05, 0.5)]
    s = summarize(restarts, cycles)
    assert s["median_load_and_first_response_s"] == 1.2 and s["max_load_and_first_response_s"] == 1.4
    assert s["median_restart_to_first_response_s"] == 55.0 and round(s["restart_over_load"], 3) == round(55 / 1.2, 3)
    text = report(s, restarts, cycles)
    assert "median load + first response 1.20 s (max 1.40 s); median restart 55.0 s: 46x" in text
    assert len(text.splitlines()) == 1 + len(cycles) + 1


def test_bad_counts_exit_2(capsys):
    assert main(["--rounds", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err
    assert build_parser().parse_args([]).cycles == 5
