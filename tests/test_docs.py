"""The front door: the README's size and first screen, and the documentation site's strict build."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def test_readme_is_short_and_its_first_screen_says_what_how_and_the_loop():
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; the rest belongs in docs/"
    first_screen = "\n".join(lines[:60])
    for needed in ("block-sparse", "make demo", "pip install", "rs.sparsify", "rs.RigLScheduler",
                   "scheduler.step()"):
        assert needed in first_screen, f"{needed!r} is not in the README's first 60 lines"


def test_readme_links_into_the_docs_exist():
    for target in re.findall(r"\]\((docs/[^)#]+)", README.read_text()):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_nav_lists_every_page():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    missing = [p for p in pages if f" {p}" not in nav]
    assert not missing, f"docs pages not in mkdocs.yml's nav: {missing}"


def test_the_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir",
                           str(tmp_path / "site")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "RigLScheduler" in api and "delta_t" in api  # the reference comes from the signatures


def test_every_test_the_reliability_page_names_exists():
    import ast

    page = (DOCS / "reliability.md").read_text()
    named = set(re.findall(r"`(test_\w+\.py)::(test_\w+)`", page))
    assert len(named) >= 25
    for file, name in named:
        tree = ast.parse((ROOT / "tests" / file).read_text())
        assert name in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}, f"{file}::{name}"


def test_the_readme_training_snippet_runs_as_written():
    text = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "loader" in snippet and "total_steps = " in snippet  # defined in the snippet itself
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "SparseLinear" in result.stdout and "'updates': 2" in result.stdout  # steps 100 and 200 of 300


def test_the_deployment_page_snippet_runs_as_written(tmp_path):
    text = (ROOT / "docs" / "guide" / "deploy.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "SparseLinear" in result.stdout  # print_summary=True
    assert {p.name for p in tmp_path.iterdir()} == {"model.pt", "model_bsr.pt"}


def test_every_hint_for_a_missing_package_takes_one_form_valid_for_a_checkout():
    """``pip install <packages> (rigl_sparse's [<extra>] extra)``: rigl_sparse is on no package index, so
    ``pip install 'rigl_sparse[extra]'`` would fail."""
    files = [*ROOT.glob("rigl_sparse/**/*.py"), *ROOT.glob("examples/*.py")]
    hints = [(f, m) for f in files for m in re.findall(r"pip install [^\"\n]*", f.read_text())
             if "--no-build-isolation" not in m and "--no-deps" not in m]
    assert len(hints) >= 6
    for file, hint in hints:
        assert "rigl_sparse[" not in hint and "rigl-sparse[" not in hint, f"{file.name}: {hint}"
    extras = re.findall(r"rigl_sparse's \[(\w+)\] extra", "\n".join(f.read_text() for f in files))
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert extras and all(re.search(rf"^{extra} = ", pyproject, re.M) for extra in extras), extras
