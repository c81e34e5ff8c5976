"""MkDocs hook (``hooks:`` in mkdocs.yml): fills the marker in configuration.md with the reference
that ``lookalike.cli.config_reference`` generates from the typed config dataclasses, at every
build, so the page cannot drift from the code."""

from __future__ import annotations

from typing import Any

from mkdocs.exceptions import PluginError

from lookalike.cli.config_reference import reference_markdown

PAGE = "configuration.md"
MARKER = "<!-- configuration reference: generated here at build time -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        raise PluginError(f"{PAGE} lost its marker '{MARKER}': the generated reference has nowhere to go")
    return markdown.replace(MARKER, reference_markdown())
