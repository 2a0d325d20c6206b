"""``gateway ingest KIND SOURCE --partner ID``: a partner's records, mapped, checked and stored.

Exit codes (the contract): 0 when every record landed, 3 when some input was quarantined
(``gateway quarantine list`` says what and why), 1 on a fatal error (the source refused whole,
or the gateway could not run). A per-record-type summary goes to stdout; progress to stderr.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from gateway.commands.common import console, fail, one_line, settings_or_fail
from gateway.ingest.pipeline import DEFAULT_BATCH
from gateway.vocabulary.source import SourceItem, SourceRecord

if TYPE_CHECKING:
    from fastapi import FastAPI

    from gateway.ingest.marks import Marks
    from gateway.ingest.pipeline import IngestPipeline, IngestSummary
    from gateway.partners import Partner, PartnerDirectory
    from gateway.settings import Settings

ingest_app = typer.Typer(
    help=(
        "Bring a partner's records in: read the source, map it to FHIR, check it, store it as "
        "the partner's. Exit 0: everything landed; 3: some input was quarantined; 1: fatal."
    ),
    no_args_is_help=True,
)

PartnerOption = Annotated[
    str, typer.Option("--partner", help="The sending partner's id in the partners file.")
]
BatchOption = Annotated[
    int, typer.Option("--batch-size", min=1, max=500, help="Records per stored batch.")
]


@contextmanager
def opened(partner_id: str, *, source_label: str, batch_size: int) -> Iterator[
    tuple[IngestPipeline, Partner, PartnerDirectory, Settings, FastAPI]
]:  # fmt: skip
    """The pipeline for ``partner_id`` on the configured database, with its app (store, audit,
    keys) closed afterwards."""
    from gateway.app import create_app, ingest_pipeline, raw_store
    from gateway.keys import KeyMaterialError, check_keys
    from gateway.mapping import MappingSpecError
    from gateway.partners import PartnersFileError, ensure_organizations, partners_for
    from gateway.store.database import SchemaOutOfDate

    settings = settings_or_fail()
    try:
        check_keys(settings.keys_dir)
        directory = partners_for(settings)
    except (KeyMaterialError, PartnersFileError) as exc:
        raise fail(one_line(exc)) from exc
    partner = directory.by_client_id(partner_id)
    if partner is None:
        raise fail("no partner with that id in the partners file (gateway partners list)")
    try:
        app = create_app(settings, partners=directory)
    except SchemaOutOfDate as exc:
        raise fail(one_line(exc)) from exc
    store = raw_store(app)
    try:
        ensure_organizations(store, directory)
        pipeline = ingest_pipeline(
            app, settings, partner, directory, batch_size=batch_size, source_label=source_label
        )
    except MappingSpecError as exc:
        store.close()
        raise fail(f"the mappings do not load: {one_line(exc)}") from exc
    try:
        yield pipeline, partner, directory, settings, app
    finally:
        app.state.gateway.audit.close()
        store.close()


def run_with_progress(
    pipeline: IngestPipeline, items: Iterable[SourceItem], label: str
) -> IngestSummary:
    """Run the pipeline over ``items`` with a live count (the total is not known while a
    source streams)."""
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=None),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} records/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=None, rate="-")
        seen = 0

        def tick(item: SourceItem) -> None:
            nonlocal seen
            if isinstance(item, SourceRecord):
                seen += 1
                if seen % 50 == 0:
                    elapsed = progress.tasks[0].elapsed or 0.0
                    rate = f"{seen / elapsed:,.0f}" if elapsed > 0 else "-"
                    progress.update(task, completed=seen, rate=rate)

        summary = pipeline.run(items, on_item=tick)
        elapsed = progress.tasks[0].elapsed or 0.0
        rate = f"{seen / elapsed:,.0f}" if elapsed > 0 else "-"
        progress.update(task, completed=seen, total=seen or 1, rate=rate)
    return summary


_READ_AS = re.compile(r"^(?P<file>\S+) read as (?P<encoding>.+)$")


def condensed(notices: Iterable[str]) -> list[str]:
    """Each notice once; "X read as E" for many files as one line per encoding."""
    encodings: dict[str, list[str]] = {}
    others: list[str] = []
    for notice in dict.fromkeys(notices):
        match = _READ_AS.match(notice)
        if match:
            encodings.setdefault(match["encoding"], []).append(match["file"])
        else:
            others.append(notice)
    lines = [
        f"read as {encoding}: {', '.join(files) if len(files) <= 3 else f'{len(files)} files'}"
        for encoding, files in encodings.items()
    ]
    return lines + others


def print_summary(summary: IngestSummary, out: Console | None = None) -> None:
    """Per record type: read, landed, quarantined; per resource type: created, updated and
    unchanged; then notices and the outcome. Counts and names only, never a record's value."""
    out = out or Console()
    records = Table("source", "record type", "read", "landed", "quarantined", title="Records")
    for (system, record_type), counts in sorted(summary.records.items()):
        records.add_row(
            system, record_type, str(counts.read), str(counts.landed), str(counts.quarantined)
        )
    out.print(records)
    if summary.resources:
        stored = Table("resource type", "created", "updated", "unchanged", title="Resources")
        for resource_type, rc in sorted(summary.resources.items()):
            stored.add_row(resource_type, str(rc.created), str(rc.updated), str(rc.unchanged))
        out.print(stored)
    for notice in condensed(summary.notices):
        out.print(f"[yellow]note:[/yellow] {notice}")
    if summary.fatal is not None:
        out.print(f"[red]refused:[/red] {summary.fatal}")
    elif summary.quarantined:
        out.print(
            f"[yellow]{len(summary.quarantined)} quarantined[/yellow]: "
            "`gateway quarantine list` says what and why"
        )
    else:
        out.print("[green]every record landed[/green]")


