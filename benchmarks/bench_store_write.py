"""Batch ingest throughput of the store, with FHIR validation, against two baselines.

Measures how fast 10,000 mixed, valid FHIR R4 resources (whole survivor records: Patient,
EpisodeOfCare, CarePlan, ServiceRequests, Tasks, Consent, referencing each other by id) go
through the ingest path: ``validate_resource(doc, allowed_types=RESOURCE_TYPES)`` on every
resource, then ``SqlStore.write_many`` per batch of 500 (canonical JSON, index extraction,
AES-256-GCM encryption, a handful of statements per batch). On SQLite (a temp file) and, when
reachable, on PostgreSQL (a dedicated ``bench`` database; the ``test`` database is never touched).

Baselines, in the same run, so the table shows where the time goes:
- validation alone (`gateway.write.validate`: strict R4 4.0.1 from shipped definitions, no store);
- the store alone (``write_many`` without validation), per backend.

Every path starts from an empty schema. Prints resources/s beside the target (≥ 2,000/s on
SQLite, validation included) and each path's time relative to validation alone. Nothing here
asserts on timings.

    .venv/bin/python benchmarks/bench_ingest.py [--quick] [--count N] [--no-postgres]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, benchmarks

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import Engine, func, select, text
from sqlalchemy.engine import make_url

from benchmarks.databases import add_postgres_options, bench_postgres_url
from benchmarks.fhir_data import mixed_resources
from gateway.access.requester import Requester
from gateway.clock import SystemClock
from gateway.consent.store import ConsentedStore
from gateway.ingest.batch import BatchIngest
from gateway.keys import FileKeyRing, init_keys
from gateway.store.database import downgrade, make_engine, upgrade
from gateway.store.schema import resources as resources_table
from gateway.store.sql import SqlStore
from gateway.vocabulary.registry import RESOURCE_TYPES
from gateway.write.validate import validate_resource
from tests.support.valid import valid_all

SQLITE_TARGET = 2000.0  # resources/s, validation included


@dataclass(frozen=True, slots=True)
class Measured:
    backend: str
    path: str
    resources: int
    seconds: float
    index_rows: int = 0  # search_index rows after the path (0: not measured)
    index_bytes: int = 0  # search_index with its indexes, on disk

    @property
    def rate(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0


Docs = list[dict[str, Any]]


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def validate_only(docs: Docs, batch: int, console: Console) -> float:
    with _progress(console) as progress:
        task = progress.add_task("validation only", total=len(docs))
        started = time.perf_counter()
        for start in range(0, len(docs), batch):
            for doc in docs[start : start + batch]:
                validate_resource(doc, allowed_types=RESOURCE_TYPES)
            progress.advance(task, len(docs[start : start + batch]))
        return time.perf_counter() - started


CONTRIBUTOR = "riverside-shelter"
# The partner an ingest writes for (no network policy here: the batch path's own cost).
INGESTER = Requester(CONTRIBUTOR, "shelter", scopes=("system/*.cruds",))


def ingest(
    store: SqlStore, docs: Docs, batch: int, *, workers: int | None, label: str, console: Console
) -> float:
    """workers = None: the store alone; otherwise the gateway's batch path (BatchIngest)."""
    with _progress(console) as progress:
        task = progress.add_task(label, total=len(docs))
        # The store alone writes resources already through the gate (checked before the clock
        # starts): what it costs is the store's own work.
        admitted = valid_all(docs, CONTRIBUTOR) if workers is None else []
        started = time.perf_counter()
        if workers is None:
            for start in range(0, len(admitted), batch):
                store.write_many(admitted[start : start + batch])
                progress.advance(task, len(admitted[start : start + batch]))
        else:
            writer = ConsentedStore(store, INGESTER)
            report = BatchIngest(writer, batch_size=batch, workers=workers).run(
                docs, on_batch=lambda n: progress.advance(task, n)
            )
            if report.rejected:
                raise RuntimeError(f"{label}: {len(report.rejected)} resources rejected")
        return time.perf_counter() - started


def index_size(engine: Engine) -> tuple[int, int]:
    """Rows of ``search_index`` and its size on disk with its indexes (the blind index writes a
    row per name prefix: this is what that costs)."""
    with engine.connect() as conn:
        rows = int(conn.execute(text("SELECT COUNT(*) FROM search_index")).scalar_one())
        if engine.dialect.name == "sqlite":
            size = conn.execute(
                text(
                    "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat "
                    "WHERE name = 'search_index' OR name LIKE 'ix_search%'"
                )
            ).scalar_one()
        else:
            size = conn.execute(text("SELECT pg_total_relation_size('search_index')")).scalar_one()
    return rows, int(size)


