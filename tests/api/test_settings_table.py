"""The settings table: every setting is one row, its default is its field's, stated once, and its
errors name the setting as the user sets it."""

from __future__ import annotations

from dataclasses import fields

import pytest

from api.settings import SETTINGS, AccessSettings, RequestLimits, ServerSettings, parse_settings, setting
from api.settings.parse import GROUP_CLASSES, build_parser, default_of
from api.settings.table import FIELD_DEFAULT
from engine.config import AlphaConfig, EngineOptions
from tests.api.test_settings import PAIR

NOT_SETTINGS = {"server.config", "server.vllm_args", "server.access", "server.limits"}
"""ServerSettings' fields that hold other groups, or vLLM's flags after `--`."""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for row in SETTINGS:
        for name in (row.env, *row.aliases):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)


def test_every_field_of_every_group_is_one_row():
    declared = {f"{group}.{f.name}" for group, cls in GROUP_CLASSES.items() for f in fields(cls)} - NOT_SETTINGS
    rows = [row.field for row in SETTINGS]
    assert sorted(rows) == sorted(declared)
    assert len({row.flag for row in SETTINGS}) == len({row.env for row in SETTINGS}) == len(SETTINGS)


def test_defaults_are_the_fields_own():
    s = parse_settings(PAIR)
    assert s.config.alpha == AlphaConfig()
    assert s.config.engine == EngineOptions(served_model_name=setting("engine.served_model_name").default)
    assert (s.access, s.limits) == (AccessSettings(), RequestLimits())
    server = ServerSettings(s.config)
    assert (s.host, s.port, s.prompt_format) == (server.host, server.port, server.prompt_format)
    assert [row.flag for row in SETTINGS if row.default is not FIELD_DEFAULT] == ["--served-model-name"]


def test_help_shows_each_default_from_its_field():
    text = " ".join(build_parser().format_help().split())
    assert f"[env MAX_NUM_SEQS, default {EngineOptions().max_num_seqs}]" in text
    assert f"[env LDA_MAX_ALPHA, default {AlphaConfig().max_alpha}]" in text
    assert "[env LDA_PROMPT_FORMAT, default chat]" in text
    assert default_of(setting("pair.after")) is None


@pytest.mark.parametrize("row", SETTINGS, ids=lambda row: row.flag)
def test_each_setting_reads_its_flag_and_its_variable(monkeypatch, row):
    """Every row lands in its field, from the flag and from the environment, the flag winning."""
    samples = {
        str: {"engine.device": ("cpu", "cuda"), "engine.dtype": ("float32", "bfloat16"), "engine.cpu_bind": ("vllm", "all"),
              "engine.distributed_executor_backend": ("mp", "ray"), "server.prompt_format": ("raw", "alpaca"),
              "access.api_key": ("k1", "k2"), "engine.served_model_name": ("n1", "n2"), "server.host": ("0.0.0.0", "::1")},
        int: {"engine.data_parallel_size_local": ("1", "0"), "engine.pipeline_parallel_size": ("1", "1"),
              "pair.max_lora_rank": ("16", "32"), "pair.max_loras": ("4", "5"), "server.port": ("8001", "8002"),
              "engine.max_model_len": ("64", "128"), "engine.max_num_batched_tokens": ("64", "128"),
              "engine.block_size": ("32", "64")},
        float: {"engine.gpu_memory_utilization": ("0.5", "0.7"), "alpha.default_alpha": ("2.0", "3.0")},
    }
    if row.group == "pair" and row.name in ("after", "before", "adapters"):
        pytest.skip("the models: tests/api/test_settings.py and tests/engine/test_adapters.py")
    pair = PAIR
    if row.name in ("max_lora_rank", "max_loras"):  # LoRA limits only mean something with LoRA on
        monkeypatch.setenv(setting("pair.runtime_adapters").env, "1")
    if row.name == "one_pass":  # needs stacks that share the base weights
        pair = ["--model-after", "m", "--model-before", "m", "--allow-runtime-adapters"]
    if row.kind is bool:
        if row.name == "metrics_require_key":
            monkeypatch.setenv(setting("access.api_key").env, "k")
        monkeypatch.setenv(row.env, "1")
        assert _field(parse_settings(pair), row) is (not row.negates)
        monkeypatch.setenv(row.env, "0")
        assert _field(parse_settings(pair), row) is row.negates
        assert _field(parse_settings([*pair, row.flag]), row) is (not row.negates)
        return
    env_text, flag_text = samples.get(row.kind, {}).get(row.field, ("2", "3"))
    monkeypatch.setenv(row.env, env_text)
    assert _plain(_field(parse_settings(pair), row)) == row.kind(env_text)
    assert _plain(_field(parse_settings([*pair, row.flag, flag_text]), row)) == row.kind(flag_text)


def _field(settings: ServerSettings, row):
    holder = {"pair": settings.config.pair, "alpha": settings.config.alpha, "engine": settings.config.engine,
              "access": settings.access, "limits": settings.limits, "server": settings}[row.group]
    return getattr(holder, row.name)


def _plain(value):
    return getattr(value, "value", value)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max-num-seqs", "0"], "max_num_seqs must be >= 1; got 0 (set by --max-num-seqs or MAX_NUM_SEQS)"),
        (["--default-alpha", "500"], "default_alpha must be a finite number in [-1, max_alpha=100]; got 500.0 (set by --default-alpha or LDA_DEFAULT_ALPHA)"),
        (["--device", "tpu"], "device must be one of auto, cpu, cuda; got 'tpu' (set by --device or DEVICE)"),
        (["--port", "0"], "PORT must be in 1..65535; got 0"),
        (["--block-size", "40"], "block_size must be a multiple of 16 (16, 32, ... 256); got 40 (set by --block-size or BLOCK_SIZE)"),
    ],
)
def test_errors_name_the_field_the_range_and_the_setting(argv, message):
    with pytest.raises(ValueError) as error:
        parse_settings([*PAIR, *argv])
    assert str(error.value) == message


def test_the_configuration_page_lists_every_setting():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "serving" / "configuration.md").read_text()
    missing = [row.flag for row in SETTINGS if f"`{row.env}`" not in page or f"`{row.flag}" not in page]
    assert not missing
