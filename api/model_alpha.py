"""alpha in the model name: `model: "lda@2"` (or `"<adapter>@2"`) asks alpha 2.

Some clients can set only a model name (an evaluation harness's `--model`, an agent framework's
model string): for them the name carries alpha, after the last `@`. The alpha middleware reads the
form on every route that takes a `model` (api/alpha_middleware.py), takes the alpha out and hands the
bare name on, so the served-name rule (which model or adapter the name picks) stays one rule and
never sees an `@`. Same tokens as `alpha` in the body with the same seed, because it becomes that
same `alpha` before any route sees the request.

A name the server serves as it is (an adapter whose own name holds an `@`) keeps its meaning. The
alpha must be written as a plain decimal number (`2`, `-1`, `0.5`, `1e1`): `lda@`, `lda@x`,
`lda@inf` and an alpha outside `[-1, LDA_MAX_ALPHA]` are refused with a message naming `model`.
An `alpha` also given in the body must agree, else the request is refused naming both.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from engine.alpha import MIN_ALPHA, AlphaError, validate_alpha

SEPARATOR = "@"
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class ModelAlphaError(AlphaError):
    """A `model` whose alpha part is malformed, out of range, or disagrees with the body's alpha."""


@dataclass(frozen=True, slots=True)
class ModelAlpha:
    name: str
    """The model or adapter name, without the alpha."""
    alpha: float | None
    """The alpha the name asks for; None when it asks none."""


def form(name: str) -> str:
    """How a served name is written with an alpha, for /v1/models and messages."""
    return f"{name}{SEPARATOR}<alpha>"


def split_model_alpha(model: object, served: Collection[str], max_alpha: float) -> ModelAlpha | None:
    """The name and alpha of a request's `model`; None when it is not a string with an `@` (or is
    a served name as it is). ModelAlphaError naming `model` when the alpha part is malformed."""
    if not isinstance(model, str) or SEPARATOR not in model or model in served:
        return None
    name, _, text = model.rpartition(SEPARATOR)
    accepted = f"[{MIN_ALPHA:g}, {max_alpha:g}]"
    if not name:
        raise ModelAlphaError(f"model {model!r} names no model before {SEPARATOR!r}; write it as {form('lda')}, e.g. 'lda@2'")
    if not _NUMBER.fullmatch(text):
        what = "nothing" if not text else repr(text)
        raise ModelAlphaError(
            f"model {model!r}: the alpha after {SEPARATOR!r} must be a number in {accepted}, e.g. "
            f"'{name}{SEPARATOR}2'; got {what}"
        )
    try:
        alpha = validate_alpha(float(text), max_alpha, field="the alpha")
    except AlphaError:
        raise ModelAlphaError(f"model {model!r}: the alpha must be a finite number in {accepted}; got {text}") from None
    return ModelAlpha(name, alpha)


def check_agrees(model: str, alpha: float, field: str, value: object) -> None:
    """ModelAlphaError naming both fields when the body's `field` asks another alpha than `model`."""
    if value is None:
        return
    same = isinstance(value, (int, float)) and not isinstance(value, bool) and float(value) == alpha
    if not same:
        raise ModelAlphaError(
            f"model {model!r} asks alpha {alpha:g} but {field} is {value!r}: give alpha once, in the model "
            "name or in the body"
        )
