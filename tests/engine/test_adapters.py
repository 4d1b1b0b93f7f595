"""Reading PEFT adapters and refusing bad ones at start-up, before any engine loads (no engine here).

Each error must name both models (the adapter's base and the before model) or the limit.
"""

import re

import pytest

from api.settings import parse_settings
from engine.adapters import AdapterError, check_joins, parse_adapter_arg, read_adapter
from engine.config import adapter_pair
from tests.factories import build_adapter, build_model


@pytest.fixture(scope="module")
def models(models_root):
    root = models_root / "adapters"
    base = build_model(root / "base", "llama", seed=2)
    return {
        "base": base,
        "adapter": build_adapter(base, root / "adapter", rank=8, seed=1),
        "rank32": build_adapter(base, root / "rank32", rank=32, seed=2),
        "wide": build_model(root / "wide", "llama", seed=3, hidden_size=96, head_dim=48),
        "bigvocab": build_model(root / "bigvocab", "llama", seed=3, vocab_size=352),
        "qwen": build_model(root / "qwen", "qwen2", seed=3),
        "other": build_model(root / "other", "llama", seed=4),
    }


def test_an_adapter_is_read_and_its_base_becomes_the_before_model(models):
    pair = adapter_pair(str(models["adapter"]), None)
    (spec,) = pair.adapters
    assert (spec.name, spec.rank, spec.base) == ("adapter", 8, str(models["base"]))
    assert set(spec.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert pair.after == pair.before == str(models["base"])
    assert pair.shares_base and pair.max_lora_rank == 8
    assert "shares the base weights" in pair.describe()


def test_a_different_before_model_shares_nothing_and_says_so(models):
    pair = adapter_pair(str(models["adapter"]), str(models["other"]), [("r32", str(models["rank32"]))])
    assert [a.name for a in pair.adapters] == ["adapter", "r32"]
    assert not pair.shares_base and pair.max_lora_rank == 32
    assert "nothing is shared" in pair.describe()


@pytest.mark.parametrize(
    ("before", "differs"),
    [("wide", "hidden_size 64 vs 96"), ("bigvocab", "vocab_size 300 vs 352"), ("qwen", "model_type llama vs qwen2")],
)
def test_a_base_unlike_the_before_model_is_refused_naming_both(models, before, differs):
    with pytest.raises(AdapterError) as error:
        adapter_pair(str(models["adapter"]), str(models[before]))
    message = str(error.value)
    assert str(models["base"]) in message and str(models[before]) in message and differs in message


def test_a_rank_above_the_configured_maximum_is_refused(models):
    with pytest.raises(AdapterError, match=r"adapter 'r32' .* has rank 32, above max_lora_rank 16"):
        adapter_pair(str(models["adapter"]), None, [("r32", str(models["rank32"]))], configured_max_rank=16)
    with pytest.raises(AdapterError, match=r"max_lora_rank must be one of"):
        adapter_pair(str(models["adapter"]), None, configured_max_rank=12)


def test_bad_adapter_arguments(models, tmp_path):
    with pytest.raises(AdapterError, match="NAME=PATH"):
        parse_adapter_arg("no-equals-sign")
    with pytest.raises(AdapterError, match=r"adapter 'x': .* is not a PEFT adapter"):
        read_adapter("x", str(models["base"]))
    with pytest.raises(ValueError, match="adapter names must be unique"):
        adapter_pair(str(models["adapter"]), None, [("adapter", str(models["rank32"]))])
    with pytest.raises(ValueError, match="is a full model, but adapters were given"):
        adapter_pair(str(models["other"]), None, [("a", str(models["adapter"]))])


def test_server_settings_take_adapters_from_flags_and_environment(models, monkeypatch):
    for var in ("MODEL_AFTER_ID", "MODEL_BEFORE_ID", "LDA_AFTER_ADAPTERS", "LDA_MAX_LORA_RANK"):
        monkeypatch.delenv(var, raising=False)
    settings = parse_settings(["--after-adapter", f"a={models['adapter']}", "--after-adapter", f"b={models['rank32']}"])
    assert [a.name for a in settings.config.pair.adapters] == ["a", "b"]
    assert settings.config.pair.before == str(models["base"])

    monkeypatch.setenv("MODEL_AFTER_ID", str(models["adapter"]))
    monkeypatch.setenv("LDA_AFTER_ADAPTERS", f"b={models['rank32']}")
    settings = parse_settings([])
    assert [a.name for a in settings.config.pair.adapters] == ["adapter", "b"]

    monkeypatch.setenv("LDA_MAX_LORA_RANK", "8")
    with pytest.raises(ValueError, match="has rank 32, above max_lora_rank 8"):
        parse_settings([])


def test_lda_serve_exits_2_naming_both_models(models, monkeypatch, capsys):
    from api.server import cli

    monkeypatch.delenv("LDA_AFTER_ADAPTERS", raising=False)
    code = cli(["--model-after", str(models["adapter"]), "--model-before", str(models["wide"])])
    err = capsys.readouterr().err
    assert code == 2 and str(models["base"]) in err and str(models["wide"]) in err


def _spec(models, key="adapter"):
    return read_adapter(key, str(models[key]))


def test_an_adapter_joining_a_running_pair_passes_the_start_up_checks(models):
    base = str(models["base"])
    check_joins(_spec(models), base, base, 16, None)
    check_joins(_spec(models), base, base, 8, ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"])


@pytest.mark.parametrize(
    ("key", "before", "max_rank", "targets", "message"),
    [
        ("rank32", "base", 16, None, "has rank 32, above max_lora_rank 16; raise max_lora_rank"),
        ("adapter", "wide", 16, None, "hidden_size 64 vs 96"),
        ("adapter", "bigvocab", 16, None, "vocab_size 300 vs 352"),
        ("adapter", "other", 16, None, "but this server's adapters apply to"),
        ("adapter", "base", 16, ["q_proj", "v_proj"], "targets down_proj, gate_proj, k_proj, o_proj, up_proj, which"),
    ],
)
def test_an_adapter_that_cannot_join_is_refused_naming_the_problem(models, key, before, max_rank, targets, message):
    served_base = str(models["other" if before == "other" else "base"])
    before_model = str(models[before])
    with pytest.raises(AdapterError, match=re.escape(message)):
        check_joins(_spec(models, key), served_base, before_model, max_rank, targets)
