"""User-facing errors: one line that names the file, column or setting and what to do."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager


class LookalikeError(Exception):
    """A problem with the user's input or configuration.

    The message is shown as a single line without a traceback, so it must say what is wrong
    (file, column or config key) and what to do about it.
    """


class ConfigError(LookalikeError):
    """An invalid configuration value; the message starts with the config key."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"config '{key}': {problem}")
        self.key = key


def one_line(exc: BaseException) -> str:
    """An exception's message for a one-line error: its first paragraph, line breaks folded
    (Hydra wraps its target-policy refusal over several lines, so a first line cuts it mid-sentence)."""
    return " ".join(str(exc).strip().split("\n\n")[0].split()) or type(exc).__name__


class DataError(LookalikeError):
    """A problem with an input file: the message names the file (and column where relevant)."""


class BudgetExceededError(LookalikeError):
    """The privacy ledger cannot cover the requested epsilon."""


# A full disk or quota: what the operator fixes (room on the device, another folder), not a bug.
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def no_space_left(what: str, fix: str) -> Iterator[None]:
    """Turn "no space left on device" while writing ``what`` (a file or folder, named) into one
    line saying ``fix``; any other OSError stays a bug report."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        raise LookalikeError(f"{what}: {os.strerror(exc.errno).lower()}: {fix}") from None
