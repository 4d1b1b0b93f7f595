"""Full-weight loads into a compiled pair (torch.compile on, not eager): the reload copies each
layer's new weights into the tensors the compiled graph already holds (engine/weights.py), so the
graph must serve the new checkpoints token for token without recompiling. Its own engine (a
compiled start takes a minute or more here); the checks are those of test_weights_load.py's first test.
"""

from __future__ import annotations

import pytest

from tests.engine.engines import start_pair
from tests.engine.test_weights_load import assert_serves, greedy
from tests.factories import build_full_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lda(llama_pair):
    pair = start_pair(llama_pair, enforce_eager=False)
    yield pair
    pair.close()


def test_compiled_pair_serves_each_loaded_checkpoint(lda, llama_pair, tmp_path):
    assert_serves(lda, llama_pair.after, llama_pair.before, [1.0])
    assert greedy(lda, [1.0])[-1].cached_tokens > 0
    new_after = build_full_checkpoint(tmp_path / "after-1", llama_pair.after, seed=41, max_shard_size="60KB")
    lda.load_weights("after", str(new_after))
    assert greedy(lda, [1.0])[-1].cached_tokens == 0
    assert_serves(lda, new_after, llama_pair.before)
    new_before = build_full_checkpoint(tmp_path / "before-1", llama_pair.before, seed=42)
    lda.load_weights("before", str(new_before))
    assert_serves(lda, new_after, new_before)
