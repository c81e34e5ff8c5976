"""Where the ledger lives: a SQLite file (the default) or any database SQLAlchemy reaches by URL.

``ledger.path`` is either a file path (``outputs/privacy_ledger.sqlite``) or a SQLAlchemy URL
(``sqlite:////shared/ledger.sqlite``, ``postgresql+psycopg://user@db/ledger``), so a team whose
sweeps run on many machines points every trial at one database.

Serialising reservations: on SQLite every write transaction starts with ``BEGIN IMMEDIATE``,
which takes the database's write lock before the budget is read (pysqlite's own deferred BEGIN
is switched off, the SQLAlchemy recipe for it). On other databases the reservation locks the
budget's row with ``SELECT ... FOR UPDATE`` before it reads what is charged.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import (
    CheckConstraint,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

METADATA = MetaData()
BUDGETS = Table(
    "budgets",
    METADATA,
    Column("fingerprint", String(64), primary_key=True),
    Column("budget_epsilon", Float, nullable=False),
    Column("budget_delta", Float),
    Column("created_at", Float, nullable=False),
    Column("rules", Text),  # JSON: the data owners' clean-room rules (rules.py)
)
# Each snapshot of publisher users a budget covers: the first is the one the owners created it
# for; later ones joined because most of their users were already there (fingerprint.py).
DATASETS = Table(
    "datasets",
    METADATA,
    Column("digest", String(64), primary_key=True),
    Column("fingerprint", String(64), ForeignKey("budgets.fingerprint"), nullable=False),
    Column("users", Integer, nullable=False),
    Column("sketch", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    # Every user's 64-bit keyed hash (sorted, 8 bytes each) less those another budget held when
    # the snapshot joined: which budgets a run touches is decided on these, exactly (fingerprint.py).
    Column("hashes", LargeBinary),
)
ENTRIES = Table(
    "entries",
    METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fingerprint", String(64), ForeignKey("budgets.fingerprint"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("description", Text, nullable=False),
    Column("status", String(16), CheckConstraint("status IN ('reserved', 'spent', 'released')"), nullable=False),
    Column("reserved_epsilon", Float, nullable=False),
    Column("spent_epsilon", Float),
    Column("delta", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("events", Text),  # JSON: the Gaussian mechanisms of a finished entry
    Column("claim", String(64)),  # the process training under this reservation (one at a time)
    # JSON: what the reservation covers (the run's settings) and what it released before training
    # (the DP size estimate). A resume is checked against this, never against its checkpoint,
    # which is a file the operator can edit.
    Column("plan", Text),
    # A run that touches users of several budgets is charged on each: one entry on its home
    # budget and a copy on each other, whose status and spend follow it (``parent`` = its id).
    Column("parent", Integer),
)


def is_url(location: str) -> bool:
    return "://" in location


_SECRET_PARAM = re.compile(r"([?&][^=&]*(?:password|passwd|pwd|secret|token|key)[^=&]*=)[^&#]*", re.IGNORECASE)


def without_password(value: str) -> str:
    """A database or server URL (ledger.path, mlflow.tracking_uri) as it may be shown or logged:
    the password of its user part masked (also one holding '@' or '/'), and every query
    parameter whose name says password, secret, token or key. Anything else is unchanged."""
    if not is_url(value):
        return value
    scheme, rest = value.split("://", 1)
    before_query = rest.split("?", 1)[0]
    at = before_query.rfind("@")  # the user part ends at the last '@' before the query
    if at >= 0:
        user = before_query[:at].split(":", 1)[0]
        rest = f"{user}:***" + rest[at:] if ":" in before_query[:at] else rest
    return f"{scheme}://" + _SECRET_PARAM.sub(r"\1***", rest)


_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][\w+.-]*://[^\s:/@]+:)[^\s@]+@")


def mask_urls(text: str) -> str:
    """Any ``scheme://user:password@`` inside a message (a library's error quoting a URL), masked."""
    return _SECRET_PARAM.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def sqlite_file(location: str) -> Path | None:
    """The file behind a path or ``sqlite:///`` URL; None for other databases."""
    if not is_url(location):
        return Path(location)
    url = make_url(location)
    return Path(url.database) if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") else None


def open_engine(location: str) -> Engine:
    file = sqlite_file(location)
    if file is not None:
        # NullPool: a connection (and SQLite's file lock) lives no longer than one operation.
        engine = create_engine(f"sqlite:///{file}", poolclass=NullPool, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _no_implicit_begin(dbapi_connection, _record) -> None:
            dbapi_connection.isolation_level = None
            dbapi_connection.execute("PRAGMA busy_timeout = 60000")

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(location, pool_pre_ping=True)


def exists(engine: Engine, location: str) -> bool:
    file = sqlite_file(location)
    if file is not None and not file.exists():
        return False
    return inspect(engine).has_table("budgets")


def create_schema(engine: Engine, location: str) -> None:
    file = sqlite_file(location)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
    # One transaction under a lock, so processes opening a fresh ledger at once (torchrun ranks,
    # owners' scripts) do not both see no table and both create it: SQLite's BEGIN IMMEDIATE is
    # that lock; PostgreSQL has no table to lock yet, so it takes a transaction advisory lock.
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
        METADATA.create_all(conn, checkfirst=True)
        # Ledgers written before entries carried their mechanism, or budgets their rules, get the
        # column added.
        binary = "BLOB" if conn.dialect.name == "sqlite" else "BYTEA"
        added = (("entries", "events", "TEXT"), ("entries", "claim", "TEXT"), ("entries", "plan", "TEXT"), ("entries", "parent", "INTEGER"))
        for table, column, kind in added + (("budgets", "rules", "TEXT"), ("datasets", "hashes", binary)):
            if column not in {c["name"] for c in inspect(conn).get_columns(table)}:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {kind}"))


_SCHEMA_LOCK = 0x6C6B6C64  # any constant: the advisory lock's name among the database's others


def lock_budgets(conn: Connection) -> None:
    """Inside a write transaction, hold the lock that creating a budget needs, so that no budget
    appears between reading the budgets and inserting one. SQLite's transactions hold the
    database's write lock from their BEGIN IMMEDIATE; PostgreSQL locks the table against other
    writers (readers go on); other databases lock the rows read (InnoDB's next-key locks keep
    new rows out of the range too)."""
    if conn.dialect.name == "sqlite":
        return
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE budgets IN SHARE ROW EXCLUSIVE MODE"))
    else:
        conn.execute(select(BUDGETS.c.fingerprint).with_for_update()).all()
