"""Passwords stay out of settings. A URL with a password given on the command line or in a config
was shown in many places: Hydra's multirun.yaml, MLflow's "View run at http://alice:...@" line,
Hydra's parse errors (which echo the override), shell history and the process list; and a
password holding '#' or '?' defeated the masking. So such a URL is refused, in one line saying
where the password goes instead: the environment (MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD, which MLflow reads for a tracking server; LOOKALIKE_LEDGER_URL, the
whole ledger URL, see runtime/room.py) or a PostgreSQL password file (PGPASSFILE, ~/.pgpass),
which libpq reads for both the ledger and an MLflow store.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from lookalike.errors import ConfigError

LEDGER_ENV = "LOOKALIKE_LEDGER_URL"
_PGPASS = "a PGPASSFILE or ~/.pgpass"
ADVICE = {
    "ledger.path": f"give the whole URL in the environment variable {LEDGER_ENV} instead, or the password in {_PGPASS}",
    "mlflow.tracking_uri": f"put the password in MLFLOW_TRACKING_PASSWORD (the user in MLFLOW_TRACKING_USERNAME), or for a PostgreSQL store in {_PGPASS}",
}
PASSWORD_KEYS = tuple(ADVICE)  # the settings that name a server or database
ADVICE["--ledger"] = ADVICE["ledger.path"]
_SCHEME = re.compile(r"[a-zA-Z][\w+.-]*://")
_SECRET_PARAM = re.compile(r"[?&][^=&\s]*(?:password|passwd|pwd|secret|token)[^=&\s]*=[^&\s]", re.IGNORECASE)


def has_password(text: str, slash_in_password: bool = True) -> bool:
    """Whether ``text`` holds a URL with a password: ``scheme://user:password@...`` (the
    password may hold '@', '#', '?' and, unless ``slash_in_password`` is False, '/'), or a query
    parameter named for a password, secret or token. With ``slash_in_password`` False,
    ``http://host:5000/api@v2`` (a port, then an '@' in the path) is no password: that reading
    suits any URL, the other the keys that name a server or database."""
    for match in _SCHEME.finditer(text):
        rest = text[match.end() :]
        userinfo = rest[: rest.rfind("@")] if "@" in rest else ""
        user, colon, password = userinfo.partition(":")
        if colon and not any(c in user for c in "/?#") and (slash_in_password or "/" not in password):
            return True
    return bool(_SECRET_PARAM.search(text))


def refuse_password(key: str, value: Any) -> None:
    """A one-line refusal when setting ``key`` holds a URL with a password; the value is not shown."""
    if isinstance(value, str) and has_password(value, slash_in_password=key in ADVICE):
        advice = ADVICE.get(key, "pass secrets in the environment, never in a setting")
        raise ConfigError(key, f"a password in a URL would be shown and kept (logs, multirun.yaml, shell history); {advice}")


def refuse_password_arguments(argv: list[str]) -> None:
    """Before Hydra or argparse read the command line: an argument holding a URL with a password
    is refused whatever its key, and also where the parser could not have read it (a parse
    error echoes the argument). ``--ledger URL`` names its flag."""
    for previous, arg in zip(["", *argv], argv):
        key, equals, value = arg.partition("=")
        if equals and not key.startswith("-"):
            key = key.lstrip("+~")  # Hydra's add and delete prefixes
        elif not equals and previous.startswith("--"):
            key, value = previous, arg
        elif not equals:
            key, value = "command line", arg
        refuse_password(key, value)


def check_command_line(prog: str, argv: list[str] | None = None) -> None:
    """:func:`refuse_password_arguments` on this process's arguments, as a command's one-line
    error (exit status 2), before the command's parser sees them."""
    try:
        refuse_password_arguments(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
