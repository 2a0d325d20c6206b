"""Fixtures the ingest tables' tests share."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from tests.conftest import sqlite_engine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database with empty ingest tables: a fresh SQLite file, or the shared
    PostgreSQL test database with its ledger, quarantine and marks emptied."""
    if request.param == "sqlite":
        made = sqlite_engine(tmp_path)
        yield made
        made.dispose()
        return
    shared: Engine = request.getfixturevalue("postgres_engine")
    with shared.begin() as conn:
        conn.execute(text("TRUNCATE ingest_ledger, quarantine, ingest_marks"))
    yield shared
