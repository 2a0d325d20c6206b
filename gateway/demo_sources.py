"""The demo's partner sources, ingested before the consent story runs on them.

Everything is synthetic (``gateway synth`` wrote the files under ``examples/sources/``; nobody
in them exists):

- Riverside Safe Haven's HMIS CSV exports: an older FY2024 one (a zip, clients served then,
  ids from 501) and the FY2026 one (a directory); some clients signed releases of information
  to Harbor Community Clinic or Northside Legal Aid, which become Consents (how two exports of
  the same clients update one another is tested in tests/ingest/test_pipeline.py);
- Northside Legal Aid's LegalServer matters, pulled through the Core API from a fake
  LegalServer site on loopback (paging, Bearer token);
- St. Mary's Hospital's REF^I12 referrals, sent over a real MLLP socket to the gateway's
  listener, each acknowledged only once stored; and one message from a facility that is not a
  partner, answered AR.

Run twice (``make demo`` on an existing ``var/``), the same sources create nothing new.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI
from rich.console import Console
from rich.table import Table

from adapters.hl7v2 import END_BLOCK, START_BLOCK
from adapters.hmis import read_export
from adapters.legalserver import LegalServerCoreAPI, legalserver_client
from adapters.mllp import MllpListener
from gateway.app import ingest_pipeline
from gateway.ingest.hl7 import Hl7Ingest
from gateway.ingest.pipeline import IngestPipeline, IngestSummary
from gateway.mapping import MappingSet, load_mappings
from gateway.partners import Partner, PartnerDirectory
from gateway.settings import Settings
from gateway.synth.legalserver import serve_fake_legalserver

SOURCES = Path("examples/sources")
HMIS_FY2026 = SOURCES / "riverside-hmis-fy2026"
HMIS_FY2024 = SOURCES / "riverside-hmis-fy2024.zip"
LEGALSERVER = SOURCES / "northside-legalserver-matters.json"
REFERRALS = SOURCES / "st-marys-ref-i12.hl7"
STRANGER = SOURCES / "unknown-facility-ref-i12.hl7"


@dataclass
class Ingested:
    """What the demo's ingest did, for the consent story's checks."""

    summaries: dict[str, IngestSummary] = field(default_factory=dict)
    acks: dict[str, int] = field(default_factory=dict)  # MSA-1 code -> how many
    stranger_ack: tuple[str, str] = ("", "")  # (MSA-1, ERR-3 code) of the unknown facility's


async def ingest_sources(
    app: FastAPI, settings: Settings, directory: PartnerDirectory, console: Console
) -> Ingested:
    mappings = load_mappings(settings.mappings_dir)
    done = Ingested()
    table = Table(
        "partner", "source", "records", "landed", "held", "created", "updated", "unchanged",
        title="Partner sources ingested (synthetic)",
    )  # fmt: skip

    def pipeline(partner: Partner, label: str) -> IngestPipeline:
        return ingest_pipeline(
            app, settings, partner, directory, mappings=mappings, source_label=label
        )

    def row(partner: Partner, label: str, summary: IngestSummary) -> None:
        done.summaries[label] = summary
        counts = summary.records.values()
        resources = summary.resources.values()
        table.add_row(
            partner.name,
            label,
            str(sum(c.read for c in counts)),
            str(sum(c.landed for c in counts)),
            str(sum(c.quarantined for c in counts)),
            str(sum(r.created for r in resources)),
            str(sum(r.updated for r in resources)),
            str(sum(r.unchanged for r in resources)),
        )

    shelter = _partner(directory, "riverside-shelter")
    # The older export first, as the shelter produced them.
    for label, export in (("HMIS FY2024 (zip)", HMIS_FY2024), ("HMIS FY2026", HMIS_FY2026)):
        items = read_export(
            export,
            partner_kind=shelter.kind,
            victim_service_provider=shelter.victim_service_provider,
        )
        row(shelter, label, await asyncio.to_thread(pipeline(shelter, label).run, items))

    legal_aid = _partner(directory, "northside-legal-aid")
    pulled = await asyncio.to_thread(_legalserver, pipeline(legal_aid, "legalserver"))
    row(legal_aid, "LegalServer Core API", pulled)

    hospital = _partner(directory, "st-marys-hospital")
    done.acks, done.stranger_ack = await _over_mllp(app, settings, directory, mappings)
    table.add_row(
        hospital.name,
        "REF^I12 over MLLP",
        str(sum(done.acks.values())),
        str(done.acks.get("AA", 0)),
        str(done.acks.get("AE", 0)),
        "",
        "",
        "",
    )
    console.print(table)
    console.print(
        "MLLP acknowledgments: "
        + ", ".join(f"{code} {count}" for code, count in sorted(done.acks.items()))
        + f"; the facility that is not a partner: {done.stranger_ack[0]}"
        + f" (ERR {done.stranger_ack[1]}, unknown sender)"
    )
    return done


def _partner(directory: PartnerDirectory, partner_id: str) -> Partner:
    partner = directory.by_client_id(partner_id)
    if partner is None:
        raise LookupError(f"the demo network has no partner {partner_id}")
    return partner


def _legalserver(pipeline: IngestPipeline) -> IngestSummary:
    """Serve the matters from a fake LegalServer site on loopback and pull them as the
    gateway pulls a real one (Core API v2, Bearer token, paging)."""
    page: dict[str, Any] = orjson.loads(LEGALSERVER.read_bytes())
    token = secrets.token_urlsafe(24)
    with serve_fake_legalserver(page["data"], token=token) as base:
        client = legalserver_client(base, token=token)
        try:
            pull = LegalServerCoreAPI(client, page_size=5).pull(None)
        finally:
            client.close()
    return pipeline.run(pull.items)


def _frames(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [
        chunk.removeprefix(START_BLOCK)
        for chunk in data.split(END_BLOCK + b"\r")
        if chunk.strip(b"\r\n")
    ]


async def _over_mllp(
    app: FastAPI, settings: Settings, directory: PartnerDirectory, mappings: MappingSet
) -> tuple[dict[str, int], tuple[str, str]]:
    """The gateway's MLLP listener on a loopback port; the hospital's referrals sent to it
    over a real socket, each answer read before the next message goes (send and wait)."""

    def pipeline_for(partner: Partner) -> IngestPipeline:
        return ingest_pipeline(
            app, settings, partner, directory, mappings=mappings, source_label="mllp"
        )

    listener = MllpListener(Hl7Ingest(directory, pipeline_for), host="127.0.0.1", port=0)
    await listener.start()
    acks: dict[str, int] = {}
    stranger = ("", "")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        try:
            messages = [(m, False) for m in _frames(REFERRALS)]
            messages += [(m, True) for m in _frames(STRANGER)]
            for message, from_stranger in messages:
                writer.write(START_BLOCK + message + END_BLOCK + b"\r")
                await writer.drain()
                ack = await asyncio.wait_for(reader.readuntil(END_BLOCK + b"\r"), 30)
                code = _field(ack, b"MSA", 1)
                acks[code] = acks.get(code, 0) + 1
                if from_stranger:
                    stranger = (code, _field(ack, b"ERR", 3).split("^")[0])
        finally:
            writer.close()
            await writer.wait_closed()
    finally:
        await listener.close()
    return acks, stranger


def _field(ack: bytes, segment_id: bytes, number: int) -> str:
    """Field ``number`` of the ACK's first ``segment_id`` segment ("" when absent)."""
    for segment in ack.strip(START_BLOCK + END_BLOCK + b"\r").split(b"\r"):
        fields = segment.split(b"|")
        if fields[0] == segment_id:
            return fields[number].decode("ascii", "replace") if number < len(fields) else ""
    return ""
