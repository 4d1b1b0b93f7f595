"""Where each engine step's time goes, measured in the worker: a diagnostic, off unless asked for.

With `LDA_STEP_TIMING_DIR` set, the plugin calls `install` in every vLLM process; the worker then
appends one JSON line per model step to `<dir>/steps-<pid>.jsonl`: the step's scheduled tokens
and requests, and the wall time of the whole step (`execute_model` plus `sample_tokens`), of the
model's forward, of `compute_logits` (the head; for the pair both heads and the merge), of the
sampler, and for the pair each stack's forward (in a one-pass step of an adapter pair, both
stacks run as "after", and the record's `one_pass` is true; false when that pair ran two passes;
its `lora_onednn` says whether the fused CPU LoRA ran on oneDNN handlers or aten matmuls,
engine/compat/lora_cpu_ops.py). It works for any model vLLM serves, so the pair
and the after model alone can be compared step for step; `lda bench --step-timing` does that.

    python -m engine.compat.step_timing DIR      # the summary table of a folder of step files
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from engine.compat.patch_guard import Target, install_guarded

PARTS = ("step", "forward", "after", "before", "logits", "sample")


class StepLog:
    """One process's step records, each written to its JSONL file as the step ends.

    Line by line, not in batches: the servers are stopped with signals, and a worker killed that
    way runs no exit handlers, so anything held back would be lost. A write costs microseconds,
    a step milliseconds."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / f"steps-{os.getpid()}.jsonl"
        self.file = None  # opened at the first step, so processes that run no model leave no file
        self.current: dict = {}

    def begin(self, tokens: int, requests: int) -> None:
        self.current = {"tokens": tokens, "requests": requests, "_start": time.perf_counter()}

    def add(self, part: str, seconds: float) -> None:
        self.current[part] = self.current.get(part, 0.0) + seconds

    def end(self) -> None:
        record, self.current = self.current, {}
        if "_start" not in record or record["tokens"] == 0:  # an empty step: nothing ran
            return
        record["step"] = time.perf_counter() - record.pop("_start")
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a", buffering=1)
        self.file.write(json.dumps(record) + "\n")


def _timed(log: StepLog, part: str, fn):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            log.add(part, time.perf_counter() - start)

    return timed


def _time_stack(log: StepLog, module, part: str) -> None:
    starts: list[float] = []
    module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
    module.register_forward_hook(lambda *_: log.add(part, time.perf_counter() - starts.pop()))


def _instrument_model(log: StepLog, model) -> None:
    """Time the model's heads (and the pair's stacks) once, on the runner's model instance."""
    if getattr(model, "_lda_step_timed", False):
        return
    model._lda_step_timed = True
    model.compute_logits = _timed(log, "logits", model.compute_logits)
    for part in ("after", "before"):
        stack = getattr(model, part, None)
        if stack is not None and hasattr(stack, "register_forward_hook"):
            _time_stack(log, stack, part)


RUNNER = "vllm.v1.worker.gpu_model_runner"
TARGETS = (
    Target(RUNNER, "GPUModelRunner.execute_model", ("self", "scheduler_output", "intermediate_tensors")),
    Target(RUNNER, "GPUModelRunner.sample_tokens", ("self", "grammar_output")),
    Target(
        RUNNER,
        "GPUModelRunner._model_forward",
        ("self", "input_ids", "positions", "intermediate_tensors", "inputs_embeds", "model_kwargs"),
    ),
)


