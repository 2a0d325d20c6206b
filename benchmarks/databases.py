"""The benchmarks' PostgreSQL: a dedicated ``bench`` database on the server the tests use (or the
one named), created if missing. The ``test`` database's data is never touched."""

from __future__ import annotations

import argparse
import os

BENCH_DATABASE = "bench"
DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def add_postgres_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument(
        "--postgres-url", help="server to use (default: $GATEWAY_TEST_POSTGRES_URL, else local)"
    )


def bench_postgres_url(args: argparse.Namespace) -> str | None:
    """The ``bench`` database's URL, the database created if missing; None (with a note) when
    PostgreSQL is not wanted or cannot be reached."""
    if args.no_postgres:
        return None
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    base = make_url(
        args.postgres_url or os.environ.get("GATEWAY_TEST_POSTGRES_URL") or DEFAULT_POSTGRES
    )
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (BENCH_DATABASE,)
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(BENCH_DATABASE)))
    except psycopg.OperationalError as exc:
        print(f"PostgreSQL not reachable, skipped: {type(exc).__name__}")
        return None
    return base.set(database=BENCH_DATABASE).render_as_string(hide_password=False)
