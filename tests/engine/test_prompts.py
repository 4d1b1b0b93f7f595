"""Prompt formats and their tokenization: Alpaca as the original library writes it, and no second
BOS in front of a chat template's own (tiny tokenizers that add a BOS, as Llama's do)."""

from __future__ import annotations

import pytest

from engine.library import format_prompt, formatted_prompt
from engine.prompts import FormattedPrompt, PromptFormat, prompt_token_ids, render_prompt
from tests.factories import CHAT_TEMPLATE, add_bos, build_tokenizer

BOS_TEMPLATE = "{{ bos_token }}" + CHAT_TEMPLATE


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """name -> tokenizer: a BOS-adding tokenizer whose chat template begins with BOS, and one whose template does not."""
    out = {}
    for name, template in (("bos_template", BOS_TEMPLATE), ("plain_template", CHAT_TEMPLATE)):
        folder = tmp_path_factory.mktemp(name)
        build_tokenizer(folder)
        out[name] = add_bos(folder, template)
    return out


def test_alpaca_is_the_original_librarys_format(tokenizers):
    tok = tokenizers["bos_template"]
    assert render_prompt(tok, "Hi there", PromptFormat.ALPACA).text == "### Instruction:\nHi there\n\n### Response:\n"
    assert (
        render_prompt(tok, "Hi there", PromptFormat.ALPACA, "Be kind.").text
        == "### Instruction:\nBe kind.\n\n### Input:\nHi there\n\n### Response:\n"
    )


def test_raw_and_chat_without_template_are_the_text_as_it_is(tokenizers):
    tok = tokenizers["plain_template"]
    assert render_prompt(tok, "Hi", PromptFormat.RAW, "ignored") == FormattedPrompt("Hi", False)

    class NoTemplate:
        chat_template = None

    assert render_prompt(NoTemplate(), "Hi", PromptFormat.CHAT) == FormattedPrompt("Hi", False)
    assert format_prompt(tok, "Hi", apply_chat_template=False, prompt_format="alpaca") == "Hi"


@pytest.mark.parametrize("name", ["bos_template", "plain_template"])
def test_chat_rendered_text_gets_no_added_bos(tokenizers, name):
    tok = tokenizers[name]
    formatted = formatted_prompt(tok, "Hi", system_prompt="Be kind.")
    assert formatted.templated
    ids = prompt_token_ids(tok, formatted)
    # Exactly what the template wrote: one BOS when it writes one, none when it does not.
    assert ids.count(tok.bos_token_id) == (1 if name == "bos_template" else 0)
    # The tokenizer itself does add a BOS, so the default tokenization would have doubled it.
    assert tok(formatted.text).input_ids == [tok.bos_token_id, *ids]


@pytest.mark.parametrize("fmt", [PromptFormat.ALPACA, PromptFormat.RAW])
def test_plain_text_formats_get_the_tokenizers_bos(tokenizers, fmt):
    tok = tokenizers["bos_template"]
    ids = prompt_token_ids(tok, render_prompt(tok, "Hi", fmt))
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1


def test_unknown_format_names_the_field_and_choices():
    with pytest.raises(ValueError, match=r"prompt_format must be one of chat, alpaca, raw; got 'llama'"):
        PromptFormat.parse("llama")
