"""The ingest ledger: one gateway id per partner source record, for good, on SQLite and
PostgreSQL; found again after a key rotation; never a second id under a race or a crash; and no
source id or content value in clear in any column."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, event, func, select

from gateway.ingest.ledger import KeyRingBehind, Ledger, LedgerEntry, LedgerKey, _canonical
from gateway.keys import KeyRing
from gateway.store.schema import ingest_ledger
from tests.conftest import START
from tests.support.reach import Reach

SOURCE_ID = "CL-20417"
CONTENT: dict[str, Any] = {
    "resourceType": "Patient",
    "name": [{"family": "Quintanilla-Zorrobabel", "given": ["Marisol"]}],
    "birthDate": "1987-03-14",
    "address": [{"line": ["4411 Wisteria Hollow Rd"]}],
    "telecom": [{"system": "phone", "value": "555-867-5309"}],
}
SECRETS = ("CL-20417", "Quintanilla", "Marisol", "1987-03-14", "Wisteria", "555-867-5309")
MAPPING = "a" * 64


def key(source_id: str = SOURCE_ID, **changes: str) -> LedgerKey:
    fields = {
        "partner_id": "shelter-a",
        "system": "hmis-csv",
        "resource_type": "Patient",
        "record_type": "Client",
        "source_id": source_id,
    }
    fields.update(changes)
    return LedgerKey(**fields)


def rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(ingest_ledger))]


def rotated(ring: KeyRing) -> KeyRing:
    return ring.with_new_key(START + timedelta(days=30))


# -- reserving and looking up -------------------------------------------------------------------


def test_a_reserved_key_gets_a_random_uuid4_id_and_is_not_yet_written(
    engine: Engine, key_ring: KeyRing
) -> None:
    ledger = Ledger(engine, key_ring)
    entry = ledger.reserve([key()])[key()]
    assert uuid.UUID(entry.resource_id).version == 4
    assert (entry.key, entry.written, entry.mapping_sha256) == (key(), False, "")
    assert ledger.lookup([key()]) == {key(): entry}


def test_lookup_returns_only_the_keys_the_ledger_holds(engine: Engine, key_ring: KeyRing) -> None:
    ledger = Ledger(engine, key_ring)
    assert ledger.lookup([key("CL-1"), key("CL-2")]) == {}
    held = ledger.reserve([key("CL-1")])
    assert ledger.lookup([key("CL-1"), key("CL-2")]) == held
    assert ledger.lookup([]) == {}


def test_reserving_again_returns_the_same_ids_from_another_ledger_instance_too(
    engine: Engine, key_ring: KeyRing
) -> None:
    wanted = [key(f"CL-{n}") for n in range(5)]
    first = Ledger(engine, key_ring).reserve(wanted[:3])
    second = Ledger(engine, key_ring).reserve(wanted)
    assert {k: second[k] for k in wanted[:3]} == first
    assert len({e.resource_id for e in second.values()}) == 5
    assert len(rows(engine)) == 5


def test_a_key_given_twice_in_one_call_gets_one_id(engine: Engine, key_ring: KeyRing) -> None:
    reserved = Ledger(engine, key_ring).reserve([key(), key(), key()])
    assert list(reserved) == [key()]
    assert len(rows(engine)) == 1


@pytest.mark.parametrize(
    "other",
    [
        key(partner_id="clinic-b"),
        key(system="legalserver"),
        key(resource_type="EpisodeOfCare"),
        key(record_type="Enrollment"),
        key(source_id="CL-20418"),
    ],
    ids=["partner", "system", "resource-type", "record-type", "source-id"],
)
def test_keys_differing_in_any_one_field_are_two_resources(
    engine: Engine, key_ring: KeyRing, other: LedgerKey
) -> None:
    reserved = Ledger(engine, key_ring).reserve([key(), other])
    assert reserved[key()].resource_id != reserved[other].resource_id


def test_where_one_field_ends_and_the_next_begins_is_part_of_the_key(
    engine: Engine, key_ring: KeyRing
) -> None:
    a = key(record_type="Client:1", source_id="2")
    b = key(record_type="Client", source_id="1:2")
    c = key(record_type="Client\x00\x00\x00\x01", source_id="2")
    reserved = Ledger(engine, key_ring).reserve([a, b, c])
    assert len({e.resource_id for e in reserved.values()}) == 3


def test_two_different_keys_never_encode_alike() -> None:
    """The canonical encoding the blind key is computed over is injective."""
    reach = Reach("distinct keys encode distinctly")
    part = st.text(alphabet=st.sampled_from("ab:\x00\x01|é"), max_size=4)

    @settings(derandomize=True, max_examples=300, deadline=None)
    @given(st.tuples(part, part, part, part, part), st.tuples(part, part, part, part, part))
    def holds(left: tuple[str, ...], right: tuple[str, ...]) -> None:
        reach.example()
        if left == right:
            assert _canonical(LedgerKey(*left)) == _canonical(LedgerKey(*right))
            return
        reach.hit()
        assert _canonical(LedgerKey(*left)) != _canonical(LedgerKey(*right))

    holds()
    reach.check(minimum=0.7)


def test_lookups_and_reservations_of_hundreds_of_keys_take_a_few_statements(
    engine: Engine, key_ring: KeyRing
) -> None:
    ledger = Ledger(engine, rotated(key_ring))  # two keys: every key is looked up under both
    statements: list[str] = []

    def count(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", count)
    try:
        ledger.reserve([key(f"CL-{n}") for n in range(300)])
        reserving = len(statements)
        statements.clear()
        found = ledger.lookup([key(f"CL-{n}") for n in range(400)])
        looking = len(statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(found) == 300
    # 400 keys under 2 ring keys are 800 blind values: two IN lists, the key-id probe, and
    # SQLite's BEGIN; never one statement per key.
    assert reserving <= 12, statements
    assert looking <= 4, statements


def test_a_malformed_key_is_refused_naming_the_field_not_the_value(
    engine: Engine, key_ring: KeyRing
) -> None:
    ledger = Ledger(engine, key_ring)
    with pytest.raises(ValueError, match=r"LedgerKey\.source_id is empty"):
        ledger.reserve([key("")])
    with pytest.raises(ValueError, match=r"LedgerKey\.partner_id is longer") as raised:
        ledger.reserve([key(partner_id="p" * 65)])
    assert "ppp" not in str(raised.value)
    assert rows(engine) == []


# -- written, unchanged -------------------------------------------------------------------------


def test_unchanged_is_true_only_for_the_same_content_under_the_same_mapping(
    engine: Engine, key_ring: KeyRing
) -> None:
    ledger = Ledger(engine, key_ring)
    reserved = ledger.reserve([key()])[key()]
    assert not ledger.unchanged(reserved, CONTENT, MAPPING)  # only reserved
    ledger.mark_written([(reserved, CONTENT, MAPPING)])
    written = ledger.lookup([key()])[key()]
    assert (written.written, written.mapping_sha256) == (True, MAPPING)
    assert written.resource_id == reserved.resource_id
    reordered = dict(reversed(list(CONTENT.items())))
    assert ledger.unchanged(written, reordered, MAPPING)
    assert not ledger.unchanged(written, {**CONTENT, "birthDate": "1987-03-15"}, MAPPING)
    assert not ledger.unchanged(written, CONTENT, "b" * 64)
    assert not ledger.unchanged(reserved, CONTENT, MAPPING)  # the entry as it was reserved


def test_writing_again_with_new_content_moves_the_digest(engine: Engine, key_ring: KeyRing) -> None:
    ledger = Ledger(engine, key_ring)
    entry = ledger.reserve([key()])[key()]
    ledger.mark_written([(entry, CONTENT, MAPPING)])
    changed = {**CONTENT, "gender": "female"}
    ledger.mark_written([(ledger.lookup([key()])[key()], changed, MAPPING)])
    now = ledger.lookup([key()])[key()]
    assert ledger.unchanged(now, changed, MAPPING)
    assert not ledger.unchanged(now, CONTENT, MAPPING)


def test_marking_an_entry_the_ledger_never_reserved_is_refused(
    engine: Engine, key_ring: KeyRing
) -> None:
    ledger = Ledger(engine, key_ring)
    ledger.reserve([key()])
    stranger = LedgerEntry(key("CL-9"), str(uuid.uuid4()), False, "")
    with pytest.raises(LookupError, match="not in the ingest ledger"):
        ledger.mark_written([(stranger, CONTENT, MAPPING)])
    assert not ledger.lookup([key()])[key()].written  # the batch rolled back as one


def test_another_partners_entry_cannot_be_marked_through_a_forged_key(
    engine: Engine, key_ring: KeyRing
) -> None:
    ledger = Ledger(engine, key_ring)
    theirs = ledger.reserve([key(partner_id="clinic-b")])[key(partner_id="clinic-b")]
    forged = LedgerEntry(key(), theirs.resource_id, False, "")
    with pytest.raises(LookupError):
        ledger.mark_written([(forged, CONTENT, MAPPING)])


_CRASH = """
import json, os, sys
from gateway.ingest.ledger import Ledger, LedgerKey
from gateway.keys import KeyRing
from gateway.store.database import make_engine

