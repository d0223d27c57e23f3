"""The README is a landing page whose links resolve, and the docs site builds with ``mkdocs build --strict``."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_readme_is_a_landing_page_whose_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 12 * 1024
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert len(links) >= 10
    missing = [t for t in links if not t.startswith("http") and not (ROOT / t).exists()]
    assert not missing
    assert text.index("```python") < 5000  # the runnable example is on the first screen or two


@pytest.mark.slow
def test_docs_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    ref = (tmp_path / "site" / "reference" / "index.html").read_text()
    assert "kdprune.api.prune" in ref and "TensorLoader" in ref  # the API reference comes from the docstrings
    home = (tmp_path / "site" / "index.html").read_text()  # the home page is the README, its links made site-relative
    readme = (ROOT / "README.md").read_text()
    last_heading = re.findall(r"^## (.+)$", readme, re.M)[-1]
    assert last_heading in home and 'href="api/"' in home and "docs/api.md" not in home
    nav = [p for p in re.findall(r":\s*([\w./-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)]
    assert len(nav) >= 15 and all((ROOT / "docs" / p).is_file() for p in nav)


@pytest.mark.slow
def test_a_broken_link_fails_the_docs_build(tmp_path):
    """--strict is what makes a broken link or a missing page fail: check it does, on a copy of the site."""
    pytest.importorskip("mkdocs")
    import shutil

    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")  # the home page's text
    shutil.copytree(ROOT / "src", tmp_path / "src")
    page = tmp_path / "docs" / "methods.md"
    page.write_text(page.read_text() + "\nSee [a page that is not there](no-such-page.md).\n")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode != 0 and "no-such-page.md" in r.stderr
