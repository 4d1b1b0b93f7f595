"""Which LoRA adapter a request runs: the `model` field, as vLLM's `--lora-modules` uses it.

vLLM's OpenAI server already maps a `model` naming a loaded adapter to that adapter, lists the
adapters at /v1/models and names the adapter in each response. Two things it does not do, which
this adds for the pair: a request naming the served model (or no model) must still carry an
adapter, because vLLM 0.32's CPU LoRA ops give rows without one the last slot's weights (see
engine/lora.py), so it runs the default adapter; and an unknown name gets a 404 that lists the
names served, so a typo is obvious.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AdapterRouting:
    served_name: str
    """The pair's own model name (`SERVED_MODEL_NAME`): an alias of the default adapter."""
    adapters: tuple[str, ...]
    """Adapter names, the default first."""

    @property
    def default(self) -> str:
        return self.adapters[0]

    def names(self) -> list[str]:
        return [self.served_name, *self.adapters]

    def resolve(self, model: object) -> str:
        """The adapter a request's `model` field names; LookupError (the 404 message) if none."""
        if model is None or model == self.served_name:
            return self.default
        if isinstance(model, str) and model in self.adapters:
            return model
        raise LookupError(f"The model `{model}` does not exist. Models served: {', '.join(self.names())}")

    def route(self, payload: dict) -> bytes | None:
        """Point an OpenAI request body at its adapter in place; the 404 body if it names none."""
        try:
            payload["model"] = self.resolve(payload.get("model"))
        except LookupError as error:
            return not_found(str(error))
        return None


def not_found(message: str) -> bytes:
    """vLLM's own 404 shape for an unknown model, in the OpenAI error format."""
    return json.dumps({"error": {"message": message, "type": "NotFoundError", "param": "model", "code": 404}}).encode()
