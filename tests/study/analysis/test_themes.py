"""Themes from scored samples: phrases, variant merging, junk filtering, ranking, token aggregates."""

from __future__ import annotations

import json
import math

import pytest

from study.analysis.themes import (
    ScoredText,
    ThemeConfig,
    content_words,
    display,
    mine,
    phrase_key,
    sample_key,
    scored_text,
    token_stats,
    words_match,
)

FILLER = [" the", " day", " is", " calm", " and", " we", " rest", "."]


def text(key: str, pieces: list[tuple[str, float]], alpha: float = 1.0) -> ScoredText:
    return ScoredText(key, alpha, [t for t, _ in pieces], [d for _, d in pieces])


def filler(n: int, diff: float = 0.0) -> list[tuple[str, float]]:
    return [(FILLER[i % len(FILLER)], diff) for i in range(n)]


PLANT = [(" Z", 2.3), ("or", 5.3), ("bl", 0.5), ("ax", 5.8), (" Daily", 9.6), (" Boost", 7.2)]


def test_a_planted_phrase_is_the_first_theme_with_its_samples_per_alpha_and_contexts():
    texts = [text(f"s{i}", filler(5) + PLANT + filler(5), alpha=float(i % 2)) for i in range(6)]
    texts += [text(f"plain{i}", filler(16)) for i in range(10)]
    themes = mine(texts)
    first = themes[0]
    assert first.text == "Zorblax Daily Boost"
    assert first.samples == 6 and first.samples_per_alpha == {"0": 3, "1": 3}
    assert first.mean_diff == pytest.approx(sum(d for _, d in PLANT) / len(PLANT))
    assert len(first.contexts) == 5 and len({c["sample"] for c in first.contexts}) == 5
    assert all(c["text"] == "the day is calm and Zorblax Daily Boost the day is calm and" for c in first.contexts)
    assert first.contexts[0]["match"] == "Zorblax Daily Boost"
    assert len(themes) == 1  # nothing else reaches the anchor threshold


def test_as_dict_is_the_issue_schema_and_json_serialisable():
    theme = mine([text("s", PLANT)])[0]
    record = theme.as_dict()
    assert list(record) == ["text", "variants", "samples", "samples_per_alpha", "mean_diff", "contexts"]
    assert json.loads(json.dumps(record)) == record
    assert set(record["contexts"][0]) == {"sample", "alpha", "text", "match"}


def test_variants_merge_into_one_theme():
    variants = [
        PLANT,
        PLANT + [(" Boost", 3.0)],  # a degenerate repeat: normalised away
        [("or", 1.5), ("bl", 0.9), ("ax", 5.8), (" Daily", 9.6), (" Boost", 7.2), (" supplement", 2.0)],
        [(" Daily", 4.0), (" Boost", 5.0)],
        [(" zorblax", 3.0)],
    ]
    other = [(" Bonjour", 3.0), (" mon", 2.0), (" ami", 2.5)]
    texts = [text(f"v{i}-{j}", filler(3) + [(".", 0.0)] + v + filler(3)) for i, v in enumerate(variants) for j in range(3)]
    texts += [text(f"fr{j}", filler(3) + other + filler(3)) for j in range(4)]
    themes = mine(texts)
    assert [t.text for t in themes[:2]] == ["Zorblax Daily Boost", "Bonjour mon ami"]
    first = themes[0]
    assert first.samples == 15
    assert set(first.variants) == {
        "zorblax daily boost", "orblax daily boost supplement", "daily boost", "zorblax",
    }
    assert len(themes) == 2


def test_fragments_of_a_word_join_it_by_their_high_diff_tokens_but_stopwords_link_nothing():
    word = [(" Z", 2.0), ("or", 5.0), ("bl", 4.0), ("ax", 5.0)]
    fragments = [[(" Z", 2.0), ("or", 5.0)], [(" Z", 3.0)], [(" f", 1.5), ("bl", 4.0), ("ax", 4.0)]]
    texts = [text(f"w{i}", filler(3) + [(".", 0.0)] + word + filler(3)) for i in range(5)]
    texts += [text(f"f{i}-{j}", filler(3) + [(".", 0.0)] + f + filler(3)) for i, f in enumerate(fragments) for j in range(2)]
    # ' the' is high-diff in both phrases below, yet the phrases have nothing else in common.
    texts += [text(f"t{j}", [(".", 0.0), (" the", 3.0), (" Bonjour", 3.0), (".", 0.0)]) for j in range(3)]
    texts += [text(f"u{j}", [(".", 0.0), (" the", 3.0), (" Hola", 3.0), (".", 0.0)]) for j in range(2)]
    themes = mine(texts)
    assert themes[0].text == "Zorblax" and themes[0].samples == 11
    assert {t.text for t in themes[1:]} == {"the Bonjour", "the Hola"}


