"""Search parsing and the agreement of every store on what a query means."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.clock import FrozenClock
from gateway.errors import BadRequest, UnknownParameter
from gateway.keys import KeyRing, new_encryption_key
from gateway.store.database import make_engine, upgrade
from gateway.store.memory import MemoryStore
from gateway.store.query import Cursor, DateCriterion, StringCriterion, TokenCriterion, parse_search
from gateway.store.searchparams import extract, normalise, parse_date_range
from gateway.store.sql import SqlStore
from tests.support.records import patient


def test_comma_is_or_and_backslash_escapes_it() -> None:
    query = parse_search("Patient", [("family", r"Smith\,Jones,Okafor")])
    assert query.clauses[0].criteria == (StringCriterion("smith,jones"), StringCriterion("okafor"))


def test_token_forms() -> None:
    query = parse_search("Patient", [("identifier", "urn:a|1,|2,urn:b|,3")])
    assert query.clauses[0].criteria == (
        TokenCriterion("urn:a", "1"),
        TokenCriterion("", "2"),
        TokenCriterion("urn:b", None),
        TokenCriterion(None, "3"),
    )


def test_date_prefixes_and_precision() -> None:
    (criterion,) = parse_search("Patient", [("birthdate", "ge1994-03")]).clauses[0].criteria
    assert isinstance(criterion, DateCriterion)
    assert criterion.prefix == "ge"
    assert (criterion.low, criterion.high) == (
        "1994-03-01T00:00:00.000000",
        "1994-03-31T23:59:59.999999",
    )


def test_date_times_are_compared_in_utc() -> None:
    assert parse_date_range("2026-11-23T10:00:00+02:00")[0] == "2026-11-23T08:00:00.000000"
    assert parse_date_range("2026-11-23T10:00:00Z") == (
        "2026-11-23T10:00:00.000000",
        "2026-11-23T10:00:00.999999",
    )


@pytest.mark.parametrize("value", ["1994-13", "94-03-17", "tomorrow", "9999-12-31T25:00:00Z"])
def test_invalid_dates_are_refused(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_search("Patient", [("birthdate", value)])


def test_every_unknown_parameter_is_named_at_once() -> None:
    with pytest.raises(UnknownParameter) as caught:
        parse_search("Patient", [("shelter", "x"), ("address", "y")])
    assert [i.expression for i in caught.value.issues] == [("shelter",), ("address",)]


def test_count_is_capped_and_zero_means_count_only() -> None:
    assert parse_search("Patient", [("_count", "9999")], max_count=500).count == 500
    assert parse_search("Patient", [("_count", "0")]).summary_count


def test_cursor_round_trips_and_rejects_garbage() -> None:
    cursor = Cursor(("2026-11-23T09:00:00.000000", 12), after=False)
    assert Cursor.decode(cursor.encode()) == cursor
    for token in ("", "!!", "eyJrIjogdHJ1ZX0", Cursor((True,)).encode()):
        with pytest.raises(BadRequest):
            Cursor.decode(token)


def test_normalise_folds_case_and_accents() -> None:
    assert normalise("ÁLVAREZ") == normalise("alvarez") == "alvarez"
    assert normalise("Nguyễn") == "nguyen"
    assert normalise("Straße") == "strasse"


def test_extraction_indexes_what_the_parameters_name() -> None:
    entries = extract({**patient(), "id": "p1", "meta": {"security": [{"code": "R"}]}})
    params = {e.param for e in entries}
    assert {"identifier", "name", "family", "given", "birthdate", "gender", "_security"} <= params


def test_extraction_ignores_references_it_cannot_read() -> None:
    plan = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": "#contained"},
    }
    assert [e for e in extract(plan) if e.param == "subject"] == []


# -- the in-memory twin and SQLite agree on random data and queries ----------------------------

FAMILIES = ["Álvarez", "Alvarado", "Okafor", "Nguyễn", "O'Brien", "Smith"]
GIVENS = ["María", "Amina", "Linh", "Zoë"]
survivors = st.lists(
    st.tuples(
        st.sampled_from(FAMILIES),
        st.sampled_from(GIVENS),
        st.dates(min_value=datetime(1950, 1, 1).date(), max_value=datetime(2010, 1, 1).date()),
        st.sampled_from(["female", "male", "other"]),
    ),
    min_size=1,
    max_size=8,
)
queries = st.lists(
    st.one_of(
        st.tuples(st.just("family"), st.sampled_from(["al", "ALV", "okafor", "ngu", "o'", "x"])),
        st.tuples(st.just("given"), st.sampled_from(["mar", "zoe", "LINH"])),
        st.tuples(st.just("family:exact"), st.sampled_from(FAMILIES)),
        st.tuples(
            st.just("birthdate"),
            st.builds(
                lambda p, y: f"{p}{y}",
                st.sampled_from(["", "ge", "le", "gt", "lt", "ne"]),
                st.integers(1950, 2010),
            ),
        ),
        st.tuples(st.just("gender"), st.sampled_from(["female", "male,other"])),
        st.tuples(st.just("_sort"), st.sampled_from(["_lastUpdated", "-_lastUpdated", "_id"])),
        st.tuples(st.just("_count"), st.integers(1, 4).map(str)),
    ),
    max_size=3,
)


@pytest.fixture(scope="module")
def twin_stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, KeyRing]:
    key = new_encryption_key(datetime(2026, 11, 23, tzinfo=UTC))
    return tmp_path_factory.mktemp("twins"), KeyRing([key], key.key_id)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(people=survivors, query=queries)
def test_memory_and_sqlite_answer_every_search_alike(
    twin_stores: tuple[Path, KeyRing],
    people: list[tuple[str, str, object, str]],
    query: list[tuple[str, str]],
) -> None:
    folder, ring = twin_stores
    database = folder / "twin.db"
    database.unlink(missing_ok=True)
    engine = make_engine(f"sqlite:///{database}")
    upgrade(engine)
    start = datetime(2026, 11, 23, tzinfo=UTC)
    sql = SqlStore(engine, ring, FrozenClock(start, timedelta(milliseconds=1)))
    memory = MemoryStore(FrozenClock(start, timedelta(milliseconds=1)))
    for i, (family, given_name, born, gender) in enumerate(people):
        doc = {
            **patient(family, given_name, mrn=str(i), birth_date=str(born), gender=gender),
            "id": f"p{i}",
        }
        sql.update("Patient", doc["id"], doc, if_match=None)
        memory.update("Patient", doc["id"], doc, if_match=None)
    parsed = parse_search("Patient", query)
    pages = []
    for store in (sql, memory):
        page, seen = store.search(parsed), []
        while True:
            seen += [r.id for r in page.matches]
            if page.next_cursor is None:
                break
            page = store.search(parse_search("Patient", [*query, ("_cursor", page.next_cursor)]))
        pages.append((page.total, seen))
    sql.close()
    assert pages[0] == pages[1]
    assert len(set(pages[0][1])) == len(pages[0][1]) == pages[0][0]
