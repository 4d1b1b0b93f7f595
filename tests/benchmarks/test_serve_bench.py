"""`lda bench` at tiny scale, so the harness cannot rot: all three servers, two levels, a few requests."""

import json
from pathlib import Path

import pytest

from benchmarks import serve_bench
from benchmarks.seed_server import stream_tokens
from engine.step_timing import load_steps
from tests.factories import build_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return build_pair(tmp_path_factory.mktemp("models"), "llama")


def test_config_refuses_bad_values(tmp_path):
    with pytest.raises(ValueError, match="servers"):
        serve_bench.BenchConfig("a", "b", tmp_path, servers=("lda", "tgi"))
    with pytest.raises(ValueError, match="concurrency"):
        serve_bench.BenchConfig("a", "b", tmp_path, concurrencies=(0,))
    with pytest.raises(ValueError, match="max_model_len"):
        serve_bench.BenchConfig("a", "b", tmp_path, input_len=500, output_len=64, max_model_len=512)
    with pytest.raises(ValueError, match="rounds"):
        serve_bench.BenchConfig("a", "b", tmp_path, rounds=0)


def _row(server, concurrency, round_, tok_s, rss=100.0):
    return serve_bench.Row(
        server=server, concurrency=concurrency, num_prompts=8, completed=8, failed=0, duration_s=64 / tok_s,
        request_throughput=tok_s / 64, output_throughput=tok_s, p50_ttft_ms=10.0 * round_, p99_ttft_ms=20.0,
        p50_tpot_ms=1.0, p99_tpot_ms=2.0, peak_rss_mb=rss, round=round_,
    )


def test_ratios_pair_servers_within_a_round_and_take_the_median():
    # Round 2 is a slow spell for both servers; each ratio compares servers within one round.
    rows = [
        _row("lda", 64, 1, 100), _row("single", 64, 1, 200),
        _row("lda", 64, 2, 50), _row("single", 64, 2, 100),
        _row("lda", 64, 3, 120), _row("single", 64, 3, 200),
        _row("seed", 64, 1, 10), _row("lda", 16, 1, 30),
    ]
    by_level = {e["concurrency"]: e for e in serve_bench.ratios(rows)}
    c64 = by_level[64]
    assert c64["lda_over_single_rounds"] == pytest.approx([0.5, 0.5, 0.6])
    assert (c64["lda_over_single"], c64["lda_over_single_min"], c64["lda_over_single_max"]) == pytest.approx((0.5, 0.5, 0.6))
    assert c64["lda_over_seed_rounds"] == pytest.approx([10.0])  # only round 1 has both
    assert by_level[16] == {"concurrency": 16}  # nothing to compare with

    table = serve_bench.format_ratios(serve_bench.ratios(rows))
    assert "0.50 (0.50-0.60)" in table and "10.0" in table and "(10.0" not in table


def test_summary_takes_medians_over_rounds():
    rows = [_row("single", 4, k, tok_s, rss) for k, tok_s, rss in ((1, 90, 300), (2, 300, 100), (3, 100, 200))]
    rows.append(_row("lda", 4, 1, 50))
    lda, single = serve_bench.summary(rows)  # servers in SERVERS order
    assert (lda.server, lda.round, lda.output_throughput) == ("lda", 1, 50)
    assert (single.server, single.round, single.completed) == ("single", 3, 24)
    assert single.output_throughput == 100 and single.p50_ttft_ms == 20 and single.peak_rss_mb == 300


def test_rounds_rotate_which_server_goes_first():
    servers = ("lda", "single", "seed")
    assert [serve_bench.rotated(servers, k)[0] for k in (1, 2, 3, 4)] == ["lda", "single", "seed", "lda"]
    assert sorted(serve_bench.rotated(servers, 2)) == sorted(servers)


