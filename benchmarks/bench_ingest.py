"""The ingest pipeline end to end, against reading the same input alone.

What a partner's ingest costs: a synthetic HMIS CSV export of N clients (with enrollments,
services, HealthAndDV, exits and releases of information) read by the real adapter, mapped by
the real specs in ``mappings/``, given ledger ids, checked (strict R4), labelled, stored and
audited through the shelter's ``ConsentedStore`` with a Provenance per batch, on SQLite (a temp
file) and, when reachable, PostgreSQL (the dedicated ``bench`` database). The baseline, in the
same run: the adapter alone reading the same export (parsing, the on-disk index, the checks).
Then a second ingest of the same export (nothing changes: the idempotent path), and the peak
RSS of a whole ingest at several sizes, each in a fresh process, to show memory stays flat.

Target (issue 15): >= 2,000 resources/s stored on SQLite; peak RSS flat from 1,000 to 100,000
clients. Nothing here asserts on timings.

    .venv/bin/python benchmarks/bench_ingest.py [--clients N] [--rss 1000,10000] [--no-postgres]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support, benchmarks

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.databases import add_postgres_options, bench_postgres_url  # noqa: E402


@dataclass
class Run:
    path: str
    seconds: float
    records: int
    resources: int  # stored (created + updated), Provenance not counted
    unchanged: int

    @property
    def resources_per_second(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def write_export(target: Path, clients: int) -> Path:
    from gateway.synth.hmis import write_hmis_export

    return write_hmis_export(
        target, clients=clients, year="FY2026", seed=15, releases_to=("harbor-clinic",)
    )


def parse_only(export: Path) -> Run:
    from adapters.hmis import read_export
    from gateway.vocabulary.source import SourceRecord

    started = time.perf_counter()
    records = sum(
        1 for item in read_export(export, partner_kind="shelter") if isinstance(item, SourceRecord)
    )
    return Run("read the export alone (adapter)", time.perf_counter() - started, records, 0, 0)


def _app(database_url: str, workdir: Path) -> Any:
    from gateway.app import create_app
    from gateway.clock import SystemClock
    from gateway.keys import FileKeyRing, init_keys
    from gateway.settings import Settings
    from gateway.store.database import make_engine
    from gateway.store.sql import SqlStore

    keys = workdir / "keys"
    if not keys.exists():
        init_keys(keys, SystemClock().now())
    settings = Settings(database_url=database_url, keys_dir=keys, log_level="WARNING", demo=True)
    store = SqlStore(make_engine(database_url), FileKeyRing(keys), SystemClock())
    kinds = {
        "riverside-shelter": "shelter",
        "harbor-clinic": "clinic",
        "northside-legal-aid": "legal-aid",
        "st-marys-hospital": "hospital",
    }
    return create_app(settings, store=store, partner_kinds=kinds), settings


def _directory() -> Any:
    from gateway.partners import Partner, PartnerDirectory

    return PartnerDirectory(
        [
            Partner.model_validate(
                {
                    "id": "riverside-shelter",
                    "name": "Riverside Safe Haven",
                    "kind": "shelter",
                    "organization": "Organization/riverside-shelter",
                    "jwks": "demo-generated-keys",
                    "scopes": ["system/*.cruds"],
                    "purposes": ["COC"],
                    "default_purpose": "COC",
                }
            )
        ]
    )


def ingest(export: Path, database_url: str, workdir: Path, label: str) -> Run:
    """One whole ingest through the pipeline, as `gateway ingest hmis-csv` runs it."""
    from adapters.hmis import read_export
    from gateway.app import ingest_pipeline

    app, settings = _app(database_url, workdir)
    directory = _directory()
    partner = directory.by_client_id("riverside-shelter")
    pipeline = ingest_pipeline(app, settings, partner, directory)
    started = time.perf_counter()
    summary = pipeline.run(read_export(export, partner_kind="shelter"))
    seconds = time.perf_counter() - started
    app.state.gateway.audit.close()
    if summary.exit_code != 0:
        raise SystemExit(f"{label}: the synthetic export did not land whole ({summary.exit_code})")
    stored = sum(r.created + r.updated for r in summary.resources.values())
    unchanged = sum(r.unchanged for r in summary.resources.values())
    records = sum(c.read for c in summary.records.values())
    return Run(label, seconds, records, stored, unchanged)


def fresh_sqlite(workdir: Path, name: str) -> str:
    from gateway.store.database import make_engine, upgrade

    url = f"sqlite:///{workdir / name}.db"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return url


def fresh_postgres(url: str) -> str:
    from gateway.store.database import downgrade, make_engine, upgrade

    engine = make_engine(url)
    downgrade(engine, "base")  # only ever the dedicated bench database
    upgrade(engine)
    engine.dispose()
    return url


def rss_child(clients: int) -> None:
    """In a fresh process: write an export, ingest it on SQLite, print peak RSS (MiB)."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-rss-"))
    try:
        export = write_export(workdir / "export", clients)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        run = ingest(export, fresh_sqlite(workdir, "rss"), workdir, f"{clients} clients")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(
            json.dumps(
                {
                    "clients": clients,
                    "peak_mib": peak / 1024,
                    "before_mib": before / 1024,
                    "resources": run.resources,
                    "seconds": run.seconds,
                }
            )
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def rss_table(sizes: Sequence[int], console: Console) -> Table:
    table = Table(
        "clients", "resources stored", "seconds", "resources/s", "peak RSS (MiB)",
        "vs smallest", title="Peak RSS of a whole ingest, each in a fresh process (SQLite)",
    )  # fmt: skip
    first: float | None = None
    for clients in sizes:
        console.print(f"[dim]RSS run: {clients} clients ...[/dim]")
        out = (
            subprocess.run(
                [sys.executable, __file__, "--rss-child", str(clients)],
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        data = json.loads(out)
        first = first or data["peak_mib"]
        table.add_row(
            f"{clients:,}",
            f"{data['resources']:,}",
            f"{data['seconds']:.1f}",
            f"{data['resources'] / data['seconds']:,.0f}",
            f"{data['peak_mib']:.0f}",
            f"{data['peak_mib'] / first:.2f}x",
        )
    return table


def _hospital_directory() -> Any:
    from gateway.partners import Partner, PartnerDirectory

    return PartnerDirectory(
        [
            Partner.model_validate(
                {
                    "id": "st-marys-hospital",
                    "name": "St. Mary's Hospital",
                    "kind": "hospital",
                    "organization": "Organization/st-marys-hospital",
                    "jwks": "demo-generated-keys",
                    "scopes": ["system/*.cruds"],
                    "purposes": ["TREAT"],
                    "default_purpose": "TREAT",
                    "hl7_sending_facility": "STMARYS",
                    "hl7_peers": ["127.0.0.1/32"],
                }
            ),
            *_directory(),
        ]
    )


async def _send_all(port: int, messages: list[bytes], senders: int) -> tuple[float, list[bytes]]:
    """``senders`` connections at once, each send-and-wait over its share of the messages."""
    import asyncio

    from adapters.mllp import send_messages

    shares = [messages[i::senders] for i in range(senders)]
    started = time.perf_counter()
    answered = await asyncio.gather(*(send_messages("127.0.0.1", port, s) for s in shares))
    return time.perf_counter() - started, [ack for acks in answered for ack in acks]


def _msa(ack: bytes) -> str:
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA|"):
            return segment.split(b"|")[1].decode("ascii", "replace")
    return "?"


MllpRun = tuple[str, float, int, dict[str, int]]  # (path, seconds, ACKs, ACK codes)


def mllp_runs(count: int, senders: int, workdir: Path) -> list[MllpRun]:
    """REF^I12 referrals over MLLP on loopback: the gateway's listener storing each through
    the hospital's pipeline (SQLite) before its AA, and a bare echo server (MLLP framing and
    an AA built from the MSH, nothing parsed or stored), with the same senders."""
    import asyncio
    from collections import Counter

    from adapters.mllp import MllpListener, serve_echo
    from gateway.app import ingest_pipeline
    from gateway.ingest.hl7 import Hl7Ingest
    from gateway.synth.hl7 import ref_i12_messages

    messages = list(ref_i12_messages(count, seed=16, sending_facility="STMARYS"))
    directory = _hospital_directory()
    app, settings = _app(fresh_sqlite(workdir, "mllp"), workdir)

    def pipeline_for(partner: Any) -> Any:
        return ingest_pipeline(app, settings, partner, directory)

    async def run() -> list[MllpRun]:
        echo = await serve_echo(max_connections=senders * 2)
        try:
            echo_seconds, echo_acks = await _send_all(echo.port, messages, senders)
        finally:
            await echo.close()
        listener = MllpListener(
            Hl7Ingest(directory, pipeline_for), port=0, max_connections=senders * 2
        )
        await listener.start()
        try:
            seconds, acks = await _send_all(listener.port, messages, senders)
        finally:
            await listener.close()
        return [
            ("bare MLLP echo (baseline)", echo_seconds, len(echo_acks),
             dict(Counter(_msa(a) for a in echo_acks))),
            ("gateway listener: parse, map, store, audit, then ACK", seconds, len(acks),
             dict(Counter(_msa(a) for a in acks))),
        ]  # fmt: skip

    try:
        return asyncio.run(run())
    finally:
        app.state.gateway.audit.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=10_000, help="clients in the export")
    parser.add_argument(
        "--rss", default="1000,10000,30000", help="client counts for the RSS runs ('' for none)"
    )
    parser.add_argument("--quick", action="store_true", help="1,000 clients, RSS at 500 and 2,000")
    parser.add_argument("--messages", type=int, default=2_000, help="REF^I12 messages over MLLP")
    parser.add_argument("--senders", type=int, default=8, help="concurrent MLLP connections")
    parser.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    add_postgres_options(parser)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child)
        return 0
    if args.quick:
        args.clients, args.rss, args.messages = 1_000, "500,2000", 400
    console = Console()
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        console.print(f"writing a synthetic FY2026 export of {args.clients:,} clients ...")
        export = write_export(workdir / "export", args.clients)
        baseline = parse_only(export)
        runs = [baseline]
        url = fresh_sqlite(workdir, "sqlite")
        runs.append(ingest(export, url, workdir, "pipeline, SQLite (file, WAL)"))
        runs.append(ingest(export, url, workdir, "same export again, SQLite (nothing changes)"))
        postgres = bench_postgres_url(args)
        if postgres is not None:
            fresh_postgres(postgres)
            runs.append(ingest(export, postgres, workdir, "pipeline, PostgreSQL"))
            runs.append(ingest(export, postgres, workdir, "same export again, PostgreSQL"))
        table = Table(
            "path", "records", "resources stored", "unchanged", "seconds", "records/s",
            "resources/s", "time vs reading alone",
            title=f"HMIS CSV ingest, {args.clients:,} clients (target: 2,000 resources/s, SQLite)",
        )  # fmt: skip
        for run in runs:
            table.add_row(
                run.path,
                f"{run.records:,}",
                f"{run.resources:,}",
                f"{run.unchanged:,}",
                f"{run.seconds:.2f}",
                f"{run.records_per_second:,.0f}",
                f"{run.resources_per_second:,.0f}" if run.resources else "-",
                f"{run.seconds / baseline.seconds:.1f}x",
            )
        console.print(table)
        mllp = Table(
            "path", "messages", "ACKs", "seconds", "messages/s", "vs echo",
            title=f"MLLP, {args.senders} concurrent senders (target: 300 messages/s stored)",
        )  # fmt: skip
        results = mllp_runs(args.messages, args.senders, workdir)
        echo_rate = results[0][2] / results[0][1]
        for path, seconds, answered, codes in results:
            rate = answered / seconds
            mllp.add_row(
                path,
                f"{args.messages:,}",
                ", ".join(f"{code} {n:,}" for code, n in sorted(codes.items())),
                f"{seconds:.2f}",
                f"{rate:,.0f}",
                f"{rate / echo_rate:.2f}x",
            )
        console.print(mllp)
        sizes = [int(x) for x in args.rss.split(",") if x.strip()]
        if sizes:
            console.print(rss_table(sizes, console))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