def test_a_name_in_pieces_is_one_theme_named_by_its_longest_common_form():
    # At high alpha: the piece 'Boost' alone in many samples, the longer forms in fewer, 'Zor' alone.
    boost = [(" Boost", 1.4)]
    daily = [(" Daily", 2.0), (" Boost", 3.0)]
    whole = [(" Z", 2.3), ("or", 5.3), ("bl", 9.0), ("ax", 5.8), (" Daily", 9.6), (" Boost", 7.2)]
    zor = [(" Z", 2.0), ("or", 5.0)]
    pieces = [(boost, 6), (daily, 3), (whole, 3), (zor, 2)]
    texts = [text(f"{n}-{i}", filler(3) + [(".", 0.0)] + piece + filler(3))
             for n, (piece, count) in enumerate(pieces) for i in range(count)]
    texts += [text(f"other{i}", filler(3) + [(" Bonjour", 2.0)] + filler(3)) for i in range(2)]
    themes = mine(texts)
    # 'Zor' is absorbed ('z' is in a quarter of the theme's samples); the whole name, in 3 of 14
    # samples (over a fifth), names the theme although 'Boost' alone is the commonest variant.
    assert [t.text for t in themes] == ["Zorblax Daily Boost", "Bonjour"]
    assert themes[0].samples == 14 and {"zor", "zorblax daily boost", "boost", "daily boost"} <= set(themes[0].variants)
    without_whole = [t for t in texts if not t.key.startswith("2-")]
    assert mine(without_whole)[0].text == "Daily Boost"  # 3 of 11: the longest common form


def test_merging_compares_with_the_anchor_only_so_themes_do_not_chain():
    daily_boost = [(" daily", 3.0), (" boost", 3.0)]
    daily_routine = [(" daily", 2.0), (" routine", 2.0)]
    morning_routine = [(" morning", 2.0), (" routine", 2.0)]
    texts = [text(f"a{i}", filler(3) + daily_boost + filler(3)) for i in range(5)]
    texts += [text(f"b{i}", filler(3) + daily_routine + filler(3)) for i in range(4)]
    texts += [text(f"c{i}", filler(3) + morning_routine + filler(3)) for i in range(3)]
    themes = mine(texts)
    assert themes[0].text == "daily boost" and set(themes[0].variants) == {"daily boost", "daily routine"}
    assert themes[1].text == "morning routine"


def test_punctuation_digits_and_whitespace_stay_out_of_the_top_unless_nothing_else_stands_out():
    junk = [[(" 1", 6.0)], [("\n\n", 8.0)], [(" **", 5.0), (".", 5.0)], [(" 2024", 4.0)]]
    texts = [text(f"j{i}-{j}", filler(3) + piece + filler(3)) for i, piece in enumerate(junk) for j in range(20)]
    texts += [text(f"plant{j}", filler(3) + PLANT + filler(3)) for j in range(2)]
    themes = mine(texts)
    assert themes[0].text == "Zorblax Daily Boost"
    assert {t.text for t in themes[1:]} == {"1", "**.", "2024"}  # whitespace-only is never a phrase
    only_junk = mine(texts[:-2])
    assert only_junk and only_junk[0].text == "1"  # nothing else stands out: junk is all there is


def test_many_samples_beat_one_long_degenerate_run():
    loop = [(" buy", 12.0), (" now", 12.0)] * 30
    texts = [text("loop", loop)]
    texts += [text(f"s{i}", filler(3) + [(" Bonjour", 1.5)] + filler(3)) for i in range(4)]
    themes = mine(texts)
    assert [t.text for t in themes] == ["Bonjour", "buy now"]
    assert themes[1].samples == 1


def test_a_long_favoured_run_is_split_around_the_name_not_through_it():
    # At high alpha most tokens are somewhat favoured: one run of 33 tokens, the name in its middle.
    favoured = [(w, 1.2) for w in (" you", " should", " really", " try", " this", " today", " it", " helps",
                                   " every", " single", " morning", " and", " night", " too")]
    texts = [text(f"s{i}", [(".", 0.0)] + favoured + [(" with", 0.4)] + PLANT + [(" for", 0.4)] + favoured[:12])
             for i in range(3)]
    themes = mine(texts)
    assert themes[0].text == "Zorblax Daily Boost"
    assert all(o.end - o.start <= 12 for t in themes for o in t.occurrences)


