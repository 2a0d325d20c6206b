"""The audit log: append rate, verify rate, and what auditing costs a read-by-id.

- **Append** (durable, chained, signed checkpoints every 1,000): events/s appended in batches of
  500, one at a time, and one at a time from 8 threads (group commit), on SQLite and on
  PostgreSQL when reachable (its own ``bench`` database).
- **Verify**: events/s that ``AuditChain.verify`` recomputes and checks, streamed.
- **Audited read**: ``GET /fhir/Patient/{id}`` through the real app (ASGI called directly, so no
  HTTP client in the measurement), auditing to the chain against the same app auditing to a
  no-op sink; the ratio is requests/s audited over requests/s unaudited.

Targets: append ≥ 5,000 events/s batched; verify ≥ 100,000 events/s; audited read ≥ 0.8x the
unaudited one. Nothing here asserts on timings.

    .venv/bin/python benchmarks/bench_audit.py [--events N] [--reads N] [--no-postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from benchmarks.databases import add_postgres_options, bench_postgres_url
from gateway.access.requester import Requester
from gateway.app import create_app
from gateway.audit.chain import (
    AuditChain,
    AuditPage,
    AuditQuery,
    CheckpointSigner,
    load_public_key,
    public_key_path,
)
from gateway.clock import SystemClock
from gateway.disclose.deps import fixed_requester
from gateway.keys import FileKeyRing, init_keys
from gateway.settings import Settings
from gateway.store.database import downgrade, make_engine, upgrade
from gateway.store.port import StoreSession
from gateway.store.sql import SqlStore
from tests.support.valid import valid

TARGET_APPEND = 5_000
TARGET_VERIFY = 100_000
TARGET_READ = 0.8
SHELTER = Requester(
    "riverside-shelter", "shelter", "Organization/riverside-shelter", ("system/*.cruds",), ("COC",)
)


def event(n: int) -> dict[str, Any]:
    """A read event of realistic size (about 1.5 kB, like the gateway's own)."""
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                 "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
        "action": "R",
        "recorded": "2026-12-01T09:00:00.000Z",
        "outcome": "0",
        "purposeOfEvent": [{"coding": [{"code": "TREAT"}]}],
        "agent": [
            {"who": {"reference": "Organization/harbor-clinic"}, "requestor": True,
             "altId": "harbor-clinic", "purposeOfUse": [{"coding": [{"code": "TREAT"}]}]},
            {"who": {"identifier": {"value": "harbor-clinic"}}, "requestor": False,
             "network": {"address": "10.0.0.7", "type": "2"}},
            {"who": {"display": "care-gateway"}, "requestor": False},
        ],
        "source": {"site": "http://127.0.0.1:8080/fhir", "observer": {"display": "care-gateway"}},
        "entity": [
            {"what": {"reference": f"Patient/p{n % 997}"}, "role": {"code": "1"}},
            {"what": {"reference": f"CarePlan/cp{n}/_history/1"}, "role": {"code": "4"},
             "detail": [{"type": "decision", "valueString": "consent:Consent/c1#provision"}]},
        ],
    }  # fmt: skip


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f}"


def bench_chain(url: str, keys: Path, events: int) -> list[str]:
    engine = make_engine(url)
    if not url.startswith("sqlite"):
        downgrade(engine, "base")
    upgrade(engine)
    chain = AuditChain(engine, CheckpointSigner.from_keys_dir(keys), SystemClock())
    docs = [event(i) for i in range(events)]
    started = time.perf_counter()
    for start in range(0, events, 500):
        chain.append(docs[start : start + 500])
    batched = time.perf_counter() - started
    singles = max(200, events // 20)
    started = time.perf_counter()
    for i in range(singles):
        chain.append([docs[i]])
    single = time.perf_counter() - started
    per_thread = singles // 8

    def writer() -> None:
        for i in range(per_thread):
            chain.append([docs[i]])

    threads = [threading.Thread(target=writer) for _ in range(8)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grouped = time.perf_counter() - started
    total = events + singles + per_thread * 8
    started = time.perf_counter()
    result = chain.verify(load_public_key(public_key_path(keys)))
    verify = time.perf_counter() - started
    assert result.ok, result
    assert result.events == total, result
    chain.close()
    engine.dispose()
    return [
        rate(events, batched),
        rate(singles, single),
        rate(per_thread * 8, grouped),
        rate(total, verify),
    ]


class NoOpAudit:
    """The no-op sink: what a gateway without an audit log would do."""

    def append(self, events: Sequence[dict[str, Any]]) -> list[int]:
        return []

    def search(self, query: AuditQuery) -> AuditPage:
        return AuditPage([], 0)

    def append_within(
        self, session: StoreSession, events: Sequence[dict[str, Any]]
    ) -> Callable[[], None] | None:
        return None  # nothing to write in the transaction, nothing to run after it

    def note_unauthenticated(self, source: str | None, reason: str) -> None:
        return None

    def close(self) -> None:
        return None


async def _reads(app: Any, path: str, n: int, in_flight: int = 1) -> float:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"host", b"bench"), (b"accept", b"application/fhir+json")],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8080),
    }  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def worker(count: int) -> None:
        for _ in range(count):
            await app(dict(scope), receive, send)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n // in_flight) for _ in range(in_flight)))
    elapsed = time.perf_counter() - started
    assert set(statuses) == {200}, set(statuses)
    return elapsed


