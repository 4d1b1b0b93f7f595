"""Which LoRA adapter a request runs: the `model` field, as vLLM's `--lora-modules` uses it.

vLLM's OpenAI server already maps a `model` naming a loaded adapter to that adapter, lists the
adapters at /v1/models and names the adapter in each response. Two things it does not do, which
this adds for the pair: a request naming the served model (or no model) must still carry an
adapter, because vLLM 0.32's CPU LoRA ops give rows without one the last slot's weights (see
engine/lora.py), so it runs the default adapter; and an unknown name gets a 404 that lists the
names served, so a typo is obvious.

The `model` rule is one rule for every route family (vLLM's OpenAI routes through the alpha
middleware, the original routes, /v1/lda/score, token scores), in `AdapterRouting.resolve`: no
`model`, or the served name, runs the default after model (the first adapter, else the after model
itself); an adapter's name runs that adapter; anything else is a 404 listing the names served. A
pair without LoRA has a routing too, with no adapters, so the rule reads the same there.

With runtime adapters (`api/runtime_adapters.py`) the names change while the server runs: one
routing object is shared by the middleware and the routes, and loading or unloading an adapter
updates it in place, so every route sees the change with the next request. A server started with
no adapter has no default: the served name runs the after model itself (rows without an adapter,
which the grouped CPU ops of engine/compat/lora_cpu_ops.py leave alone, as the GPU kernels do;
`engine.config.process` refuses to start where they cannot be installed).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass(slots=True)
class AdapterRouting:
    served_name: str
    """The pair's own model name (`SERVED_MODEL_NAME`): an alias of the default adapter."""
    adapters: list[str] = field(default_factory=list)
    """Adapter names, the default (given at start-up) first."""
    has_default: bool = True
    """Whether the first adapter is the default; False when the pair started with no adapter."""

    @property
    def default(self) -> str | None:
        return self.adapters[0] if self.has_default and self.adapters else None

    def names(self) -> list[str]:
        return [self.served_name, *self.adapters]

    def resolve(self, model: object) -> str | None:
        """The `model` rule of every route: the adapter a request's `model` field names (None: the
        after model without an adapter); LookupError (the 404 message) if it names nothing served."""
        if model is None or model == self.served_name:
            return self.default
        if isinstance(model, str) and model in self.adapters:
            return model
        raise LookupError(f"The model `{model}` does not exist. Models served: {', '.join(self.names())}")

    def route(self, payload: dict) -> bytes | None:
        """Point an OpenAI request body at its adapter in place; the 404 body if it names none."""
        try:
            payload["model"] = self.resolve(payload.get("model")) or self.served_name
        except LookupError as error:
            return not_found(str(error))
        return None

    def add(self, name: str) -> None:
        self.adapters.append(name)

    def remove(self, name: str) -> None:
        self.adapters.remove(name)


def not_found(message: str) -> bytes:
    """vLLM's own 404 shape for an unknown model, in the OpenAI error format."""
    return json.dumps({"error": {"message": message, "type": "NotFoundError", "param": "model", "code": 404}}).encode()


def after_adapter(app, model: object):
    """(adapter name, LoRARequest) that a request naming `model` runs as the after model, or
    (None, None) for the after model itself; LookupError (the 404 message) for a name not served.

    The LoRARequest is the one vLLM's OpenAI server made for that name, so every route shares its
    loaded weights and cache.
    """
    name = app.state.lda.adapters.resolve(model)
    if name is None:
        return None, None
    lora = app.state.openai_serving_models.lora_requests.get(name)
    if lora is None:  # unloaded at runtime between the routing's answer and this one
        raise LookupError(f"The model `{name}` was just unloaded")
    return name, lora
