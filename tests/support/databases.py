"""Scratch PostgreSQL databases for tests: one per purpose, per test run and per xdist worker,
so that two runs on one server (a developer's and CI's) never drop each other's data."""

from __future__ import annotations

import os
import uuid

from sqlalchemy.engine import make_url

_RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID") or uuid.uuid4().hex


def database_name(purpose: str) -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{purpose}_{_RUN[:10]}_{worker}"


def admin_url(base_url: str) -> str:
    return make_url(base_url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(base_url: str, purpose: str) -> str:
    """Create (afresh) this run's database for ``purpose``; return its SQLAlchemy URL."""
    import psycopg

    name = database_name(purpose)
    with psycopg.connect(admin_url(base_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_url(base_url).set(database=name).render_as_string(hide_password=False)


def drop_database(base_url: str, purpose: str) -> None:
    import psycopg

    with psycopg.connect(admin_url(base_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database_name(purpose)}" WITH (FORCE)')
