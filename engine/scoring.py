"""Teacher-forced scoring: how much post-training favoured each token of a given continuation.

For every continuation token t at position i the pair gives three log-probabilities, each a
full-vocabulary log-softmax at temperature 1 over the same prefix:

    logp_after      the after model  (the merge at alpha 0)
    logp_before     the before model (the merge at alpha -1)
    logp_amplified  the LDA distribution at the request's alpha

and `logp_after - logp_before` is the token's attribution: positive where post-training made the
token likelier. A sequence is summarised by the sum, mean and max of that difference (and where
the max is); ranking samples by it finds planted behaviours without a detector.

How: vLLM's prompt logprobs. The prompt and the continuation go in as one prompt with one
generated token, which is discarded. One pass (the default where its patch installs,
engine/one_pass.py): one request flagged in `extra_args`, whose prompt-logprob columns carry all
three values and, per position, the top-k "promoted" tokens of the shared vocabulary by
`logp_after - logp_before`; one pair prefill per sample. Three requests (the fallback): alphas 0,
-1 and a, each with `prompt_logprobs=0` (the logprob of the actual next token), no promoted
tokens. All requests of a call go to the engine together, so they are batched. The request's
own alpha reaches the prompt rows through
`engine.compat.vllm_patches.patch_prompt_logprobs_alpha`; without it every row would get the engine's
default. vLLM 0.32 does not read the prefix cache for requests that ask for prompt logprobs
(`SamplingParams.skip_reading_prefix_cache`), since cached positions would have no logits, so
scoring recomputes the prompt; it still fills the cache for later requests.

Vocabularies: the values are log-softmax over the merged logits at alpha 0 and -1, so with equal
vocabularies they are each model's own distribution. Where the after model pads its vocabulary
further, the ids only it has follow the merge's column rule (engine/amplify.py) at each alpha.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

AFTER_ALPHA, BEFORE_ALPHA = 0.0, -1.0


class ScoringError(ValueError):
    """Input that cannot be scored (an empty prompt or continuation, too long for the model)."""


@dataclass(frozen=True, slots=True)
class PromotedToken:
    """A token of the shared vocabulary that post-training favoured at one position (any token,
    not only the one that follows): its logp_after - logp_before and its logp_after."""

    token_id: int
    token: str
    diff: float
    logp_after: float


@dataclass(frozen=True, slots=True)
class TokenScore:
    """One continuation token and its three log-probabilities given everything before it."""

    token_id: int
    token: str
    logp_after: float
    logp_before: float
    logp_amplified: float
    promoted: tuple[PromotedToken, ...] = ()
    """The position's top promoted tokens, best first (one-pass scoring with promoted_k > 0)."""

    @property
    def diff(self) -> float:
        """logp_after - logp_before: what post-training did to this token."""
        return self.logp_after - self.logp_before


@dataclass(frozen=True, slots=True)
class ScoreSummary:
    """Per-sequence statistics of `logp_after - logp_before` over the scored tokens."""

    sum: float
    mean: float
    max: float
    argmax: int
    """Position (0-based, in the continuation) of the max."""
    tokens: int


@dataclass(frozen=True, slots=True)
class ScoreResult:
    alpha: float
    prompt_token_ids: list[int]
    tokens: list[TokenScore] = field(default_factory=list)
    summary: ScoreSummary | None = None


@dataclass(frozen=True, slots=True)
class ScoreInput:
    """One teacher-forced sequence: token ids of the prompt, then of the continuation to score."""

    prompt_token_ids: list[int]
    continuation_token_ids: list[int]
    alpha: float
    promoted_k: int = 0
    """Promoted tokens per position (engine/one_pass.py); bounded by MAX_PROMOTED_K."""

    def __post_init__(self) -> None:
        from engine.one_pass import validate_k

        try:
            validate_k(self.promoted_k)
        except ValueError as error:
            raise ScoringError(str(error)) from None
        if not self.prompt_token_ids:
            raise ScoringError("prompt: the prompt is empty; the first continuation token needs a prefix")
        if not self.continuation_token_ids:
            raise ScoringError("continuation: nothing to score (it has no tokens)")


def summarize(diffs: Sequence[float]) -> ScoreSummary:
    """Sum, mean, max and argmax of per-token differences (at least one)."""
    if not diffs:
        raise ScoringError("continuation: nothing to score (it has no tokens)")
    total = math.fsum(diffs)
    best = max(range(len(diffs)), key=diffs.__getitem__)
    return ScoreSummary(sum=total, mean=total / len(diffs), max=diffs[best], argmax=best, tokens=len(diffs))


