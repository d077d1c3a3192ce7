"""The documentation: its Python examples run, and the site builds offline with no warning."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: Pages whose ```python blocks are run, in order, as one script per page.
EXECUTED_PAGES = ("getting-started.md", "compose.md", "add-a-method.md")

PYTHON_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
REMOTE_ASSET = re.compile(
    r"<(?:script|img|iframe)\b[^>]*\bsrc=\"(?:https?:)?//"
    r"|<link\b[^>]*\brel=\"(?:stylesheet|preload|modulepreload)\"[^>]*\bhref=\"(?:https?:)?//"
    r"|<link\b[^>]*\bhref=\"(?:https?:)?//[^\"]*\"[^>]*\brel=\"(?:stylesheet|preload|modulepreload)\"",
)


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of a docs page, in order."""
    return PYTHON_BLOCK.findall((DOCS / page).read_text(encoding="utf-8"))


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["NO_MKDOCS_2_WARNING"] = "1"
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    return env


@pytest.mark.parametrize("page", EXECUTED_PAGES)
def test_page_examples_run(page: str, tmp_path: Path) -> None:
    blocks = python_blocks(page)
    assert blocks, f"docs/{page} has no ```python block"
    script = "\n\n".join(f"# --- docs/{page}, block {n} ---\n{block}" for n, block in enumerate(blocks, 1))
    path = tmp_path / f"{Path(page).stem}_examples.py"
    path.write_text(script, encoding="utf-8")
    # A fresh interpreter per page (no state shared with other tests), run in an
    # empty folder so that what the examples write lands there.
    result = subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"the examples of docs/{page} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    )


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{output[-8000:]}"
    assert "WARNING" not in output, output[-8000:]

    pages = sorted(site.rglob("*.html"))
    assert (site / "index.html").is_file() and (site / "reference" / "index.html").is_file()
    # The API reference pages hold rendered objects, not just their titles.
    reference = [p for p in pages if "reference" in p.relative_to(site).parts and p.name == "index.html"]
    for page in reference:
        if page.parent.name != "reference":
            assert 'class="doc doc-object' in page.read_text(encoding="utf-8"), f"{page} documents nothing"
    # The site works offline: no script, stylesheet or image is loaded from the network.
    for page in pages:
        match = REMOTE_ASSET.search(page.read_text(encoding="utf-8"))
        assert match is None, f"{page.relative_to(site)} loads a remote asset: {match.group(0)!r}"
    assert (site / "assets" / "katex" / "katex.min.js").is_file()