def _marks(app: FastAPI) -> Marks:
    from gateway.app import raw_store
    from gateway.ingest.marks import Marks
    from gateway.store.sql import SqlStore

    store = raw_store(app)
    assert isinstance(store, SqlStore)
    return Marks(store.engine, store.key_ring)


FullOption = Annotated[
    bool, typer.Option("--full", help="Read everything, not only what changed since last time.")
]


def _finish(summary: IngestSummary) -> None:
    print_summary(summary)
    raise typer.Exit(summary.exit_code)


@ingest_app.command("hmis-csv")
def hmis_csv(
    source: Annotated[
        Path,
        typer.Argument(
            exists=True, readable=True, help="The export: a directory or a zip, CSVs at its root."
        ),
    ],
    partner: PartnerOption,
    batch_size: BatchOption = DEFAULT_BATCH,
) -> None:
    """An HMIS CSV export (FY2024 or FY2026). A victim service provider's export lands only
    for a partner of kind shelter; from any other partner it is refused whole."""
    from adapters.hmis import read_export

    with opened(partner, source_label="hmis-csv", batch_size=batch_size) as (
        pipeline,
        who,
        _directory,
        _settings,
        _app,
    ):
        items = read_export(
            source,
            partner_kind=who.kind,
            victim_service_provider=who.victim_service_provider,
        )
        summary = run_with_progress(pipeline, items, "HMIS CSV")
    _finish(summary)


@ingest_app.command("legalserver")
def legalserver(
    base_url: Annotated[
        str, typer.Argument(help="The LegalServer site, https://x.legalserver.org")
    ],
    partner: PartnerOption,
    page_size: Annotated[int, typer.Option(min=1, max=500)] = 100,
    report: Annotated[
        int | None, typer.Option(help="Read this Reports API report instead of the Core API.")
    ] = None,
    batch_size: BatchOption = DEFAULT_BATCH,
    full: FullOption = False,
) -> None:
    """A LegalServer site's matters (Core API v2), or one report (Reports API). Credentials
    come from the environment, never the command line: GATEWAY_LEGALSERVER_TOKEN (a personal
    access token) or GATEWAY_LEGALSERVER_USER and GATEWAY_LEGALSERVER_PASSWORD; a report also
    needs GATEWAY_LEGALSERVER_REPORT_KEY."""
    from adapters._http import SourceError
    from adapters.legalserver import (
        HighWaterMark,
        LegalServerCoreAPI,
        LegalServerReports,
        legalserver_client,
    )

    token = os.environ.get("GATEWAY_LEGALSERVER_TOKEN")
    user = os.environ.get("GATEWAY_LEGALSERVER_USER")
    password = os.environ.get("GATEWAY_LEGALSERVER_PASSWORD")
    if not token and not (user and password):
        raise fail(
            "no LegalServer credentials: set GATEWAY_LEGALSERVER_TOKEN, or "
            "GATEWAY_LEGALSERVER_USER and GATEWAY_LEGALSERVER_PASSWORD"
        )
    try:
        if token:
            client = legalserver_client(base_url, token=token)
        else:
            client = legalserver_client(base_url, username=user, password=password)
    except ValueError as exc:
        raise fail(f"bad LegalServer URL: {one_line(exc)}") from exc
    source = base_url.rstrip("/") + (f" report {report}" if report is not None else "")
    with opened(partner, source_label="legalserver", batch_size=batch_size) as (
        pipeline,
        _who,
        _directory,
        _settings,
        app,
    ):
        marks = _marks(app)
        stored = None if full else marks.get(partner, "legalserver", source)
        since = HighWaterMark.from_text(stored) if stored else None
        try:
            if report is not None:
                key = os.environ.get("GATEWAY_LEGALSERVER_REPORT_KEY")
                if not key:
                    raise fail("a report needs GATEWAY_LEGALSERVER_REPORT_KEY")
                pull = LegalServerReports(client, report=report, api_key=key).pull(since)
            else:
                pull = LegalServerCoreAPI(client, page_size=page_size).pull(since)
        except SourceError as exc:
            raise fail(f"LegalServer: {one_line(exc)}") from exc
        finally:
            client.close()
        summary = run_with_progress(pipeline, pull.items, "LegalServer")
        if summary.fatal is None:
            # Stored or quarantined, every matter read is accounted for: the mark may move.
            marks.put(partner, "legalserver", source, pull.high_water_mark.to_text())
    _finish(summary)


