"""HL7 v2 messages into the pipeline one by one (the MLLP listener's handler), on SQLite and
PostgreSQL: who sent it decides whose record it becomes, and every answer is the ACK the
outcome calls for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from adapters.hl7v2 import Accepted, ErrorCode, NotMappable, Rejected, ack_for
from gateway.app import ingest_pipeline
from gateway.ingest.hl7 import UNKNOWN_FACILITY, Hl7Ingest
from gateway.ingest.quarantine import Quarantine
from gateway.partners import Partner, PartnerDirectory
from gateway.store.schema import resources
from gateway.store.sql import SqlStore
from gateway.synth.hl7 import ref_i12_messages
from tests.ingest.test_pipeline import MAPPINGS, _partner
from tests.support.network import KINDS, gateway_settings

HOSPITAL = _partner(
    "st-marys-hospital", "hospital", hl7_sending_facility="STMARYS", hl7_peers=["10.20.30.0/24"]
)
HOSPITAL_PEER = "10.20.30.7"
DIRECTORY = PartnerDirectory(
    [HOSPITAL, *(_partner(p, k) for p, k in KINDS.items() if p != HOSPITAL.id)]
)


@pytest.fixture
def handler(
    sql_store: SqlStore, tmp_path: Path, clock: Any
) -> Iterator[tuple[Hl7Ingest, SqlStore]]:
    from gateway.app import create_app

    app = create_app(gateway_settings(tmp_path), store=sql_store, clock=clock, partner_kinds=KINDS)

    def pipeline_for(partner: Partner) -> Any:
        return ingest_pipeline(
            app, app.state.gateway.settings, partner, DIRECTORY, mappings=MAPPINGS
        )

    yield Hl7Ingest(DIRECTORY, pipeline_for), sql_store
    app.state.gateway.audit.close()


def _records(store: SqlStore) -> list[tuple[str, str | None]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(resources.c.resource_type, resources.c.contributor)).all()
    return sorted((r[0], r[1]) for r in rows if r[0] != "Organization")


def _msa(ack: bytes) -> list[bytes]:
    return next(s for s in ack.split(b"\r") if s.startswith(b"MSA|")).split(b"|")


def test_a_message_from_a_facility_that_is_no_partner_is_refused_and_nothing_is_kept(
    handler: tuple[Hl7Ingest, SqlStore],
) -> None:
    ingest, store = handler
    message = next(ref_i12_messages(1, seed=1, sending_facility="NOT_A_PARTNER"))
    outcome = ingest.handle(message, peer=HOSPITAL_PEER)
    assert isinstance(outcome, Rejected)
    assert outcome.code is ErrorCode.UNKNOWN_KEY_IDENTIFIER
    assert outcome.text == UNKNOWN_FACILITY
    ack = ack_for(message, outcome)
    assert _msa(ack)[1] == b"AR"
    err = next(s for s in ack.split(b"\r") if s.startswith(b"ERR|")).split(b"|")
    assert err[2] == b"MSH^1^4"  # ERR-2: segment MSH, first occurrence, field 4
    assert err[3].startswith(b"204^")
    assert _records(store) == []
    assert Quarantine(store.engine, store.key_ring).list(status=None) == []


def test_an_unreadable_message_from_a_partner_is_refused_and_kept_with_its_place(
    handler: tuple[Hl7Ingest, SqlStore],
) -> None:
    ingest, store = handler
    message = next(ref_i12_messages(1, seed=2, sending_facility="STMARYS"))
    broken = message.replace(b"\rPID|", b"\rPID|1||", 1).replace(b"|19", b"|1x", 1)
    outcome = ingest.handle(broken.replace(b"|2.5.1|", b"|9.9|", 1), peer=HOSPITAL_PEER)
    assert isinstance(outcome, Rejected | NotMappable)
    assert _msa(ack_for(broken, outcome))[1] in (b"AR", b"AE")
    held = Quarantine(store.engine, store.key_ring).list(partner_id="st-marys-hospital")
    assert len(held) == 1
    assert held[0].system == "hl7v2"
    assert _records(store) == []


def test_a_partners_message_lands_as_its_own_record_and_a_resend_stores_nothing_twice(
    handler: tuple[Hl7Ingest, SqlStore],
) -> None:
    ingest, store = handler
    message = next(ref_i12_messages(1, seed=3, sending_facility="STMARYS"))
    first = ingest.handle(message, peer=HOSPITAL_PEER)
    assert isinstance(first, Accepted), first
    stored = _records(store)
    assert stored
    assert {c for _, c in stored} == {"st-marys-hospital"}
    again = ingest.handle(message, peer=HOSPITAL_PEER)
    assert isinstance(again, Accepted)
    assert _records(store) == stored


def test_a_partners_facility_from_another_address_is_answered_as_an_unknown_one(
    handler: tuple[Hl7Ingest, SqlStore],
) -> None:
    """MSH-4 is the sender's own claim: from an address not among the partner's hl7_peers it
    is refused exactly as a facility nobody has (the same AR, nothing kept)."""
    ingest, store = handler
    message = next(ref_i12_messages(1, seed=4, sending_facility="STMARYS"))
    stranger = next(ref_i12_messages(1, seed=4, sending_facility="NOT_A_PARTNER"))
    spoofed = ingest.handle(message, peer="192.0.2.9")
    unknown = ingest.handle(stranger, peer="192.0.2.9")
    assert spoofed == unknown
    assert isinstance(spoofed, Rejected)
    assert _records(store) == []
    assert Quarantine(store.engine, store.key_ring).list(status=None) == []


def test_messages_sent_at_once_are_stored_together_and_each_is_answered_for_itself(
    handler: tuple[Hl7Ingest, SqlStore],
) -> None:
    """Eight senders at once: every message is stored before its own answer (AA), one
    message's bad content does not take the others' with it, and each referral is stored
    once."""
    from concurrent.futures import ThreadPoolExecutor

    ingest, store = handler
    good = list(ref_i12_messages(24, seed=5, sending_facility="STMARYS"))
    bad = good[7].replace(b"\rPID|", b"\rPID|1||", 1).replace(b"|19", b"|1x", 1)
    messages = [*good[:7], bad, *good[8:]]
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda m: ingest.handle(m, peer=HOSPITAL_PEER), messages))
    assert [type(o).__name__ for o in outcomes].count("Accepted") == 23
    assert not isinstance(outcomes[7], Accepted)
    tasks = [r for r in _records(store) if r[0] == "Task"]
    assert len(tasks) == 23
    again = [ingest.handle(m, peer=HOSPITAL_PEER) for m in good[:3]]
    assert all(isinstance(o, Accepted) for o in again)
    assert len([r for r in _records(store) if r[0] == "Task"]) == 23
