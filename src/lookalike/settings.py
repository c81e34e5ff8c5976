"""Checks for typed config fields (the dataclasses of each layer's ``config.py``): a value that is
not a finite number in range is refused with the full key, e.g. ``config 'trainer.epochs': ...``.

OmegaConf already refuses a value of the wrong type (``trainer.epochs=abc``); these catch what a
type lets through: NaN and infinity (NaN passes every comparison), and values out of range."""

from __future__ import annotations

import math
import os
from typing import Any, Callable

from lookalike.errors import ConfigError


def number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"'{value}' is not a number")
    if not math.isfinite(float(value)):
        raise ConfigError(key, f"{value} is not a finite number")
    return float(value)


def require(key: str, value: Any, ok: Callable[[float], bool], rule: str) -> None:
    """Refuse ``value`` at ``key`` unless it is a finite number for which ``ok`` holds."""
    v = number(key, value)
    if not ok(v):
        raise ConfigError(key, f"{v:g} {rule}")


def whole(key: str, value: Any, low: int = 1, high: float = math.inf) -> None:
    require(
        key,
        value,
        lambda v: low <= v <= high and v == int(v),
        f"must be a whole number >= {low}" if high == math.inf else f"must be a whole number in [{low}, {high:.0f}]",
    )


def one_of(key: str, value: Any, allowed: tuple[str, ...], hint: str = "") -> None:
    if value not in allowed:
        raise ConfigError(key, f"'{value}' is not one of {', '.join(allowed)}{hint}")


def set_value(key: str, value: Any) -> None:
    if value in (None, ""):
        raise ConfigError(key, "is not set")


# One path component and a whole path, in bytes, as Linux file systems allow (NAME_MAX, PATH_MAX).
NAME_MAX, PATH_MAX = 255, 4095


def path_value(key: str, value: Any) -> None:
    """Refuse an output path no file system takes (ENAMETOOLONG would surface mid-run as a traceback)."""
    encoded = os.fsencode(str(value))
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        start = longest[:24].decode(errors="replace")
        raise ConfigError(key, f"has a folder or file name of {len(longest)} bytes ('{start}...'): at most {NAME_MAX}; use a shorter path")
    if len(encoded) > PATH_MAX:
        raise ConfigError(key, f"is {len(encoded)} bytes long: at most {PATH_MAX}; use a shorter path")


def device_name(key: str, value: str) -> None:
    if value not in ("auto", "cpu") and not value.startswith("cuda"):
        raise ConfigError(key, f"'{value}' is not one of auto, cpu, cuda, cuda:N")