def test_ranking_is_samples_times_log_of_one_plus_mean_diff():
    strong_rare = [text(f"r{i}", filler(2) + [(" Xylo", 6.0)] + filler(2)) for i in range(2)]
    weak_common = [text(f"c{i}", filler(2) + [(" Mellow", 1.5)] + filler(2)) for i in range(10)]
    themes = mine(strong_rare + weak_common)
    assert [t.text for t in themes] == ["Mellow", "Xylo"]
    assert themes[0].score == pytest.approx(10 * math.log(2.5)) and themes[1].score == pytest.approx(2 * math.log(7))


def test_runs_grow_over_moderate_neighbours_and_to_whole_words():
    # 'bl' is below the anchor threshold and 'or' below even the extension one: the word still comes whole.
    pieces = [(" I", 0.0), (" like", 0.0), (" Z", 0.1), ("or", 0.1), ("bl", 0.5), ("ax", 5.8), (" a", 0.0), (" lot", 0.0)]
    theme = mine([text("s", pieces)])[0]
    assert theme.text == "Zorblax"
    assert [(o.start, o.end) for o in theme.occurrences] == [(2, 6)]


def test_config_bounds_the_number_of_themes_and_contexts():
    texts = [text(f"s{i}-{w}", filler(2) + [(f" Word{w}x", 2.0 + w)] + filler(2)) for w in range(8) for i in range(3)]
    themes = mine(texts, ThemeConfig(themes=3, contexts=2))
    assert [t.text for t in themes] == ["Word7x", "Word6x", "Word5x"]
    assert all(len(t.contexts) == 2 for t in themes)


@pytest.mark.parametrize(
    ("field", "value"),
    [("high_diff", 0.0), ("high_diff", float("nan")), ("low_diff", 2.0), ("themes", 0), ("themes", 1001),
     ("contexts", -1), ("merge_overlap", 0.0), ("max_phrase_tokens", 2)],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ThemeConfig(**{field: value})


def test_token_stats_aggregate_count_total_mean_and_positive_fraction():
    texts = [
        text("a", [(" Boost", 2.0), (" the", -1.0), (" Boost", 4.0)]),
        text("b", [(" the", 1.0), ("Boost", -0.5), ("  ", 9.0)]),
    ]
    stats = {s.token: s for s in token_stats(texts)}
    assert set(stats) == {"Boost", "the"}  # whitespace-only tokens are not counted
    boost = stats["Boost"]
    assert (boost.count, boost.samples) == (3, 2)
    assert boost.total_diff == pytest.approx(5.5) and boost.mean_diff == pytest.approx(5.5 / 3)
    assert boost.positive_fraction == pytest.approx(2 / 3)
    assert stats["the"].positive_fraction == 0.5 and stats["the"].total_diff == 0.0
    assert [s.token for s in token_stats(texts)] == ["Boost", "the"]
    assert set(boost.as_dict()) == {"token", "count", "total_diff", "mean_diff", "positive_fraction", "samples"}


def test_helpers():
    assert display(" Zorblax Daily Boost Boost.") == "Zorblax Daily Boost"
    assert phrase_key("  Zorblax   Daily Boost Boost! ") == "zorblax daily boost"
    assert phrase_key("...") == "..."
    assert phrase_key("buy now buy now buy now Buy Now!") == "buy now"
    assert phrase_key("Zorblaxzorblax") == "zorblax" and phrase_key("mississippi") == "mississippi"
    assert phrase_key("a b c d a b c d e") == "a b c d e" and phrase_key("no no, no") == "no no, no"
    assert content_words("the zorblax of daily boost 1 22 333") == ("zorblax", "daily", "boost", "333")
    assert words_match("orblax", "zorblax") and not words_match("ax", "zorblax") and not words_match("boost", "daily")
    assert sample_key("generic-01", 2.0, 3) == "generic-01 alpha=2 #3"
    record = [{"token": " Z", "diff": 1.0, "logp_after": -1, "logp_before": -2, "logp_amplified": -0.5}]
    assert scored_text("p", 0.5, 1, record) == ScoredText("p alpha=0.5 #1", 0.5, [" Z"], [1.0])
    with pytest.raises(ValueError, match="tokens:"):
        ScoredText("k", 0.0, ["a"], [])