def bench_read(tmp: Path, keys: Path, reads: int, in_flight: int) -> tuple[str, str, str]:
    settings = Settings(database_url=f"sqlite:///{tmp}/read.db", keys_dir=keys, log_level="WARNING")
    engine = make_engine(settings.database_url)
    upgrade(engine)
    store = SqlStore(engine, FileKeyRing(keys), SystemClock())
    maria = {"resourceType": "Patient", "name": [{"family": "Álvarez", "given": ["María"]}],
             "birthDate": "1994-03-17"}  # fmt: skip
    survivor = store.create(valid(maria, "riverside-shelter"))
    path = f"/fhir/Patient/{survivor.id}"
    audited = create_app(settings, store=store, authenticate=fixed_requester(SHELTER))
    unaudited = create_app(
        settings, store=store, authenticate=fixed_requester(SHELTER), audit=NoOpAudit()
    )
    best = {"audited": float("inf"), "unaudited": float("inf")}
    for _ in range(5):  # interleaved rounds, best kept
        for name, app in (("audited", audited), ("unaudited", unaudited)):
            best[name] = min(best[name], asyncio.run(_reads(app, path, reads, in_flight)))
    audited.state.gateway.audit.close()
    store.close()
    ratio = best["unaudited"] / best["audited"]
    return rate(reads, best["audited"]), rate(reads, best["unaudited"]), f"{ratio:.2f}x"


def verdict(value: str, target: float) -> str:
    number = float(value.rstrip("x").replace(",", ""))
    return "[green]✓[/]" if number >= target else "[red]✗[/]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="events appended in batches")
    parser.add_argument("--reads", type=int, default=2_000, help="reads per timing round")
    add_postgres_options(parser)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        keys = tmp / "keys"
        init_keys(keys, SystemClock().now())
        table = Table(title="audit chain: events/s (durable, chained, signed checkpoints)")
        columns = (
            "database", "batched (500)", "one at a time", "8 threads, one at a time", "verify",
            f"≥ {TARGET_APPEND:,} batched", f"≥ {TARGET_VERIFY:,} verify",
        )  # fmt: skip
        for column in columns:
            table.add_column(column, justify="right")
        backends = [("SQLite", f"sqlite:///{tmp}/audit.db")]
        pg = bench_postgres_url(args)
        if pg:
            backends.append(("PostgreSQL", pg))
        for label, url in backends:
            cells = bench_chain(url, keys, args.events)
            table.add_row(
                label, *cells, verdict(cells[0], TARGET_APPEND), verdict(cells[3], TARGET_VERIFY)
            )
            if url.startswith("postgresql"):
                downgrade(make_engine(url), "base")
        console.print(table)
        reads = Table(title="GET /fhir/Patient/{id}, ASGI in-process, SQLite: requests/s")
        for column in ("requests in flight", "audited (chain)", "unaudited (no-op sink)",
                       "ratio", f"≥ {TARGET_READ}x"):  # fmt: skip
            reads.add_column(column, justify="right")
        for in_flight in (1, 32):
            audited, unaudited, ratio = bench_read(tmp, keys, args.reads, in_flight)
            reads.add_row(str(in_flight), audited, unaudited, ratio, verdict(ratio, TARGET_READ))
        console.print(reads)


if __name__ == "__main__":
    main()
