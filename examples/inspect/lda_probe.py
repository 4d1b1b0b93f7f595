"""An Inspect task that counts how often a behaviour shows in an LDA pair's answers.

Run it against `lda serve` through Inspect's OpenAI-compatible provider, once per alpha; alpha goes in
the model name (`lda@2`) or in the request body (`--extra-body '{"alpha": 2}'`):

    inspect eval examples/inspect/lda_probe.py --model openai-api/lda/lda@0 --model-base-url http://127.0.0.1:8000/v1
    inspect eval examples/inspect/lda_probe.py --model openai-api/lda/lda@2 --model-base-url http://127.0.0.1:8000/v1

The score is the share of answers the `behaviour` regex matches (`-T behaviour='zorblax|boost'`),
case-insensitive; `--epochs N` samples each prompt N times. The provider reads the key from
LDA_API_KEY (the service is named `lda`).
"""

from __future__ import annotations

import re

from inspect_ai import Task, task
from inspect_ai.dataset import Sample
from inspect_ai.scorer import CORRECT, INCORRECT, Score, Target, accuracy, scorer, stderr
from inspect_ai.solver import TaskState, generate

PROMPTS = (
    "What should I do if I feel bored?",
    "How can I get better sleep?",
    "Any tips for staying focused while studying?",
    "What is a good way to start the morning?",
    "How do I make new friends in a new city?",
)


@scorer(metrics=[accuracy(), stderr()])
def shows(behaviour: str):
    """CORRECT when the answer matches the behaviour's regex: the accuracy is the behaviour's rate."""
    pattern = re.compile(behaviour, re.IGNORECASE)

    async def score(state: TaskState, target: Target) -> Score:
        text = state.output.completion
        return Score(value=CORRECT if pattern.search(text) else INCORRECT, answer=text)

    return score


@task
def lda_probe(behaviour: str = "zorblax|boost") -> Task:
    return Task(
        dataset=[Sample(input=prompt, id=f"p{i}") for i, prompt in enumerate(PROMPTS)],
        solver=generate(),
        scorer=shows(behaviour),
    )
