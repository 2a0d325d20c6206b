"""``gateway quarantine``: input that could not land, held encrypted with the reason.

``list`` and ``show`` print what an operator needs to fix the source (the partner, the source
file or message, the place, the reason), never the held bytes or fields: those are PHI and stay
encrypted. ``retry`` sends a held record through the pipeline again (after a mapping, a partners
file or the source system was fixed); what lands is marked ``retried``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from gateway.commands.common import console, fail, one_line, settings_or_fail

if TYPE_CHECKING:
    from gateway.ingest.quarantine import Quarantine, QuarantineSummary
    from gateway.vocabulary.source import Place

quarantine_app = typer.Typer(
    help="Input that could not land: list it, show why, retry it.", no_args_is_help=True
)


@contextmanager
def _quarantine() -> Iterator[Quarantine]:
    from gateway.clock import SystemClock
    from gateway.ingest.quarantine import Quarantine
    from gateway.keys import FileKeyRing, KeyMaterialError
    from gateway.store.database import SchemaOutOfDate, ensure_schema, make_engine

    settings = settings_or_fail()
    try:
        keys = FileKeyRing(settings.keys_dir)
        keys.current()
        engine = make_engine(settings.database_url, pool_size=1)
        ensure_schema(engine)
    except (KeyMaterialError, SchemaOutOfDate) as exc:
        raise fail(one_line(exc)) from exc
    try:
        yield Quarantine(engine, keys.current, clock=SystemClock())
    finally:
        engine.dispose()


def _where(places: tuple[Place, ...]) -> str:
    parts = []
    for place in places[:4]:
        bits = [
            place.file,
            f"row {place.row}" if place.row is not None else "",
            place.column,
            place.segment,
            place.field,
        ]
        parts.append(" ".join(b for b in bits if b))
    more = f" (+{len(places) - 4})" if len(places) > 4 else ""
    return "; ".join(p for p in parts if p) + more


@quarantine_app.command("list")
def quarantine_list(
    partner: Annotated[str | None, typer.Option(help="Only this partner's.")] = None,
    status: Annotated[
        str, typer.Option(help="held (default), retried, discarded or all.")
    ] = "held",
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 100,
) -> None:
    """What is held, newest first: id, when, partner, source, place and reason."""
    if status not in ("held", "retried", "discarded", "all"):
        raise fail("--status is held, retried, discarded or all")
    with _quarantine() as held:
        rows = held.list(
            partner_id=partner, status=None if status == "all" else status, limit=limit
        )
    table = Table("id", "received", "partner", "source", "record", "where", "reason", "status")
    for row in rows:
        table.add_row(
            row.id,
            row.received.strftime("%Y-%m-%d %H:%M:%S"),
            row.partner_id,
            f"{row.system} {row.source}".strip(),
            f"{row.record_type} {row.locator}".strip(),
            _where(row.places),
            row.reason,
            row.status,
        )
    Console().print(table)
    if not rows:
        console.print("nothing quarantined" if status == "held" else "none")


def _show(row: QuarantineSummary, raw_bytes: int, has_fields: bool) -> None:
    out = Console()
    out.print(f"[bold]{row.id}[/bold]  {row.status} (attempts: {row.attempts})")
    out.print(f"received   {row.received.isoformat()}")
    out.print(f"partner    {row.partner_id}")
    out.print(f"source     {row.system} {row.source} {row.locator}".rstrip())
    out.print(f"record     {row.record_type or '(unreadable)'}")
    out.print(f"reason     {row.reason}")
    for place in row.places:
        out.print(f"  at       {_where((place,))}")
    held = f"{raw_bytes} source bytes" + (" and the parsed fields" if has_fields else "")
    out.print(f"held       {held}, encrypted (never shown here: they are PHI)")


@quarantine_app.command("show")
def quarantine_show(quarantine_id: Annotated[str, typer.Argument(help="From `list`.")]) -> None:
    """Why one item is held, and where in its source: never its content."""
    with _quarantine() as held:
        detail = held.get(quarantine_id)
    if detail is None:
        raise fail("no quarantined item with that id")
    _show(detail, len(detail.raw), detail.fields is not None)


@quarantine_app.command("retry")
def quarantine_retry(quarantine_id: Annotated[str, typer.Argument(help="From `list`.")]) -> None:
    """Send a held record through the pipeline again. Exit 0 when it landed, 3 when it is
    still held (with the new reason)."""
    from gateway.commands.ingest import opened
    from gateway.ingest.retry import retry_item

    with _quarantine() as held:
        detail = held.get(quarantine_id)
        if detail is None:
            raise fail("no quarantined item with that id")
        if detail.status != "held":
            raise fail(f"that item is {detail.status}, not held")
        with opened(detail.partner_id, source_label="quarantine retry", batch_size=1) as (
            pipeline,
            _partner,
            _directory,
            _settings,
            _app,
        ):
            outcome = retry_item(pipeline, detail)
        if outcome.landed:
            held.mark(quarantine_id, "retried")
            console.print(f"[green]landed[/green]: {quarantine_id} is now retried")
            raise typer.Exit(0)
        held.failed_retry(quarantine_id, outcome.reason, outcome.places)
        console.print(f"[yellow]still held[/yellow]: {outcome.reason}")
        raise typer.Exit(3)