CLIENT_KEY_FILE = "smart-client.pem"


@ingest_app.command("fhir")
def fhir(
    base_url: Annotated[str, typer.Argument(help="The partner's FHIR R4 base URL (https).")],
    partner: PartnerOption,
    client_id: Annotated[
        str, typer.Option(help="The gateway's client id at that server (SMART Backend Services).")
    ],
    key: Annotated[
        Path | None,
        typer.Option(
            help=(
                "The gateway's client key there (PEM, EC P-384 or RSA); default "
                f"KEYS_DIR/{CLIENT_KEY_FILE}. Register its public JWK at the partner."
            )
        ),
    ] = None,
    scope: Annotated[str, typer.Option(help="The scopes to ask for.")] = (
        "system/Patient.rs system/ServiceRequest.rs system/CarePlan.rs"
    ),
    page_size: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    batch_size: BatchOption = DEFAULT_BATCH,
    full: FullOption = False,
) -> None:
    """Patients, ServiceRequests and CarePlans from a partner's FHIR server, as the gateway's
    own SMART Backend Services client (client_credentials with a signed assertion)."""
    from adapters._http import SourceError
    from adapters.fhir import FhirPull, HighWaterMark
    from adapters.smart import load_client_key, smart_fhir_client

    settings = settings_or_fail()
    path = key or settings.keys_dir / CLIENT_KEY_FILE
    try:
        private_key, key_id, algorithm = load_client_key(path.read_bytes())
    except FileNotFoundError as exc:
        raise fail(
            f"no client key at {path}: make one (openssl ecparam -name secp384r1 -genkey "
            "-noout | openssl pkcs8 -topk8 -nocrypt) and register its public key"
        ) from exc
    except (OSError, ValueError) as exc:
        raise fail(f"the client key at {path} is not usable: {one_line(exc)}") from exc
    try:
        client = smart_fhir_client(
            base_url,
            client_id=client_id,
            private_key=private_key,
            key_id=key_id,
            algorithm=algorithm,
            scope=scope,
        )
    except ValueError as exc:
        raise fail(f"bad FHIR base URL: {one_line(exc)}") from exc
    with opened(partner, source_label="fhir", batch_size=batch_size) as (
        pipeline,
        _who,
        _directory,
        _settings,
        app,
    ):
        marks = _marks(app)
        source = base_url.rstrip("/")
        stored = None if full else marks.get(partner, "fhir", source)
        since = HighWaterMark.from_text(stored) if stored else None
        try:
            pull = FhirPull(client, base_url, page_size=page_size).pull(since)
        except SourceError as exc:
            raise fail(f"FHIR server: {one_line(exc)}") from exc
        finally:
            client.close()
        summary = run_with_progress(pipeline, pull.items, "FHIR")
        if summary.fatal is None:
            marks.put(partner, "fhir", source, pull.high_water_mark.to_text())
    _finish(summary)


@ingest_app.command("hl7v2")
def hl7v2(
    source: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="A file of HL7 v2.5.1 messages, MLLP-framed or one after another.",
        ),
    ],
    partner: PartnerOption,
    batch_size: BatchOption = DEFAULT_BATCH,
) -> None:
    """ADT^A04/A08 and REF^I12 messages from a file. Every message must come from the
    partner's own sending facility (MSH-4 = its hl7_sending_facility); one that does not is
    quarantined, not stored."""
    from adapters.hl7v2 import read_hl7_file

    with opened(partner, source_label="hl7v2", batch_size=batch_size) as (
        pipeline,
        who,
        _directory,
        _settings,
        _app,
    ):
        items = from_facility(read_hl7_file(source), who.hl7_sending_facility)
        summary = run_with_progress(pipeline, items, "HL7 v2")
    _finish(summary)


def from_facility(items: Iterable[SourceItem], facility: str | None) -> Iterator[SourceItem]:
    """The items of one partner's file, a message from another sending facility (or from a
    partner with none) turned into a problem: held, never stored as this partner's. The file's
    own name (an operator's choice: it may name someone) is replaced by ``file`` before it can
    reach the quarantine's clear columns or a Provenance."""
    from dataclasses import replace

    from gateway.vocabulary.source import Place, SourceProblem

    for item in items:
        if isinstance(item, SourceRecord | SourceProblem):
            item = replace(item, origin=replace(item.origin, source="file"))
        if isinstance(item, SourceRecord) and (
            facility is None or item.fields.get("sending_facility") != facility
        ):
            reason = (
                "the partner has no hl7_sending_facility in the partners file"
                if facility is None
                else "the sending facility (MSH-4) is not this partner's"
            )
            yield SourceProblem(
                item.system,
                item.record_type,
                reason,
                item.origin,
                (Place(segment="MSH", field="MSH-4"),),
            )
            continue
        yield item
