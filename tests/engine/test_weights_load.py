"""Full-weight checkpoints loaded into one stack of a running pair (engine/weights.py), against the
independent reference of the checkpoints now served, token for token (greedy).

One engine for the module (eager; tests/engine/test_weights_load_compiled.py runs the parity part
compiled). Each test first puts the stacks it expects in place (a load is a fraction of a second),
so the tests do not depend on their order.
"""

from __future__ import annotations

import shutil

import pytest

from engine.checkpoints import CheckpointError
from engine.weights import LoadOutcome, StackUnhealthy, WeightsLoadError
from tests.engine.engines import LONG_PROMPT, PROMPTS, reference_tokens, start_pair
from tests.factories import TinyPair, build_full_checkpoint, build_model, truncated_copy

pytestmark = pytest.mark.slow

MAX_NEW = 12
ALPHAS = (-1.0, 0.0, 1.0)
TEXTS = [PROMPTS[1], PROMPTS[4], LONG_PROMPT]


@pytest.fixture(scope="module")
def checkpoints(llama_pair, tmp_path_factory):
    """A training run's checkpoints for each stack: sharded for the after stack, one file for the before."""
    root = tmp_path_factory.mktemp("full-weights")
    return {
        "after": [llama_pair.after, *(build_full_checkpoint(root / f"after-{k}", llama_pair.after, seed=10 + k, max_shard_size="60KB")
                                      for k in (1, 2))],
        "before": [llama_pair.before, build_full_checkpoint(root / "before-1", llama_pair.before, seed=20)],
        "root": root,
    }


@pytest.fixture(scope="module")
def lda(llama_pair):
    pair = start_pair(llama_pair)
    yield pair
    pair.close()


def serve(lda, after, before) -> None:
    """Put `after` and `before` in their stacks (unless already there)."""
    for stack, path in (("after", after), ("before", before)):
        if lda.weights.stacks[stack].path != path:
            lda.load_weights(stack, str(path))


def expected(lda, after, before, alphas=ALPHAS) -> list[list[int]]:
    ids = [lda.tokenizer(t).input_ids for t in TEXTS]
    return [tokens for a in alphas for tokens in reference_tokens(TinyPair(after, before), ids, [a] * len(ids), MAX_NEW)]


def greedy(lda, alphas=ALPHAS):
    return [r for a in alphas for r in lda.generate_lda(TEXTS, alpha=a, max_new_tokens=MAX_NEW, temperature=0, apply_chat_template=False)]


def assert_serves(lda, after, before, alphas=ALPHAS):
    got = [r.token_ids for r in greedy(lda, alphas)]
    assert got == expected(lda, after, before, alphas)


def test_load_into_after_then_before_matches_the_new_checkpoints(lda, checkpoints):
    old_after, old_before = checkpoints["after"][0], checkpoints["before"][0]
    serve(lda, old_after, old_before)
    assert_serves(lda, old_after, old_before)
    assert greedy(lda, [1.0])[-1].cached_tokens > 0, "the long prompt's prefix must be cached before the load"

    new_after = checkpoints["after"][1]
    done = lda.load_weights("after", str(new_after), version="step-100")
    assert (done.stack, done.version, done.previous_version) == ("after", "step-100", old_after.name)
    assert lda.weights_versions == {"after": "step-100", "before": old_before.name}
    first = greedy(lda, [1.0])
    assert first[-1].cached_tokens == 0, "the load must reset the prefix cache"
    assert [r.token_ids for r in first] == expected(lda, new_after, old_before, [1.0])
    assert_serves(lda, new_after, old_before)

    new_before = checkpoints["before"][1]
    lda.load_weights("before", str(new_before))
    assert lda.weights_versions == {"after": "step-100", "before": "before-1"}
    assert_serves(lda, new_after, new_before)
    # Back to the start: the same engine serves the first checkpoints exactly again.
    serve(lda, old_after, old_before)
    assert_serves(lda, old_after, old_before, [0.0])


