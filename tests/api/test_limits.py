"""Request limits and prompt preparation without a server: sizes are checked before tokenizing,
and tokenizing runs in a worker thread, not on the event loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from fastapi import HTTPException

from api.alpha_middleware import LimitError, check_limits
from api.seed_routes import LDABatchRequest, _prepare_off_loop
from api.settings import RequestLimits
from engine.prompts import PromptFormat

LIMITS = RequestLimits(max_batch_prompts=3, max_n=4)


@pytest.mark.parametrize(
    "payload, param",
    [({"n": 5}, "n"), ({"best_of": 5}, "best_of"), ({"prompt": ["a"] * 4}, "prompt"), ({"prompt": [[1, 2]] * 4}, "prompt")],
)
def test_openai_sizes_over_the_limit_name_the_field(payload, param):
    with pytest.raises(LimitError) as error:
        check_limits(payload, LIMITS)
    assert error.value.param == param and ("LDA_MAX_N=4" in str(error.value) or "LDA_MAX_BATCH_PROMPTS=3" in str(error.value))


@pytest.mark.parametrize("payload", [{"n": 4}, {"n": True}, {"n": "many"}, {"prompt": [1] * 50}, {"prompt": ["a"] * 3}, {}])
def test_within_limits_or_for_vllm_to_judge(payload):
    check_limits(payload, LIMITS)  # wrong types are vLLM's to refuse, in its own words


class RecordingTokenizer:
    chat_template = None

    def __init__(self):
        self.threads = []

    def __call__(self, text, add_special_tokens=True):
        self.threads.append(threading.current_thread().name)
        return SimpleNamespace(input_ids=[1] * len(text))


def _info(tokenizer):
    return SimpleNamespace(
        tokenizer=tokenizer,
        prompt_format=PromptFormat.RAW,
        max_model_len=12,
        limits=RequestLimits(max_prompt_chars=10),
        tokenize_pool=ThreadPoolExecutor(max_workers=1, thread_name_prefix="lda-tokenize"),
    )


def _prepare(info, prompts, **fields):
    req = LDABatchRequest(prompts=prompts, **fields)
    names = [f"prompts[{i}]" for i in range(len(prompts))]
    return asyncio.run(_prepare_off_loop(info, names, req.prompts, req, 5))


def test_prompts_are_tokenized_in_the_worker_thread():
    tokenizer = RecordingTokenizer()
    prepared = _prepare(_info(tokenizer), ["abc", "de"])
    assert [p.token_ids for p in prepared] == [[1] * 3, [1] * 2]
    assert tokenizer.threads and all(name.startswith("lda-tokenize") for name in tokenizer.threads)


@pytest.mark.parametrize(
    "prompts, fields, message",
    [
        (["ok", "x" * 11], {}, "prompts[1] has 11 characters; the limit is LDA_MAX_PROMPT_CHARS=10"),
        (["ok"], {"system_prompt": "y" * 11}, "system_prompt has 11 characters"),
    ],
)
def test_too_many_characters_is_refused_before_any_tokenizing(prompts, fields, message):
    tokenizer = RecordingTokenizer()
    with pytest.raises(HTTPException) as error:
        _prepare(_info(tokenizer), prompts, **fields)
    assert error.value.status_code == 400 and message in error.value.detail
    assert tokenizer.threads == []


def test_prompt_over_the_context_names_it():
    with pytest.raises(HTTPException) as error:
        _prepare(_info(RecordingTokenizer()), ["ok", "x" * 10])
    assert "prompts[1]: prompt (10 tokens) + max_new_tokens (5) exceeds the model's context length (12)" in error.value.detail
