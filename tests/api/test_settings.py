"""`lda serve`'s settings: bad values are refused before anything starts, naming the setting."""

from __future__ import annotations

import pytest

from api import server
from api.settings import parse_settings


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--dtype", "bogus"], {}, "dtype must be one of auto, bfloat16"),
        ([], {"DTYPE": "bf16"}, "dtype must be one of"),
        (["--max-num-seqs", "0"], {}, "max_num_seqs must be >= 1"),
    ],
)
def test_bad_setting_exits_2_naming_it(monkeypatch, capsys, argv, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert server.cli(["--model-after", "a", "--model-before", "b", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lda serve: ") and message in err and "Traceback" not in err


def test_a_model_that_is_not_there_exits_2_naming_it(tmp_path, capsys):
    missing = str(tmp_path / "no-such-model")
    assert server.cli(["--model-after", missing, "--model-before", missing]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lda serve: cannot load the after model '{missing}'") and "Traceback" not in err

PAIR = ["--model-after", "a", "--model-before", "b"]


def _clean_env(monkeypatch):
    for name in ("LDA_API_KEY", "VLLM_API_KEY", "LDA_METRICS_REQUIRE_KEY", "LDA_PROMPT_FORMAT", "LDA_MAX_BATCH_PROMPTS",
                 "LDA_MAX_PROMPT_CHARS", "LDA_MAX_BODY_BYTES", "LDA_MAX_N", "LDA_MAX_TOKENS"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_are_open_chat_and_bounded(monkeypatch):
    _clean_env(monkeypatch)
    s = parse_settings(PAIR)
    assert s.access.api_key is None and not s.access.metrics_require_key
    assert s.prompt_format.value == "chat"
    assert (s.limits.max_batch_prompts, s.limits.max_prompt_chars, s.limits.max_body_bytes, s.limits.max_n) == (256, 100_000, 16 * 2**20, 128)
    assert s.limits.max_tokens is None  # the context length, as vLLM allows on its own
    assert not s.allow_runtime_adapters


def test_max_tokens_from_env_or_flag(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("LDA_MAX_TOKENS", "64")
    assert parse_settings(PAIR).limits.max_tokens == 64
    assert parse_settings([*PAIR, "--max-tokens", "7"]).limits.max_tokens == 7


@pytest.mark.parametrize(
    "given, limit, expected",
    [
        ({}, None, {}),
        (None, 64, {"max_new_tokens": 64}),
        ({"temperature": 0.5}, 64, {"temperature": 0.5, "max_new_tokens": 64}),
        ({"max_new_tokens": 10}, 64, {"max_new_tokens": 10}),  # a smaller default given to vLLM stays
        ({"max_new_tokens": 100}, 64, {"max_new_tokens": 64}),
    ],
)
def test_max_tokens_also_caps_vllms_default_length(given, limit, expected):
    assert server.capped_generation_config(given, limit) == expected


def test_env_and_flags_set_key_format_and_limits(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("LDA_API_KEY", "from-env")
    monkeypatch.setenv("LDA_PROMPT_FORMAT", "alpaca")
    monkeypatch.setenv("LDA_MAX_BATCH_PROMPTS", "100")
    monkeypatch.setenv("LDA_METRICS_REQUIRE_KEY", "1")
    s = parse_settings([*PAIR, "--max-n", "4", "--max-body-bytes", "1000", "--max-prompt-chars", "50"])
    assert s.access.api_key == "from-env" and s.access.metrics_require_key
    assert s.prompt_format.value == "alpaca"
    assert (s.limits.max_batch_prompts, s.limits.max_n, s.limits.max_body_bytes, s.limits.max_prompt_chars) == (100, 4, 1000, 50)
    assert parse_settings([*PAIR, "--api-key", "flag", "--prompt-format", "raw"]).access.api_key == "flag"


@pytest.mark.parametrize("argv", [["--", "--api-key", "k"], ["--", "--api-key=k"], ["--api-key", "k", "--", "--api-key", "k"]])
def test_vllms_api_key_after_the_separator_becomes_the_one_key(monkeypatch, argv):
    _clean_env(monkeypatch)
    s = parse_settings([*PAIR, *argv])
    assert s.access.api_key == "k" and "--api-key" not in " ".join(s.vllm_args)


def test_vllm_api_key_env_becomes_the_one_key(monkeypatch):
    _clean_env(monkeypatch)
    monkeypatch.setenv("VLLM_API_KEY", "v")
    assert parse_settings(PAIR).access.api_key == "v"


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (["--api-key", "a", "--", "--api-key", "b"], {}, "two different API keys"),
        (["--", "--api-key", "a", "b"], {}, "give one API key"),
        (["--api-key", "a"], {"VLLM_API_KEY": "b"}, "two different API keys"),
        (["--", "--api-key"], {}, "--api-key after `--` needs a value"),
        (["--api-key", "has space"], {}, "LDA_API_KEY (--api-key) must be non-empty and contain no whitespace"),
        (["--metrics-require-key"], {}, "LDA_METRICS_REQUIRE_KEY (--metrics-require-key) needs LDA_API_KEY"),
        (["--prompt-format", "llama"], {}, "LDA_PROMPT_FORMAT (--prompt-format) must be one of chat, alpaca, raw"),
        ([], {"LDA_MAX_BATCH_PROMPTS": "0"}, "LDA_MAX_BATCH_PROMPTS must be an integer >= 1"),
        ([], {"LDA_MAX_BODY_BYTES": "lots"}, "LDA_MAX_BODY_BYTES must be of type int"),
        (["--max-n", "0"], {}, "LDA_MAX_N must be an integer >= 1"),
        (["--max-tokens", "0"], {}, "LDA_MAX_TOKENS must be an integer >= 1"),
        ([], {"LDA_MAX_TOKENS": "many"}, "LDA_MAX_TOKENS must be of type int"),
    ],
)
def test_bad_access_and_limit_settings_exit_2_naming_them(monkeypatch, capsys, argv, env, message):
    _clean_env(monkeypatch)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert server.cli([*PAIR, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_no_models_serves_the_shipped_demo_adapter_on_smollm2(monkeypatch, tmp_path):
    """`make serve`'s pair: the LoRA demo installed from the repository (no fine-tune) as the after
    model, SmolLM2 as the before model, the base weights shared."""
    from demo import demo_pair
    from demo.smollm2 import ensure_smollm2

    before = ensure_smollm2()  # the session's cached conversion, not a second one in tmp_path
    monkeypatch.setattr(demo_pair, "ensure_smollm2", lambda root: before)
    monkeypatch.setattr(demo_pair, "build_demo_pair", lambda *a: pytest.fail("fine-tuned on first start"))
    monkeypatch.setenv("LDA_CACHE_DIR", str(tmp_path))
    for name in ("MODEL_AFTER_ID", "MODEL_BEFORE_ID", "LDA_AFTER_ADAPTERS"):
        monkeypatch.delenv(name, raising=False)
    pair = parse_settings([]).config.pair
    config = demo_pair.lora_config(demo_pair.LORA_RANK)
    assert [a.name for a in pair.adapters] == [f"demo-after-lora-{demo_pair.fingerprint(config)}"]
    assert pair.adapters[0].path == str(tmp_path / pair.adapters[0].name)
    assert (pair.after, pair.before) == (str(before), str(before)) and pair.shares_base


@pytest.mark.parametrize("extra, expected", [([], 42), (["--", "--max-logprobs", "100"], 100), (["--", "--max-logprobs", "5"], 42)])
def test_one_pass_scoring_raises_max_logprobs_but_never_lowers_a_users(monkeypatch, llama_pair, extra, expected):
    _clean_env(monkeypatch)
    pair = ["--model-after", str(llama_pair.after), "--model-before", str(llama_pair.before)]
    assert server.vllm_namespace(parse_settings([*pair, *extra])).max_logprobs == expected


def test_one_pass_switch_needs_a_shared_base(monkeypatch, tmp_path):
    """`--one-pass` / LDA_ONE_PASS sets PairConfig.one_pass; a pair of two full models refuses it by name."""
    monkeypatch.delenv("LDA_ONE_PASS", raising=False)
    with pytest.raises(ValueError, match="one_pass needs an adapter pair"):
        parse_settings(["--model-after", str(tmp_path / "a"), "--model-before", str(tmp_path / "b"), "--one-pass"])
    monkeypatch.setenv("LDA_ONE_PASS", "1")
    with pytest.raises(ValueError, match="one_pass needs an adapter pair"):
        parse_settings(["--model-after", str(tmp_path / "a"), "--model-before", str(tmp_path / "b")])
    monkeypatch.setenv("LDA_ONE_PASS", "0")
    assert parse_settings(["--model-after", str(tmp_path / "a"), "--model-before", str(tmp_path / "b")]).config.pair.one_pass is False
