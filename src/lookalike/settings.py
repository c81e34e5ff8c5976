"""Checks for typed config fields (the dataclasses of each layer's ``config.py``): a value that is
not a finite number in range is refused with the full key, e.g. ``config 'trainer.epochs': ...``.

OmegaConf already refuses a value of the wrong type (``trainer.epochs=abc``); these catch what a
type lets through: NaN and infinity (NaN passes every comparison), and values out of range."""

from __future__ import annotations

import math
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


def device_name(key: str, value: str) -> None:
    if value not in ("auto", "cpu") and not value.startswith("cuda"):
        raise ConfigError(key, f"'{value}' is not one of auto, cpu, cuda, cuda:N")
