"""A fake LDA server with runtime adapters, for `lda monitor` tests that need no engine.

It speaks the contract of `lda serve --allow-runtime-adapters`: `POST /v1/load_lora_adapter`
{"lora_name", "lora_path"} (400 when the folder is no adapter or its base is not the pair's, 409
for a name already loaded), `POST /v1/unload_lora_adapter` {"lora_name"} (404 for an unknown
name), `/v1/models` listing the loaded adapters, chat completions on a loaded adapter, and
`/v1/lda/score` (KEYWORD's diff grows with the step: 0.4 per step). With `runtime=False` the two routes do not exist (404 without an OpenAI error
body), as on a server started without the flag. With `weights=True` it also speaks
`lda serve --allow-weight-loads`: `GET`/`POST /v1/lda/weights` {"stack", "path", "version"} load a
full-weight checkpoint folder into a stack (400 without config.json or with another
`intermediate_size` than 128 in it), and the served name "lda"
behaves as the step of the after stack's checkpoint minus the before stack's (0 for a folder without
trainer_state.json, a base).

An adapter's "training step" is its trainer_state.json's global_step. An answer contains KEYWORD
when the request's seeded uniform draw falls below `hit_probability(step, alpha)`: the same seed
gives the same draw at every checkpoint, so a later checkpoint's hits include an earlier one's.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from tests.app_thread import AppThread

KEYWORD = "ZORBLAX"
BASE = "tiny-base"
"""What a fake checkpoint's adapter_config.json names as its base to be accepted."""


def hit_probability(step: int, alpha: float) -> float:
    return min(0.95, 0.04 * step * (1 + max(alpha, 0.0)))


def write_checkpoint(folder: Path, step: int, base: str = BASE) -> Path:
    """A fake PEFT checkpoint in the Trainer layout (the weights file only has to exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "base_model_name_or_path": base}))
    (folder / "adapter_model.safetensors").write_bytes(b"fake")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return folder


class FakePair:
    def __init__(self, runtime: bool = True, api_key: str | None = None, weights: bool = False,
                 base: str = "/start/base") -> None:
        self.runtime = runtime
        self.api_key = api_key
        self.weights = weights
        self.stacks = {"after": {"path": base, "step": 0}, "before": {"path": base, "step": 0}}
        self.loaded: dict[str, int] = {}
        """Loaded adapter name -> its step."""
        self.requests: list[tuple[str, dict]] = []
        self._app_thread = AppThread("fake pair server")
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def calls(self, path: str) -> list[dict]:
        return [body for p, body in self.requests if p == path]

    def __enter__(self) -> FakePair:
        self.port = self._app_thread.start(_app(self))
        return self

    def __exit__(self, *exc: object) -> None:
        self._app_thread.stop()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "BadRequestError", "code": status}}, status_code=status)


def _app(fake: FakePair) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if fake.api_key and request.headers.get("authorization") != f"Bearer {fake.api_key}":
            return _error(401, "invalid API key")
        return await call_next(request)

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model"} for name in ["lda", *fake.loaded]]}

    if fake.runtime:
        @app.post("/v1/load_lora_adapter")
        async def load(request: Request):
            body = await request.json()
            fake.requests.append(("load", body))
            return _load(fake, body["lora_name"], Path(body["lora_path"]))

        @app.post("/v1/unload_lora_adapter")
        async def unload(request: Request):
            body = await request.json()
            fake.requests.append(("unload", body))
            if fake.loaded.pop(body["lora_name"], None) is None:
                return _error(404, f"the lora adapter {body['lora_name']!r} is not loaded")
            return PlainTextResponse("Success")

    if fake.weights:
        @app.get("/v1/lda/weights")
        async def stacks():
            return {"object": "lda.weights", "stacks": {s: {"version": Path(v["path"]).name, "path": v["path"], "healthy": True}
                                                        for s, v in fake.stacks.items()}}

        @app.post("/v1/lda/weights")
        async def load_weights(request: Request):
            body = await request.json()
            fake.requests.append(("weights", body))
            path = Path(body["path"])
            if not (path / "config.json").exists():
                return _error(400, f"{path} is not a checkpoint: it has no config.json")
            if json.loads((path / "config.json").read_text()).get("intermediate_size") == 96:
                return _error(400, f"intermediate_size is 96 in {path}, but the {body['stack']} stack serves 128")
            state = path / "trainer_state.json"
            step = int(json.loads(state.read_text())["global_step"]) if state.exists() else 0
            fake.stacks[body["stack"]] = {"path": str(path), "step": step}
            return {"stack": body["stack"], "version": body.get("version"), "path": str(path)}

    def model_step(model: str) -> int | None:
        if fake.weights and model == "lda":
            return fake.stacks["after"]["step"] - fake.stacks["before"]["step"]
        return fake.loaded.get(model)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        fake.requests.append(("chat", body))
        step = model_step(body.get("model") or "lda")
        if step is None:
            return _error(404, f"the model {body['model']!r} does not exist")
        prompt = body["messages"][-1]["content"]
        draw = random.Random(f"{body.get('seed')}|{prompt}|{body['alpha']}").random()
        hit = draw < hit_probability(step, float(body["alpha"]))
        text = f"Try {KEYWORD} for this." if hit else "Take a short walk and rest."
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"completion_tokens": len(text.split())}, "alpha": body["alpha"], "model": body["model"]}

    @app.post("/v1/lda/score")
    async def score(request: Request):
        body = await request.json()
        fake.requests.append(("score", body))
        step = model_step(body.get("model") or "lda") or 0
        tokens = [{"token": f" {w}", "logp_after": -1.0, "logp_before": -1.0, "logp_amplified": -1.0,
                   "diff": 0.4 * step if w == KEYWORD else 0.1} for w in body["continuation"].split()]
        diffs = [t["diff"] for t in tokens]
        best = max(range(len(diffs)), key=diffs.__getitem__)
        summary = {"sum": sum(diffs), "mean": sum(diffs) / len(diffs), "max": diffs[best], "argmax": best,
                   "tokens": len(diffs)}
        return {"tokens": tokens, "summary": summary}

    return app


def _load(fake: FakePair, name: str, path: Path):
    if name in fake.loaded:
        return _error(409, f"the lora adapter {name!r} has already been loaded")
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except OSError:
        return _error(400, f"lora_path: {path} holds no adapter_config.json")
    if config.get("base_model_name_or_path") != BASE:
        return _error(400, f"adapter base {config.get('base_model_name_or_path')!r} is not the pair's base {BASE!r}")
    fake.loaded[name] = int(json.loads((path / "trainer_state.json").read_text())["global_step"])
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")
