"""``gateway synth``: realistic synthetic sources (made-up people, English, Spanish and
Vietnamese names) for the demo, the tests and the benchmarks. Nothing here is anyone's data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import orjson
import typer

from gateway.commands.common import console

synth_app = typer.Typer(
    help="Write synthetic partner sources: HMIS CSV exports, LegalServer matters, HL7 v2.",
    no_args_is_help=True,
)

Seed = Annotated[int, typer.Option(help="The same seed writes the same file.")]


@synth_app.command("hmis")
def synth_hmis(
    target: Annotated[Path, typer.Argument(help="A directory (or, with --zip, a zip file).")],
    clients: Annotated[int, typer.Option(min=0, help="How many clients.")] = 100,
    year: Annotated[Literal["FY2024", "FY2026"], typer.Option()] = "FY2026",
    seed: Seed = 0,
    zip_file: Annotated[bool, typer.Option("--zip", help="Write a zip, CSVs at its root.")] = False,
    vsp: Annotated[bool, typer.Option("--vsp", help="A victim service provider's export.")] = False,
    release_to: Annotated[
        list[str] | None,
        typer.Option(help="A partner id some clients' releases of information name (repeat)."),
    ] = None,
    first_id: Annotated[
        int, typer.Option(min=1, help="Ids count from here (same ids: same clients).")
    ] = 1,
) -> None:
    """An HMIS CSV export (HUD's FY2024 or FY2026 specification)."""
    from gateway.synth.hmis import write_hmis_export

    write_hmis_export(
        target,
        clients=clients,
        year=year,
        seed=seed,
        victim_service_provider=vsp,
        as_zip=zip_file,
        releases_to=tuple(release_to or ()),
        first_id=first_id,
    )
    console.print(f"[green]wrote[/green] an {year} export of {clients} clients to {target}")


@synth_app.command("legalserver")
def synth_legalserver(
    target: Annotated[Path, typer.Argument(help="A JSON file of matters (a Core API page).")],
    matters: Annotated[int, typer.Option(min=0, help="How many matters.")] = 50,
    seed: Seed = 0,
) -> None:
    """LegalServer matters as the Core API serves them (`{"data": [...]}`), for a fake site."""
    from gateway.synth.legalserver import matters as make_matters

    made = make_matters(matters, seed=seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(
        orjson.dumps(
            {
                "page_number": 1,
                "page_size": len(made),
                "total_number_of_pages": 1,
                "total_records": len(made),
                "data": made,
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    console.print(f"[green]wrote[/green] {matters} matters to {target}")


@synth_app.command("hl7")
def synth_hl7(
    target: Annotated[Path, typer.Argument(help="A file of MLLP-framed HL7 v2.5.1 messages.")],
    messages: Annotated[int, typer.Option(min=0, help="How many messages.")] = 20,
    kind: Annotated[
        Literal["ref-i12", "adt-a04", "adt-a08"], typer.Option(help="The message type.")
    ] = "ref-i12",
    sending_facility: Annotated[str, typer.Option(help="MSH-4.")] = "HOPE_SHELTER",
    receiving_facility: Annotated[str, typer.Option(help="MSH-6.")] = "STMARYS",
    seed: Seed = 0,
) -> None:
    """REF^I12 referrals or ADT^A04/A08 registrations, MLLP-framed."""
    from gateway.synth.hl7 import adt_a04_messages, ref_i12_messages, write_mllp_file

    if kind == "ref-i12":
        made = ref_i12_messages(
            messages,
            seed=seed,
            sending_facility=sending_facility,
            receiving_facility=receiving_facility,
        )
    else:
        made = adt_a04_messages(
            messages,
            seed=seed,
            sending_facility=sending_facility,
            receiving_facility=receiving_facility,
            trigger="A04" if kind == "adt-a04" else "A08",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    count = write_mllp_file(target, made)
    console.print(f"[green]wrote[/green] {count} {kind} messages to {target}")
