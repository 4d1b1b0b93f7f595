"""The image workflow (.github/workflows/docker.yml), read as GitHub reads it: the built image is
smoke-tested before any step can push it, a failed smoke test stops the push, and its shell steps
pass shellcheck. GitHub Actions itself cannot run here; these checks read the YAML.
"""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.deploy.files import DOCKERFILE, SMOKE_TEST, WORKFLOW, tool

# Step conditions under which a step runs although an earlier one failed.
_RUNS_AFTER_FAILURE = re.compile(r"\b(always|failure|cancelled)\s*\(")


def _workflow() -> dict:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the bare key `on` as the boolean True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def _steps() -> list[dict]:
    jobs = _workflow()["jobs"]
    assert len(jobs) == 1, "one job: its steps run in order, so the order below is the run order"
    (job,) = jobs.values()
    return job["steps"]


def _pushes(step: dict) -> bool:
    """Whether a step can push an image: build-push-action with push on, or a `docker push`."""
    if step.get("uses", "").startswith("docker/build-push-action"):
        return step.get("with", {}).get("push") not in (None, False, "false")
    return "docker push" in step.get("run", "") or "imagetools create" in step.get("run", "")


def _index(steps: list[dict], predicate) -> int:
    matches = [i for i, step in enumerate(steps) if predicate(step)]
    assert len(matches) == 1, f"expected one such step, found {len(matches)}"
    return matches[0]


def test_workflow_builds_on_main_and_version_tags():
    triggers = _workflow()["on"]
    assert "main" in triggers["push"]["branches"]
    assert "v*" in triggers["push"]["tags"]
    # A change to the smoke test alone rebuilds and retests the image on a pull request.
    assert "deploy/smoke_test.py" in triggers["pull_request"]["paths"]


def test_workflow_smoke_tests_the_built_image_before_any_push():
    steps = _steps()
    build = _index(steps, lambda s: s.get("uses", "").startswith("docker/build-push-action"))
    smoke = _index(steps, lambda s: "smoke_test.py" in s.get("run", ""))
    pushes = [i for i, step in enumerate(steps) if _pushes(step)]
    assert pushes, "no step pushes the image"
    assert build < smoke < min(pushes)
    # The build itself pushes nothing; it loads the image the smoke test then runs.
    assert steps[build]["with"]["push"] in (False, "false")
    smoke_image = _workflow()["env"]["SMOKE_IMAGE"]
    assert "${{ env.SMOKE_IMAGE }}" in steps[build]["with"]["tags"]
    assert "$SMOKE_IMAGE" in steps[smoke]["run"] and smoke_image
    # The smoke test runs on every event, pull requests included.
    assert "if" not in steps[smoke]


def test_a_failed_smoke_test_stops_the_push():
    workflow = _workflow()
    (job,) = workflow["jobs"].values()
    assert not job.get("continue-on-error"), "the job must fail when a step fails"
    steps = job["steps"]
    smoke = _index(steps, lambda s: "smoke_test.py" in s.get("run", ""))
    assert not steps[smoke].get("continue-on-error"), "a failed smoke test must fail the job"
    for step in steps[smoke + 1:]:
        if _pushes(step):
            # GitHub's default condition is success(): the step runs only if every earlier one passed.
            assert not _RUNS_AFTER_FAILURE.search(str(step.get("if", ""))), step


def test_workflow_pushes_the_tested_image_to_ghcr():
    workflow = _workflow()
    assert workflow["permissions"]["packages"] == "write"
    steps = _steps()
    uses = {step.get("uses", "").split("@")[0]: step for step in steps}
    assert uses["docker/login-action"]["with"]["registry"] == "ghcr.io"
    assert "ghcr.io/" in " ".join(step.get("run", "") for step in steps)
    assert "docker/metadata-action" in uses
    build = uses["docker/build-push-action"]["with"]
    assert "${{ steps.meta.outputs.tags }}" in build["tags"]
    (push,) = [step for step in steps if _pushes(step)]
    # What is pushed is the image just built and tested (its tags), not a rebuild.
    assert push["run"].strip() == 'docker push --all-tags "$IMAGE"'
    assert push["if"] == "github.event_name != 'pull_request'"


def test_workflow_builds_on_the_digest_it_resolved():
    steps = _steps()
    base = _index(steps, lambda s: s.get("id") == "base")
    build = _index(steps, lambda s: s.get("uses", "").startswith("docker/build-push-action"))
    assert base < build
    assert "VLLM_IMAGE_DIGEST=${{ steps.base.outputs.digest }}" in steps[build]["with"]["build-args"]
    # The step reads the names the Dockerfile really declares.
    dockerfile = DOCKERFILE.read_text()
    for arg in ("VLLM_VERSION", "VLLM_IMAGE_DIGEST"):
        assert f"^ARG {arg}=" in steps[base]["run"] and f"\nARG {arg}=" in dockerfile


def test_the_smoke_step_runs_the_script_the_image_ships():
    steps = _steps()
    smoke = steps[_index(steps, lambda s: "smoke_test.py" in s.get("run", ""))]
    assert "python3 /opt/lda/deploy/smoke_test.py" in smoke["run"]
    assert SMOKE_TEST.exists()
    assert "COPY deploy/smoke_test.py ./deploy/smoke_test.py" in DOCKERFILE.read_text()


def _expression_free(script: str) -> str:
    """A run script with GitHub's `${{ ... }}` expressions replaced by a plain word, as GitHub
    substitutes them before the shell sees the script."""
    return re.sub(r"\$\{\{.*?\}\}", "EXPR", script)


def test_workflow_shell_steps_pass_shellcheck(tmp_path):
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck missing: install the test extra (pip install -e '.[test]')")
    scripts = [step["run"] for step in _steps() if "run" in step]
    assert scripts
    for i, script in enumerate(scripts):
        path = tmp_path / f"step{i}.sh"
        # GitHub runs `run:` with bash -e on Linux runners.
        path.write_text("#!/usr/bin/env bash\nset -e\n" + _expression_free(script))
        result = subprocess.run([str(shellcheck), str(path)], capture_output=True, text=True)
        assert result.returncode == 0, script + "\n" + result.stdout
