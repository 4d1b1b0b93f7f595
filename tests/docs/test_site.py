"""The docs site and the front door: `mkdocs build --strict` passes (no broken link or anchor, no
page left out of the nav), the README stays a short front door whose links all land, and measured
data lives under docs/data/, never inside a Python package.

The README's snippets themselves run against a live server in tests/api/test_server.py, which
already starts one for its module.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PACKAGES = ("api", "engine", "study", "benchmarks", "demo")
DATA_SUFFIXES = {".jsonl", ".csv", ".png", ".log"}
INPUT_DATA = ("demo_data",)
"""Package data that is an input, not a measurement: the demo fine-tune's training answers ship in
the wheel because `lda demo-pair` reads them."""


def test_the_site_builds_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()
    # The RunPod page includes deploy/runpod/README.md at build time.
    runpod = (tmp_path / "site" / "deploy" / "runpod" / "index.html").read_text()
    assert "First command on a new pod" in runpod


def test_a_broken_link_fails_the_build(tmp_path):
    """The strict build is what catches broken links: prove it does, on a copy of the docs."""
    docs = tmp_path / "docs"
    subprocess.run(["cp", "-r", str(ROOT / "docs"), str(docs)], check=True)
    (docs / "index.md").write_text((docs / "index.md").read_text() + "\n[gone](serving/api.md#no-such-section)\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text((ROOT / "mkdocs.yml").read_text())
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode != 0 and "no-such-section" in result.stderr


def test_the_readme_is_a_short_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert "make serve" in text and "make test" in text and "extra_body" in text and "lda explore" in text


def test_every_readme_link_lands():
    text = README.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links, "the README links into the docs"
    for link in links:
        assert not link.startswith(("http://", "https://")), f"{link}: the front door links into the repository"
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.is_file(), f"README links to {link}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", target.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"README links to {link}: no such heading"


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug, which GitHub's agrees with for these headings."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_measured_data_lives_under_docs_data():
    for package in PACKAGES:
        stray = [p for p in (ROOT / package).rglob("*")
                 if p.suffix in DATA_SUFFIXES and not set(INPUT_DATA) & set(p.relative_to(ROOT).parts)]
        assert not stray, f"measured data inside the {package} package: {stray[:5]} (it belongs under docs/data/)"
    assert not (ROOT / "benchmarks" / "results").exists()
    benchmarks = {p.suffix for p in (ROOT / "benchmarks").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert benchmarks <= {".py"}, f"benchmarks/ holds code only; found {sorted(benchmarks)}"
