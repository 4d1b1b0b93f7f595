"""Request limits and prompt preparation without a server: sizes are checked before tokenizing,
and tokenizing runs in a worker thread, not on the event loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from fastapi import HTTPException

from api.alpha_middleware import LimitError, check_limits, check_responses_input
from api.original_routes import LDABatchRequest, bounded_new_tokens, prepare_off_loop
from api.settings import RequestLimits
from engine.prompts import PromptFormat

LIMITS = RequestLimits(max_batch_prompts=3, max_n=4, max_tokens=10)


@pytest.mark.parametrize(
    "payload, param",
    [({"n": 5}, "n"), ({"best_of": 5}, "best_of"), ({"prompt": ["a"] * 4}, "prompt"), ({"prompt": [[1, 2]] * 4}, "prompt")],
)
def test_openai_sizes_over_the_limit_name_the_field(payload, param):
    with pytest.raises(LimitError) as error:
        check_limits(payload, LIMITS)
    assert error.value.param == param and ("LDA_MAX_N=4" in str(error.value) or "LDA_MAX_BATCH_PROMPTS=3" in str(error.value))


@pytest.mark.parametrize("name", ["max_tokens", "max_completion_tokens", "max_output_tokens"])
def test_more_tokens_than_the_limit_names_the_field_and_limit(name):
    with pytest.raises(LimitError) as error:
        check_limits({name: 11}, LIMITS)
    assert error.value.param == name and str(error.value) == f"{name} is 11; the limit is LDA_MAX_TOKENS=10"
    check_limits({name: 10}, LIMITS)
    check_limits({name: 10**9}, RequestLimits())  # no limit set: the context length decides, in vLLM


@pytest.mark.parametrize("name", ["top_k", "seed", "min_tokens"])
def test_an_integer_past_64_bits_is_refused_naming_the_field(name):
    with pytest.raises(LimitError, match=f"{name} is 1057219800636502048768000; it must fit in a signed 64-bit integer"):
        check_limits({name: 1057219800636502048768000}, RequestLimits())
    check_limits({name: 2**63 - 1}, RequestLimits())


@pytest.mark.parametrize(
    "payload", [{"n": 4}, {"n": True}, {"n": "many"}, {"prompt": [1] * 50}, {"prompt": ["a"] * 3}, {},
                {"max_tokens": "many"}, {"max_tokens": True}, {"max_tokens": None}],
)
def test_within_limits_or_for_vllm_to_judge(payload):
    check_limits(payload, LIMITS)  # wrong types are vLLM's to refuse, in its own words


@pytest.mark.parametrize("value", [0, -1, True, 2.5, "8"])
def test_max_tokens_setting_must_be_a_positive_integer(value):
    with pytest.raises(ValueError, match="LDA_MAX_TOKENS must be an integer >= 1"):
        RequestLimits(max_tokens=value)


@pytest.mark.parametrize(
    "fields, limit, expected",
    [({}, None, 80), ({}, 50, 50), ({}, 100, 80), ({"max_new_tokens": 50}, 50, 50), ({"max_new_tokens": 300}, None, 300)],
)
def test_original_routes_length_within_the_limit(fields, limit, expected):
    info = SimpleNamespace(limits=RequestLimits(max_tokens=limit))
    assert bounded_new_tokens(info, LDABatchRequest(prompts=["p"], **fields)) == expected


def test_original_routes_asking_more_than_the_limit_is_a_400_naming_it():
    info = SimpleNamespace(limits=RequestLimits(max_tokens=50))
    with pytest.raises(HTTPException) as error:
        bounded_new_tokens(info, LDABatchRequest(prompts=["p"], max_new_tokens=51))
    assert error.value.status_code == 400 and error.value.detail == "max_new_tokens is 51; the limit is LDA_MAX_TOKENS=50"


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
    return asyncio.run(prepare_off_loop(info, names, req.prompts, req, 5))


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


def test_original_routes_bound_top_k_before_the_engine():
    # Found by the fuzz: a top_k past 64 bits reached the engine client and came back a 500.
    from pydantic import ValidationError

    LDABatchRequest(prompts=["p"], top_k=2**31 - 1)
    with pytest.raises(ValidationError, match="top_k"):
        LDABatchRequest(prompts=["p"], top_k=1057219800636502048768000)


def test_responses_input_that_vllm_answers_with_a_500_is_refused():
    # Found by the fuzz: vLLM 0.32's /v1/responses indexes an assistant message's first content part.
    empty = {"type": "message", "role": "assistant", "content": []}
    with pytest.raises(LimitError) as error:
        check_responses_input({"input": [{"type": "message", "role": "user", "content": "hi"}, empty]})
    assert error.value.param == "input[1].content"
    for fine in ({"input": "hi"}, {"input": [{**empty, "role": "user"}]}, {"input": [{**empty, "content": [{"type": "output_text", "text": "x"}]}]}):
        check_responses_input(fine)
