"""The quarantine: what could not land is held encrypted, listed by reason, newest first, paged,
retried or discarded but never lost, on SQLite and PostgreSQL; nothing of its content is in
clear, and a payload is bound to its row."""

from __future__ import annotations

import base64
import itertools
import json
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select, update

from gateway.clock import FrozenClock
from gateway.ingest.quarantine import (
    REASON_CAP,
    SOURCE_CAP,
    NewQuarantine,
    Quarantine,
    QuarantineDetail,
    QuarantineNotFound,
    QuarantineStateError,
    clean,
)
from gateway.keys import DecryptionError, KeyRing
from gateway.store.schema import quarantine as quarantine_table
from gateway.vocabulary.source import Place
from tests.conftest import START
from tests.support.reach import Reach

RAW = b"CL-20417,Quintanilla-Zorrobabel,Marisol,1987-03-14,4411 Wisteria Hollow Rd,555-867-5309\r\n"
FIELDS: dict[str, Any] = {
    "PersonalID": "CL-20417",
    "LastName": "Quintanilla-Zorrobabel",
    "FirstName": "Marisol",
    "DOB": "1987-03-14",
    "Address": {"line": "4411 Wisteria Hollow Rd", "phones": ["555-867-5309"]},
    "VeteranStatus": 0,
}
SECRETS = ("CL-20417", "Quintanilla", "Marisol", "1987-03-14", "Wisteria", "555-867-5309")
ID = re.compile(r"q-[A-Za-z0-9_-]{12}")


@pytest.fixture
def held(engine: Engine, key_ring: KeyRing) -> Quarantine:
    return Quarantine(engine, key_ring, clock=FrozenClock(START, step=timedelta(seconds=1)))


_REASONS = itertools.count()


def item(**changes: Any) -> NewQuarantine:
    """A held item; each call's is a distinct one (its reason differs in a trailing count),
    since the same input for the same reason is held once."""
    fields: dict[str, Any] = {
        "partner_id": "shelter-a",
        "system": "hmis-csv",
        "record_type": "Client",
        "source": "Client.csv",
        "locator": "row 12",
        "reason": "DOB is not yyyy-mm-dd",
        "places": (Place(file="Client.csv", row=12, column="DOB"),),
        "raw": RAW,
        "fields": FIELDS,
        "source_version": "FY2026",
        "source_id": "CL-20417",
    }
    fields.update(changes)
    if "reason" not in changes:
        fields["reason"] = f"DOB is not yyyy-mm-dd ({next(_REASONS)})"
    return NewQuarantine(**fields)


def rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(quarantine_table))]


def located(held: Quarantine, quarantine_id: str) -> str:
    detail = held.get(quarantine_id)
    assert detail is not None
    return detail.locator


# -- holding and reading back -----------------------------------------------------------------


def test_a_held_item_reads_back_whole_with_its_reason_place_and_content(held: Quarantine) -> None:
    [quarantine_id] = held.add([item()])
    assert ID.fullmatch(quarantine_id)
    detail = held.get(quarantine_id)
    assert isinstance(detail, QuarantineDetail)
    assert detail.received == START
    assert detail.received.tzinfo is not None
    assert (detail.partner_id, detail.system, detail.record_type) == (
        "shelter-a",
        "hmis-csv",
        "Client",
    )
    assert (detail.source, detail.locator, detail.reason) == (
        "Client.csv",
        "row 12",
        detail.reason,
    )
    assert detail.reason.startswith("DOB is not yyyy-mm-dd")
    assert detail.places == (Place(file="Client.csv", row=12, column="DOB"),)
    assert (detail.status, detail.attempts) == ("held", 0)
    assert detail.raw == RAW
    assert detail.fields == FIELDS
    assert (detail.source_version, detail.source_id) == ("FY2026", "CL-20417")


def test_unreadable_input_is_held_with_its_bytes_and_no_fields(held: Quarantine) -> None:
    undecodable = b"\xff\xfe\x00PID|||\x00\x9d" + bytes(range(256))
    [quarantine_id] = held.add(
        [item(record_type="", fields=None, raw=undecodable, places=(), source_version="")]
    )
    detail = held.get(quarantine_id)
    assert detail is not None
    assert (detail.raw, detail.fields, detail.places, detail.record_type) == (
        undecodable,
        None,
        (),
        "",
    )