def score_params(alpha: float):
    """SamplingParams of one scoring request: the prompt's own logprobs at `alpha`, one cheap token."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    return SamplingParams(
        max_tokens=1,
        temperature=0.0,
        prompt_logprobs=0,
        extra_args={"alpha": alpha},
        detokenize=False,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


def one_pass_params(alpha: float, promoted_k: int = 0):
    """SamplingParams of one one-pass scoring request (engine/one_pass.py's packed columns)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    from engine.one_pass import SCORE_KEY, num_columns, validate_k

    return SamplingParams(
        max_tokens=1,
        temperature=0.0,
        prompt_logprobs=num_columns(validate_k(promoted_k)) - 1,
        flat_logprobs=True,  # keeps repeated token ids apart: the columns are positional
        extra_args={"alpha": alpha, SCORE_KEY: {"promoted_k": promoted_k}},
        detokenize=False,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )


def assemble_one_pass(item: ScoreInput, output, decode, promoted_k: int = 0) -> ScoreResult:
    """Build the result from the RequestOutput of one `one_pass_params` request."""
    from engine.one_pass import FIXED_COLUMNS, PACKED_RANK

    flat = output.prompt_logprobs
    n = len(item.prompt_token_ids)
    tokens = []
    for offset, token_id in enumerate(item.continuation_token_ids):
        start, end = flat.start_indices[n + offset], flat.end_indices[n + offset]
        ids, values = flat.token_ids[start:end], flat.logprobs[start:end]
        if flat.ranks[start] != PACKED_RANK or ids[0] != token_id or len(ids) != FIXED_COLUMNS + 2 * promoted_k:
            raise RuntimeError("one-pass scoring: the engine did not pack the scores (is the plugin's patch installed in the workers?)")
        promoted = tuple(
            PromotedToken(ids[c], decode(ids[c]), values[c], values[c + 1]) for c in range(FIXED_COLUMNS, len(ids), 2)
        )
        tokens.append(TokenScore(token_id, decode(token_id), values[1], values[2], values[0], promoted))
    return ScoreResult(item.alpha, list(item.prompt_token_ids), tokens, summarize([t.diff for t in tokens]))


def requests_for(item: ScoreInput) -> list[tuple[list[int], float]]:
    """The three engine requests of one item: (token ids, alpha) for after, before, amplified."""
    ids = [*item.prompt_token_ids, *item.continuation_token_ids]
    return [(ids, AFTER_ALPHA), (ids, BEFORE_ALPHA), (ids, item.alpha)]


def continuation_logprobs(prompt_logprobs, prompt_len: int, continuation: Sequence[int]) -> list[float]:
    """The logprob of each continuation token from a request's `prompt_logprobs` list."""
    values = []
    for offset, token_id in enumerate(continuation):
        entry = prompt_logprobs[prompt_len + offset]
        values.append(float(entry[token_id].logprob))
    return values


def assemble(item: ScoreInput, outputs: Sequence, decode) -> ScoreResult:
    """Build the result from the three RequestOutputs of `requests_for(item)` (same order).

    `decode(token_id) -> str` names each token for display.
    """
    n = len(item.prompt_token_ids)
    cont = item.continuation_token_ids
    after, before, amplified = (continuation_logprobs(o.prompt_logprobs, n, cont) for o in outputs)
    tokens = [
        TokenScore(t, decode(t), a, b, m) for t, a, b, m in zip(cont, after, before, amplified, strict=True)
    ]
    return ScoreResult(item.alpha, list(item.prompt_token_ids), tokens, summarize([t.diff for t in tokens]))


def result_dict(result: ScoreResult) -> dict:
    """The JSON shape the server returns and the study client reads."""
    s = result.summary
    return {
        "alpha": result.alpha,
        "prompt_tokens": len(result.prompt_token_ids),
        "tokens": [
            {
                "token_id": t.token_id,
                "token": t.token,
                "logp_after": t.logp_after,
                "logp_before": t.logp_before,
                "logp_amplified": t.logp_amplified,
                "diff": t.diff,
                **({"promoted": [promoted_dict(p) for p in t.promoted]} if t.promoted else {}),
            }
            for t in result.tokens
        ],
        "summary": {"sum": s.sum, "mean": s.mean, "max": s.max, "argmax": s.argmax, "tokens": s.tokens},
    }


def promoted_dict(p: PromotedToken) -> dict:
    return {"token_id": p.token_id, "token": p.token, "diff": p.diff, "logp_after": p.logp_after}


def engine_requests(item: ScoreInput, one_pass: bool) -> list[tuple[list[int], object]]:
    """(token ids, SamplingParams) of the engine requests that score `item`: one in one pass,
    else the three of `requests_for` (which cannot give promoted tokens)."""
    if one_pass:
        return [([*item.prompt_token_ids, *item.continuation_token_ids], one_pass_params(item.alpha, item.promoted_k))]
    if item.promoted_k:
        raise ScoringError("promoted_k: promoted tokens need one-pass scoring, which this engine does not run (see the 'one_pass_scoring' log line)")
    return [(ids, score_params(alpha)) for ids, alpha in requests_for(item)]


def assemble_outputs(item: ScoreInput, outputs: Sequence, decode, one_pass: bool) -> ScoreResult:
    """The result from the RequestOutputs of `engine_requests(item, one_pass)`."""
    if one_pass:
        return assemble_one_pass(item, outputs[0], decode, item.promoted_k)
    return assemble(item, outputs, decode)