url, ring_file = sys.argv[1], sys.argv[2]
ledger = Ledger(make_engine(url), KeyRing.from_json(open(ring_file, "rb").read()))
keys = [LedgerKey("shelter-a", "hmis-csv", "Patient", "Client", f"CL-{n}") for n in range(20)]
reserved = ledger.reserve(keys)
print(json.dumps({k.source_id: e.resource_id for k, e in reserved.items()}), flush=True)
os._exit(1)  # the process dies before the resources are written or marked
"""


def test_a_crash_between_reserve_and_mark_written_leaves_reserved_ids_that_are_reused(
    engine: Engine, key_ring: KeyRing, tmp_path: Path
) -> None:
    ring_file = tmp_path / "ring.json"
    ring_file.write_bytes(key_ring.to_json())
    url = engine.url.render_as_string(hide_password=False)
    done = subprocess.run(
        [sys.executable, "-c", _CRASH, url, str(ring_file)],
        capture_output=True,
        check=False,
        timeout=60,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 1, done.stderr.decode()
    before_crash = json.loads(done.stdout)
    ledger = Ledger(engine, key_ring)
    keys = [key(f"CL-{n}") for n in range(20)]
    found = ledger.lookup(keys)
    assert {k.source_id: e.resource_id for k, e in found.items()} == before_crash
    assert not any(e.written for e in found.values())
    assert not any(ledger.unchanged(e, CONTENT, MAPPING) for e in found.values())
    again = ledger.reserve(keys)
    assert {k.source_id: e.resource_id for k, e in again.items()} == before_crash


# -- rotation ----------------------------------------------------------------------------------


def test_after_a_rotation_entries_under_the_old_key_are_found_and_keep_their_id(
    engine: Engine, key_ring: KeyRing
) -> None:
    old = Ledger(engine, key_ring)
    entry = old.reserve([key()])[key()]
    old.mark_written([(entry, CONTENT, MAPPING)])
    ring = rotated(key_ring)
    ledger = Ledger(engine, ring)
    found = ledger.lookup([key()])[key()]
    assert found.resource_id == entry.resource_id
    assert found.content_key_id == key_ring.active != ring.active
    assert ledger.unchanged(found, CONTENT, MAPPING)  # digested under the old key
    assert ledger.reserve([key()])[key()].resource_id == entry.resource_id
    assert len(rows(engine)) == 1
    ledger.reserve([key("CL-new")])
    assert {r["key_id"] for r in rows(engine)} == {key_ring.active, ring.active}


def test_writing_after_a_rotation_digests_under_the_active_key(
    engine: Engine, key_ring: KeyRing
) -> None:
    old = Ledger(engine, key_ring)
    old.mark_written([(old.reserve([key()])[key()], CONTENT, MAPPING)])
    ring = rotated(key_ring)
    ledger = Ledger(engine, ring)
    ledger.mark_written([(ledger.lookup([key()])[key()], CONTENT, MAPPING)])
    found = ledger.lookup([key()])[key()]
    assert found.content_key_id == ring.active
    assert ledger.unchanged(found, CONTENT, MAPPING)


def test_a_ledger_given_a_ring_function_follows_a_rotation(
    engine: Engine, key_ring: KeyRing
) -> None:
    current = [key_ring]
    ledger = Ledger(engine, lambda: current[0])
    first = ledger.reserve([key()])[key()]
    current[0] = rotated(key_ring)
    assert ledger.reserve([key(), key("CL-2")])[key()].resource_id == first.resource_id
    assert {r["key_id"] for r in rows(engine)} == {key_ring.active, current[0].active}


def test_a_digest_under_a_key_the_ring_no_longer_has_counts_as_changed(
    engine: Engine, key_ring: KeyRing
) -> None:
    ledger = Ledger(engine, key_ring)
    ledger.mark_written([(ledger.reserve([key()])[key()], CONTENT, MAPPING)])
    entry = ledger.lookup([key()])[key()]
    newer = json.loads(rotated(key_ring).to_json())
    newer["keys"] = [k for k in newer["keys"] if k["id"] == newer["active"]]
    only_new = KeyRing.from_json(json.dumps(newer).encode())
    assert not Ledger(engine, only_new).unchanged(entry, CONTENT, MAPPING)


# -- races -------------------------------------------------------------------------------------


def _race(
    engine: Engine, rings: list[KeyRing], keys: list[LedgerKey]
) -> list[dict[str, str] | KeyRingBehind]:
    barrier = threading.Barrier(len(rings))
    results: list[dict[str, str] | BaseException] = [{} for _ in rings]

    def run(slot: int) -> None:
        ledger = Ledger(engine, rings[slot])
        try:
            barrier.wait()
            mine = keys if slot % 2 == 0 else list(reversed(keys))
            results[slot] = {k.source_id: e.resource_id for k, e in ledger.reserve(mine).items()}
        except BaseException as exc:  # reported below, with the thread's traceback
            results[slot] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(rings))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, KeyRingBehind):
            raise r
    return [r for r in results if isinstance(r, dict | KeyRingBehind)]


def test_two_reservers_racing_for_the_same_200_keys_get_the_same_ids(
    engine: Engine, key_ring: KeyRing
) -> None:
    for round_ in range(3):
        keys = [key(f"R{round_}-{n}") for n in range(200)]
        first, second = _race(engine, [key_ring, key_ring], keys)
        assert isinstance(first, dict)
        assert len(first) == 200
        assert first == second
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ingest_ledger)).scalar_one() == 600


def test_reservers_a_rotation_apart_racing_for_the_same_keys_never_make_a_second_id(
    engine: Engine, key_ring: KeyRing
) -> None:
    """One reserver still on the old ring, three on the rotated one: the old ring either wins
    (and the others find its rows under the old key) or is refused; one id per key."""
    ring = rotated(key_ring)
    for round_ in range(3):
        with engine.begin() as conn:  # each round races on an empty ledger
            conn.execute(ingest_ledger.delete())
        keys = [key(f"R{round_}-{n}") for n in range(200)]
        results = _race(engine, [key_ring, ring, ring, ring], keys)
        answered = [r for r in results if isinstance(r, dict)]
        assert len(answered) >= 3
        assert all(r == answered[0] for r in answered)
        assert all(isinstance(r, KeyRingBehind) for r in results if not isinstance(r, dict))
        assert len(rows(engine)) == 200


def test_a_ring_behind_a_rotation_is_refused_rather_than_making_a_second_id(
    engine: Engine, key_ring: KeyRing
) -> None:
    ring = rotated(key_ring)
    keys = [key(f"CL-{n}") for n in range(10)]
    ids = Ledger(engine, ring).reserve(keys)
    behind = Ledger(engine, key_ring)
    with pytest.raises(KeyRingBehind, match="reload the key ring"):
        behind.reserve(keys)
    with pytest.raises(KeyRingBehind):
        behind.lookup(keys)
    assert len(rows(engine)) == 10
    calls: list[int] = []

    def catching_up() -> KeyRing:  # a FileKeyRing that notices the new file on its next look
        calls.append(1)
        return key_ring if len(calls) == 1 else ring

    assert Ledger(engine, catching_up).reserve(keys) == ids
    assert len(rows(engine)) == 10


# -- nothing in clear ----------------------------------------------------------------------------


def test_no_column_of_any_row_holds_the_source_id_or_a_content_value(
    engine: Engine, key_ring: KeyRing, tmp_path: Path
) -> None:
    ledger = Ledger(engine, key_ring)
    keys = [key(SOURCE_ID), key(SOURCE_ID, system="legalserver"), key("Marisol-1987-03-14")]
    reserved = ledger.reserve(keys)
    ledger.mark_written([(reserved[k], CONTENT, MAPPING) for k in keys])
    stored = rows(engine)
    assert len(stored) == 3
    for row in stored:
        for column, value in row.items():
            as_text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            for secret in SECRETS:
                assert secret.lower() not in as_text.lower(), f"{secret} in {column}"
        assert set(row) == {c.name for c in ingest_ledger.columns}
        assert row["partner_id"] == "shelter-a"
        assert row["resource_type"] == "Patient"
    if engine.dialect.name == "sqlite":
        database = Path(str(engine.url.database))
        raw = b"".join(
            p.read_bytes() for p in database.parent.glob(database.name + "*") if p.is_file()
        )
        assert raw  # the file and its write-ahead log
        for secret in SECRETS:
            assert secret.encode() not in raw