def test_many_items_are_held_in_one_call_each_with_its_own_id(held: Quarantine) -> None:
    ids = held.add([item(locator=f"row {n}") for n in range(50)])
    assert len(set(ids)) == 50
    assert [located(held, i) for i in ids] == [f"row {n}" for n in range(50)]
    assert held.add([]) == []


def test_an_unknown_id_reads_as_none(held: Quarantine) -> None:
    held.add([item()])
    assert held.get("q-AAAAAAAAAAAA") is None


def test_a_field_value_json_cannot_hold_is_kept_as_text_rather_than_lost(held: Quarantine) -> None:
    odd = {"when": datetime(2026, 1, 2, tzinfo=UTC), "blob": b"\x00\x01", "n": {1: "a"}}
    [quarantine_id] = held.add([item(fields=odd)])
    detail = held.get(quarantine_id)
    assert detail is not None
    assert detail.fields is not None
    assert detail.fields["when"].startswith("2026-01-02")
    assert detail.fields["blob"] == str(b"\x00\x01")
    assert detail.fields["n"] == {"1": "a"}


# -- listing --------------------------------------------------------------------------------------


def test_the_list_is_newest_first_and_pages_without_gaps_or_repeats(held: Quarantine) -> None:
    ids = [
        *held.add([item(locator=f"row {n}") for n in range(4)]),
        *held.add([item() for _ in range(3)]),
    ]
    seen: list[str] = []
    after: str | None = None
    while True:
        page = held.list(limit=3, after=after)
        if not page:
            break
        assert len(page) <= 3
        seen.extend(s.id for s in page)
        after = page[-1].id
    assert seen == list(reversed(ids))
    received = [s.received for s in held.list(limit=10)]
    assert received == sorted(received, reverse=True)


def test_items_received_at_the_same_instant_page_in_a_stable_order(
    engine: Engine, key_ring: KeyRing
) -> None:
    held = Quarantine(engine, key_ring, clock=FrozenClock(START))  # the clock stands still
    ids = held.add([item() for _ in range(7)])
    first = [s.id for s in held.list(limit=4)]
    rest = [s.id for s in held.list(limit=4, after=first[-1])]
    assert sorted(first + rest) == sorted(ids)
    assert first + rest == sorted(ids, reverse=True)


def test_the_list_filters_by_partner_and_status(held: Quarantine) -> None:
    a = held.add([item(), item()])
    b = held.add([item(partner_id="clinic-b")])
    held.mark(a[0], "discarded")
    assert [s.id for s in held.list(partner_id="shelter-a")] == [a[1]]
    assert [s.id for s in held.list(partner_id="clinic-b")] == b
    assert [s.id for s in held.list(status="discarded")] == [a[0]]
    assert {s.id for s in held.list(status=None)} == {*a, *b}
    assert held.list(partner_id="nobody") == []


