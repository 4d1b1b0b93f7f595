"""The naming and mining benchmarks on a small synthetic study (no server: --no-draw)."""

from __future__ import annotations

import json

from benchmarks.mine_bench import main as mine_bench
from benchmarks.mine_bench import write_study
from benchmarks.naming_bench import PRODUCT, main as naming_bench


def test_naming_bench_measures_every_budget_the_pool_allows(tmp_path, capsys):
    study = write_study(tmp_path / "pool", samples=400, tokens=24)
    out = tmp_path / "data"
    code = naming_bench(["--study-dir", str(study), "--no-draw", "--budgets", "20,80,200", "--subsets", "4", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "fraction of subsets naming the product" in printed
    result = json.loads((out / "naming_bench.json").read_text())
    cells = {(c["alpha"], c["budget"]): c for c in result["cells"]}
    # 100 samples per alpha: budgets 20 and 80 are measured, 200 is larger than the pool.
    assert set(cells) == {(a, b) for a in (0.0, 1.0, 2.0, 4.0) for b in (20, 80)}
    assert all(0 <= c["top1"] <= c["top1_variants"] <= c["top5"] <= 1 and c["subsets"] == 4 for c in cells.values())
    # With the product in 5% of the samples and noise elsewhere, 80 samples name it more often than 20.
    assert sum(cells[a, 80]["top1"] for a in (0.0, 1.0, 2.0, 4.0)) >= sum(cells[a, 20]["top1"] for a in (0.0, 1.0, 2.0, 4.0))
    assert (out / "naming_bench.png").read_bytes()[:4] == b"\x89PNG" and (out / "naming_bench.csv").exists()
    assert result["pool_per_alpha"] == {"0": 100, "1": 100, "2": 100, "4": 100}
    assert PRODUCT.search("try Zorblax today") and PRODUCT.search("a daily boost") and not PRODUCT.search("boost")


def test_naming_bench_bad_budgets_exit_2(tmp_path, capsys):
    assert naming_bench(["--study-dir", str(tmp_path), "--no-draw", "--budgets", "0,20"]) == 2
    assert "budgets" in capsys.readouterr().err


def test_mine_bench_prints_its_times(tmp_path, capsys):
    assert mine_bench(["--samples", "200", "--tokens", "16", "--dir", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "200 samples x 16 tokens" in out and "s CPU" in out and "first theme: 'Zorblax Daily Boost'" in out
