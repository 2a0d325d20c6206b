"""The blind search index: the SQL stores answer every search as the in-memory store does, while
``search_index`` holds no value in clear, and a key rotation followed by ``db reindex`` moves
every row to the new key without a search missing anything on the way."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from gateway.clock import FrozenClock
from gateway.keys import KeyRing, new_encryption_key
from gateway.store.memory import MemoryStore
from gateway.store.query import parse_search
from gateway.store.schema import search_index
from gateway.store.sql import SqlStore
from tests.support.reach import Reach
from tests.support.records import patient
from tests.support.valid import valid

START = datetime(2026, 12, 2, tzinfo=UTC)


def _stamp_text(moment: datetime, precision: str) -> str:
    if precision == "year":
        return f"{moment.year:04d}"
    if precision == "month":
        return f"{moment.year:04d}-{moment.month:02d}"
    if precision == "day":
        return moment.date().isoformat()
    if precision == "second":
        return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


PRECISIONS = ("year", "month", "day", "second", "instant")


def _dates(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """ServiceRequests whose occurrence is a dateTime or a Period, clustered round a few days so
    that searches land on equal years, months, days, hours and minutes (the blind levels)."""
    anchors = [
        datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
        datetime(2026, 12, 31, 0, 0, 0, tzinfo=UTC),
    ]
    out = []
    for i in range(count):
        base = rng.choice(anchors) + timedelta(seconds=rng.choice([-1, 0, 1, 59, 3600, 86400 * 3]))
        base += timedelta(milliseconds=rng.choice([0, 0, 250, 999]))
        doc: dict[str, Any] = {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/p{i}"},
        }
        if rng.random() < 0.5:
            doc["occurrenceDateTime"] = _stamp_text(base, rng.choice(PRECISIONS))
        else:
            end = base + timedelta(seconds=rng.choice([0, 1, 61, 7200, 86400 * 40]))
            period = {"start": _stamp_text(base, rng.choice(PRECISIONS))}
            if rng.random() < 0.8:
                period["end"] = _stamp_text(end, rng.choice(PRECISIONS))
            doc["occurrencePeriod"] = period
        out.append(doc)
    return out


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def twins(request: pytest.FixtureRequest, tmp_path: Any, key_ring: KeyRing) -> Any:
    """One SQL store and the in-memory store, holding the same 120 ServiceRequests."""
    from tests.conftest import _sql_store

    clock = FrozenClock(START, step=timedelta(milliseconds=1))
    stores = _sql_store(request.param, request, tmp_path, clock, key_ring)
    sql = next(stores)
    memory = MemoryStore(FrozenClock(START, step=timedelta(milliseconds=1)))
    docs = _dates(random.Random(7), 120)
    ids = {}
    for doc in docs:
        a = sql.create(valid(doc))
        b = memory.create(valid(doc))
        ids[a.id] = b.id
    yield sql, memory, ids
    for _ in stores:
        pass


CRITERIA = st.tuples(
    st.sampled_from(("eq", "ne", "gt", "lt", "ge", "le")),
    st.sampled_from(
        [datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC), datetime(2026, 12, 31, tzinfo=UTC)]
    ),
    st.sampled_from([-86400, -1, 0, 1, 60, 3600, 86400 * 2]),
    st.sampled_from(PRECISIONS),
)


def test_date_searches_on_the_blind_index_answer_as_the_clear_semantics(twins: Any) -> None:
    sql, memory, ids = twins
    reach = Reach("a date search that told the records apart")

    @settings(max_examples=120, derandomize=True, deadline=None)
    @given(criterion=CRITERIA)
    def agree(criterion: tuple[str, datetime, int, str]) -> None:
        reach.example()
        prefix, anchor, shift, precision = criterion
        value = prefix + _stamp_text(anchor + timedelta(seconds=shift), precision)
        query = parse_search("ServiceRequest", [("occurrence", value), ("_count", "500")])
        from_sql = {ids[r.id] for r in sql.search(query).matches}
        from_memory = {r.id for r in memory.search(query).matches}
        if 0 < len(from_memory) < len(ids):
            reach.hit()  # found some records and not others: a boundary was compared
        assert from_sql == from_memory, value

    agree()
    reach.check(minimum=0.6)


def _index_values(store: SqlStore) -> set[str]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(search_index)).all()
    return {str(v) for row in rows for v in row if v is not None}


def test_the_index_holds_no_name_identifier_birth_date_or_code_in_clear(
    sql_store: SqlStore,
) -> None:
    sql_store.create(valid(patient("Okafor", "Amina", mrn="RSH-2", birth_date="1988-11-02")))
    values = _index_values(sql_store)
    for clear in ("okafor", "Okafor", "amina", "RSH-2", "1988-11-02", "1988-11", "female"):
        assert not any(clear in v for v in values), clear
    assert "1988" in values, "the year stays in clear (HIPAA Safe Harbor keeps years)"
    found = sql_store.search(
        parse_search("Patient", [("family", "OKA"), ("birthdate", "1988-11-02")])
    )
    assert len(found.matches) == 1


def test_after_a_rotation_search_finds_old_rows_and_reindex_moves_them(
    tmp_path: Any, clock: FrozenClock
) -> None:
    from tests.conftest import sqlite_engine

    first = new_encryption_key(START)
    ring = KeyRing([first], first.key_id)
    store = SqlStore(sqlite_engine(tmp_path), ring, clock)
    amina = store.create(valid(patient("Okafor", "Amina", mrn="RSH-2", birth_date="1988-11-02")))
    rotated = ring.with_new_key(START)
    store = SqlStore(store.engine, rotated, clock)
    query = parse_search("Patient", [("family", "oka"), ("identifier", "RSH-2")])
    assert [r.id for r in store.search(query).matches] == [amina.id]
    with store.engine.connect() as conn:
        keys = set(
            conn.execute(
                text("SELECT DISTINCT key_id FROM search_index WHERE key_id IS NOT NULL")
            ).scalars()
        )
    assert keys == {first.key_id}
    assert sum(store.reindex()) == 1
    with store.engine.connect() as conn:
        keys = set(
            conn.execute(
                text("SELECT DISTINCT key_id FROM search_index WHERE key_id IS NOT NULL")
            ).scalars()
        )
    assert keys == {rotated.active}
    assert [r.id for r in store.search(query).matches] == [amina.id]


def test_a_database_upgraded_but_not_reindexed_is_counted_and_reindex_restores_search(
    sql_store: SqlStore,
) -> None:
    amina = sql_store.create(valid(patient("Okafor", "Amina", mrn="RSH-2")))
    # What migration 0005 leaves behind: the clear index dropped, no sealed facts yet.
    with sql_store.engine.begin() as conn:
        conn.execute(text("DELETE FROM search_index"))
        conn.execute(text("UPDATE resources SET facts = NULL, facts_key = NULL"))
    query = parse_search("Patient", [("family", "okafor")])
    assert sql_store.count_unindexed() == 1
    assert sql_store.search(query).matches == []
    assert sum(sql_store.reindex()) == 1
    assert sql_store.count_unindexed() == 0
    assert [r.id for r in sql_store.search(query).matches] == [amina.id]


def test_the_blind_values_are_hmac_sha256_truncated_to_128_bits(key_ring: KeyRing) -> None:
    import hashlib
    import hmac

    from gateway.store.blind import CODE, INFO, Blinder, scope_of

    blinder = Blinder.from_ring(key_ring)
    scope = scope_of("Patient", "identifier")
    secret = key_ring.derive_for(key_ring.active, INFO)
    expected = hmac.new(secret, CODE + scope + b"RSH-2", hashlib.sha256).digest()[:16].hex()
    assert blinder.value(CODE, scope, "RSH-2") == expected
    assert len(expected) == 32


def test_a_write_racing_db_reindex_keeps_its_own_index_and_facts(
    sql_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The survivor changes her name while the index is rebuilt: her old name must not stay
    searchable (a name changed to hide is the point), and her facts must open."""
    import threading
    import time

    import gateway.store.sql_session as session_module

    amina = sql_store.create(valid(patient("Okafor", "Amina")))
    real_extract = getattr(session_module, "extract")  # noqa: B009 (the name patched below)
    writer: list[threading.Thread] = []

    def extract_then_race(resource: dict[str, Any]) -> Any:
        if not writer:  # the first record reindexed: a write to it arrives now
            renamed = {**patient("Smith", "Amina"), "id": amina.id}
            thread = threading.Thread(
                target=lambda: sql_store.update("Patient", amina.id, valid(renamed), if_match=None)
            )
            writer.append(thread)
            thread.start()
            time.sleep(0.3)  # long enough for an unlocked update to commit
        return real_extract(resource)

    monkeypatch.setattr(session_module, "extract", extract_then_race)
    assert sum(sql_store.reindex()) == 1
    writer[0].join(timeout=10)
    monkeypatch.undo()
    assert sql_store.read("Patient", amina.id).version_id == 2
    old = parse_search("Patient", [("family", "okafor")])
    new = parse_search("Patient", [("family", "smith")])
    assert sql_store.search(old).matches == []
    assert [r.id for r in sql_store.search(new).matches] == [amina.id]
    assert sql_store.count_unindexed() == 0
