"""The room's settings: where the ledger (and with it the owners' budgets and rules) and the
export's shard parts live. They come from a room file that the deployment names in the
environment (``LOOKALIKE_ROOM=/etc/lookalike/room.yaml``), never from the operator's overrides:

    ledger:
      path: /srv/lookalike/privacy_ledger.sqlite     # or postgresql+psycopg://...
    export:
      shard:
        parts_dir: /srv/lookalike/export_parts

With the room set, a config's value for one of these keys is replaced by the room's; a value
that is neither the room's nor the packaged default (a command-line override, an experiment
file, a config built in code) is refused in one line. The raw value is compared, before
interpolation, so the packaged ``${paths.output_dir}/privacy_ledger.sqlite`` is recognised
whatever ``paths.output_dir`` is. Without ``LOOKALIKE_ROOM`` nothing changes: the operator picks
the ledger, and with it the rules."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lookalike.errors import ConfigError, LookalikeError
from lookalike.paths import CONFIG_DIR
from lookalike.privacy.ledger_store import sqlite_file

ENV = "LOOKALIKE_ROOM"
# The room's keys, each with the group file of the packaged configs that holds its default.
ROOM_KEYS = {"ledger.path": "ledger/default.yaml", "export.shard.parts_dir": "export/default.yaml"}
_ABSENT = object()


@dataclass(frozen=True)
class Room:
    file: str
    settings: dict[str, str]  # dotted key -> value, every key of ROOM_KEYS

    def refuse(self, key: str) -> ConfigError:
        return ConfigError(key, f"is set by the room file '{self.file}' ({ENV}); remove the override")


def load_room() -> Room | None:
    """The room file named by ``LOOKALIKE_ROOM``, checked; None when the variable is unset or empty."""
    name = os.environ.get(ENV, "")
    if not name:
        return None
    try:
        text = Path(name).read_text()
    except OSError as exc:
        raise ConfigError(ENV, f"room file '{name}' cannot be read ({exc.strerror or exc})") from None
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(ENV, f"room file '{name}' is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(content, dict):
        raise ConfigError(ENV, f"room file '{name}' is not a mapping of settings (e.g. ledger: {{path: /srv/lookalike/ledger.sqlite}})")
    settings: dict[str, Any] = {}
    _flatten(content, "", settings)
    for key, value in settings.items():
        if key not in ROOM_KEYS:
            raise ConfigError(key, f"in the room file '{name}' ({ENV}) is not a room setting; the room's settings are {', '.join(ROOM_KEYS)}")
        if not isinstance(value, str) or not value:
            raise ConfigError(key, f"in the room file '{name}' ({ENV}) must be a path or a database URL, not '{value}'")
        file = sqlite_file(value) if key == "ledger.path" else Path(value)
        if file is not None and not file.is_absolute():
            raise ConfigError(key, f"'{value}' in the room file '{name}' ({ENV}) is relative, so it would follow the working directory: make it absolute")
    for key in ROOM_KEYS:
        if key not in settings:
            raise ConfigError(key, f"is missing from the room file '{name}' ({ENV}): the room sets every one of {', '.join(ROOM_KEYS)}")
    return Room(name, settings)


def _flatten(node: dict, prefix: str, into: dict[str, Any]) -> None:
    for key, value in node.items():
        if isinstance(value, dict):
            _flatten(value, f"{prefix}{key}.", into)
        else:
            into[f"{prefix}{key}"] = value


def apply_room(cfg: Any, schema: type) -> Any:
    """``cfg`` (a DictConfig, a dict, or the ``schema`` dataclass) with the room's settings in
    place of the config's; the caller's object is left as it was. Only the room keys the schema
    has are set (training has no ``export`` section)."""
    room = load_room()
    if room is None:
        return cfg
    if isinstance(cfg, DictConfig):
        cfg = copy.deepcopy(cfg)
    elif isinstance(cfg, dict):
        cfg = OmegaConf.create(cfg)
    else:
        cfg = copy.deepcopy(cfg)
    for key, value in room.settings.items():
        schema_default = _field_default(schema, key)
        if schema_default is _ABSENT:
            continue
        current = _current(cfg, key)
        if current is not _ABSENT and current not in (value, schema_default, _packaged_default(key)) and _resolved(cfg, key) != value:
            raise room.refuse(key)
        if isinstance(cfg, DictConfig):
            OmegaConf.update(cfg, key, value, merge=False, force_add=True)
        else:
            *path, last = key.split(".")
            node = cfg
            for part in path:
                node = getattr(node, part)
            setattr(node, last, value)
    return cfg


def room_ledger(given: str | None, default: str) -> str:
    """The ledger for ``lookalike-budget``: the room's (a different ``--ledger`` is refused), or
    without a room ``given`` or ``default``."""
    room = load_room()
    if room is None:
        return given or default
    if given is not None and given != room.settings["ledger.path"]:
        raise LookalikeError(f"--ledger '{given}': the ledger is set by the room file '{room.file}' ({ENV}); remove --ledger")
    return room.settings["ledger.path"]


def _field_default(schema: type, key: str) -> Any:
    """The dataclass default of ``key`` in ``schema``; _ABSENT when the schema has no such key."""
    node: Any = schema()
    for part in key.split("."):
        if not (is_dataclass(node) and part in {f.name for f in fields(node)}):
            return _ABSENT
        node = getattr(node, part)
    return node


def _packaged_default(key: str) -> Any:
    """``key``'s value in the packaged group file, uninterpolated."""
    node: Any = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / ROOM_KEYS[key]), resolve=False)
    for part in key.split(".")[1:]:
        node = node.get(part, _ABSENT) if isinstance(node, dict) else _ABSENT
    return node


def _current(cfg: Any, key: str) -> Any:
    """``key``'s value as set, before interpolation; _ABSENT when the config leaves it out."""
    node: Any = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    for part in key.split("."):
        if node is None:  # a section set to null: the key is not set
            return _ABSENT
        node = node.get(part, _ABSENT) if isinstance(node, dict) else getattr(node, part, _ABSENT)
        if node is _ABSENT:
            return _ABSENT
    return node


def _resolved(cfg: Any, key: str) -> Any:
    if not isinstance(cfg, DictConfig):
        return _current(cfg, key)
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=False)
    except OmegaConfBaseException:
        return _ABSENT