def install(out_dir: Path) -> bool:
    """Record every step of vLLM's V1 model runner (idempotent; guarded: engine/compat/patch_guard.py)."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    if getattr(GPUModelRunner.execute_model, "_lda_step_timed", False):
        return True
    return install_guarded("step_timing", TARGETS, lambda: _wrap_runner(GPUModelRunner, StepLog(out_dir)))


def _wrap_runner(GPUModelRunner, log: StepLog) -> None:  # noqa: N803 - the class itself
    execute_model, sample_tokens = GPUModelRunner.execute_model, GPUModelRunner.sample_tokens

    @functools.wraps(execute_model)  # keeps the signature the guard checks
    def timed_execute_model(self, scheduler_output, *args, **kwargs):
        _instrument_model(log, self.model)
        log.begin(scheduler_output.total_num_scheduled_tokens, len(scheduler_output.num_scheduled_tokens))
        shared = getattr(self.model, "shared_pass", None)
        if shared is not None:  # an adapter pair with one pass installed: which mode ran the step
            from engine.compat.lora_cpu_ops import FUSED

            log.current["one_pass"] = shared.enabled
            log.current["lora_onednn"] = FUSED.onednn
        output = execute_model(self, scheduler_output, *args, **kwargs)
        if output is not None:  # no sampling this step (nothing scheduled, or a pipeline stage)
            log.end()
        return output

    @functools.wraps(sample_tokens)
    def timed_sample_tokens(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return sample_tokens(self, *args, **kwargs)
        finally:
            log.add("sample", time.perf_counter() - start)
            log.end()

    timed_execute_model._lda_step_timed = True
    GPUModelRunner.execute_model = timed_execute_model
    GPUModelRunner.sample_tokens = timed_sample_tokens
    GPUModelRunner._model_forward = _timed(log, "forward", GPUModelRunner._model_forward)


def worker_pid(model) -> int:
    """The calling worker's pid, which names its step file (`LLM.apply_model(worker_pid)`)."""
    return os.getpid()


# ---------------------------------------------------------------- summary


@dataclass(slots=True)
class StepSummary:
    kind: str
    """"decode" (one token per request) at a batch size, or "prefill" (every step with a prompt chunk)."""
    requests: int
    """Decode: the batch size; prefill: requests scheduled over all such steps."""
    steps: int
    tokens: int
    ms: dict[str, float]
    """Decode: median ms per step of each part; prefill: total seconds of each part. Parts that
    no step recorded (a single model's stacks) are left out."""


def load_steps(folder: Path) -> list[dict]:
    steps = []
    for path in sorted(Path(folder).glob("steps-*.jsonl")):
        steps += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return steps


def summarize(steps: list[dict], batch_sizes: tuple[int, ...] | None = None, min_steps: int = 5) -> list[StepSummary]:
    """Decode steps grouped by batch size (those in `batch_sizes`, else every size seen at least
    `min_steps` times), and all prefill steps together."""
    decode: dict[int, list[dict]] = {}
    for s in steps:
        if s["tokens"] == s["requests"]:
            decode.setdefault(s["requests"], []).append(s)
    wanted = batch_sizes if batch_sizes is not None else tuple(n for n, group in decode.items() if len(group) >= min_steps)
    out = []
    for n in sorted(set(wanted) & set(decode)):
        group = decode[n]
        out.append(StepSummary("decode", n, len(group), sum(s["tokens"] for s in group),
                               {p: 1000 * median(s.get(p, 0.0) for s in group) for p in _parts(group)}))
    prefill = [s for s in steps if s["tokens"] > s["requests"]]
    if prefill:
        out.append(StepSummary("prefill", sum(s["requests"] for s in prefill), len(prefill),
                               sum(s["tokens"] for s in prefill), {p: sum(s.get(p, 0.0) for s in prefill) for p in _parts(prefill)}))
    return out


def _parts(steps: list[dict]) -> list[str]:
    return [p for p in PARTS if any(p in s for s in steps)]


def format_summary(rows: list[tuple[str, StepSummary]]) -> str:
    """A table of (label, summary) rows: decode parts in ms per step, prefill parts in seconds."""
    width = max([7, *(len(label) for label, _ in rows)])
    lines = [f"{'server':<{width}} {'steps':<8} {'batch':>5} {'n':>5} " + " ".join(f"{p:>8}" for p in PARTS)]
    for label, r in rows:
        unit = "ms/step" if r.kind == "decode" else "s total"
        batch = r.requests if r.kind == "decode" else "-"
        digits = 1 if r.kind == "decode" else 2
        cells = " ".join(f"{r.ms[p]:>8.{digits}f}" if p in r.ms else f"{'-':>8}" for p in PARTS)
        lines.append(f"{label:<{width}} {r.kind:<8} {batch:>5} {r.steps:>5} {cells}  ({unit})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m engine.compat.step_timing DIR (a folder of steps-*.jsonl files)", file=sys.stderr)
        return 2
    steps = load_steps(Path(argv[0]))
    if not steps:
        print(f"step_timing: no steps-*.jsonl records in {argv[0]}", file=sys.stderr)
        return 1
    print(format_summary([(Path(argv[0]).name, r) for r in summarize(steps)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
