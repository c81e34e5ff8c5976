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
the ledger, and with it the rules.

``LOOKALIKE_LEDGER_URL`` names the ledger (a database URL with its password, which no setting may
hold: runtime/credentials.py) the same way: with a room file, in place of its ``ledger.path``
(a file that sets it too is refused as ambiguous); without one, alone, as the ledger an override
may not change.

Code the operator brings runs in the room with the seed in memory: every ``_target_`` of a config
(``model.user_tower``, ``trainer.optimizer``, any nested one) and a model's user tower at export
must name a module under a prefix of the room file's ``code`` list, the packages the owners
reviewed (absent: ``lookalike.`` and ``torch.``), or it is refused in one line before it is
imported::

    code: [lookalike., torch.optim., examples.]

The list names modules, not their content: it holds where the operator cannot change what those
names import (the room's installed packages, not a folder on their PYTHONPATH). A room of
``LOOKALIKE_LEDGER_URL`` alone, without a file, has no list and allows any module."""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lookalike.errors import ConfigError, LookalikeError
from lookalike.paths import CONFIG_DIR
from lookalike.privacy.ledger_store import sqlite_file
from lookalike.runtime.credentials import LEDGER_ENV, PASSWORD_KEYS, refuse_password
from lookalike.runtime.room_code import CODE_KEY, DEFAULT_CODE, check_code, check_targets, code_prefixes

ENV = "LOOKALIKE_ROOM"
# The room's keys, each with the group file of the packaged configs that holds its default.
ROOM_KEYS = {"ledger.path": "ledger/default.yaml", "export.shard.parts_dir": "export/default.yaml"}
_ABSENT = object()


@dataclass(frozen=True)
class Room:
    file: str | None  # None: no room file, only LOOKALIKE_LEDGER_URL
    settings: dict[str, str]  # dotted key -> value: every key of ROOM_KEYS with a room file
    ledger_from_env: bool = False  # ledger.path came from LOOKALIKE_LEDGER_URL
    code: tuple[str, ...] | None = None  # module prefixes a _target_ may name; None: any (no room file)

    def source(self, key: str) -> str:
        return LEDGER_ENV if key == "ledger.path" and self.ledger_from_env else f"the room file '{self.file}' ({ENV})"

    def refuse(self, key: str) -> ConfigError:
        return ConfigError(key, f"is set by {self.source(key)}; remove the override")

    def check_code(self, target: Any, key: str) -> None:
        """Refuse ``target`` unless the room file's ``code`` list allows its module (runtime/room_code.py)."""
        check_code(self.code, target, key, f"the room file '{self.file}' ({ENV})")


def load_room() -> Room | None:
    """The room file named by ``LOOKALIKE_ROOM`` and the ledger named by ``LOOKALIKE_LEDGER_URL``,
    checked; None when neither variable is set."""
    name, url = os.environ.get(ENV, ""), os.environ.get(LEDGER_ENV, "")
    if not name:
        return Room(None, {"ledger.path": _env_ledger(url)}, ledger_from_env=True) if url else None
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
    code = code_prefixes(content.pop(CODE_KEY, list(DEFAULT_CODE)), f"the room file '{name}' ({ENV})")
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
    if url:
        if "ledger.path" in settings:
            raise ConfigError(LEDGER_ENV, f"is set, and the room file '{name}' ({ENV}) sets ledger.path too: keep one of them")
        settings["ledger.path"] = _env_ledger(url)
    for key in ROOM_KEYS:
        if key not in settings:
            also = f" and {LEDGER_ENV} is not set" if key == "ledger.path" else ""
            raise ConfigError(key, f"is missing from the room file '{name}' ({ENV}){also}: the room sets every one of {', '.join(ROOM_KEYS)}")
    return Room(name, settings, ledger_from_env=bool(url), code=code)


def _env_ledger(url: str) -> str:
    """``LOOKALIKE_LEDGER_URL``, checked; never shown, since it may hold a password."""
    try:
        file = sqlite_file(url)
    except Exception:  # noqa: BLE001 - SQLAlchemy's URL parser raises several kinds
        raise ConfigError(LEDGER_ENV, "is neither an absolute file path nor a database URL (sqlite:////..., postgresql+psycopg://...)") from None
    if file is not None and not file.is_absolute():
        raise ConfigError(LEDGER_ENV, "names a relative path, which would follow the working directory: make it absolute")
    return url


def _flatten(node: dict, prefix: str, into: dict[str, Any]) -> None:
    for key, value in node.items():
        if isinstance(value, dict):
            _flatten(value, f"{prefix}{key}.", into)
        else:
            into[f"{prefix}{key}"] = value


def apply_room(cfg: Any, schema: type) -> Any:
    """``cfg`` (a DictConfig, a dict, or the ``schema`` dataclass) with the room's settings in
    place of the config's, after refusing a URL with a password in ``ledger.path`` or
    ``mlflow.tracking_uri``; the caller's object is left as it was. Only the room keys the schema
    has are set (training has no ``export`` section)."""
    room = load_room()
    for key in PASSWORD_KEYS:  # a password in a setting is refused; the room's or LOOKALIKE_LEDGER_URL's own value is no setting
        current = _current(cfg, key)
        if room is None or current != room.settings.get(key):
            refuse_password(key, current)
    if room is None:
        return cfg
    check_targets(room.code, _container(cfg), f"the room file '{room.file}' ({ENV})")
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
    """The ledger for ``lookalike-budget``: the room's or ``LOOKALIKE_LEDGER_URL``'s (a different
    ``--ledger`` is refused), or without either ``given`` or ``default``."""
    room = load_room()
    if room is None:
        return given or default
    if given is not None and given != room.settings["ledger.path"]:
        raise LookalikeError(f"--ledger '{given}': the ledger is set by {room.source('ledger.path')}; remove --ledger")
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


def _container(cfg: Any) -> Any:
    """``cfg`` as plain dicts and lists, uninterpolated."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=False)
    return asdict(cfg) if is_dataclass(cfg) and not isinstance(cfg, type) else cfg


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