def test_a_server_that_cannot_start_is_a_message_not_a_traceback(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    code = serve_bench.cli(["--servers", "lda", "--after", missing, "--before", missing, "--concurrency", "1",
                            "--rounds", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("lda bench: lda server exited with")
    assert "no-such-model" in err  # the server's own last lines say what was wrong
    assert "Traceback" not in err.split("Its last lines:")[0]


def test_seed_server_caps_its_prompts(tmp_path):
    config = serve_bench.BenchConfig("a", "b", tmp_path, seed_max_prompts=8)
    assert config.prompts_for("lda", 64) == 128 and config.prompts_for("seed", 64) == 8
    assert config.prompts_for("lda", 1) == 8


def test_dtypes_reach_each_server(tmp_path, monkeypatch):
    monkeypatch.setattr(serve_bench, "cpu_dtype", lambda dtype: "float32" if dtype == "auto" else dtype)
    config = serve_bench.BenchConfig("a", "b", tmp_path)
    _, lda_env = serve_bench.server_command(config, "lda", 1)
    single, _ = serve_bench.server_command(config, "single", 1)
    seed, _ = serve_bench.server_command(config, "seed", 1)
    assert lda_env["DTYPE"] == "auto"  # resolved by the engine itself
    assert single[single.index("--dtype") + 1] == "float32"  # as the engine would resolve auto
    assert seed[seed.index("--dtype") + 1] == "float32"  # the seed's own (fastest) dtype
    config = serve_bench.BenchConfig("a", "b", tmp_path, dtype="bfloat16", seed_dtype="bfloat16")
    single, _ = serve_bench.server_command(config, "single", 1)
    seed, _ = serve_bench.server_command(config, "seed", 1)
    assert single[single.index("--dtype") + 1] == "bfloat16" and seed[seed.index("--dtype") + 1] == "bfloat16"


def test_soak_counts_http_rows_and_statuses(tmp_path):
    final = tmp_path / "soak_final.json"
    final.write_text(json.dumps([
        {"method": "POST", "name": "/v1/completions alpha=0", "num_requests": 10, "num_failures": 1},
        {"method": "POST", "name": "/v1/chat/completions alpha=1", "num_requests": 5, "num_failures": 0},
        {"method": "TTFT", "name": "/v1/completions alpha=0", "num_requests": 9, "num_failures": 0},
    ]))
    assert serve_bench._locust_counts(final) == (15, 1)
    log = tmp_path / "server.log"
    log.write_text(
        'INFO:     127.0.0.1:1 - "POST /v1/completions HTTP/1.1" 200 OK\n'
        'INFO:     127.0.0.1:2 - "POST /v1/chat/completions HTTP/1.1" 200 OK\n'
        'INFO:     127.0.0.1:3 - "POST /v1/completions HTTP/1.1" 500 Internal Server Error\n'
        'INFO:     127.0.0.1:4 - "GET /health HTTP/1.1" 200 OK\n'
    )
    assert serve_bench._status_counts(log) == {"200": 2, "500": 1}


def test_seed_stream_matches_reference_generate(pair):
    from engine.reference import ReferencePair

    ref = ReferencePair(str(pair.after), str(pair.before))
    prompt = ref.tokenizer("Tell me about the weather today.")["input_ids"]
    for alpha in (0.0, 1.0, 20.0):
        expected = ref.generate(prompt, alpha, 12, ignore_eos=True).token_ids
        assert list(stream_tokens(ref, prompt, alpha, 12, 0.0, 1.0, None, True)) == expected


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_runs_all_servers_at_tiny_scale(pair, tmp_path):
    config = serve_bench.BenchConfig(
        after=str(pair.after), before=str(pair.before), out_dir=tmp_path / "out",
        concurrencies=(1, 2), num_prompts=4, input_len=32, output_len=8,
        kv_cache_gb=0.25, max_num_seqs=16, max_model_len=256, rounds=2, step_timing=True,
    )
    rows, paths = serve_bench.run(config)
    assert [(r.round, r.concurrency, r.server) for r in rows] == [
        (1, 1, "lda"), (1, 1, "single"), (1, 1, "seed"), (1, 2, "lda"), (1, 2, "single"), (1, 2, "seed"),
        (2, 1, "single"), (2, 1, "seed"), (2, 1, "lda"), (2, 2, "single"), (2, 2, "seed"), (2, 2, "lda"),
    ]
    for r in rows:
        assert (r.completed, r.failed) == (4, 0), r
        assert r.output_throughput > 0 and r.request_throughput > 0, r
        assert 0 < r.p50_ttft_ms <= r.p99_ttft_ms, r
        assert 0 < r.p50_tpot_ms <= r.p99_tpot_ms, r
        assert r.peak_rss_mb > 50, r
        # Throughput and the run's own numbers agree: 4 requests of 8 tokens in `duration_s`.
        assert r.output_throughput == pytest.approx(4 * 8 / r.duration_s, rel=0.05), r

    data = json.loads(Path(paths["json"]).read_text())
    assert len(data["rows"]) == 12 and data["config"]["output_len"] == 8 and data["config"]["rounds"] == 2
    assert [(r["server"], r["concurrency"], r["round"]) for r in data["summary"]] == [
        (s, c, 2) for s in serve_bench.SERVERS for c in (1, 2)
    ]
    for e in data["ratios"]:
        assert len(e["lda_over_single_rounds"]) == 2 and len(e["lda_over_seed_rounds"]) == 2
        assert e["lda_over_single_min"] <= e["lda_over_single"] <= e["lda_over_single_max"]
    csv_text = Path(paths["csv"]).read_text()
    assert csv_text.startswith("server,concurrency,") and csv_text.count("\n") == 13
    assert Path(paths["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The workers' step records: the pair times each stack, the single model has none.
    lda_steps = load_steps(config.out_dir / "steps" / "lda")
    single_steps = load_steps(config.out_dir / "steps" / "single")
    assert not (config.out_dir / "steps" / "seed").exists()
    # 12 levels' worth of 4 requests x 8 tokens: at least 8 steps a level with output.
    assert len(lda_steps) >= 2 * 2 * 8 and len(single_steps) >= 2 * 2 * 8
    for s in lda_steps:
        assert s["tokens"] >= s["requests"] >= 1
        assert 0 < s["after"] and 0 < s["before"] and s["after"] + s["before"] <= s["forward"] <= s["step"]
        assert 0 < s["logits"] < s["step"] and 0 < s["sample"] < s["step"]
    assert all("after" not in s and 0 < s["logits"] and 0 < s["forward"] < s["step"] for s in single_steps)
    report = serve_bench.step_report(config)
    assert "lda     decode       1" in report and "single  prefill" in report


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_soak_runs_at_tiny_scale(pair, tmp_path):
    config = serve_bench.BenchConfig(
        after=str(pair.after), before=str(pair.before), out_dir=tmp_path / "soak",
        kv_cache_gb=0.25, max_num_seqs=4, max_model_len=256,
    )
    result = serve_bench.soak(config, seconds=8, users=6, max_tokens=4)
    assert result.locust_exit_code == 0 and result.healthy_after and result.completion_after
    assert result.requests > 0 and result.failures == 0 and result.server_errors == 0
    # Every request the server answered was counted by locust (plus the one check afterwards).
    assert sum(result.status_counts.values()) == result.requests + 1
    assert json.loads((tmp_path / "soak" / "soak.json").read_text())["requests"] == result.requests
