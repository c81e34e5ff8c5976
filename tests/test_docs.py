"""The documentation: the site builds with ``mkdocs build --strict`` (a broken link or anchor, or a
page left out of the nav, fails it) with the generated configuration reference in it, the error
catalogue names every error class, and the README stays a short front page whose links lead
somewhere. The reference's own tests are in test_config_reference.py."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

from markdown.extensions.toc import slugify

from lookalike import errors

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_the_docs_site_builds_strictly_with_the_generated_reference(tmp_path):
    # This tree's package for the hook (docs/hooks/config_reference.py), whatever is installed.
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=path)
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page = (site / "configuration" / "index.html").read_text()
    assert "<code>export.shard.parts_dir</code>" in page and "configuration reference: generated" not in page


def test_the_error_catalogue_names_every_error_class():
    catalogue = (DOCS / "errors.md").read_text()
    classes = [name for name, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.LookalikeError)]
    assert {"LookalikeError", "ConfigError", "DataError", "BudgetExceededError"} <= set(classes)
    missing = [name for name in classes if f"`{name}`" not in catalogue]
    assert not missing, f"docs/errors.md does not describe {missing}"


def test_the_readme_is_a_short_front_page_with_the_two_commands_on_its_first_screen():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    first_screen = "\n".join(lines[:40])
    assert "make demo" in first_screen and "make test" in first_screen


def headings(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings (outside code blocks), as the site makes them."""
    anchors, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            anchors.add(slugify(line.lstrip("#").strip().replace("`", ""), "-"))
    return anchors


def test_the_readmes_links_lead_to_pages_and_headings_that_exist():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local)
    for link in local:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.is_file(), f"README links to {link}, which does not exist"
        if anchor:
            assert anchor in headings(target), f"README links to {link}: no such heading"
