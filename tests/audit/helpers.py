"""Helpers for the audit tests: events, filling a chain, and tampering as a database
administrator would (with the append-only trigger switched off)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from gateway.audit.chain import AuditChain

EVERY = 10  # the chains under test sign a checkpoint every ten events


def event(n: int) -> dict[str, Any]:
    """A small BALP-shaped read event (references and codes only)."""
    return {
        "resourceType": "AuditEvent",
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
        },
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
        "action": "R",
        "outcome": "0",
        "agent": [{"who": {"reference": "Organization/harbor-clinic"}, "requestor": True}],
        "entity": [
            {"what": {"reference": f"Patient/p{n % 3}"}, "role": {"code": "1"}},
            {"what": {"reference": f"CarePlan/cp{n}/_history/1"}},
        ],
    }


def fill(chain: AuditChain, n: int, *, offset: int = 0) -> None:
    """Append events ``offset .. offset+n-1``, seven per transaction."""
    for start in range(offset, offset + n, 7):
        chain.append([event(i) for i in range(start, min(offset + n, start + 7))])


class as_attacker:  # noqa: N801 (a context manager read as prose)
    """A connection that bypasses the append-only trigger (a DBA could)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __enter__(self) -> Any:
        self.conn = self.engine.connect()
        self.tx = self.conn.begin()
        if self.engine.dialect.name == "postgresql":
            self.conn.execute(text("SET LOCAL session_replication_role = replica"))
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.tx.commit()
        self.conn.close()


def tamper(engine: Engine, *statements: str) -> None:
    with as_attacker(engine) as conn:
        for statement in statements:
            conn.execute(text(statement))
