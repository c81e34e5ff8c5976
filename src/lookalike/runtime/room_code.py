"""The room file's ``code`` list: which modules a config's ``_target_`` may name inside the room.

Code the operator brings (a user tower, an optimizer) runs where the seed is in memory, so with a
room file (runtime/room.py) each ``_target_`` must fall under a module prefix the data owners
reviewed: ``examples.`` allows ``examples`` and every module below it, never ``examples_x``.
Checked on names, before anything is imported (importing a module runs its code).
"""

from __future__ import annotations

from typing import Any

from lookalike.errors import ConfigError

CODE_KEY = "code"
DEFAULT_CODE = ("lookalike.", "torch.")  # a room file without a code list: the package and torch only


def code_prefixes(value: Any, where: str) -> tuple[str, ...]:
    """The room file's ``code`` list, checked: dotted module prefixes such as ``torch.optim.``."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if not isinstance(item, str) or not all(part.isidentifier() for part in item.rstrip(".").split(".")):
            raise ConfigError(CODE_KEY, f"in {where} must be a list of module prefixes such as [lookalike., torch.optim.], not '{item}'")
    return tuple(items)


def allowed(target: str, prefixes: tuple[str, ...]) -> bool:
    return any(target == p.rstrip(".") or target.startswith(p.rstrip(".") + ".") for p in prefixes)


def check_code(prefixes: tuple[str, ...] | None, target: Any, key: str, where: str) -> None:
    """Refuse ``target`` at ``key`` unless it falls under ``prefixes`` (None: no list, any module)."""
    if prefixes is not None and not allowed(str(target), prefixes):
        raise ConfigError(
            key,
            f"'{target}' is code that {where} does not allow (code: {', '.join(prefixes)}): the data owners review and list the modules that run in the room",
        )


def check_targets(prefixes: tuple[str, ...] | None, node: Any, where: str, path: str = "") -> None:
    """:func:`check_code` on every ``_target_`` of a config's container, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_" and value is not None:
                check_code(prefixes, value, f"{path}{key}", where)
            else:
                check_targets(prefixes, value, where, f"{path}{key}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_targets(prefixes, value, where, f"{path}{i}.")
