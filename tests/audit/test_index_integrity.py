"""``audit_index`` is what the compliance review searches (``AuditEvent?patient=…``): whoever
can hide a row there hides an access from the review without touching the chain. ``verify``
therefore recomputes every event's index rows and compares them with the rows stored for its
seq, streaming both in one snapshot; ``reindex`` rebuilds the index from a verified chain."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import Engine

from gateway.audit.chain import AuditChain, AuditQuery, ReindexRefused
from tests.audit.helpers import fill, tamper


def patient_hits(chain: AuditChain, patient: str) -> int:
    return chain.search(AuditQuery(criteria=(("patient", (patient,)),))).total


def test_an_intact_log_verifies_with_its_index(
    chain: AuditChain, public: ed25519.Ed25519PublicKey
) -> None:
    fill(chain, 25)
    result = chain.verify(public)
    assert result.ok, result
    assert result.events == 25


@pytest.mark.parametrize(
    ("attack", "bad_seq", "problem"),
    [
        (
            # hide who read a survivor's record from the review
            ["DELETE FROM audit_index WHERE seq = 7 AND param = 'patient'"],
            7,
            "audit_index rows do not match the event (1 missing, 0 not the event's; patient)",
        ),
        (
            # point the review at another survivor
            ["UPDATE audit_index SET value = 'Patient/p9' WHERE seq = 12 AND param = 'patient'"],
            12,
            "audit_index rows do not match the event (1 missing, 1 not the event's; patient)",
        ),
        (
            # frame a partner: an index row the event does not carry
            ["INSERT INTO audit_index (seq, param, value) VALUES (5, 'agent', 'Organization/x')"],
            5,
            "audit_index rows do not match the event (0 missing, 1 not the event's; agent)",
        ),
        (
            # the same row twice
            [
                "INSERT INTO audit_index (seq, param, value) "
                "SELECT seq, param, value FROM audit_index WHERE seq = 9 AND param = 'action'"
            ],
            9,
            "(0 missing, 1 not the event's; action)",
        ),
        (
            # a row moved from one event to the next
            ["UPDATE audit_index SET seq = 4 WHERE seq = 3 AND param = 'patient'"],
            3,
            "(1 missing, 0 not the event's; patient)",
        ),
        (
            ["INSERT INTO audit_index (seq, param, value) VALUES (0, 'patient', 'Patient/p1')"],
            0,
            "an audit_index row names no event",
        ),
        (
            ["INSERT INTO audit_index (seq, param, value) VALUES (900, 'patient', 'Patient/p1')"],
            900,
            "an audit_index row names no event",
        ),
    ],
    ids=["missing", "altered", "added", "duplicated", "moved", "before-the-log", "past-the-log"],
)
def test_verify_names_the_seq_whose_index_rows_were_tampered_with(
    chain: AuditChain,
    engine: Engine,
    public: ed25519.Ed25519PublicKey,
    attack: list[str],
    bad_seq: int,
    problem: str,
) -> None:
    fill(chain, 25)
    tamper(engine, *attack)
    result = chain.verify(public)
    assert not result.ok
    assert result.bad_seq == bad_seq, result
    assert problem in (result.problem or ""), result
    assert str(result).startswith(f"seq {bad_seq}: ")


def test_the_problem_names_parameters_never_values(
    chain: AuditChain, engine: Engine, public: ed25519.Ed25519PublicKey
) -> None:
    fill(chain, 12)
    tamper(
        engine, "UPDATE audit_index SET value = 'Patient/p9' WHERE seq = 4 AND param = 'patient'"
    )
    message = str(chain.verify(public))
    assert "patient" in message
    assert "Patient/" not in message


def test_appends_while_verifying_are_not_mistaken_for_tampering(
    chain: AuditChain, public: ed25519.Ed25519PublicKey
) -> None:
    """The events and the index are read in one snapshot: rows committed meanwhile are in
    neither, never in one only."""
    fill(chain, 60)
    stop = threading.Event()

    def write() -> None:
        n = 1000
        while not stop.is_set():
            fill(chain, 3, offset=n)
            n += 3

    writer = threading.Thread(target=write)
    writer.start()
    try:
        results = [chain.verify(public) for _ in range(8)]
    finally:
        stop.set()
        writer.join()
    assert all(r.ok for r in results), [str(r) for r in results if not r.ok]


def test_reindex_rebuilds_the_index_from_the_verified_chain(
    chain: AuditChain, engine: Engine, public: ed25519.Ed25519PublicKey
) -> None:
    fill(chain, 30)
    before = patient_hits(chain, "Patient/p1")
    tamper(
        engine,
        "DELETE FROM audit_index WHERE param = 'patient' AND value = 'Patient/p1'",
        "INSERT INTO audit_index (seq, param, value) VALUES (900, 'agent', 'Organization/x')",
    )
    assert patient_hits(chain, "Patient/p1") == 0
    assert not chain.verify(public).ok
    assert chain.reindex(public, batch=7) == 30
    assert chain.verify(public).ok
    assert patient_hits(chain, "Patient/p1") == before == 10


def test_reindex_refuses_a_chain_that_does_not_verify(
    chain: AuditChain, engine: Engine, public: ed25519.Ed25519PublicKey
) -> None:
    fill(chain, 12)
    tamper(
        engine,
        "UPDATE audit_log SET event = replace(event, 'cp3', 'cp8') WHERE seq = 4",
        "DELETE FROM audit_index WHERE seq = 2",
    )
    with pytest.raises(ReindexRefused, match="seq 4: event edited"):
        chain.reindex(public)
    assert not chain.verify(public).ok  # nothing was rebuilt
    assert chain.verify(public).bad_seq == 2


def test_on_postgresql_the_application_cannot_rewrite_the_index(
    chain: AuditChain, engine: Engine, public: ed25519.Ed25519PublicKey, tmp_path: Path
) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no append-only trigger")
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    fill(chain, 3)
    with engine.begin() as conn, pytest.raises(DBAPIError, match="append-only"):
        conn.execute(text("DELETE FROM audit_index"))
    assert chain.verify(public).ok
