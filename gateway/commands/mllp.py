"""``gateway mllp``: the HL7 v2 listener. Each message is attributed to the partner whose
``hl7_sending_facility`` is its MSH-4 (AR for any other), stored through that partner's
pipeline, and acknowledged: AA only once stored, AE naming the segment and field of what could
not be mapped, AR for what could not be read (docs/hl7v2.md)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Annotated

import typer

from gateway.commands.common import console, fail, one_line, settings_or_fail

if TYPE_CHECKING:
    from gateway.ingest.pipeline import IngestPipeline


def mllp(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (2575: the MLLP port).")] = 2575,
    idle_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds a connection may wait between messages.")
    ] = 60.0,
    max_connections: Annotated[int, typer.Option(min=1, max=10_000)] = 64,
    max_message_bytes: Annotated[int, typer.Option(min=1024)] = 1_048_576,
) -> None:
    """Listen for HL7 v2.5.1 messages over MLLP (ADT^A04/A08, REF^I12)."""
    from adapters.hl7v2 import Limits
    from adapters.mllp import MllpListener
    from gateway.app import create_app, ingest_pipeline, raw_store
    from gateway.ingest.hl7 import Hl7Ingest
    from gateway.keys import KeyMaterialError, check_keys
    from gateway.mapping import MappingSpecError, load_mappings
    from gateway.partners import Partner, PartnersFileError, ensure_organizations, partners_for
    from gateway.store.database import SchemaOutOfDate

    settings = settings_or_fail()
    try:
        check_keys(settings.keys_dir)
        directory = partners_for(settings)
        mappings = load_mappings(settings.mappings_dir)
        app = create_app(settings, partners=directory)
    except (KeyMaterialError, PartnersFileError, SchemaOutOfDate) as exc:
        raise fail(one_line(exc)) from exc
    except MappingSpecError as exc:
        raise fail(f"the mappings do not load: {one_line(exc)}") from exc
    if not any(p.hl7_sending_facility for p in directory):
        raise fail("no partner has an hl7_sending_facility: every message would be refused")
    store = raw_store(app)
    ensure_organizations(store, directory)

    def pipeline_for(partner: Partner) -> IngestPipeline:
        return ingest_pipeline(
            app, settings, partner, directory, mappings=mappings, source_label="mllp"
        )

    handler = Hl7Ingest(directory, pipeline_for, limits=Limits(max_message_bytes=max_message_bytes))
    listener = MllpListener(
        handler,
        host=host,
        port=port,
        max_message_bytes=max_message_bytes,
        idle_timeout_seconds=idle_timeout,
        max_connections=max_connections,
    )

    async def serve() -> None:
        await listener.start()
        console.print(f"[green]listening[/green] for MLLP on {host}:{listener.port}")
        await listener.serve_forever()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve())
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {one_line(exc)}") from exc
    finally:
        app.state.gateway.audit.close()
        store.close()
