"""High-water marks of incremental pulls (LegalServer's ``updated_at``, FHIR's
``meta.lastUpdated``): one per partner, source system and source, kept encrypted (a mark names
the source records of its overlap window) and moved only after a pull's records were stored."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, select, update

from gateway.clock import Clock, SystemClock
from gateway.keys import KeyRing
from gateway.store.schema import ingest_marks
from gateway.vocabulary.dates import stamp

MAX_SOURCE = 200


def _aad(partner_id: str, system: str, source: str) -> bytes:
    return "\x1f".join(("ingest_marks", partner_id, system, source)).encode()


class Marks:
    def __init__(
        self, engine: Engine, keys: KeyRing | Callable[[], KeyRing], clock: Clock | None = None
    ) -> None:
        self._engine = engine
        self._keys = keys if callable(keys) else (lambda: keys)
        self._clock = clock or SystemClock()

    def get(self, partner_id: str, system: str, source: str) -> str | None:
        source = source[:MAX_SOURCE]
        with self._engine.connect() as conn:
            row = conn.execute(
                select(ingest_marks.c.key_id, ingest_marks.c.payload).where(
                    ingest_marks.c.partner_id == partner_id,
                    ingest_marks.c.system == system,
                    ingest_marks.c.source == source,
                )
            ).first()
        if row is None:
            return None
        plain = self._keys().decrypt(row.key_id, row.payload, _aad(partner_id, system, source))
        return plain.decode("utf-8")

    def put(self, partner_id: str, system: str, source: str, mark: str) -> None:
        source = source[:MAX_SOURCE]
        key_id, blob = self._keys().encrypt(mark.encode("utf-8"), _aad(partner_id, system, source))
        values = {"updated": stamp(self._clock.now()), "key_id": key_id, "payload": blob}
        where = (
            ingest_marks.c.partner_id == partner_id,
            ingest_marks.c.system == system,
            ingest_marks.c.source == source,
        )
        with self._engine.begin() as conn:
            if conn.execute(update(ingest_marks).where(*where).values(**values)).rowcount == 0:
                conn.execute(
                    ingest_marks.insert().values(
                        partner_id=partner_id, system=system, source=source, **values
                    )
                )
