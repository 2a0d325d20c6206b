"""Schema migrations: the same Alembic revisions build the same schema on SQLite and PostgreSQL,
from empty and from every earlier revision, and match the tables the code uses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from gateway.store.database import (
    SchemaOutOfDate,
    alembic_config,
    current_revision,
    downgrade,
    ensure_schema,
    head_revision,
    make_engine,
    upgrade,
)
from gateway.store.schema import metadata
from gateway.store.sql import SqlStore
from tests.conftest import POSTGRES_URL
from tests.support.databases import create_database, drop_database
from tests.support.records import patient
from tests.support.valid import valid


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path}/migrations.db")
    else:
        if not POSTGRES_URL:
            pytest.skip("GATEWAY_TEST_POSTGRES_URL is not set")
        engine = make_engine(create_database(POSTGRES_URL, "gateway_migrations"))
    yield engine
    engine.dispose()
    if request.param == "postgres" and POSTGRES_URL:
        drop_database(POSTGRES_URL, "gateway_migrations")


def revisions() -> list[str | None]:
    """Every revision, oldest first, preceded by None (the empty database)."""
    script = ScriptDirectory.from_config(alembic_config())
    ordered = [r.revision for r in reversed(list(script.walk_revisions()))]
    return [None, *ordered]


def test_upgrade_from_empty_matches_the_tables_the_code_uses(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    with empty_engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


@pytest.mark.parametrize("start", revisions()[:-1], ids=lambda r: f"from-{r or 'empty'}")
def test_upgrade_from_each_earlier_revision_keeps_the_data(
    empty_engine: Engine, start: str | None, key_ring: object, clock: object
) -> None:
    if start is not None:
        upgrade(empty_engine, start)
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()
    store = SqlStore(empty_engine, key_ring, clock)  # type: ignore[arg-type]
    written = store.create(valid(patient()))
    assert store.read("Patient", written.id).body == written.body


def test_downgrade_to_empty_and_back(empty_engine: Engine) -> None:
    upgrade(empty_engine)
    downgrade(empty_engine, "base")
    assert current_revision(empty_engine) is None
    upgrade(empty_engine)
    assert current_revision(empty_engine) == head_revision()


def test_start_up_creates_an_empty_database_and_refuses_an_old_one(empty_engine: Engine) -> None:
    assert ensure_schema(empty_engine) == head_revision()
    assert ensure_schema(empty_engine) == head_revision()
    if len(revisions()) > 2:
        downgrade(empty_engine, "-1")
        with pytest.raises(SchemaOutOfDate, match="gateway db upgrade"):
            ensure_schema(empty_engine)
