"""Tokenizer compatibility: the report, the refusal before any engine starts, LLaMATokenizer configs."""

import json
import time

import pytest

from engine.library import LDAModelPair
from engine.tokenizers import TokenizerMismatchError, check_pair, compare_tokenizers, load_tokenizer
from tests.factories import build_model


@pytest.fixture(scope="module")
def shuffled(models_root):
    """A model whose tokenizer gives some ids other tokens (trained on other text)."""
    path = build_model(models_root / "llama-other-tokenizer", "llama", seed=3)
    config = json.loads((path / "tokenizer.json").read_text())
    vocab = config["model"]["vocab"]
    # Swap two ordinary tokens' ids: the pair must then be refused.
    items = sorted(vocab.items(), key=lambda kv: kv[1])
    (ta, ia), (tb, ib) = items[100], items[101]
    vocab[ta], vocab[tb] = ib, ia
    (path / "tokenizer.json").write_text(json.dumps(config))
    return path


def test_same_tokenizer_is_compatible(llama_pair):
    report = check_pair(str(llama_pair.after), str(llama_pair.before))
    assert report.compatible and report.errors == []
    assert report.mismatched_ids == 0 and report.vocabs_match
    assert report.to_dict()["special_tokens_after"]["eos_token"] == "<|end|>"


def test_mismatch_lists_the_differences(llama_pair, shuffled):
    with pytest.raises(TokenizerMismatchError) as info:
        check_pair(str(llama_pair.after), str(shuffled))
    report = info.value.report
    assert not report.compatible and report.mismatched_ids == 2
    assert "2 of 300 shared ids map to different tokens" in str(info.value)
    assert "id 100" in str(info.value)


def test_incompatible_pair_fails_before_the_engine_starts(llama_pair, shuffled):
    start = time.monotonic()
    with pytest.raises(TokenizerMismatchError, match="incompatible tokenizers"):
        LDAModelPair(str(llama_pair.after), str(shuffled), kv_cache_memory_gb=0.25)
    assert time.monotonic() - start < 20  # an engine start takes 30 s or more


def test_special_tokens_and_templates_are_warnings_unless_strict(llama_pair):
    after = load_tokenizer(str(llama_pair.after))
    before = load_tokenizer(str(llama_pair.before))
    before.chat_template = None
    before.eos_token = "<|pad|>"
    report = compare_tokenizers(after, before)
    assert report.compatible and not report.chat_templates_match
    assert any("eos_token differs" in w for w in report.warnings)
    strict = compare_tokenizers(after, before, strict=True)
    assert not strict.compatible and any("chat templates differ" in e for e in strict.errors)


def test_llama_tokenizer_class_typo_loads(models_root, llama_pair):
    path = build_model(models_root / "llama-typo", "llama", seed=4)
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "LLaMATokenizer"
    config_path.write_text(json.dumps(config))
    tokenizer = load_tokenizer(str(path))
    assert tokenizer("hello").input_ids == load_tokenizer(str(llama_pair.after))("hello").input_ids
    assert check_pair(str(path), str(llama_pair.before)).compatible


def test_unknown_engine_option_is_refused(llama_pair):
    with pytest.raises(ValueError, match=r"unknown engine option\(s\) \['max_num_seq'\]"):
        LDAModelPair(str(llama_pair.after), str(llama_pair.before), max_num_seq=4)


@pytest.mark.parametrize(
    "kwargs, field",
    [(dict(default_alpha=500.0), "default_alpha"), (dict(max_alpha=-2.0), "max_alpha"), (dict(max_num_seqs=0), "max_num_seqs"), (dict(device="tpu"), "device"),
     (dict(dtype="bf16"), "dtype")],
)
def test_bad_config_names_the_field(llama_pair, kwargs, field):
    with pytest.raises(ValueError, match=field):
        LDAModelPair(str(llama_pair.after), str(llama_pair.before), **kwargs)
