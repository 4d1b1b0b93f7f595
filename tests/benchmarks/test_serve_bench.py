"""`lda bench` at tiny scale, so the harness cannot rot: every kind of server, two levels, a few requests."""

import json
from pathlib import Path

import pytest

from benchmarks import serve_bench
from benchmarks.original_server import Job, batch_tokens, stream_tokens
from benchmarks.serve_bench import OriginalMode, locust_soak, servers
from engine.compat.step_timing import load_steps
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
    with pytest.raises(ValueError, match="original_modes is empty"):
        serve_bench.BenchConfig("a", "b", tmp_path, original_modes=())


def test_original_modes_parse_and_name():
    assert OriginalMode.parse("batch:bfloat16:2") == OriginalMode(True, "bfloat16", 2)
    assert OriginalMode.parse("one:float32:1").name == "original-one-fp32-t1"
    for bad in ("batch:int8:2", "many:float32:1", "batch:float32", "batch:float32:0", "batch:float32:x"):
        with pytest.raises(ValueError, match="original mode"):
            OriginalMode.parse(bad)
    modes = serve_bench.all_original_modes(2)
    assert len(modes) == 12 and len({m.name for m in modes}) == 12
    assert {m.threads for m in serve_bench.all_original_modes(1)} == {1}


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
        _row("original-one-fp32-t1", 64, 1, 10), _row("original-batch-bf16-t2", 64, 1, 40), _row("lda", 16, 1, 30),
    ]
    by_level = {e["concurrency"]: e for e in serve_bench.ratios(rows)}
    c64 = by_level[64]
    assert c64["lda_over_single_rounds"] == pytest.approx([0.5, 0.5, 0.6])
    assert (c64["lda_over_single"], c64["lda_over_single_min"], c64["lda_over_single_max"]) == pytest.approx((0.5, 0.5, 0.6))
    # Against the original design's fastest mode at that level, only in round 1 where both ran.
    assert c64["original_server"] == "original-batch-bf16-t2"
    assert c64["lda_over_original_rounds"] == pytest.approx([2.5])
    assert by_level[16] == {"concurrency": 16}  # nothing to compare with

    table = serve_bench.format_ratios(serve_bench.ratios(rows))
    assert "0.50 (0.50-0.60)" in table and "2.50" in table and "(2.50" not in table
    assert "original-batch-bf16-t2" in table


def test_each_level_races_the_originals_fastest_mode(tmp_path):
    modes = (OriginalMode(True, "float32", 1), OriginalMode(False, "float32", 1))
    config = serve_bench.BenchConfig("a", "b", tmp_path, concurrencies=(1, 16), original_modes=modes)
    probe = [_row("original-batch-fp32-t1", 1, 0, 5), _row("original-one-fp32-t1", 1, 0, 9),
             _row("original-batch-fp32-t1", 16, 0, 50), _row("original-one-fp32-t1", 16, 0, 9)]
    assert serve_bench.level_servers(config, probe) == {
        1: ("lda", "single", "original-one-fp32-t1"), 16: ("lda", "single", "original-batch-fp32-t1"),
    }
    config = serve_bench.BenchConfig("a", "b", tmp_path, servers=("lda", "single"), concurrencies=(1,))
    assert serve_bench.level_servers(config, []) == {1: ("lda", "single")}


def test_summary_takes_medians_over_rounds():
    rows = [_row("single", 4, k, tok_s, rss) for k, tok_s, rss in ((1, 90, 300), (2, 300, 100), (3, 100, 200))]
    rows.append(_row("lda", 4, 1, 50))
    lda, single = serve_bench.summary(rows)  # lda, single, then the originals
    assert (lda.server, lda.round, lda.output_throughput) == ("lda", 1, 50)
    assert (single.server, single.round, single.completed) == ("single", 3, 24)
    assert single.output_throughput == 100 and single.p50_ttft_ms == 20 and single.peak_rss_mb == 300


def test_rounds_rotate_which_server_goes_first():
    servers = ("lda", "single", "original-one-fp32-t1")
    assert [serve_bench.rotated(servers, k)[0] for k in (1, 2, 3, 4)] == ["lda", "single", "original-one-fp32-t1", "lda"]
    assert sorted(serve_bench.rotated(servers, 2)) == sorted(servers)


