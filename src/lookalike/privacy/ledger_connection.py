"""One ledger's connection: its engine (opened on first use), its transactions, and the check
that its schema is there, every database failure turned into one line naming the ledger. The
budget logic (reserve, record, release) lives in ledger.py on top of it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.exc import ArgumentError, DBAPIError

from lookalike.errors import ConfigError, LookalikeError
from lookalike.privacy.ledger_store import create_schema, exists, open_engine, without_password


class LedgerConnection:
    """A ledger's location (a file path or a SQLAlchemy URL) and how to talk to it."""

    def __init__(self, path: str | Path):
        self.location = str(path)
        self.path = without_password(self.location)  # what messages and tags show
        self._engine = None
        self._schema_checked = False

    @property
    def engine(self):
        if self._engine is None:
            try:
                self._engine = open_engine(self.location)
            except (ArgumentError, ImportError) as exc:  # a malformed URL, or its driver is not installed
                raise ConfigError(
                    "ledger.path",
                    f"'{self.path}' is not a usable ledger: {str(exc).splitlines()[0]}; give a file path or a SQLAlchemy URL whose driver is installed",
                ) from exc
        return self._engine

    def exists(self) -> bool:
        try:
            return exists(self.engine, self.location)
        except DBAPIError as exc:
            raise LookalikeError(f"ledger '{self.path}' cannot be reached: {str(exc).splitlines()[0]}") from exc

    @contextmanager
    def transaction(self, write: bool = True):
        """A connection in one transaction (write: holding the write lock); a database error (a
        corrupt, read-only or vanished file, a lost server) becomes one line."""
        try:
            with self.engine.begin() if write else self.engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            raise LookalikeError(
                f"ledger '{self.path}' cannot be used: {str(exc.orig).splitlines()[0] if exc.orig else exc}; "
                "nothing was recorded: check the file or server (lookalike-budget --ledger shows it)"
            ) from exc

    def _ready(self, create: bool = True) -> None:
        if self._schema_checked:
            return
        # exists() first even when creating: it turns an unreachable database into a one-line error.
        if not self.exists() and not create:
            raise LookalikeError(f"ledger '{self.path}' does not exist: set ledger.path (or --ledger) to an existing ledger")
        try:
            create_schema(self.engine, self.location)  # creates a new ledger, or adds what an older one lacks
        except (DBAPIError, OSError) as exc:
            first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise LookalikeError(f"ledger '{self.path}' cannot be opened for writing ({first}): check the path and its permissions") from exc
        self._schema_checked = True
