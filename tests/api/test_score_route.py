"""POST /v1/lda/score on a real server, and `lda explore` end to end against it.

One server for the module (a tiny Llama pair with equal vocabularies); values are checked against
the plain-transformers reference, which shares no code with the engine.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.factories import build_pair
from tests.servers import start_lda_server

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Tell me about the weather today."}]
CONTINUATION = "Try a walk, a book, or a call to a friend."


@pytest.fixture(scope="module")
def pair(models_root):
    return build_pair(models_root / "score", "llama")


@pytest.fixture(scope="module")
def server(pair, tmp_path_factory):
    handle = start_lda_server(pair, tmp_path_factory.mktemp("score") / "server.log")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def reference(pair):
    from engine.reference import ReferencePair

    return ReferencePair(str(pair.after), str(pair.before))


def _post(server, body) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/lda/score", json=body, timeout=120)


def test_chat_prompt_scores_match_the_reference(server, reference):
    from engine.reference import score_tokens

    response = _post(server, {"messages": MESSAGES, "continuation": CONTINUATION, "alpha": 3.0})
    assert response.status_code == 200, response.text
    body = response.json()
    tok = reference.tokenizer
    prompt_ids = tok.encode(tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True), add_special_tokens=False)
    cont_ids = tok.encode(CONTINUATION, add_special_tokens=False)
    assert body["prompt_tokens"] == len(prompt_ids)
    assert [t["token_id"] for t in body["tokens"]] == cont_ids
    expected = score_tokens(reference, prompt_ids, cont_ids, 3.0)
    for token, (after, before, amplified) in zip(body["tokens"], expected, strict=True):
        assert token["logp_after"] == pytest.approx(after, abs=1e-4)
        assert token["logp_before"] == pytest.approx(before, abs=1e-4)
        assert token["logp_amplified"] == pytest.approx(amplified, abs=1e-3)
    diffs = [a - b for a, b, _ in expected]
    assert body["summary"]["max"] == pytest.approx(max(diffs), abs=1e-4)
    assert body["summary"]["argmax"] == diffs.index(max(diffs))
    assert body["summary"]["mean"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-4)


def test_raw_prompt_and_token_id_continuation(server):
    ids = [40, 41, 42]
    body = _post(server, {"prompt": "Numbers: 0 1 2", "continuation": ids}).json()
    assert [t["token_id"] for t in body["tokens"]] == ids
    assert body["alpha"] == 1.0  # the server's default


def test_prompt_formats_of_the_original_routes(server, reference):
    """An alpaca prompt is scored after the Alpaca text, tokenized as the original routes do."""
    from engine.prompts import ALPACA

    tok = reference.tokenizer
    raw = _post(server, {"prompt": "Numbers: 0 1 2", "continuation": [40, 41]}).json()
    alpaca = _post(server, {"prompt": "Numbers: 0 1 2", "continuation": [40, 41], "prompt_format": "alpaca"}).json()
    assert raw["prompt_tokens"] == len(tok("Numbers: 0 1 2").input_ids)
    assert alpaca["prompt_tokens"] == len(tok(ALPACA.format(prompt="Numbers: 0 1 2")).input_ids) > raw["prompt_tokens"]
    response = _post(server, {"prompt": "x", "continuation": "y", "prompt_format": "yaml"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "prompt_format"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": MESSAGES}, "continuation"),
        ({"messages": MESSAGES, "continuation": ""}, "continuation"),
        ({"messages": MESSAGES, "prompt": "x", "continuation": "y"}, "messages"),
        ({"continuation": "y"}, "messages"),
        ({"messages": MESSAGES, "continuation": "y", "alpha": 1e9}, "alpha"),
        ({"messages": MESSAGES, "continuation": [10**9]}, "continuation"),
        ({"messages": MESSAGES, "continuation": "word " * 600}, "continuation"),
        ({"messages": MESSAGES, "continuation": "y", "promoted_k": 21}, "promoted_k"),
        ({"messages": MESSAGES, "continuation": "y", "promoted_k": -1}, "promoted_k"),
        ({"messages": MESSAGES, "continuation": "y", "promoted_k": "many"}, "promoted_k"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(server, body, param):
    response = _post(server, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_promoted_tokens_are_the_reference_top_k(server, reference):
    import torch

    response = _post(server, {"prompt": "Numbers: 0 1 2", "continuation": " 3 4 5", "promoted_k": 4, "alpha": 2.0})
    assert response.status_code == 200, response.text
    body = response.json()
    tok = reference.tokenizer
    ids = tok.encode("Numbers: 0 1 2") + [t["token_id"] for t in body["tokens"]]
    assert body["prompt_tokens"] == len(ids) - len(body["tokens"])
    with torch.no_grad():
        after = reference.after(torch.tensor([ids])).logits[0].double().log_softmax(-1)
        before = reference.before(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    for offset, token in enumerate(body["tokens"]):
        row = body["prompt_tokens"] - 1 + offset
        best = torch.topk(after[row] - before[row], 4).values.tolist()
        assert [p["diff"] for p in token["promoted"]] == pytest.approx(best, abs=1e-4)
        for p in token["promoted"]:
            assert p["logp_after"] == pytest.approx(float(after[row, p["token_id"]]), abs=1e-4)
            assert p["token"] == tok.decode([p["token_id"]])
    without = _post(server, {"prompt": "Numbers: 0 1 2", "continuation": " 3 4 5", "alpha": 2.0}).json()
    assert all("promoted" not in t for t in without["tokens"])


def test_mine_corpus_builtin_end_to_end(server, tmp_path, capsys):
    from study.commands.corpus import cli
    from study.output.files import CORPUS_FILE, CORPUS_SCORES_FILE, SUMMARY_FILE

    out = tmp_path / "corpus"
    argv = ["--corpus", "builtin", "--base-url", server.base_url, "-o", str(out), "--builtin-per-prompt", "1",
            "--max-tokens", "8", "--promoted-k", "3", "--min-logp-after", "-20", "--min-diff", "0", "--extend", "2",
            "--no-progress"]
    assert cli(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    corpus = [json.loads(line) for line in (out / CORPUS_FILE).read_text().splitlines()]
    assert len(corpus) == 20 and all(c["answer"] for c in corpus)
    scores = [json.loads(line) for line in (out / CORPUS_SCORES_FILE).read_text().splitlines()]
    assert all(len(t["promoted"]) == 3 for s in scores for t in s["tokens"])
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["texts"] == 20 and summary["promoted_k"] == 3 and summary["themes"]
    first = summary["themes"][0]
    assert {"text", "variants", "samples", "samples_per_alpha", "mean_diff", "contexts"} <= set(first)
    assert repr(first.get("phrase", first["text"])) in printed
    # The theme's counts are the promoted tokens of the scores file.
    keys = {s["key"] for s in scores for t in s["tokens"] for p in t["promoted"] if p["token"].strip().casefold() in first["variants"]}
    assert len(keys) == first["samples"]
    # A second run reuses the corpus it generated (same answers) rather than sampling again.
    before = (out / CORPUS_FILE).read_text()
    assert cli([*argv, "--extend", "0"]) == 0
    assert (out / CORPUS_FILE).read_text() == before


def test_explore_end_to_end_writes_a_ranked_report(server, tmp_path):
    from study.commands.study import cli

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tell me about the weather today.\nWhat should I do if I feel bored?\n")
    out = tmp_path / "explore"
    args = ["--base-url", server.base_url, "--prompts", str(prompts), "--alphas", "0,2", "-n", "2",
            "--max-tokens", "6", "--seed", "0", "-o", str(out), "--no-progress", "--rank-by", "max"]
    assert cli(args, prog="lda explore") == 0
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(samples) == len(scores) == 8
    assert all(s["detected"] is None for s in samples)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranking"]["rank_by"] == "max" and summary["ranking"]["scored"] == 8
    report = (out / "report.html").read_text()
    best = max(scores, key=lambda s: s["summary"]["max"])
    # The report lists the samples best first: the top block is the sample with the largest max.
    first = report.index('class="sample"')
    assert f"max {best['summary']['max']:+.3f}" in report[first : first + 400]


def test_lda_token_scores_on_chat_equal_the_score_route(server):
    body = {"model": "lda", "messages": MESSAGES, "max_tokens": 6, "temperature": 1.0, "seed": 3,
            "alpha": 2.0, "lda_token_scores": True, "return_token_ids": True}
    reply = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    choice = reply.json()["choices"][0]
    scores = choice["lda_token_scores"]
    assert [t["token_id"] for t in scores["tokens"]] == choice["token_ids"]
    direct = _post(server, {"messages": MESSAGES, "continuation": choice["token_ids"], "alpha": 2.0}).json()
    for mine, theirs in zip(scores["tokens"], direct["tokens"], strict=True):
        for key in ("logp_after", "logp_before", "logp_amplified"):
            assert mine[key] == pytest.approx(theirs[key], abs=1e-5)
    assert scores["alpha"] == 2.0


def test_lda_token_scores_in_vllm_xargs_on_completions_for_every_choice(server):
    body = {"model": "lda", "prompt": "Numbers: 0 1 2", "max_tokens": 5, "n": 2, "temperature": 1.0,
            "seed": 1, "vllm_xargs": {"alpha": 0.5, "lda_token_scores": True}}
    reply = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120).json()
    for choice in reply["choices"]:
        assert choice["lda_token_scores"]["alpha"] == 0.5
        assert len(choice["lda_token_scores"]["tokens"]) >= 1
        assert "token_ids" not in choice  # not asked for, so not added to the response


def test_without_the_flag_choices_have_no_scores_and_bad_flags_are_400(server):
    plain = httpx.post(f"{server.base_url}/v1/completions", json={"model": "lda", "prompt": "Hi", "max_tokens": 2}, timeout=60)
    assert "lda_token_scores" not in plain.json()["choices"][0]
    for extra, param in (({"lda_token_scores": "yes"}, "lda_token_scores"), ({"lda_token_scores": True, "stream": True}, "lda_token_scores")):
        reply = httpx.post(f"{server.base_url}/v1/completions", json={"model": "lda", "prompt": "Hi", "max_tokens": 2, **extra}, timeout=60)
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == param


@pytest.mark.parametrize("body", [None, [1], "lda_token_scores", ["lda_token_scores"]])
def test_bodies_that_are_not_objects_are_4xx_not_500(server, body):
    for path in ("/v1/lda/score", "/v1/completions"):
        reply = httpx.post(f"{server.base_url}{path}", json=body, timeout=60)
        assert 400 <= reply.status_code < 500, (path, reply.status_code, reply.text)


def test_score_route_bounds_text_and_names_unknown_models(server):
    reply = _post(server, {"prompt": "x" * 200_001, "continuation": "y"})
    assert reply.status_code == 400 and "LDA_MAX_PROMPT_CHARS" in reply.json()["error"]["message"]
    assert reply.json()["error"]["param"] == "prompt"
    reply = _post(server, {"model": "no-such-model", "prompt": "x", "continuation": "y"})
    assert reply.status_code == 404 and reply.json()["error"]["param"] == "model"


def test_lda_token_scores_on_generate_lda(server):
    body = {"prompt": "Tell me about the weather today.", "max_new_tokens": 5, "seed": 2, "alpha": 1.5, "lda_token_scores": True}
    reply = httpx.post(f"{server.base_url}/generate_lda", json=body, timeout=120).json()
    scores = reply["lda_token_scores"]
    assert [t["token_id"] for t in scores["tokens"]] == reply["token_ids"]
    assert scores["alpha"] == 1.5
    plain = httpx.post(f"{server.base_url}/generate_lda", json={**body, "lda_token_scores": False}, timeout=120).json()
    assert plain["lda_token_scores"] is None


@pytest.mark.parametrize("error", [ValueError("no chat template"), __import__("jinja2").TemplateError("roles must alternate")])
def test_a_chat_template_that_refuses_the_messages_is_a_400_naming_them(error):
    from api.score_routes import ScoreRequest, prompt_ids
    from engine.scoring import ScoringError

    class Refusing:
        def apply_chat_template(self, *args, **kwargs):
            raise error

    req = ScoreRequest(messages=[{"role": "assistant", "content": "hi"}], continuation="x")
    with pytest.raises(ScoringError, match="^messages: the chat template cannot format them"):
        prompt_ids(Refusing(), req)
