"""``gateway demo``: the consent story end to end, on embedded SQLite under ./var/.

It runs the real ASGI app in-process with the demo partner network (``examples/partners.yaml``,
keys generated under ``KEYS_DIR/demo-partners``, never committed). Every partner gets a real
SMART Backend Services token: it signs a client assertion with its own key and trades it at
``/auth/token``. Then:

1. the shelter records a survivor, her care plan and a referral to the clinic (one transaction);
2. the clinic asks for the referral and is refused: without a Consent it does not exist for it;
3. the survivor's written, time-limited release to the clinic (for treatment) is recorded;
4. the clinic now reads the referral, finds it by searching, and reads the survivor's record
   without her phone number or the shelter's record number (it names the shelter);
5. the clinic registers her under its own record number and her HMIS PersonalID: its record is
   linked to the shelter's, which it may now see;
6. legal aid, which the release does not name, still sees nothing; the hospital writes itself a
   release of her records and is refused (a Consent is its recorder's release of its own
   records: only the shelter can release the shelter's), and still sees nothing;
7. the release is revoked: the clinic's very next read is refused, and its search is empty;
8. the compliance office gives the survivor her accounting of disclosures (who received her
   data, when, what, why), and the audit chain is verified against its signed checkpoints.

It exits 0 only if every step answered as the consent rules say it must.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

from gateway.app import create_app, raw_store
from gateway.audit.chain import load_public_key, public_key_path
from gateway.clock import SystemClock
from gateway.demo_sources import Ingested, ingest_sources
from gateway.keys import ENCRYPTION_FILE, FileKeyRing, init_keys
from gateway.partners import (
    PartnerDirectory,
    demo_key_path,
    ensure_organizations,
    load_private_key,
    mint_client_assertion,
    partners_for,
)
from gateway.settings import Settings
from gateway.store.database import make_engine, upgrade
from gateway.store.sql import SqlStore

EXAMPLES = Path("examples/fhir")
FHIR = "application/fhir+json"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLINIC_MRN = "urn:oid:2.16.840.1.113883.3.9999.3"  # Harbor Community Clinic's record numbers


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
    store = SqlStore(engine, FileKeyRing(settings.keys_dir), SystemClock())
    if store.count_unindexed():  # a demo database from before the blind index
        done = sum(store.reindex())
        console.print(f"[green]reindexed[/green] {done} records into the blind search index")
    store.close()
    try:
        asyncio.run(_walkthrough(settings, partners_for(settings), console))
    except DemoFailure as exc:
        console.print(f"[red]demo failed:[/red] {exc}")
        return 1
    console.print("[bold green]demo finished: every step answered as expected[/bold green]")
    return 0


async def _walkthrough(settings: Settings, directory: PartnerDirectory, console: Console) -> None:
    app = create_app(settings, partners=directory)
    store = raw_store(app)
    ensure_organizations(store, directory)  # what the app's start-up does when served
    ingested = await ingest_sources(app, settings, directory, console)
    steps = Table("who", "step", "request", "status", "what came back", title="Consent walkthrough")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=settings.base_url) as client:

        async def token(partner_id: str, scope: str, purpose: str | None = None) -> str:
            key = load_private_key(demo_key_path(settings.keys_dir, partner_id))
            url = f"{settings.base_url}/auth/token"
            purposes = [purpose] if purpose else None
            assertion = mint_client_assertion(partner_id, key, url, purposes=purposes)
            response = await client.post(
                "/auth/token",
                data={
                    "grant_type": "client_credentials",
                    "scope": scope,
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": assertion,
                },
            )
            if response.status_code != 200:
                raise DemoFailure(f"{partner_id} got no token ({response.status_code})")
            granted: str = response.json()["access_token"]
            return granted

        async def call(
            who: str, bearer: str, step: str, method: str, url: str, expect: int | set[int],
            summary: Any = None, body: Any = None, extra: dict[str, str] | None = None,
        ) -> httpx.Response:  # fmt: skip
            headers = {"Authorization": f"Bearer {bearer}", "Content-Type": FHIR, **(extra or {})}
            content = orjson.dumps(body) if body is not None else None
            response = await client.request(method, url, headers=headers, content=content)
            if response.status_code not in (expect if isinstance(expect, set) else {expect}):
                raise DemoFailure(f"{who}: {step}: expected {expect}, got {response.status_code}")
            shown = summary(response) if summary else ""
            steps.add_row(who, step, f"{method} {url[:38]}", str(response.status_code), shown)
            return response

        shelter = await token("riverside-shelter", "system/*.cruds")
        clinic = await token("harbor-clinic", "system/*.cruds", "TREAT")
        legal_aid = await token("northside-legal-aid", "system/*.rs", "HLEGAL")
        hospital = await token("st-marys-hospital", "system/*.cruds", "TREAT")

        await _on_ingested_data(call, shelter, clinic, legal_aid, ingested)

        record = orjson.loads((EXAMPLES / "riverside-survivor.json").read_bytes())
        loaded = await call(
            "shelter", shelter, "records a survivor and a referral", "POST", "/fhir", 200,
            lambda r: f"{len(r.json()['entry'])} entries", body=record,
        )  # fmt: skip
        ids = {e["resource"]["resourceType"]: e["resource"]["id"] for e in loaded.json()["entry"]}
        patient, referral = ids["Patient"], ids["ServiceRequest"]
        await call(
            "clinic", clinic, "asks for the referral, no consent yet", "GET",
            f"/fhir/ServiceRequest/{referral}", 404, lambda r: "absent (no consent)",
        )  # fmt: skip
        await call(
            "clinic", clinic, "searches for the survivor", "GET",
            "/fhir/Patient?family=alvarez", 200, lambda r: f"total {r.json()['total']}",
        )  # fmt: skip

        release = orjson.loads((EXAMPLES / "release-to-harbor-clinic.json").read_bytes())
        release = _for_patient(release, patient)
        consent = await call(
            "shelter", shelter, "records her written release to the clinic", "POST",
            "/fhir/Consent", 201, lambda r: "treatment only, 180 days", body=release,
        )  # fmt: skip
        await call(
            "clinic", clinic, "asks for the referral again", "GET",
            f"/fhir/ServiceRequest/{referral}", 200,
            lambda r: r.json()["code"]["coding"][0].get("display", "referral"),
        )  # fmt: skip
        await call(
            "clinic", clinic, "searches its referrals", "GET",
            "/fhir/ServiceRequest?performer=Organization/harbor-clinic", 200,
            lambda r: f"total {r.json()['total']} (released)",
        )  # fmt: skip
        seen = await call(
            "clinic", clinic, "reads the survivor", "GET", f"/fhir/Patient/{patient}", 200,
            lambda r: "phone and shelter MRN withheld" if not _leaks(r) else "LEAKED",
        )  # fmt: skip
        if _leaks(seen):
            raise DemoFailure("the clinic saw contact details or the shelter's record number")
        own = await call(
            "clinic", clinic, "registers her under its own number", "POST", "/fhir/Patient",
            {200, 201}, lambda r: "HMIS PersonalID CoC-88412", body=_clinic_record(record),
            extra={"If-None-Exist": f"identifier={CLINIC_MRN}|HCC-20931"},
        )  # fmt: skip
        linked = await call(
            "clinic", clinic, "reads its own record of her", "GET",
            f"/fhir/Patient/{own.json()['id']}", 200,
            lambda r: f"linked to {len(r.json().get('link', []))} shelter record",
        )  # fmt: skip
        if [x["other"]["reference"] for x in linked.json().get("link", [])] != [
            f"Patient/{patient}"
        ]:
            raise DemoFailure("the clinic's record of her is not linked to the shelter's")
        await call(
            "legal aid", legal_aid, "asks for the referral (not named)", "GET",
            f"/fhir/ServiceRequest/{referral}", 404, lambda r: "absent",
        )  # fmt: skip
        rogue = _for_patient(
            orjson.loads((EXAMPLES / "release-to-harbor-clinic.json").read_bytes()), patient
        )
        rogue["provision"]["actor"][0]["reference"]["reference"] = "Organization/st-marys-hospital"
        await call(
            "hospital", hospital, "writes itself a release of her records", "POST",
            "/fhir/Consent", 404, lambda r: "refused: not its patient", body=rogue,
        )  # fmt: skip
        await call(
            "hospital", hospital, "asks for the referral anyway", "GET",
            f"/fhir/ServiceRequest/{referral}", 404, lambda r: "absent",
        )  # fmt: skip

        revoked = {**consent.json(), "status": "inactive"}
        await call(
            "shelter", shelter, "revokes the release", "PUT",
            f"/fhir/Consent/{revoked['id']}", 200, lambda r: "status inactive", body=revoked,
        )  # fmt: skip
        await call(
            "clinic", clinic, "asks right after the revocation", "GET",
            f"/fhir/ServiceRequest/{referral}", 404, lambda r: "absent again",
        )  # fmt: skip
        searched = await call(
            "clinic", clinic, "searches its referrals again", "GET",
            "/fhir/ServiceRequest?performer=Organization/harbor-clinic", 200,
            lambda r: f"total {r.json()['total']}",
        )  # fmt: skip
        if searched.json()["total"] != 0:
            raise DemoFailure("a revoked release still shows in the clinic's search")
        await call(
            "clinic", clinic, "tries to change the shelter's plan", "DELETE",
            f"/fhir/CarePlan/{ids['CarePlan']}", 404, lambda r: "absent",
        )  # fmt: skip
        compliance = await token("compliance-office", "system/AuditEvent.rs system/Organization.rs")
        accounted = await call(
            "compliance", compliance, "her accounting of disclosures", "GET",
            f"/fhir/Patient/{patient}/$accounting-of-disclosures", 200,
            lambda r: f"{len(_disclosures(r.json()))} disclosures",
        )  # fmt: skip
    console.print(steps)
    console.print(_accounting_table(accounted.json()))
    chain = app.state.gateway.audit
    chain.checkpoint()
    verified = chain.verify(load_public_key(public_key_path(settings.keys_dir)))
    chain.close()
    store.close()
    if not verified.ok:
        raise DemoFailure(f"audit verify: {verified}")
    if not _disclosures(accounted.json()):
        raise DemoFailure("the accounting lists no disclosure to the clinic")
    console.print(f"[green]audit verify:[/green] {verified}")


async def _on_ingested_data(
    call: Any, shelter: str, clinic: str, legal_aid: str, ingested: Ingested
) -> None:
    """The consent rules on what was just ingested: the shelter holds every survivor of its
    exports; the clinic finds only those whose signed release names it, for treatment; legal
    aid, named by some releases but asking for legal work, not for the shelter's purposes,
    finds only its own clients."""
    everyone = await call(
        "shelter", shelter, "counts the survivors it ingested", "GET",
        "/fhir/Patient?_count=200", 200, lambda r: f"total {r.json()['total']}",
    )  # fmt: skip
    held = everyone.json()["total"]
    released = await call(
        "clinic", clinic, "finds the shelter's survivors", "GET",
        "/fhir/Patient?organization=Organization/riverside-shelter&_count=200", 200,
        lambda r: f"{r.json()['total']} of {held}: their releases name the clinic",
    )  # fmt: skip
    shown = released.json()["total"]
    if not 0 < shown < held:
        raise DemoFailure("the clinic should see some, not all, of the shelter's survivors")
    legal = await call(
        "legal aid", legal_aid, "finds the shelter's survivors", "GET",
        "/fhir/Patient?organization=Organization/riverside-shelter&_count=200", 200,
        lambda r: f"total {r.json()['total']}: no release is for legal work",
    )  # fmt: skip
    if legal.json()["total"] != 0:
        raise DemoFailure("legal aid saw survivors no release lets it see for legal work")
    if ingested.stranger_ack != ("AR", "204"):
        raise DemoFailure("the message from a facility that is not a partner was not refused")


def _disclosures(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "AuditEvent"]


def _accounting_table(bundle: dict[str, Any]) -> Table:
    """A survivor's accounting of disclosures (45 CFR 164.528), as she would be handed it."""
    names = {
        f"Organization/{e['resource']['id']}": e["resource"].get("name", "")
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Organization"
    }
    table = Table("when", "to", "what", "why", title="Accounting of disclosures")
    for event in _disclosures(bundle):
        agent = event["agent"][0]
        recipient = agent["who"].get("reference", "")
        what = ", ".join(
            e["what"]["reference"].split("/")[0]
            for e in event["entity"]
            if e["role"]["code"] == "4"
        )
        why = ", ".join(p["coding"][0]["code"] for p in agent.get("purposeOfUse", []))
        table.add_row(event["recorded"][:19], names.get(recipient) or recipient, what, why)
    return table


def _leaks(response: httpx.Response) -> bool:
    """Contact details, or the shelter's own record number (its system names the shelter)."""
    return bool({"telecom", "address"} & set(response.json())) or "RSH-000412" in response.text


def _clinic_record(bundle: dict[str, Any]) -> dict[str, Any]:
    """The clinic's own record of the survivor: its MRN, and the HMIS PersonalID she gave."""
    survivor = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    hmis = [i for i in survivor["identifier"] if i["system"].endswith(".100")]
    mrn = {"system": CLINIC_MRN, "value": "HCC-20931"}
    return {
        "resourceType": "Patient",
        "identifier": [mrn, *hmis],
        "name": survivor["name"],
        "birthDate": survivor["birthDate"],
    }


def _for_patient(consent: dict[str, Any], patient_id: str) -> dict[str, Any]:
    """The example release, made out for this survivor, from today for 180 days."""
    today = SystemClock().now().date()
    text = orjson.dumps(consent).decode().replace("PATIENT_ID", patient_id)
    release: dict[str, Any] = orjson.loads(text)
    release["provision"]["period"] = {
        "start": today.isoformat(),
        "end": (today + timedelta(days=180)).isoformat(),
    }
    release.pop("identifier", None)
    return release
