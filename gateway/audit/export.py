"""Exporting the audit log (NDJSON, for a SIEM); ``verify.verify_export`` checks such a file
offline with the public keys alone."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import closing
from datetime import datetime
from typing import Protocol

from gateway.audit.checkpoints import Checkpoint


class ExportSource(Protocol):
    """What an export reads (``AuditChain``): the event rows, streamed, and the checkpoints."""

    def rows(
        self, *, since: datetime | None = None, batch: int = 10_000
    ) -> Generator[tuple[int, str, str, str, str], None, None]: ...

    def checkpoints(self) -> list[Checkpoint]: ...


def export_lines(chain: ExportSource, *, since: datetime | None = None) -> Iterator[bytes]:
    """One JSON object per line: every event row (``seq``, ``recorded``, ``prev_hash``,
    ``hash``, ``event``), then every signed checkpoint (``checkpoint``). Stamps are UTC and end
    in ``Z``; the hashed and signed forms are the same stamps without it. The event is the stored
    canonical JSON as an object; re-serialised canonically it hashes to ``hash`` again."""
    with closing(chain.rows(since=since)) as rows:
        for seq, recorded, event, prev_hash, digest in rows:
            yield (
                b'{"seq":%d,"recorded":"%sZ","prev_hash":"%s","hash":"%s","event":%s}'
                % (seq, recorded.encode(), prev_hash.encode(), digest.encode(), event.encode())
            )
    for c in chain.checkpoints():
        yield b'{"checkpoint":%s}' % c.as_json(zulu=True)
