"""The configuration reference (``lookalike-config reference``, docs/configuration.md) lists every key
of both commands with its type, default and the comment beside its field."""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass

from lookalike.cli.config_reference import reference_markdown
from lookalike.export.config import ExportConfig
from lookalike.training.config import TrainConfig


def dotted_keys(schema: type, prefix: str = "") -> list[str]:
    """Every leaf key of a config dataclass, walked on its own (not with the generator's walk)."""
    keys = []
    for f in fields(schema):
        value = getattr(schema(), f.name)
        if is_dataclass(value):
            keys += dotted_keys(type(value), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def test_the_configuration_reference_lists_every_key_of_both_commands_with_its_meaning():
    reference = reference_markdown()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w.]+)` \|.*\|$", reference, re.MULTILINE)}
    keys = sorted(set(dotted_keys(TrainConfig)) | set(dotted_keys(ExportConfig)))
    assert len(keys) > 80  # the walk found the nested sections (data.vocab.max_size, export.shard.index, ...)
    missing = [k for k in keys if k not in rows]
    assert not missing, f"the configuration reference lacks {missing}"
    unexplained = [k for k in keys if not re.split(r"(?<!\\)\|", rows[k])[-2].strip()]  # the last cell: the field's comment
    assert not unexplained, f"give these fields a trailing # comment in their config.py: {unexplained}"
    assert set(rows) == set(keys), f"the reference lists keys no config has: {sorted(set(rows) - set(keys))}"


def test_the_reference_shows_a_default_and_where_the_shipped_config_differs():
    reference = reference_markdown()
    epochs = "passes over the training set; null: 5, more for a DP run whose rule batch would pass batch_rule_max"
    assert f"| `trainer.epochs` | int or null | `null` | {epochs} |" in reference
    assert "| `data.vocab.max_size` | int | `100000` |" in reference
    # The dataclass default and what lookalike-train composes from conf/ (an interpolation, unresolved).
    assert "`outputs/privacy_ledger.sqlite`<br>shipped config: `${paths.output_dir}/privacy_ledger.sqlite`" in reference


def test_lookalike_config_reference_prints_the_generated_reference(capsys):
    from lookalike.cli.config import main

    main(["reference"])
    assert capsys.readouterr().out == reference_markdown()