def test_compare_previous_holds_consecutive_checkpoints(lda, checkpoints):
    """--compare previous: the before stack takes checkpoint k-1 (an after-stack checkpoint)."""
    after = checkpoints["after"]
    serve(lda, after[0], checkpoints["before"][0])
    with pytest.raises(CheckpointError) as caught:  # the pair's vocabularies differ (352 vs 300)
        lda.load_weights("before", str(after[1]))
    assert caught.value.field == "vocab_size" and "352" in str(caught.value) and "300" in str(caught.value)
    assert_serves(lda, after[0], checkpoints["before"][0], [0.0])


def test_bad_checkpoints_leave_the_old_weights_serving(lda, checkpoints, tmp_path):
    current_after, current_before = checkpoints["after"][1], checkpoints["before"][0]
    serve(lda, current_after, current_before)
    versions = lda.weights_versions
    other = build_model(tmp_path / "qwen", "qwen2", seed=3, vocab_size=352)
    wrong_shape = build_full_checkpoint(tmp_path / "wrong-shape", current_after, seed=3, intermediate_size=96)
    shutil.copy(current_after / "config.json", wrong_shape / "config.json")
    (tmp_path / "no-weights").mkdir()
    shutil.copy(current_after / "config.json", tmp_path / "no-weights" / "config.json")
    cases = {
        "missing": (tmp_path / "nowhere", "path", "does not exist"),
        "not a checkpoint": (tmp_path, "path", "no config.json"),
        "no weights": (tmp_path / "no-weights", "path", "no model.safetensors"),
        "other architecture": (other, "architectures", "Qwen2ForCausalLM"),
        "wrong shape": (wrong_shape, "shape", "the after stack's is [64, 128]"),
        "truncated": (truncated_copy(checkpoints["after"][2], tmp_path / "truncated"), "path", "truncated"),
    }
    for name, (path, field, words) in cases.items():
        with pytest.raises(CheckpointError) as caught:
            lda.load_weights("after", str(path))
        assert caught.value.field == field and words in str(caught.value), (name, str(caught.value))
    assert lda.weights_versions == versions
    assert_serves(lda, current_after, current_before)


def _breaks_after_the_checks(lda, monkeypatch, also=lambda: None):
    """The checks pass, then the last shard is cut (a trainer rewriting the folder under the load)."""
    prepare = lda.weights.prepare

    def prepare_then_truncate(*args, **kwargs):
        plan = prepare(*args, **kwargs)
        last = plan.checkpoint.files[-1]
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
        also()
        return plan

    monkeypatch.setattr(lda.weights, "prepare", prepare_then_truncate)


def test_a_load_that_fails_half_way_restores_the_previous_weights(lda, checkpoints, tmp_path, monkeypatch):
    current_after, current_before = checkpoints["after"][1], checkpoints["before"][0]
    serve(lda, current_after, current_before)
    versions = lda.weights_versions
    victim = shutil.copytree(checkpoints["after"][2], tmp_path / "victim")
    _breaks_after_the_checks(lda, monkeypatch)
    with pytest.raises(WeightsLoadError, match="previous weights") as caught:
        lda.load_weights("after", str(victim))
    assert caught.value.outcome is LoadOutcome.RESTORED
    assert lda.weights_versions == versions
    assert_serves(lda, current_after, current_before)


def test_a_failed_restore_marks_the_stack_unhealthy_until_a_good_load(lda, checkpoints, tmp_path, monkeypatch):
    previous = shutil.copytree(checkpoints["after"][1], tmp_path / "previous")
    serve(lda, previous, checkpoints["before"][0])
    victim = shutil.copytree(checkpoints["after"][2], tmp_path / "victim")
    _breaks_after_the_checks(lda, monkeypatch, also=lambda: shutil.rmtree(previous))
    with pytest.raises(WeightsLoadError, match="unhealthy") as caught:
        lda.load_weights("after", str(victim))
    assert caught.value.outcome is LoadOutcome.UNHEALTHY
    monkeypatch.undo()
    with pytest.raises(StackUnhealthy, match="after stack"):
        greedy(lda, [0.0])
    good = checkpoints["after"][2]
    # The unhealthy stack's last good checkpoint is gone: the checks compare with the one it had.
    lda.load_weights("after", str(good))
    assert lda.weights.unhealthy() == []
    assert_serves(lda, good, checkpoints["before"][0])
