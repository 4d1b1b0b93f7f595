"""The canary for every patch of another package's internals, and the guard that installs them.

The canary fails as soon as an upgrade moves or reshapes a target (or vLLM leaves its pin), before
a patch misbehaves far from where it was written. The guard tests show what happens on such a
mismatch at run time: one log line naming the patch, and the target untouched.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

import vllm
from api import server
from engine import plugin
from engine.compat import lora_cpu_ops, lora_head_rows, shared_pass, step_timing, vllm_patches
from engine.compat.patch_guard import PINNED_VLLM, Target, install_guarded, mismatch

ALL_TARGETS = {
    "cpu_seeded_chunked_prefill": vllm_patches.SEEDED_PREFILL_TARGETS,
    "cpu_attention_isa": vllm_patches.ATTENTION_ISA_TARGETS,
    "prompt_logprobs_alpha": vllm_patches.PROMPT_LOGPROBS_TARGETS,
    "one_pass_scoring": vllm_patches.ONE_PASS_TARGETS,
    "cpu_lora_ops": lora_cpu_ops.TARGETS,
    "shared_pass": shared_pass.TARGETS,
    "lora_head_rows": lora_head_rows.TARGETS,
    "step_timing": step_timing.TARGETS,
    "middleware_reset": server.MIDDLEWARE_RESET_TARGETS,
}


def sample_target(a, b):
    return a + b


SAMPLE = Target(__name__, "sample_target", ("a", "b"))


@pytest.mark.parametrize("patch", sorted(ALL_TARGETS))
def test_canary_every_target_exists_with_its_signature(patch):
    for target in ALL_TARGETS[patch]:
        assert mismatch((target,)) is None, target.name


def test_canary_vllm_is_the_pinned_version():
    assert vllm.__version__ == PINNED_VLLM
    pyproject = (Path(__file__).parents[3] / "pyproject.toml").read_text()
    assert set(re.findall(r'"vllm(?:-cpu)?==([^"]+)"', pyproject)) == {PINNED_VLLM}


def test_matching_target_installs():
    calls = []
    assert install_guarded("sample", (SAMPLE,), lambda: calls.append(1))
    assert calls == [1]


@pytest.mark.parametrize(
    "target, reason",
    [
        (Target(__name__, "sample_target", ("a", "b", "c")), "takes ('a', 'b'), the patch expects ('a', 'b', 'c')"),
        (Target(__name__, "no_such_function", ()), "not found"),
        (Target("no_such_module_xyz", "f", ()), "not found"),
    ],
)
def test_mismatch_logs_one_line_and_installs_nothing(caplog, target, reason):
    calls = []
    with caplog.at_level(logging.WARNING, logger="lda.patches"):
        assert not install_guarded("sample", (SAMPLE, target), lambda: calls.append(1))
    assert calls == []
    [record] = caplog.records
    assert "patch sample not installed" in record.getMessage() and reason in record.getMessage()


def test_other_vllm_version_installs_nothing(caplog, monkeypatch, tmp_path):
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    monkeypatch.setattr(vllm, "__version__", "0.33.0")
    before = GPUModelRunner.execute_model
    with caplog.at_level(logging.WARNING, logger="lda.patches"):
        assert not step_timing.install(tmp_path)
    assert GPUModelRunner.execute_model is before
    [record] = caplog.records
    assert "patch step_timing not installed: vLLM is 0.33.0, the patch is written for 0.32.0" in record.getMessage()


def test_error_while_installing_is_logged_not_raised(caplog):
    def broken() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.WARNING, logger="lda.patches"):
        assert not install_guarded("sample", (SAMPLE,), broken)
    assert "patch sample not installed: RuntimeError: boom" in caplog.text


def test_plugin_never_fails_a_vllm_process(caplog, monkeypatch):
    """With every guard failing (another vLLM), the plugin still registers and raises nothing."""
    monkeypatch.setattr(vllm, "__version__", "0.33.0")
    monkeypatch.setattr(vllm_patches, "_on_cpu", lambda: True)
    with caplog.at_level(logging.WARNING, logger="lda.patches"):
        plugin.register()
    assert "cpu_seeded_chunked_prefill not installed" in caplog.text


def test_cpu_patches_install_only_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(vllm_patches, "install_guarded", lambda name, *_: calls.append(name) or True)
    monkeypatch.setattr(vllm_patches, "_on_cpu", lambda: False)
    vllm_patches.install()
    assert calls == ["prompt_logprobs_alpha", "one_pass_scoring"]  # scoring needs them on every device
    calls.clear()
    monkeypatch.setattr(vllm_patches, "_on_cpu", lambda: True)
    vllm_patches.install()
    assert calls == ["prompt_logprobs_alpha", "one_pass_scoring", "cpu_seeded_chunked_prefill", "cpu_attention_isa"]


def test_one_pass_waits_for_the_prompt_logprobs_patch(monkeypatch):
    # One pass rides on the per-request loop of prompt_logprobs_alpha: without it, it stays off.
    calls = []
    monkeypatch.setattr(vllm_patches, "install_guarded", lambda name, *_: calls.append(name) and False)
    monkeypatch.setattr(vllm_patches, "_on_cpu", lambda: False)
    vllm_patches.install()
    assert calls == ["prompt_logprobs_alpha"]


def test_without_one_pass_scoring_falls_back_to_three_requests(monkeypatch):
    from engine.compat import patch_guard
    from engine.scoring import ScoreInput, ScoringError, engine_requests

    monkeypatch.setattr(patch_guard, "vllm_version", lambda: "0.0.1")
    assert not vllm_patches.one_pass_available()
    item = ScoreInput([1, 2], [3, 4], 2.0)
    assert [params.extra_args for _, params in engine_requests(item, one_pass=False)] == [
        {"alpha": 0.0}, {"alpha": -1.0}, {"alpha": 2.0}
    ]
    with pytest.raises(ScoringError, match="promoted_k: .*one-pass"):
        engine_requests(ScoreInput([1, 2], [3, 4], 2.0, promoted_k=3), one_pass=False)


def test_installed_patches_keep_their_targets_signatures():
    """Installing twice (vLLM loads plugins more than once per process) finds the targets as expected."""
    vllm_patches.install()
    targets = vllm_patches.SEEDED_PREFILL_TARGETS + vllm_patches.ATTENTION_ISA_TARGETS + vllm_patches.PROMPT_LOGPROBS_TARGETS
    targets += vllm_patches.ONE_PASS_TARGETS
    for target in targets:
        assert mismatch((target,)) is None, target.name


def _built_app():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("ok"))])
    client = TestClient(app)
    assert client.get("/").text == "ok"  # the first request builds the middleware stack
    return app, client


class Tagging:
    def __init__(self, app, tag: str) -> None:
        self.app, self.tag = app, tag

    async def __call__(self, scope, receive, send):
        async def tagged(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-tag", self.tag.encode())]
            await send(message)

        await self.app(scope, receive, tagged)


def test_middleware_reset_adds_to_a_built_app():
    app, client = _built_app()
    assert server.add_outer_middleware(app, Tagging, tag="lda")
    assert client.get("/").headers["x-tag"] == "lda"


def test_middleware_reset_mismatch_leaves_the_app_alone(caplog, monkeypatch):
    app, client = _built_app()
    stack = app.middleware_stack
    bad = (Target("starlette.applications", "Starlette.add_middleware", ("self", "cls")),)
    monkeypatch.setattr(server, "MIDDLEWARE_RESET_TARGETS", bad)
    with caplog.at_level(logging.WARNING, logger="lda.patches"):
        assert not server.add_outer_middleware(app, Tagging, tag="lda")
    assert app.middleware_stack is stack and "x-tag" not in client.get("/").headers
    assert "patch middleware reset (Tagging) not installed" in caplog.text
