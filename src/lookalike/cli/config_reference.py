"""The configuration reference (docs/configuration.md), generated from the typed dataclasses so it
cannot drift: every key of ``TrainConfig`` and ``ExportConfig`` by its dotted path, with its type,
its default and the ``# comment`` beside it in the source (on the field's line, or the comment lines
right above it). Where the shipped YAML (``conf/train.yaml``, ``conf/export.yaml``) composes another
value than the dataclass default, the reference shows that too: it is what a command gets.

    lookalike-config reference          # the Markdown the docs site shows
"""

from __future__ import annotations

import ast
import html
import inspect
import io
import re
import textwrap
import tokenize
from dataclasses import MISSING, Field, fields, is_dataclass
from functools import cache
from typing import Any, Iterator

import yaml

from lookalike.export.config import ExportConfig
from lookalike.paths import CONFIG_DIR
from lookalike.runtime.config import SharedSections
from lookalike.training.config import TrainConfig

COMMANDS = {"train": TrainConfig, "export": ExportConfig}


@cache
def field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment in ``cls``'s own source: the comment lines right above the field,
    then the trailing comment on the field's lines, joined into one sentence-like string."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments: dict[int, str] = {}  # line number -> comment text
    code_lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(token.start[0], token.end[0] + 1))
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    found: dict[str, str] = {}
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        line = node.lineno - 1
        while line in comments and line not in code_lines:  # a block of comment-only lines
            above.insert(0, comments[line])
            line -= 1
        trailing = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments]
        found[node.target.id] = " ".join(above + trailing)
    return found


def comment_of(cls: type, name: str) -> str:
    """The comment of field ``name`` from the class in ``cls``'s MRO that declares it."""
    for klass in cls.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            return field_comments(klass).get(name, "")
    return ""


def default_of(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def walk(cls: type, prefix: str = "") -> Iterator[tuple[str, Field, type]]:
    """Every leaf key of the dataclass ``cls`` as (dotted key, field, declaring dataclass); a field
    holding a dataclass is a section and is walked into."""
    for f in fields(cls):
        kind = default_of(f)
        if is_dataclass(kind) and not isinstance(kind, type):
            yield from walk(type(kind), f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, cls


def sections(cls: type) -> Iterator[tuple[str, type | None, list[Field]]]:
    """The top-level sections of ``cls``: (name, its dataclass, ...) for a section and
    ("", None, [fields]) once for the top-level scalars."""
    scalars = []
    for f in fields(cls):
        value = default_of(f)
        if is_dataclass(value) and not isinstance(value, type):
            yield f.name, type(value), []
        else:
            scalars.append(f)
    if scalars:
        yield "", None, scalars


def type_name(annotation: Any) -> str:
    """The annotation as a YAML user reads it: ``Optional[int]`` -> ``int or null``."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = re.sub(r"\bOptional\[(.*)\]$", r"\1 or null", text)
    text = re.sub(r"\bdict\[str, Any\]", "mapping", text)
    text = re.sub(r"\blist\[(\w+)\]", r"list of \1", text)
    return re.sub(r"\bAny\b", "any", text)


def yaml_value(value: Any) -> str:
    """A value as it would be written on the command line or in YAML."""
    if value is MISSING:
        return "(required)"
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text.removesuffix("...").strip()


@cache
def shipped(command: str) -> dict[str, Any]:
    """The config ``lookalike-<command>`` composes with no overrides, as dotted key -> value
    (interpolations such as ``${paths.output_dir}`` left as written)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        composed = OmegaConf.to_container(compose(config_name=command), resolve=False)
    assert isinstance(composed, dict)
    flat: dict[str, Any] = {}
    for key, _, _ in walk(COMMANDS[command]):
        node: Any = composed
        for part in key.split("."):
            node = node.get(part, MISSING) if isinstance(node, dict) else MISSING
        flat[key] = node
    return flat


def cell(text: str) -> str:
    """Source text safe inside a Markdown table cell: no column breaks, no HTML (``<run_id>``)."""
    return html.escape(text, quote=False).replace("|", "\\|")


def table(rows: list[tuple[str, Field, type]], commands: tuple[str, ...]) -> list[str]:
    """One row per key: its type, its default (and the shipped config's value where that differs)
    and its comment."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, f, owner in rows:
        default = default_of(f)
        composed = {yaml_value(shipped(c)[key]) for c in commands if shipped(c)[key] is not MISSING and shipped(c)[key] != default}
        shown = "<br>".join([f"`{yaml_value(default)}`"] + [f"shipped config: `{value}`" for value in sorted(composed)])
        columns = [f"`{key}`", cell(type_name(f.type)), shown.replace("|", "\\|"), cell(comment_of(owner, f.name))]
        lines.append("| " + " | ".join(columns) + " |")
    return lines


def docstring(cls: type) -> str:
    """The class docstring on one line; "" where the dataclass has none (only its generated signature)."""
    doc = cls.__doc__ or ""
    return "" if doc.startswith(cls.__name__ + "(") else " ".join(inspect.cleandoc(doc).split())


def section_block(title: str, intro: str, rows: list[tuple[str, Field, type]], commands: tuple[str, ...]) -> list[str]:
    return [f"### {title}", ""] + ([intro, ""] if intro else []) + table(rows, commands) + [""]


def command_sections(root: type, keys: set[str], commands: tuple[str, ...]) -> list[str]:
    """The sections of ``root`` (TrainConfig or ExportConfig) whose top-level name is in ``keys``."""
    out: list[str] = []
    for name, cls, scalars in sections(root):
        if cls is not None and name in keys:
            out += section_block(f"`{name}`", docstring(cls), list(walk(cls, f"{name}.")), commands)
        elif cls is None and any(f.name in keys for f in scalars):
            out += section_block("Top-level keys", "", [(f.name, f, root) for f in scalars if f.name in keys], commands)
    return out


def reference_markdown() -> str:
    """The whole reference: the sections both commands share, then each command's own."""
    shared = {f.name for f in fields(SharedSections)}
    own_train = {f.name for f in fields(TrainConfig)} - shared
    own_export = {f.name for f in fields(ExportConfig)} - shared
    parts = ["## Shared by `lookalike-train` and `lookalike-export`", ""]
    parts += command_sections(TrainConfig, shared, ("train", "export"))
    parts += ["## `lookalike-train` only (`TrainConfig`)", ""]
    parts += command_sections(TrainConfig, own_train, ("train",))
    parts += ["## `lookalike-export` only (`ExportConfig`)", ""]
    parts += command_sections(ExportConfig, own_export, ("export",))
    return "\n".join(parts).rstrip() + "\n"


def main() -> None:
    print(reference_markdown(), end="")


if __name__ == "__main__":
    main()
