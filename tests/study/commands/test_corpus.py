"""`lda mine --corpus` without a server: bad input is exit 2 naming it and writes nothing; the
promoted-token themes of study/promoted.py from hand-made score responses."""

from __future__ import annotations

import json

import pytest

from engine.one_pass import MAX_PROMOTED_K
from study.analysis.promoted import PromotedConfig, mine_promoted, public, token_table
from study.commands import corpus
from study.commands.corpus import cli, read_corpus


def _run(argv, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli([*argv, "-o", str(out), "--base-url", "http://127.0.0.1:9", "--no-progress"])
    return code, capsys.readouterr().err, out


def test_a_corpus_that_is_not_text_is_exit_2_naming_it(tmp_path, capsys):
    binary = tmp_path / "corpus.txt"
    binary.write_bytes(b"hello\x00\xff\xfe world\n")
    code, err, out = _run(["--corpus", str(binary)], tmp_path, capsys)
    assert code == 2 and "--corpus" in err and "not text" in err and str(binary) in err
    assert not out.exists()
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    code, err, _ = _run(["--corpus", str(latin)], tmp_path, capsys)
    assert code == 2 and "not UTF-8 text (byte 3)" in err


@pytest.mark.parametrize(
    "content, message",
    [("not json\n", "latin.jsonl:1 is not valid JSON"), ('{"prompt": "p"}\n', 'latin.jsonl:1 needs a non-empty "text"'),
     ("[1, 2]\n", "must be a JSON object"), ("\n\n", "holds no texts")],
)
def test_bad_jsonl_lines_name_the_line(tmp_path, capsys, content, message):
    path = tmp_path / "latin.jsonl"
    path.write_text(content)
    code, err, out = _run(["--corpus", str(path)], tmp_path, capsys)
    assert code == 2 and message in err and not out.exists()


def test_k_above_its_bound_and_other_suffixes_are_exit_2(tmp_path, capsys):
    path = tmp_path / "ok.txt"
    path.write_text("one two three\n")
    code, err, out = _run(["--corpus", str(path), "--promoted-k", str(MAX_PROMOTED_K + 1)], tmp_path, capsys)
    assert code == 2 and f"--promoted-k: must be in [1, {MAX_PROMOTED_K}] (MAX_PROMOTED_K)" in err and not out.exists()
    code, err, _ = _run(["--corpus", str(tmp_path / "x.pdf")], tmp_path, capsys)
    assert code == 2 and "must be a .txt or .jsonl" in err
    code, err, _ = _run(["--corpus", "builtin", "--min-logp-after", "1"], tmp_path, capsys)
    assert code == 2 and "min_logp_after" in err


def test_an_unreachable_server_is_exit_1_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "ok.txt"
    path.write_text("one two three\n")
    code, err, out = _run(["--corpus", str(path)], tmp_path, capsys)
    assert code == 1 and "127.0.0.1:9" in err and not out.exists()


def test_jsonl_fields(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "raw text here"}\n{"id": "a", "prompt": "Q?", "completion": "An answer."}\n')
    texts = read_corpus(path)
    assert [(t.key, t.prompt, t.text) for t in texts] == [("c.jsonl:1", None, "raw text here"), ("a", "Q?", "An answer.")]


def _token(text, promoted):
    return {"token": text, "token_id": 0, "diff": 0.0,
            "promoted": [{"token_id": i, "token": tok, "diff": d, "logp_after": la} for i, (tok, d, la) in enumerate(promoted)]}


def test_promoted_themes_merge_prefixes_filter_by_logp_after_and_rank_by_texts():
    plant = [(" Zor", 3.0, -2.0), (" burge", 9.0, -15.0)]
    scored = [
        ("t1", [_token(" I", plant), _token(" like", [(" Zorblax", 2.0, -3.0)])]),
        ("t2", [_token(" Try", plant)]),
        ("t3", [_token(" A", [(" long", 4.0, -1.0), ("!!", 8.0, -1.0)])]),
    ]
    themes = mine_promoted(scored, PromotedConfig(min_logp_after=-6.0))
    first = public(themes[0])
    assert first["text"] == "zor" and first["variants"] == ["zor", "zorblax"]  # ' burge' filtered out
    assert first["samples"] == 2 and first["samples_per_alpha"] == {"corpus": 2}
    assert first["mean_diff"] == pytest.approx((3.0 + 2.0 + 3.0) / 3)
    assert first["contexts"][0]["text"].endswith("[ Zor]")
    assert [t["text"] for t in themes] == ["zor", "long", "!!"]  # no letter: last
    assert set(first) == {"text", "variants", "samples", "samples_per_alpha", "mean_diff", "positions", "contexts"}
    table = token_table(scored, PromotedConfig())
    assert table[0]["token"] == "zor" and table[0]["texts"] == 2
    json.dumps([public(t) for t in themes])  # JSON-ready


def test_lda_mine_hands_corpus_arguments_to_this_module(tmp_path, capsys):
    from study.commands.mine import cli as mine_cli

    path = tmp_path / "c.txt"
    path.write_bytes(b"\xff\xfe\x00")
    assert mine_cli(["--corpus", str(path), "-o", str(tmp_path / "out")]) == 2
    assert "lda mine --corpus: error: --corpus:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_client_side_bound_is_the_servers():
    from engine.one_pass import MAX_PROMOTED_K

    assert corpus.MAX_PROMOTED_K == MAX_PROMOTED_K