def test_a_server_that_cannot_start_is_a_message_not_a_traceback(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    code = serve_bench.cli(["--servers", "lda", "--after", missing, "--before", missing, "--concurrency", "1",
                            "--rounds", "1", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("lda bench: lda server exited with")
    assert "no-such-model" in err  # the server's own last lines say what was wrong
    assert "Traceback" not in err.split("Its last lines:")[0]


def test_one_at_a_time_original_caps_its_prompts(tmp_path):
    config = serve_bench.BenchConfig("a", "b", tmp_path, one_at_a_time_max_prompts=8)
    assert config.prompts_for("lda", 64) == 128 and config.prompts_for("original-one-fp32-t1", 64) == 8
    assert config.prompts_for("original-batch-fp32-t2", 64) == 128
    assert config.prompts_for("lda", 1) == 8
    # The probe sends one full static batch per level: it only picks the original's fastest mode.
    assert config.prompts_for("original-batch-fp32-t2", 64, probe=True) == 64
    assert config.prompts_for("original-batch-fp32-t2", 1, probe=True) == 8


def test_dtypes_threads_and_binding_reach_each_server(tmp_path, monkeypatch):
    monkeypatch.setattr(servers, "cpu_dtype", lambda dtype: "float32" if dtype == "auto" else dtype)
    monkeypatch.setattr(servers, "cpu_binding_env", lambda: {"VLLM_CPU_OMP_THREADS_BIND": "0-1",
                                                               "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"})
    modes = (OriginalMode(True, "bfloat16", 2), OriginalMode(False, "float16", 1))
    config = serve_bench.BenchConfig("a", "b", tmp_path, original_modes=modes, concurrencies=(1, 16))
    _, lda_env = serve_bench.server_command(config, "lda", 1)
    single, single_env = serve_bench.server_command(config, "single", 1)
    batch, batch_env = serve_bench.server_command(config, "original-batch-bf16-t2", 1)
    one, _ = serve_bench.server_command(config, "original-one-fp16-t1", 1)
    assert lda_env["DTYPE"] == "auto"  # resolved by the engine itself
    assert single[single.index("--dtype") + 1] == "float32"  # as the engine would resolve auto
    assert (batch[batch.index("--dtype") + 1], batch[batch.index("--threads") + 1]) == ("bfloat16", "2")
    assert batch[batch.index("--max-batch") + 1] == "16" and "--batched" not in one
    assert (one[one.index("--dtype") + 1], one[one.index("--threads") + 1]) == ("float16", "1")
    # Plain vLLM gets the binding `lda serve` applies to itself.
    assert single_env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1" and single_env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"


def test_the_vllm_binding_variant_is_lda_serve_without_our_binding(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-1")  # even if the caller's shell set one
    monkeypatch.setenv("LDA_CPU_BIND", "vllm")  # nor may the caller's choice reach the default lda server
    config = serve_bench.BenchConfig("a", "b", tmp_path, servers=("lda", "lda-bind-vllm"), concurrencies=(1,))
    lda, lda_env = serve_bench.server_command(config, "lda", 1)
    variant, env = serve_bench.server_command(config, "lda-bind-vllm", 1)
    assert variant == lda and env["MODEL_AFTER_ID"] == "a"
    assert env["LDA_CPU_BIND"] == "vllm" and "LDA_CPU_BIND" not in lda_env
    assert "VLLM_CPU_OMP_THREADS_BIND" not in env and "VLLM_CPU_NUM_OF_RESERVED_CPU" not in env
    assert lda_env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"

    rows = [_row("lda", 16, k, tok_s) for k, tok_s in ((1, 150), (2, 160), (3, 140))]
    rows += [_row("lda-bind-vllm", 16, k, tok_s) for k, tok_s in ((1, 100), (2, 100), (3, 112))]
    (entry,) = serve_bench.ratios(rows)
    assert entry["lda_over_vllm_bind"] == pytest.approx(1.5) and entry["lda_over_vllm_bind_min"] == pytest.approx(1.25)
    assert "LDA/LDA(vLLM bind)" in serve_bench.format_ratios([entry])
    assert [r.server for r in serve_bench.summary(rows)] == ["lda", "lda-bind-vllm"]


def test_cpu_binding_env_lists_the_cores():
    from engine.config import cpu_binding_env

    assert cpu_binding_env({0, 1}) == {"VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert cpu_binding_env({0, 1, 2, 5, 7, 8})["VLLM_CPU_OMP_THREADS_BIND"] == "0-2,5,7-8"


def test_prepare_process_binds_all_cores_unless_told_otherwise(monkeypatch):
    import os

    from engine.config import EngineOptions, LDAConfig, PairConfig, prepare_process

    for name in ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"):
        monkeypatch.setenv(name, "")  # so that monkeypatch restores each afterwards
        monkeypatch.delenv(name)
    prepare_process(LDAConfig(PairConfig("a", "b"), engine=EngineOptions(device="cpu", cpu_bind="vllm")))
    assert "VLLM_CPU_OMP_THREADS_BIND" not in os.environ
    prepare_process(LDAConfig(PairConfig("a", "b"), engine=EngineOptions(device="cpu")))
    assert os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0" and os.environ["VLLM_CPU_OMP_THREADS_BIND"]
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")  # the user's own binding wins
    prepare_process(LDAConfig(PairConfig("a", "b"), engine=EngineOptions(device="cpu")))
    assert os.environ["VLLM_CPU_OMP_THREADS_BIND"] == "0"
    with pytest.raises(ValueError, match="cpu_bind"):
        EngineOptions(cpu_bind="half")


def test_soak_counts_http_rows_and_statuses(tmp_path):
    final = tmp_path / "soak_final.json"
    final.write_text(json.dumps([
        {"method": "POST", "name": "/v1/completions alpha=0", "num_requests": 10, "num_failures": 1},
        {"method": "POST", "name": "/v1/chat/completions alpha=1", "num_requests": 5, "num_failures": 0},
        {"method": "TTFT", "name": "/v1/completions alpha=0", "num_requests": 9, "num_failures": 0},
    ]))
    assert locust_soak._locust_counts(final) == (15, 1)
    log = tmp_path / "server.log"
    log.write_text(
        'INFO:     127.0.0.1:1 - "POST /v1/completions HTTP/1.1" 200 OK\n'
        'INFO:     127.0.0.1:2 - "POST /v1/chat/completions HTTP/1.1" 200 OK\n'
        'INFO:     127.0.0.1:3 - "POST /v1/completions HTTP/1.1" 500 Internal Server Error\n'
        'INFO:     127.0.0.1:4 - "GET /health HTTP/1.1" 200 OK\n'
    )
    assert locust_soak._status_counts(log) == {"200": 2, "500": 1}


def test_original_paths_match_reference_generate(pair):
    """Both of the original's paths decode what the reference does, the batched one with left padding."""
    from engine.reference import ReferencePair

    ref = ReferencePair(str(pair.after), str(pair.before))
    texts = ["Tell me about the weather today.", "Numbers: 0 1 2 3 4 5 6 7 8 9. Logits, alpha.", "hi"]
    prompts = [ref.tokenizer(t)["input_ids"] for t in texts]
    assert len({len(p) for p in prompts}) == 3, "prompts of different lengths exercise the padding"
    alphas = (0.0, 1.0, 20.0)
    expected = [ref.generate(p, a, 12, ignore_eos=True).token_ids for p, a in zip(prompts, alphas)]
    for p, a, tokens in zip(prompts, alphas, expected):
        assert list(stream_tokens(ref, Job(p, a, 12, ignore_eos=True))) == tokens
    steps = list(batch_tokens(ref, [Job(p, a, 12) for p, a in zip(prompts, alphas)]))
    assert [[step[i] for step in steps] for i in range(3)] == expected


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bench_runs_all_servers_at_tiny_scale(pair, tmp_path):
    modes = (OriginalMode(True, "float32", 1), OriginalMode(False, "float32", 1))
    config = serve_bench.BenchConfig(
        after=str(pair.after), before=str(pair.before), out_dir=tmp_path / "out",
        concurrencies=(1, 2), num_prompts=4, input_len=32, output_len=8, original_modes=modes,
        kv_cache_gb=0.25, max_num_seqs=16, max_model_len=256, rounds=2, step_timing=True,
    )
    rows, paths = serve_bench.run(config)
    data = json.loads(Path(paths["json"]).read_text())
    # The probe ran each original mode once at each level; the fastest per level joined the rounds.
    probe = data["probe"]
    assert sorted((r["server"], r["concurrency"], r["round"]) for r in probe) == sorted(
        (m.name, c, 0) for m in modes for c in (1, 2))
    best = {c: max((r for r in probe if r["concurrency"] == c), key=lambda r: r["output_throughput"])["server"]
            for c in (1, 2)}
    orig = [best[1], best[1], best[2], best[2]]
    assert [(r.round, r.concurrency, r.server) for r in rows] == [
        (1, 1, "lda"), (1, 1, "single"), (1, 1, orig[0]), (1, 2, "lda"), (1, 2, "single"), (1, 2, orig[2]),
        (2, 1, "single"), (2, 1, orig[1]), (2, 1, "lda"), (2, 2, "single"), (2, 2, orig[3]), (2, 2, "lda"),
    ]
    for r in rows:
        assert (r.completed, r.failed) == (4, 0), r
        assert r.output_throughput > 0 and r.request_throughput > 0, r
        assert 0 < r.p50_ttft_ms <= r.p99_ttft_ms, r
        assert 0 < r.p50_tpot_ms <= r.p99_tpot_ms, r
        assert r.peak_rss_mb > 50, r
        # Throughput and the run's own numbers agree: 4 requests of 8 tokens in `duration_s`.
        assert r.output_throughput == pytest.approx(4 * 8 / r.duration_s, rel=0.05), r

    assert len(data["rows"]) == 12 and data["config"]["output_len"] == 8 and data["config"]["rounds"] == 2
    assert data["config"]["cpu_binding"]["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert [(r["server"], r["concurrency"]) for r in data["summary"]][:4] == [
        ("lda", 1), ("lda", 2), ("single", 1), ("single", 2)]
    for e in data["ratios"]:
        assert e["original_server"] == best[e["concurrency"]]
        assert len(e["lda_over_single_rounds"]) == 2 and len(e["lda_over_original_rounds"]) == 2
        assert e["lda_over_single_min"] <= e["lda_over_single"] <= e["lda_over_single_max"]
    csv_text = Path(paths["csv"]).read_text()
    assert csv_text.startswith("server,concurrency,") and csv_text.count("\n") == 13
    assert Path(paths["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The workers' step records: the pair times each stack, the single model has none.
    lda_steps = load_steps(config.out_dir / "steps" / "lda")
    single_steps = load_steps(config.out_dir / "steps" / "single")
    assert not any(p.name.startswith("original") for p in (config.out_dir / "steps").iterdir())
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
