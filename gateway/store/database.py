"""Engines and schema migrations for SQLite (embedded default) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from gateway.settings import Settings

MIGRATIONS = Path(__file__).with_name("migrations")


@dataclass(frozen=True, slots=True)
class DatabaseTimeouts:
    """Bounds on waiting for the database, in seconds (``None``: no bound).

    ``connect``: establishing a connection. ``statement``: one statement (PostgreSQL
    ``statement_timeout``; on a server that does not answer at all the client gives up
    ``client_grace`` later; and the server ends a session left idle in a transaction).
    ``lock``: waiting for a lock (PostgreSQL ``lock_timeout``, SQLite's busy timeout).
    ``pool``: waiting for a free pooled connection. The defaults bound connecting and locks
    only, for the command line's long jobs; the server takes its bounds from the settings."""

    connect: float = 5.0
    statement: float | None = None
    lock: float | None = 10.0
    pool: float = 30.0
    client_grace: float = 5.0

    @classmethod
    def from_settings(cls, settings: Settings) -> DatabaseTimeouts:
        return cls(
            connect=settings.db_connect_timeout_seconds,
            statement=settings.db_statement_timeout_seconds,
            lock=settings.db_lock_timeout_seconds,
            pool=settings.db_pool_timeout_seconds,
        )


def make_engine(
    url: str, *, pool_size: int = 8, timeouts: DatabaseTimeouts | None = None
) -> Engine:
    bounds = timeouts or DatabaseTimeouts()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError("the SQLite store needs a file (sqlite:///PATH), not :memory:")
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            pool_size=pool_size,
            max_overflow=8,
            pool_timeout=bounds.pool,
            connect_args={"check_same_thread": False},
        )
        _sqlite_transactions(engine, busy_ms=_ms(bounds.lock) if bounds.lock else 0)
        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=8,
        pool_pre_ping=True,
        pool_timeout=bounds.pool,
        connect_args=_postgres_connect_args(parsed.query.get("options"), bounds),
    )
    if bounds.statement is not None:
        _client_deadline(engine, bounds.statement + bounds.client_grace)
    return engine


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _postgres_connect_args(
    url_options: str | tuple[str, ...] | None, bounds: DatabaseTimeouts
) -> dict[str, Any]:
    """libpq parameters: the connect timeout (whole seconds, at least 2 in psycopg), server-side
    timeouts as session settings (after any ``options`` given in the URL), and TCP keepalives,
    so that a peer that vanished is noticed in about a minute even on an idle connection."""
    settings = []
    if bounds.statement is not None:
        settings.append(f"-c statement_timeout={_ms(bounds.statement)}")
        # A session stuck in a transaction (its client gone quiet) would hold its locks, the
        # audit chain's included, until the connection died: the server ends it instead.
        idle = _ms(2 * bounds.statement + bounds.client_grace)
        settings.append(f"-c idle_in_transaction_session_timeout={idle}")
    if bounds.lock is not None:
        settings.append(f"-c lock_timeout={_ms(bounds.lock)}")
    given = [url_options] if isinstance(url_options, str) else list(url_options or ())
    args: dict[str, Any] = {
        "connect_timeout": max(2, math.ceil(bounds.connect)),
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    options = " ".join([*given, *settings])
    if options:
        args["options"] = options
    return args


def _client_deadline(engine: Engine, seconds: float) -> None:
    """Connections whose every wait on the server is bounded: a server that stops answering
    (the process paused, the host frozen; its kernel still acknowledges, so neither the
    statement timeout nor TCP notices) costs one request ``seconds``, then an
    ``OperationalError`` (503), and the connection is closed rather than reused."""
    import inspect

    import psycopg

    wait_timeout: type[Exception] | None = getattr(psycopg.errors, "_WaitTimeout", None)
    if (
        wait_timeout is None
        or "timeout" not in inspect.signature(psycopg.Connection.wait).parameters
    ):
        return  # an older psycopg: the server-side bounds still apply
    timed_out: type[Exception] = wait_timeout

    class BoundedConnection(psycopg.Connection[Any]):
        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            try:
                return super().wait(gen, interval=interval, timeout=timeout or seconds)
            except timed_out:
                self.pgconn.finish()  # mid-protocol: the connection cannot be reused
                raise psycopg.OperationalError("the database did not answer in time") from None

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return BoundedConnection.connect(*cargs, **cparams)


def _sqlite_transactions(engine: Engine, *, busy_ms: int) -> None:
    """Take transactions out of pysqlite's hands: writers BEGIN IMMEDIATE (no lock-upgrade
    deadlocks between two writers), readers BEGIN (a consistent WAL snapshot). A writer waits
    at most ``busy_ms`` for another writer's lock, then fails (503)."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cur = dbapi_connection.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        mode = "IMMEDIATE" if conn.get_execution_options().get("gateway_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")


def alembic_config(engine: Engine | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    command.downgrade(alembic_config(engine), revision)


class SchemaOutOfDate(Exception):
    pass


def ensure_schema(engine: Engine) -> str:
    """At start-up: create the schema on an empty database; refuse an out-of-date one (upgrading
    a live database is an operator's decision: ``gateway db upgrade``)."""
    current = current_revision(engine)
    head = head_revision()
    if current is None:
        upgrade(engine)
        return head
    if current != head:
        raise SchemaOutOfDate(
            f"database schema is at {current}, this gateway needs {head}; run `gateway db upgrade`"
        )
    return current
