"""Turn a composed Hydra config into its typed dataclass, once, at the top of a command.

The YAML files stay untyped at compose time so that a wrong value gets our one-line error
(``config 'trainer.epochs': Value 'abc' ... could not be converted to Integer``) rather than
Hydra's multi-line report. The merge onto the dataclass schema refuses unknown keys and wrong
types; then each section's ``check()`` refuses what a type lets through (NaN, ranges, choices),
inner sections first. (Not ``__post_init__``: OmegaConf builds every default while it makes the
schema, and a default such as ``export.model: null`` must be allowed there.)"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lookalike.errors import ConfigError
from lookalike.runtime.room import apply_room

T = TypeVar("T")


def to_typed(cfg: DictConfig | Any, schema: type[T], other_commands: tuple[str, ...] = ()) -> T:
    """``cfg`` checked into ``schema``. Top-level sections named in ``other_commands`` belong to
    the other command (an experiment config sets both) and are left out; so is Hydra's own node.
    With ``LOOKALIKE_ROOM`` set, the room's settings replace the config's (runtime/room.py)."""
    if isinstance(cfg, schema):  # built in code: checked all the same
        cfg = apply_room(cfg, schema)
        check_all(cfg)
        return cfg
    if isinstance(cfg, DictConfig):
        skip = {"hydra", *other_commands}
        cfg = OmegaConf.masked_copy(cfg, [str(k) for k in cfg.keys() if k not in skip])
    cfg = apply_room(cfg, schema)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        typed = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = exc.full_key or "config"
        reason = str(exc.msg if getattr(exc, "msg", None) else exc).splitlines()[0]
        if "not in" in reason and "Key '" in reason:
            reason = f"is not a setting of this command: {reason}"
        raise ConfigError(key, reason) from None
    assert isinstance(typed, schema)
    check_all(typed)
    return typed


def check_all(section: Any) -> None:
    """Call ``check()`` on every section of a typed config, the inner ones first."""
    for f in fields(section):
        value = getattr(section, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            check_all(value)
    if hasattr(section, "check"):
        section.check()
