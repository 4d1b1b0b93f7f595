"""alpha validation and the per-row alpha table that follows the persistent batch."""

import math

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from engine.alpha import AlphaError, AlphaLogitsProcessor, RowAlphas, validate_alpha


@pytest.mark.parametrize("value", [-1, 0, 0.3, 1, 20, 100])
def test_valid(value):
    assert validate_alpha(value, 100) == float(value)


@pytest.mark.parametrize(
    "value, message",
    [
        (math.nan, "finite number in \\[-1, 100\\]; got nan"),
        (math.inf, "finite number"),
        (-1.5, "got -1.5"),
        (100.5, "got 100.5"),
        ("2", "must be a number .* got '2' of type str"),
        (None, "type NoneType"),
        (True, "type bool"),
    ],
)
def test_invalid_names_value_and_range(value, message):
    with pytest.raises(AlphaError, match=message):
        validate_alpha(value, 100)


def test_processor_validate_params():
    AlphaLogitsProcessor.validate_params(SamplingParams(extra_args={"alpha": 2.0}))
    AlphaLogitsProcessor.validate_params(SamplingParams())
    with pytest.raises(ValueError, match="alpha"):
        AlphaLogitsProcessor.validate_params(SamplingParams(extra_args={"alpha": "x"}))


def _params(alpha=None):
    return SamplingParams(extra_args=None if alpha is None else {"alpha": alpha})


def test_rows_follow_add_remove_move_swap():
    rows = RowAlphas(8, torch.device("cpu"), default=1.0)
    rows.apply(BatchUpdate(3, removed=[], added=[(0, _params(0.0), None, []), (1, _params(), None, []), (2, _params(20.0), None, [])], moved=[]))
    assert rows.for_rows(3).tolist() == [0.0, 1.0, 20.0]
    # Request 0 finishes; the last row moves into its slot (vLLM's condense step).
    rows.apply(BatchUpdate(2, removed=[0], added=[], moved=[(2, 0, MoveDirectionality.UNIDIRECTIONAL)]))
    assert rows.for_rows(2).tolist() == [20.0, 1.0]
    rows.apply(BatchUpdate(2, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))
    assert rows.for_rows(2).tolist() == [1.0, 20.0]
    # Rows that are not the batch (prompt logprobs, warm-up) use the default.
    assert rows.for_rows(5).tolist() == [1.0] * 5


def test_prompt_rows_take_their_requests_alpha_even_when_as_many_as_the_batch():
    rows = RowAlphas(8, torch.device("cpu"), default=1.0)
    rows.apply(BatchUpdate(2, removed=[], added=[(0, _params(0.0), None, []), (1, _params(20.0), None, [])], moved=[]))
    rows.prompt_row = 1
    # Two prompt rows of request 1: not the batch's two rows, though there are as many.
    assert rows.for_rows(2).tolist() == [20.0, 20.0]
    assert rows.for_rows(7).tolist() == [20.0] * 7
    rows.prompt_row = None
    assert rows.for_rows(2).tolist() == [0.0, 20.0]
