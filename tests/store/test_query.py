"""Search parsing and the agreement of every store on what a query means."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.clock import FrozenClock
from gateway.errors import BadRequest, UnknownParameter
from gateway.keys import KeyRing, new_encryption_key
from gateway.store.database import make_engine, upgrade
from gateway.store.memory import MemoryStore
from gateway.store.port import (
    Cursor,
    DateCriterion,
    ReferenceCriterion,
    StringCriterion,
    TokenCriterion,
)
from gateway.store.query import (
    MAX_INCLUDES,
    MAX_OR_VALUES,
    MAX_SEARCH_CLAUSES,
    MAX_VALUE_CHARS,
    parse_search,
)
from gateway.store.sql import SqlStore
from gateway.vocabulary.dates import parse_date_range
from gateway.vocabulary.index import extract, normalise
from tests.support.reach import Reach
from tests.support.records import patient
from tests.support.valid import valid


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
    sort = (("_lastUpdated", True),)
    cursor = Cursor(("2026-11-23T09:00:00.000000", 12), after=False)
    assert Cursor.decode(cursor.encode(), sort) == cursor
    for token in ("", "!!", "eyJrIjogdHJ1ZX0", Cursor((True,)).encode()):
        with pytest.raises(BadRequest):
            Cursor.decode(token)


def test_a_cursor_whose_key_does_not_fit_the_sort_is_refused() -> None:
    """A position's key is one string per sort field, then a row number: a string where the
    row number goes (a 500 on PostgreSQL before), a key of the wrong length, a bool."""
    sort = (("_id", False),)
    for key in (("a", "not-a-row"), ("a",), ("a", 1, 2), (1, 2), ("a", True), ("a", -1)):
        with pytest.raises(BadRequest):
            Cursor.decode(Cursor(key).encode(), sort)


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


def test_memory_and_sqlite_answer_every_search_alike(twin_stores: tuple[Path, KeyRing]) -> None:
    folder, ring = twin_stores
    reach = Reach("memory and SQLite agree on a search that matched")

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(people=survivors, query=queries)
    def agree(people: list[tuple[str, str, object, str]], query: list[tuple[str, str]]) -> None:
        reach.example()
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
            sql.update("Patient", doc["id"], valid(doc), if_match=None)
            memory.update("Patient", doc["id"], valid(doc), if_match=None)
        parsed = parse_search("Patient", query)
        pages = []
        for store in (sql, memory):
            page, seen = store.search(parsed), []
            while True:
                seen += [r.id for r in page.matches]
                if page.next_cursor is None:
                    break
                cursor = ("_cursor", page.next_cursor)
                page = store.search(parse_search("Patient", [*query, cursor]))
            pages.append((page.total, seen))
        sql.close()
        if pages[0][1] or pages[1][1]:  # two empty answers agree whatever the query means
            reach.hit()
        assert pages[0] == pages[1]
        assert len(set(pages[0][1])) == len(pages[0][1]) == pages[0][0]

    agree()
    reach.check(minimum=0.65)  # 45/60 of the derandomized searches match something


# -- caps on search work, and values that can match nothing --------------------------------------


def refused(items: list[tuple[str, str]], resource_type: str = "Patient") -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        parse_search(resource_type, items)
    return caught.value


def named(error: BadRequest) -> list[str]:
    return [e for issue in error.issues for e in issue.expression]


def test_search_work_is_capped_naming_the_parameter() -> None:
    clauses = [("family", f"f{i}") for i in range(MAX_SEARCH_CLAUSES)]
    assert len(parse_search("Patient", clauses).clauses) == MAX_SEARCH_CLAUSES
    assert named(refused([*clauses, ("given", "x")])) == ["given"]
    values = ",".join(f"v{i}" for i in range(MAX_OR_VALUES))
    assert len(parse_search("Patient", [("family", values)]).clauses[0].criteria) == MAX_OR_VALUES
    assert named(refused([("family", values + ",one-more")])) == ["family"]
    half = ",".join(f"v{i}" for i in range(MAX_OR_VALUES // 2))
    assert named(refused([("family", half), ("given", half), ("_id", "x")])) == ["_id"]
    assert named(refused([("family", "x" * (MAX_VALUE_CHARS + 1))])) == ["family"]
    assert named(refused([("_sort", "_id," * 200)])) == ["_sort"]
    includes = [("_include", "CarePlan:patient")] * (MAX_INCLUDES + 1)
    assert named(refused(includes, "CarePlan")) == ["_include"]


def test_the_item_cap_holds_for_any_iterable_and_stops_reading() -> None:
    def endless() -> Iterator[tuple[str, str]]:
        while True:
            yield ("_format", "json")

    error = refused(endless())  # type: ignore[arg-type]
    assert error.issues[0].code == "too-costly"


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1f", "\x7f", "\n", "\ud800"])
@pytest.mark.parametrize(
    "name", ["family", "family:exact", "identifier", "_id", "birthdate", "_count", "_cursor"]
)
def test_a_control_character_is_refused_naming_the_parameter(name: str, char: str) -> None:
    error = refused([(name, f"Secret{char}Value")])
    assert named(error) == [name]
    assert all("Secret" not in issue.diagnostics for issue in error.issues)


def test_a_malformed_parameter_name_is_refused_without_repeating_it() -> None:
    for name in ("na\x00me", "", "Secret Name", "x" * 200, "name=", "María"):
        error = refused([(name, "x")])
        assert named(error) == []
        assert all(name not in issue.diagnostics for issue in error.issues if name)
    with pytest.raises(BadRequest):  # lenient handling ignores unknown names, not these
        parse_search("Patient", [("na\x00me", "x")], lenient=True)


@pytest.mark.parametrize(
    "value", ["a" * 65, "Patient/" + "a" * 65, "Patient/a b", "patient/1", "urn:uuid:1", "/"]
)
def test_a_reference_that_is_not_type_and_fhir_id_is_refused(value: str) -> None:
    assert named(refused([("patient", value)], "CarePlan")) == ["patient"]


def test_reference_forms_that_can_name_a_record_are_kept() -> None:
    query = parse_search(
        "CarePlan", [("patient", "a" * 64 + ",Patient/p1,https://other.example/fhir/Patient/p2")]
    )
    assert query.clauses[0].criteria == (
        ReferenceCriterion(None, "a" * 64),
        ReferenceCriterion("Patient", "p1"),
        ReferenceCriterion("Patient", "p2"),
    )


def test_ids_must_be_fhir_ids() -> None:
    assert parse_search("Patient", [("_id", "a" * 64)]).clauses[0].ids == ("a" * 64,)
    for value in ("a" * 65, "a b", "a/b", "é"):
        assert named(refused([("_id", value)])) == ["_id"]


@pytest.mark.parametrize(
    "value",
    ["+123", " 994", "\u0661\u0669\u0669\u0664", "19940317", "2024-W10-1", "2024-03-17 10:00",
     "1994x03"],
)  # fmt: skip
def test_dates_outside_the_fhir_forms_are_refused(value: str) -> None:
    assert named(refused([("birthdate", value)])) == ["birthdate"]


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("9999-12-31", "9999-12-31T00:00:00.000000", "9999-12-31T23:59:59.999999"),
        # clamped, then widened to its whole second (the blind index compares to the second)
        ("9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59.000000", "9999-12-31T23:59:59.999999"),
        ("0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00.000000", "0001-01-01T00:00:00.999999"),
    ],
)
def test_dates_at_the_edges_of_the_calendar_are_clamped_not_refused(
    value: str, low: str, high: str
) -> None:
    (criterion,) = parse_search("Patient", [("birthdate", value)]).clauses[0].criteria
    assert isinstance(criterion, DateCriterion)
    assert (criterion.low, criterion.high) == (low, high)


def test_count_takes_ascii_digits_only_and_any_number_of_them() -> None:
    assert parse_search("Patient", [("_count", "9" * 400)], max_count=500).count == 500
    assert parse_search("Patient", [("_count", "0" * 30 + "7")]).count == 7
    for value in ("\u00b2", "\u0663", "-1", " 1", ""):
        assert named(refused([("_count", value)])) == ["_count"]


def test_refusals_name_the_parameter_not_the_value() -> None:
    for items in ([("_summary", "Secret")], [("_sort", "Secret")],
                  [("_include", "Patient:Secret")], [("_total", "Secret")]):  # fmt: skip
        error = refused(items)
        assert named(error) == [items[0][0]]
        assert all("Secret" not in issue.diagnostics for issue in error.issues)
