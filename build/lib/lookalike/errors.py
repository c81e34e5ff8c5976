"""User-facing errors: one line that names the file, column or setting and what to do."""


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


class DataError(LookalikeError):
    """A problem with an input file: the message names the file (and column where relevant)."""


class BudgetExceededError(LookalikeError):
    """The privacy ledger cannot cover the requested epsilon."""