def _count_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(resources_table)).scalar_one())


# -- backends ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backend:
    name: str
    fresh: Callable[[str], AbstractContextManager[Engine]]  # an empty schema, disposed after


def sqlite_backend(tmp: Path) -> Backend:
    @contextmanager
    def fresh(path: str) -> Iterator[Engine]:
        engine = make_engine(f"sqlite:///{tmp / (path.replace(' ', '-') + '.db')}")
        upgrade(engine)
        try:
            yield engine
        finally:
            engine.dispose()

    return Backend("SQLite (file, WAL)", fresh)


def postgres_backend(bench_url: str) -> Backend:
    """The dedicated ``bench`` database (``databases.bench_postgres_url``), emptied per path."""
    admin = make_url(bench_url)

    @contextmanager
    def fresh(_path: str) -> Iterator[Engine]:
        engine = make_engine(bench_url)
        downgrade(engine, "base")  # only ever the dedicated bench database
        upgrade(engine)
        try:
            yield engine
        finally:
            engine.dispose()

    return Backend(f"PostgreSQL ({admin.host}:{admin.port}/{admin.database})", fresh)


# -- report --------------------------------------------------------------------------------------


def report(results: list[Measured], validation: Measured, console: Console, batch: int) -> None:
    table = Table(
        title="Batch ingest: validate_resource + SqlStore.write_many",
        caption=(
            f"{validation.resources:,} mixed resources, batches of {batch}, "
            f"{os.cpu_count()} CPUs; every store path starts from an empty schema.\n"
            "x validation = the path's time / validation-only time."
        ),
    )
    for name in ("backend", "path", "resources", "seconds", "resources/s", "target"):
        table.add_column(name, justify="left" if name in ("backend", "path") else "right")
    table.add_column("x validation", justify="right")
    table.add_column("index rows/res", justify="right")
    table.add_column("index bytes/res", justify="right")
    for m in [validation, *results]:
        target = ""
        if m.backend.startswith("SQLite") and m.path.startswith("validate + store"):
            mark = "[green]✓[/green]" if m.rate >= SQLITE_TARGET else "[red]✗[/red]"
            target = f"{mark} ≥ {SQLITE_TARGET:,.0f}/s"
        table.add_row(
            m.backend,
            m.path,
            f"{m.resources:,}",
            f"{m.seconds:.2f}",
            f"{m.rate:,.0f}",
            target,
            f"{m.seconds / validation.seconds:.2f}x",
            f"{m.index_rows / m.resources:.1f}" if m.index_rows else "",
            f"{m.index_bytes / m.resources:,.0f}" if m.index_bytes else "",
        )
    console.print(table)


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=10_000, help="resources to ingest")
    parser.add_argument("--batch", type=int, default=500, help="resources per write_many")
    add_postgres_options(parser)
    parser.add_argument(
        "--workers",
        type=int,
        default=max(1, (os.cpu_count() or 1) - 1),
        help="validator processes (default: one core left for the writer)",
    )
    parser.add_argument("--quick", action="store_true", help="2,000 resources (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        args.count = 2000
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 140)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        keys_dir = tmp / "keys"
        init_keys(keys_dir, datetime.now(UTC))
        with console.status(f"generating {args.count:,} resources"):
            docs = mixed_resources(args.count)
        validation = Measured(
            "(none)", "validation only", len(docs), validate_only(docs, args.batch, console)
        )
        backends = [sqlite_backend(tmp)]
        url = bench_postgres_url(args)
        if url is not None:
            backends.append(postgres_backend(url))
        results: list[Measured] = []
        paths: list[tuple[str, int | None]] = [
            ("store only", None),
            ("validate + store, in-process", 0),
            (f"validate + store, {args.workers} validator process(es)", args.workers),
        ]
        for backend in backends:
            for path, workers in paths:
                with backend.fresh(path) as engine:
                    store = SqlStore(engine, FileKeyRing(keys_dir), SystemClock())
                    label = f"{backend.name.split(' ')[0]}: {path}"
                    seconds = ingest(
                        store, docs, args.batch, workers=workers, label=label, console=console
                    )
                    stored = _count_rows(engine)
                    if stored != len(docs):
                        raise RuntimeError(f"{label}: {stored} rows stored, not {len(docs)}")
                    rows, size = index_size(engine)
                results.append(Measured(backend.name, path, len(docs), seconds, rows, size))
                console.log(f"{label}: {len(docs) / seconds:,.0f} resources/s")
        report(results, validation, console, args.batch)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