def test_listing_after_an_id_that_does_not_exist_is_refused(held: Quarantine) -> None:
    held.add([item()])
    with pytest.raises(QuarantineNotFound):
        held.list(after="q-AAAAAAAAAAAA")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"status": "lost"}, "status is held"), ({"limit": 0}, "limit must be")],
)
def test_a_malformed_listing_is_refused(
    held: Quarantine, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        held.list(**arguments)


def test_counts_are_held_items_by_system_and_record_type(held: Quarantine) -> None:
    ids = held.add(
        [
            item(),
            item(),
            item(record_type="Enrollment"),
            item(system="hl7v2", record_type="REF_I12"),
            item(partner_id="clinic-b"),
        ]
    )
    held.mark(ids[1], "retried")
    assert held.counts() == {
        ("hmis-csv", "Client"): 2,
        ("hmis-csv", "Enrollment"): 1,
        ("hl7v2", "REF_I12"): 1,
    }
    assert held.counts(partner_id="clinic-b") == {("hmis-csv", "Client"): 1}
    assert held.counts(partner_id="nobody") == {}


# -- retried, discarded, failed again ------------------------------------------------------------


def test_an_item_that_lands_on_retry_is_marked_retried_and_kept(held: Quarantine) -> None:
    [quarantine_id] = held.add([item()])
    held.mark(quarantine_id, "retried")
    detail = held.get(quarantine_id)
    assert detail is not None
    assert (detail.status, detail.attempts, detail.raw) == ("retried", 1, RAW)
    assert held.list() == []


def test_a_discarded_item_is_kept_with_its_content(held: Quarantine) -> None:
    [quarantine_id] = held.add([item()])
    held.mark(quarantine_id, "discarded")
    detail = held.get(quarantine_id)
    assert detail is not None
    assert (detail.status, detail.attempts, detail.fields) == ("discarded", 0, FIELDS)


def test_a_failed_retry_stays_held_with_the_new_reason_and_one_more_attempt(
    held: Quarantine,
) -> None:
    [quarantine_id] = held.add([item()])
    new_place = (Place(segment="PID", field="PID-7"),)
    held.failed_retry(quarantine_id, "PID-7 is not a date", new_place)
    held.failed_retry(quarantine_id, "PID-7 is not a date\n", new_place)
    [summary] = held.list()
    assert (summary.id, summary.status, summary.attempts) == (quarantine_id, "held", 2)
    assert (summary.reason, summary.places) == ("PID-7 is not a date", new_place)


def test_only_a_held_item_is_retried_or_discarded(held: Quarantine) -> None:
    [quarantine_id] = held.add([item()])
    held.mark(quarantine_id, "discarded")
    with pytest.raises(QuarantineStateError, match="the item is discarded, not held"):
        held.mark(quarantine_id, "retried")
    with pytest.raises(QuarantineStateError):
        held.failed_retry(quarantine_id, "again", ())
    with pytest.raises(ValueError, match="retried or discarded"):
        held.mark(held.add([item()])[0], "held")


def test_marking_an_unknown_id_is_refused(held: Quarantine) -> None:
    with pytest.raises(QuarantineNotFound):
        held.mark("q-AAAAAAAAAAAA", "retried")
    with pytest.raises(QuarantineNotFound):
        held.failed_retry("q-AAAAAAAAAAAA", "still bad", ())


# -- what is in clear -----------------------------------------------------------------------------


def test_no_column_of_any_row_holds_a_value_of_the_input(engine: Engine, held: Quarantine) -> None:
    held.add([item(), item(fields=None), item(raw=RAW * 3)])
    stored = rows(engine)
    assert len(stored) == 3
    for row in stored:
        for column, value in row.items():
            as_text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            for secret in SECRETS:
                assert secret.lower() not in as_text.lower(), f"{secret} in {column}"
                encoded = base64.b64encode(secret.encode()).decode()
                assert encoded not in as_text, f"{secret} (base64) in {column}"
    if engine.dialect.name == "sqlite":
        database = Path(str(engine.url.database))
        raw = b"".join(
            p.read_bytes() for p in database.parent.glob(database.name + "*") if p.is_file()
        )
        assert raw
        for secret in SECRETS:
            assert secret.encode() not in raw


def test_what_is_kept_in_clear_is_capped_and_has_no_control_characters(
    held: Quarantine, engine: Engine
) -> None:
    [quarantine_id] = held.add(
        [
            item(
                reason="bad \x1b[31mdate\x1b[0m\r\nin \u202eDOB" + "x" * 600,
                source="Client.csv\x00" + "s" * 300,
                locator="row\t12\x07",
                places=(Place(file="Client.csv\n", column="D\u200bOB" + "c" * 300),),
            )
        ]
    )
    [row] = rows(engine)
    for column in ("reason", "source", "locator", "places"):
        assert not any(unicodedata.category(c) in ("Cc", "Cf") for c in row[column]), column
    assert len(row["reason"]) == REASON_CAP
    assert row["reason"].startswith("bad [31mdate [0m in DOB")
    assert len(row["source"]) == SOURCE_CAP
    assert row["locator"] == "row 12"
    [place] = json.loads(row["places"])
    assert place["file"] == "Client.csv"
    assert len(place["column"]) == SOURCE_CAP
    detail = held.get(quarantine_id)
    assert detail is not None
    assert detail.places[0].file == "Client.csv"


def test_cleaning_leaves_no_control_character_and_respects_the_cap() -> None:
    reach = Reach("cleaned text is printable and capped")

    @settings(derandomize=True, max_examples=300, deadline=None)
    @given(st.text(max_size=80), st.integers(min_value=1, max_value=40))
    def holds(value: str, cap: int) -> None:
        reach.example()
        out = clean(value, cap)
        reach.hit()
        assert len(out) <= cap
        assert out == out.strip()
        assert not any(
            unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for c in out
        )
        if len(value) <= cap and value.isprintable() and value == " ".join(value.split()):
            assert out == value  # clean text is kept as it is

    holds()
    reach.check(minimum=1.0)


# -- encryption bound to the row, and rotation ---------------------------------------------------


def test_a_payload_moved_to_another_row_does_not_decrypt(engine: Engine, held: Quarantine) -> None:
    first, second = held.add([item(), item(raw=b"other")])
    with engine.begin() as conn:
        payload = conn.execute(
            select(quarantine_table.c.payload).where(quarantine_table.c.id == first)
        ).scalar_one()
        conn.execute(
            update(quarantine_table).where(quarantine_table.c.id == second).values(payload=payload)
        )
    with pytest.raises(DecryptionError):
        held.get(second)
    assert held.get(first) is not None


def test_a_row_moved_to_another_partner_does_not_decrypt(engine: Engine, held: Quarantine) -> None:
    [quarantine_id] = held.add([item()])
    with engine.begin() as conn:
        conn.execute(update(quarantine_table).values(partner_id="clinic-b"))
    with pytest.raises(DecryptionError):
        held.get(quarantine_id)


def test_a_tampered_payload_is_an_error_never_absent(engine: Engine, held: Quarantine) -> None:
    [quarantine_id] = held.add([item()])
    [row] = rows(engine)
    flipped = bytes([row["payload"][0] ^ 1]) + row["payload"][1:]
    with engine.begin() as conn:
        conn.execute(update(quarantine_table).values(payload=flipped))
    with pytest.raises(DecryptionError):
        held.get(quarantine_id)
    with pytest.raises(DecryptionError):
        list(Quarantine(engine, key_ring_after(held)).reencrypt())


def key_ring_after(held: Quarantine) -> KeyRing:
    return held._ring().with_new_key(START + timedelta(days=30))


def test_reencrypt_moves_every_payload_to_the_active_key(engine: Engine, key_ring: KeyRing) -> None:
    old = Quarantine(engine, key_ring)
    ids = old.add([item(locator=f"row {n}") for n in range(7)])
    ring = key_ring.with_new_key(START + timedelta(days=30))
    current = [key_ring]
    held = Quarantine(engine, lambda: current[0])
    current[0] = ring
    assert held.count_by_key() == {key_ring.active: 7}
    assert list(held.reencrypt(batch_size=3)) == [3, 3, 1]
    assert held.count_by_key() == {ring.active: 7}
    assert list(held.reencrypt(batch_size=3)) == []
    doc = json.loads(ring.to_json())
    doc["keys"] = [k for k in doc["keys"] if k["id"] == doc["active"]]
    only_new = Quarantine(engine, KeyRing.from_json(json.dumps(doc).encode()))
    assert [located(only_new, i) for i in ids] == [f"row {n}" for n in range(7)]
    with pytest.raises(ValueError, match="batch_size"):
        next(held.reencrypt(batch_size=0))


def test_items_held_after_a_rotation_are_under_the_new_key_and_old_ones_still_read(
    engine: Engine, key_ring: KeyRing
) -> None:
    [before] = Quarantine(engine, key_ring).add([item()])
    ring = key_ring.with_new_key(START + timedelta(days=30))
    held = Quarantine(engine, ring)
    [after] = held.add([item()])
    keys = {r["id"]: r["key_id"] for r in rows(engine)}
    assert keys == {before: key_ring.active, after: ring.active}
    assert held.get(before) is not None
    assert held.get(after) is not None


def test_the_same_input_for_the_same_reason_is_held_once(engine: Engine, key_ring: KeyRing) -> None:
    """The same export ingested twice holds its bad rows once: the second add answers the
    first item's id. Another reason, or other bytes, is another item."""
    held = Quarantine(engine, key_ring, clock=FrozenClock(START))
    first = item(reason="DOB is not yyyy-mm-dd")
    [one] = held.add([first])
    again = held.add([first, item(reason="DOB is not yyyy-mm-dd"), item(reason="other")])
    assert again[:2] == [one, one]
    assert again[2] != one
    other_bytes = held.add([item(reason="DOB is not yyyy-mm-dd", raw=RAW + b"x")])
    assert other_bytes != [one]
    assert len(rows(engine)) == 3
    # Once retried (no longer held), the same input can be held afresh.
    held.mark(one, "retried")
    assert held.add([first]) != [one]
