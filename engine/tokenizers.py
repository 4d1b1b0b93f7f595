"""Tokenizer compatibility of a pair, checked before the engine starts.

The engine feeds one token sequence to both models, so both tokenizers must give every shared id
the same token. That is the hard requirement (an error). Differences in special tokens or chat
templates are common between base and instruct checkpoints (a base model often has no chat
template and another eos) and are reported as warnings: the after model's tokenizer drives
templating and stopping. `strict=True` turns them into errors too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SPECIAL_TOKENS = ("eos_token", "bos_token", "pad_token")
MAX_LISTED = 10


class ModelLoadError(ValueError):
    """A model id or folder whose tokenizer cannot be loaded (a missing folder, a typo, no hub)."""


class TokenizerMismatchError(ValueError):
    """The pair's tokenizers disagree where the engine needs them to agree."""

    def __init__(self, report: CompatibilityReport):
        self.report = report
        super().__init__("incompatible tokenizers:\n  - " + "\n  - ".join(report.errors))


@dataclass(slots=True)
class CompatibilityReport:
    compatible: bool
    vocab_size_after: int
    vocab_size_before: int
    shared_ids: int
    mismatched_ids: int
    special_tokens_after: dict[str, str | None]
    special_tokens_before: dict[str, str | None]
    chat_templates_match: bool
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def vocabs_match(self) -> bool:
        return self.mismatched_ids == 0 and self.vocab_size_after == self.vocab_size_before

    def to_dict(self) -> dict:
        data = asdict(self)
        data["vocabs_match"] = self.vocabs_match
        return data


def load_tokenizer(model: str):
    """AutoTokenizer, tolerating configs that name the class `LLaMATokenizer` (old Llama uploads)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model)
    except (ValueError, AttributeError) as error:
        if "LLaMATokenizer" not in str(error):
            raise
        return AutoTokenizer.from_pretrained(model, tokenizer_class="LlamaTokenizer")


def _id_to_token(tokenizer) -> dict[int, str]:
    return {i: t for t, i in tokenizer.get_vocab().items()}


def _specials(tokenizer) -> dict[str, str | None]:
    return {name: getattr(tokenizer, name, None) for name in SPECIAL_TOKENS}


def compare_tokenizers(after, before, strict: bool = False) -> CompatibilityReport:
    """Compare two loaded tokenizers; see the module docstring for what is an error."""
    ids_after, ids_before = _id_to_token(after), _id_to_token(before)
    shared = sorted(set(ids_after) & set(ids_before))
    mismatched = [i for i in shared if ids_after[i] != ids_before[i]]
    errors, warnings = [], []
    if mismatched:
        shown = ", ".join(f"id {i}: {ids_after[i]!r} vs {ids_before[i]!r}" for i in mismatched[:MAX_LISTED])
        errors.append(f"{len(mismatched)} of {len(shared)} shared ids map to different tokens ({shown})")
    specials_a, specials_b = _specials(after), _specials(before)
    for name in SPECIAL_TOKENS:
        if specials_a[name] != specials_b[name]:
            warnings.append(f"{name} differs: after {specials_a[name]!r}, before {specials_b[name]!r}")
    templates_match = getattr(after, "chat_template", None) == getattr(before, "chat_template", None)
    if not templates_match:
        warnings.append("chat templates differ (the after model's template is used)")
    if len(ids_after) != len(ids_before):
        warnings.append(
            f"vocab sizes differ: after {len(ids_after)}, before {len(ids_before)}; "
            "only the shared ids can be sampled"
        )
    if strict:
        errors, warnings = errors + warnings, []
    return CompatibilityReport(
        compatible=not errors,
        vocab_size_after=len(ids_after),
        vocab_size_before=len(ids_before),
        shared_ids=len(shared),
        mismatched_ids=len(mismatched),
        special_tokens_after=specials_a,
        special_tokens_before=specials_b,
        chat_templates_match=templates_match,
        errors=errors,
        warnings=warnings,
    )


def _load_for(role: str, model: str):
    try:
        return load_tokenizer(model)
    except OSError as error:  # transformers' "not a folder, not a reachable model id" errors
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise ModelLoadError(
            f"cannot load the {role} model {model!r}: it is not a model folder here and not a model id "
            f"that could be fetched ({lines[0]})"
        ) from error


def check_pair(after: str, before: str, strict: bool = False) -> CompatibilityReport:
    """Load both tokenizers and compare them; raise ModelLoadError when one cannot be loaded and
    TokenizerMismatchError when they are incompatible."""
    report = compare_tokenizers(_load_for("after", after), _load_for("before", before), strict=strict)
    if not report.compatible:
        raise TokenizerMismatchError(report)
    return report
