"""``gateway demo``: the gateway end to end on embedded SQLite under ./var/.

At this stage of the project (store and REST, before partner tokens) the demo drives the real
ASGI app in-process as a stand-in administrator: it loads the demo network as one transaction
Bundle, then reads, searches, updates with If-Match, shows a stale write refused, deletes, and
prints what it saw. It exits 0 only if every step answered as FHIR says it must.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

from gateway.app import create_app
from gateway.clock import SystemClock
from gateway.disclose.deps import Requester, fixed_requester
from gateway.keys import ENCRYPTION_FILE, init_keys
from gateway.settings import Settings
from gateway.store.database import make_engine, upgrade

SAMPLE = Path("examples/fhir/demo-network.json")
FHIR = "application/fhir+json"


class DemoFailure(Exception):
    pass


def run_demo(settings: Settings, console: Console) -> int:
    if not (settings.keys_dir / ENCRYPTION_FILE).exists():
        init_keys(settings.keys_dir, SystemClock().now())
        console.print(f"[green]created demo keys[/green] in {settings.keys_dir}")
    # The demo's own database: bring it to the current schema (a real deployment upgrades with
    # `gateway db upgrade`, deliberately).
    engine = make_engine(settings.database_url, pool_size=1)
    upgrade(engine)
    engine.dispose()
    try:
        asyncio.run(_walkthrough(settings, console))
    except DemoFailure as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return 1
    console.print("[bold green]demo finished: every step answered as expected[/bold green]")
    return 0


async def _walkthrough(settings: Settings, console: Console) -> None:
    admin = Requester(partner_id="gateway-admin", kind="admin", scopes=("system/*.cruds",))
    app = create_app(settings, authenticate=fixed_requester(admin))
    steps = Table("step", "request", "status", "what came back", title="Gateway walkthrough")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=settings.base_url) as client:

        async def call(
            step: str, method: str, url: str, expect: int, summary: Any = None, **kw: Any
        ) -> httpx.Response:
            response = await client.request(method, url, **kw)
            if response.status_code != expect:
                raise DemoFailure(f"{step}: expected {expect}, got {response.status_code}")
            shown = summary(response) if summary else ""
            steps.add_row(step, f"{method} {url}", str(response.status_code), shown)
            return response

        bundle = SAMPLE.read_bytes()
        loaded = await call(
            "load the demo network (transaction)",
            "POST",
            "/fhir",
            200,
            lambda r: (
                f"{len(r.json()['entry'])} entries, "
                + ", ".join(sorted({e["response"]["status"] for e in r.json()["entry"]}))
            ),
            content=bundle,
            headers={"Content-Type": FHIR},
        )
        refs = [
            e["response"]["location"] for e in loaded.json()["entry"] if "location" in e["response"]
        ]
        patients = await call(
            "find the survivor by name, accent-insensitive",
            "GET",
            "/fhir/Patient?name=maria&family=alvarez",
            200,
            lambda r: f"total {r.json()['total']}",
        )
        patient_id = patients.json()["entry"][0]["resource"]["id"]
        await call(
            "read the survivor",
            "GET",
            f"/fhir/Patient/{patient_id}",
            200,
            lambda r: f"ETag {r.headers['etag']}",
        )
        await call(
            "referrals to the clinic, with the performer included",
            "GET",
            "/fhir/ServiceRequest?performer=Organization/harbor-clinic&_include=ServiceRequest:performer",
            200,
            lambda r: ", ".join(
                f"{e['resource']['resourceType']} ({e['search']['mode']})"
                for e in r.json()["entry"]
            ),
        )
        tasks = await call(
            "the clinic's open referral tasks",
            "GET",
            "/fhir/Task?owner=Organization/harbor-clinic&status=requested,accepted",
            200,
            lambda r: f"total {r.json()['total']}",
        )
        if tasks.json()["total"]:
            task = tasks.json()["entry"][0]["resource"]
            version = task["meta"]["versionId"]
            task["status"] = "accepted"
            await call(
                "the clinic accepts the referral (If-Match)",
                "PUT",
                f"/fhir/Task/{task['id']}",
                200,
                lambda r: f"now version {r.json()['meta']['versionId']}",
                content=orjson.dumps(task),
                headers={"Content-Type": FHIR, "If-Match": f'W/"{version}"'},
            )
            await call(
                "a stale write is refused",
                "PUT",
                f"/fhir/Task/{task['id']}",
                412,
                lambda r: r.json()["issue"][0]["diagnostics"],
                content=orjson.dumps(task),
                headers={"Content-Type": FHIR, "If-Match": f'W/"{version}"'},
            )
            await call(
                "the task's history",
                "GET",
                f"/fhir/Task/{task['id']}/_history",
                200,
                lambda r: f"{len(r.json()['entry'])} versions",
            )
        await call(
            "an unknown search parameter is refused, not ignored",
            "GET",
            "/fhir/Patient?shelter-address=anything",
            400,
            lambda r: r.json()["issue"][0]["code"],
        )
        await call(
            "capability statement",
            "GET",
            "/fhir/metadata",
            200,
            lambda r: f"{len(r.json()['rest'][0]['resource'])} resource types",
        )
        provenance = [r for r in refs if "/Provenance/" in r]
        if provenance:
            target = provenance[0].split("/fhir/")[1].split("/_history")[0]
            await call("delete a provenance record", "DELETE", f"/fhir/{target}", 204)
            await call(
                "reading it afterwards",
                "GET",
                f"/fhir/{target}",
                410,
                lambda r: r.json()["issue"][0]["code"],
            )
    app.state.gateway.store.close()
    console.print(steps)
