"""The ingest pipeline attacked as a hostile partner would: a partner holds valid configuration
and sends whatever bytes it likes through its own source (an HMIS export, a FHIR server, an HL7
feed). Each test drives the real adapter, the real mappings in ``mappings/``, the real ledger,
quarantine, store and audit chain on SQL, and says which promise it checks.

A test here that fails shows a real leak or loss: it is not marked xfail."""

from __future__ import annotations

import copy
import csv
import io
import os
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from adapters._http import SourceClient
from adapters.fhir import FhirPull
from adapters.hl7v2 import Accepted, ErrorCode, Rejected
from adapters.hmis import read_export
from gateway.app import create_app, ingest_pipeline
from gateway.clock import FrozenClock
from gateway.ingest.hl7 import Hl7Ingest
from gateway.ingest.pipeline import IngestPipeline, IngestSummary
from gateway.ingest.quarantine import Quarantine
from gateway.mapping import load_mappings
from gateway.partners import Partner, PartnerDirectory
from gateway.settings import Settings
from gateway.store.schema import quarantine as quarantine_table
from gateway.store.schema import resources as resources_table
from gateway.store.sql import SqlStore
from gateway.synth.fhir import hospital_resources, serve_fake_fhir
from gateway.synth.hl7 import ref_i12_messages
from gateway.synth.hmis import write_hmis_export
from tests.adapters.test_fhir_pull_integration import CLIENT_ID, JWK, auth_for
from tests.adapters.test_http_client import FakeTime
from tests.conftest import START
from tests.support.network import KINDS, gateway_settings, partner_client

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = load_mappings(ROOT / "mappings")
SHELTER, CLINIC, HOSPITAL = "riverside-shelter", "harbor-clinic", "st-marys-hospital"
FACILITIES = {SHELTER: "HOPE_SHELTER", HOSPITAL: "STMARYS"}
PEERS = {SHELTER: "127.0.0.1/32", HOSPITAL: "10.20.30.0/24"}  # where each one's MLLP comes from
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def _partner(partner_id: str, kind: str) -> Partner:
    extra: dict[str, Any] = (
        {"hl7_sending_facility": FACILITIES[partner_id], "hl7_peers": [PEERS[partner_id]]}
        if partner_id in FACILITIES
        else {}
    )
    return Partner.model_validate(
        {
            "id": partner_id,
            "name": partner_id.replace("-", " ").title(),
            "kind": kind,
            "organization": f"Organization/{partner_id}",
            "jwks": "demo-generated-keys",
            "scopes": ["system/*.rs"],
            "purposes": ["TREAT", "COC"],
            "default_purpose": "COC",
            **extra,
        }
    )


DIRECTORY = PartnerDirectory(_partner(p, k) for p, k in KINDS.items())


class Network:
    """The gateway's app on one SQL store, the partners' pipelines and REST clients on it."""

    def __init__(self, app: Any, store: SqlStore, settings: Settings, clock: FrozenClock):
        self.app, self.store, self.settings, self.clock = app, store, settings, clock

    def pipeline(self, partner_id: str) -> IngestPipeline:
        partner = DIRECTORY.by_client_id(partner_id)
        assert partner is not None
        return ingest_pipeline(
            self.app, self.app.state.gateway.settings, partner, DIRECTORY, mappings=MAPPINGS
        )

    def ingest_export(self, export: Path, partner_id: str) -> IngestSummary:
        partner = DIRECTORY.by_client_id(partner_id)
        assert partner is not None
        return self.pipeline(partner_id).run(read_export(export, partner_kind=partner.kind))

    def reader(self, partner_id: str, purpose: str = "COC") -> TestClient:
        return partner_client(
            self.settings,
            self.store,
            self.clock,
            partner_id,
            KINDS[partner_id],
            purposes=(purpose,),
        )

    def heads(self) -> list[tuple[str, str, str | None]]:
        t = resources_table
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(t.c.resource_type, t.c.id, t.c.contributor)).all()
        return sorted((r[0], r[1], r[2]) for r in rows)

    def docs(self, resource_type: str, contributor: str | None = None) -> list[dict[str, Any]]:
        found = []
        for kind, rid, who in self.heads():
            if kind == resource_type and (contributor is None or who == contributor):
                located = self.store.locate(kind, rid)
                assert located is not None
                assert located.live is not None
                found.append(orjson.loads(located.live.body))
        return found

    def quarantine(self) -> Quarantine:
        return Quarantine(self.store.engine, self.store.key_ring)


@pytest.fixture
def net(sql_store: SqlStore, tmp_path: Path, clock: FrozenClock) -> Iterator[Network]:
    settings = gateway_settings(tmp_path, log_level="CRITICAL")
    app = create_app(settings, store=sql_store, clock=clock, partner_kinds=KINDS)
    yield Network(app, sql_store, settings, clock)
    app.state.gateway.audit.close()


# -- HMIS exports: helpers -------------------------------------------------------------------


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))


def _write_rows(path: Path, fields: list[str], rows: list[dict[str, str]]) -> None:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")


def _export_with_releases(
    tmp_path: Path, recipient: str, releases: list[dict[str, str]], seed: int
) -> tuple[Path, list[str]]:
    """An FY2026 export of 4 clients whose ReleaseOfInformation.csv holds exactly ``releases``
    (each overriding a valid, current release to ``recipient`` of client N's Patient for
    COC); returns the export and the PersonalIDs of its clients."""
    export = write_hmis_export(
        tmp_path / f"export-{seed}", clients=4, year="FY2026", seed=seed, releases_to=[recipient]
    )
    people = [r["PersonalID"] for r in _rows(export / "Client.csv")]
    roi_path = export / "ReleaseOfInformation.csv"
    template = _rows(roi_path)[0]
    rows = []
    for index, change in enumerate(releases):
        row = dict(template)
        row.update(
            ROIID=f"ROI-ATTACK-{index}",
            PersonalID=people[index],
            RecipientOrganization=recipient,
            Scope="Patient",
            Purposes="COC",
            StartDate="2026-11-01",
            EndDate="2027-01-15",
            RevokedDate="",
            DateDeleted="",
        )
        row.update(change)
        rows.append(row)
    _write_rows(roi_path, list(template.keys()), rows)
    return export, people


def _patient_of_release(net: Network, roi_id: str) -> str:
    for consent in net.docs("Consent"):
        if any(i.get("value") == roi_id for i in consent.get("identifier", [])):
            ref: str = consent["patient"]["reference"]
            return ref.split("/", 1)[1]
    raise AssertionError(f"no Consent of release {roi_id}")


def _status(client: TestClient, path: str) -> int:
    status: int = client.get(path).status_code
    return status


# -- Consents: released no more than the survivor's release says -------------------------------


def test_a_release_deleted_in_the_source_releases_nothing(net: Network, tmp_path: Path) -> None:
    """Promise: ingest never writes a Consent that releases more than the survivor's release.
    A ReleaseOfInformation row with DateDeleted set is a release the shelter deleted (entered
    in error, withdrawn): the clinic it named must not be able to read her record because of
    it. The control (the same release, not deleted, for another client) shows that a release
    does reach the clinic, so the refusal is about the deletion."""
    export, _ = _export_with_releases(
        tmp_path, CLINIC, [{}, {"DateDeleted": "2026-11-10 09:00:00"}], seed=21
    )
    summary = net.ingest_export(export, SHELTER)
    assert summary.fatal is None
    with net.reader(CLINIC) as clinic:
        control = _patient_of_release(net, "ROI-ATTACK-0")
        assert _status(clinic, f"/fhir/Patient/{control}") == 200  # a release does release
        deleted_consents = [
            c
            for c in net.docs("Consent")
            if any(i.get("value") == "ROI-ATTACK-1" for i in c.get("identifier", []))
        ]
        for consent in deleted_consents:
            patient = consent["patient"]["reference"].split("/", 1)[1]
            assert _status(clinic, f"/fhir/Patient/{patient}") == 404, "released by it"
            assert consent["status"] != "active", "a deleted release was stored as active"


def test_a_release_whose_end_date_cannot_be_read_does_not_release_for_ever(
    net: Network, tmp_path: Path
) -> None:
    """Promise: a release that cannot be read exactly produces no Consent (the mapping's own
    description). A clinic's release to the hospital ending on a date that does not exist
    (2026-11-31, a typo) must not become a Consent without end: two months after the release
    was written to end, the hospital must not read her record. The control (a release ending
    2027-01-15) is read before its end and refused after it."""
    export, _ = _export_with_releases(tmp_path, HOSPITAL, [{}, {"EndDate": "2026-11-31"}], seed=22)
    net.ingest_export(export, CLINIC)
    with net.reader(HOSPITAL) as hospital:
        control = _patient_of_release(net, "ROI-ATTACK-0")
        assert _status(hospital, f"/fhir/Patient/{control}") == 200
        net.clock.advance(timedelta(days=70))  # past both ends: 2027-01-15 and 2026-11-31
        assert _status(hospital, f"/fhir/Patient/{control}") == 404
        for consent in net.docs("Consent", CLINIC):
            period = consent.get("provision", {}).get("period", {})
            assert "end" in period, "a release with an end date was stored without one"
        typo = [
            c
            for c in net.docs("Consent")
            if any(i.get("value") == "ROI-ATTACK-1" for i in c.get("identifier", []))
        ]
        held = [
            h
            for h in net.quarantine().list(partner_id=CLINIC)
            if h.record_type == "ReleaseOfInformation"
        ]
        assert typo or held, "the release with the bad end date was neither stored nor held"
        for consent in typo:
            patient = consent["patient"]["reference"].split("/", 1)[1]
            assert _status(hospital, f"/fhir/Patient/{patient}") == 404


@pytest.mark.parametrize(
    ("column", "value"),
    [("Purposes", "COC;;"), ("Scope", "Patient; ;"), ("RecipientOrganization", "nobody-at-all")],
)
def test_a_release_with_odd_lists_or_an_unknown_recipient_releases_to_no_one_else(
    net: Network, tmp_path: Path, column: str, value: str
) -> None:
    """Promise: purposes dropped never become "any purpose", an unknown recipient never
    becomes "every recipient". The hospital and the legal aid (neither named) read nothing
    of the client, for the treatment purpose and for legal purposes alike."""
    export, _ = _export_with_releases(tmp_path, CLINIC, [{column: value}], seed=23)
    net.ingest_export(export, SHELTER)
    patients = [p["id"] for p in net.docs("Patient", SHELTER)]
    assert patients
    for reader, purpose in ((HOSPITAL, "TREAT"), ("northside-legal-aid", "HLEGAL")):
        with net.reader(reader, purpose) as client:
            for patient in patients:
                assert _status(client, f"/fhir/Patient/{patient}") == 404
            assert client.get("/fhir/Patient").json().get("total", 0) == 0


def test_a_release_of_a_client_whose_row_is_quarantined_is_held_and_the_rest_lands(
    net: Network, tmp_path: Path
) -> None:
    """Promise: malformed input is quarantined, never raised out of the run (which would lose
    the batch and stop the export). The release names a client whose Client.csv row appears
    twice (both rows quarantined, so her Patient is never written): the Consent cannot be
    written, so the release must be held, and every other client must land."""
    export, people = _export_with_releases(tmp_path, CLINIC, [{}], seed=24)
    client_path = export / "Client.csv"
    clients = _rows(client_path)
    clients.append(dict(clients[0]))  # her row twice: the adapter quarantines both
    _write_rows(client_path, list(clients[0].keys()), clients)
    summary = net.ingest_export(export, SHELTER)  # must not raise
    assert summary.fatal is None
    assert summary.counts("hmis-csv", "Client").landed == len(people) - 1
    held = net.quarantine().list(partner_id=SHELTER)
    assert any(h.record_type == "ReleaseOfInformation" for h in held)
    assert len(net.docs("Patient", SHELTER)) == len(people) - 1


def test_a_release_cannot_name_another_partners_client(net: Network, tmp_path: Path) -> None:
    """Promise: a Consent governs only its recorder's records. The clinic sends a release
    naming the very PersonalID the shelter uses for a survivor, to the hospital: whatever the
    clinic's Consent says, the hospital reads nothing of the shelter's Patient."""
    export, _ = _export_with_releases(tmp_path, HOSPITAL, [{}], seed=25)
    own = tmp_path / "shelter-export"
    own.mkdir()
    for file in export.iterdir():  # the shelter's export: the same clients, no release
        if file.name != "ReleaseOfInformation.csv":
            (own / file.name).write_bytes(file.read_bytes())
    net.ingest_export(own, SHELTER)
    shelter_patients = {p["id"] for p in net.docs("Patient", SHELTER)}
    net.ingest_export(export, CLINIC)  # the same export, the same PersonalIDs and release
    for consent in net.docs("Consent", CLINIC):
        assert consent["patient"]["reference"].split("/", 1)[1] not in shelter_patients
    with net.reader(HOSPITAL) as hospital:
        for patient in shelter_patients:
            assert _status(hospital, f"/fhir/Patient/{patient}") == 404


# -- A non-shelter's victim service provider export --------------------------------------------


def _organization_tricks() -> list[tuple[str, Callable[[list[str], list[dict[str, str]]], Any]]]:
    def second_row(fields: list[str], rows: list[dict[str, str]]) -> None:
        rows.append({**rows[0], "OrganizationID": "ORG-2", "VictimServiceProvider": "1"})

    def fullwidth_one(fields: list[str], rows: list[dict[str, str]]) -> None:
        rows[0]["VictimServiceProvider"] = "\uff11"

    def spaced(fields: list[str], rows: list[dict[str, str]]) -> None:
        rows[0]["VictimServiceProvider"] = " 1 "

    def header_case(fields: list[str], rows: list[dict[str, str]]) -> None:
        index = fields.index("VictimServiceProvider")
        fields[index] = "victimserviceprovider"
        for row in rows:
            row["victimserviceprovider"] = "1"
            del row["VictimServiceProvider"]

    return [
        ("second-row", second_row),
        ("fullwidth", fullwidth_one),
        ("spaced", spaced),
        ("header-case", header_case),
    ]


@pytest.mark.parametrize(("name", "trick"), _organization_tricks(), ids=lambda v: str(v)[:12])
@pytest.mark.parametrize("as_zip", [False, True], ids=["dir", "zip"])
def test_a_victim_service_providers_export_from_a_clinic_never_lands(
    net: Network,
    tmp_path: Path,
    name: str,
    trick: Callable[[list[str], list[dict[str, str]]], Any],
    as_zip: bool,
) -> None:
    """Promise: a VSP's export is refused whole from a partner that is not a shelter, however
    its Organization.csv spells the flag (a second row, a full-width digit, spaces, the
    header in another case), as a directory or as a zip: nothing of it is stored."""
    export = write_hmis_export(tmp_path / "vsp", clients=3, year="FY2026", seed=26)
    org = export / "Organization.csv"
    rows = _rows(org)
    fields = list(rows[0].keys())
    trick(fields, rows)
    _write_rows(org, fields, rows)
    source = export
    if as_zip:
        import zipfile

        source = tmp_path / "vsp.zip"
        with zipfile.ZipFile(source, "w") as archive:
            for file in sorted(export.iterdir()):
                archive.write(file, file.name)
    summary = net.ingest_export(source, CLINIC)
    assert summary.exit_code == 1
    assert [h for h in net.heads() if h[2] == CLINIC] == []


# -- FHIR pull: references and labels -----------------------------------------------------------


def _pull(resources: list[dict[str, Any]]) -> list[Any]:
    time = FakeTime()
    with serve_fake_fhir(resources, client_id=CLIENT_ID, public_jwks={"keys": [JWK]}) as base:
        auth = auth_for(base, time)
        with SourceClient(base, auth=auth, sleep=time.sleep) as client:
            return list(FhirPull(client, base, page_size=40).pull(None).items)


def _hospital_pair() -> tuple[dict[str, Any], dict[str, Any]]:
    found = hospital_resources(3, seed=31)
    patient = copy.deepcopy(next(r for r in found if r["resourceType"] == "Patient"))
    referral = copy.deepcopy(
        next(
            r
            for r in found
            if r["resourceType"] == "ServiceRequest"
            and r["subject"]["reference"] == f"Patient/{patient['id']}"
        )
    )
    return patient, referral


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [v for k, v in node.items() if k == "reference" and isinstance(v, str)]
        for k, v in node.items():
            if k != "reference":
                out += _references(v)
        return out
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


def test_a_pulled_referral_cannot_point_at_another_partners_patient(
    net: Network, tmp_path: Path
) -> None:
    """Promise: what a partner's source names resolves only among that partner's records.
    The hospital's server sends referrals whose subject is the shelter's Patient (by its
    gateway id, relative and as an absolute URL of this gateway) and a placeholder string
    naming the shelter's client: no stored record of the hospital refers to a record of the
    shelter, and the shelter's records are untouched."""
    export = write_hmis_export(tmp_path / "shelter", clients=2, year="FY2026", seed=32)
    net.ingest_export(export, SHELTER)
    shelter_before = [h for h in net.heads() if h[2] == SHELTER]
    target = next(h[1] for h in shelter_before if h[0] == "Patient")
    person = _rows(export / "Client.csv")[0]["PersonalID"]
    patient, referral = _hospital_pair()
    subjects = [
        f"Patient/{target}",
        f"http://gateway.test/fhir/Patient/{target}",
        f"urn:care-gateway:source:Patient:Client:{person}",
        f"urn:care-gateway:source:Patient:Patient:{target}",
    ]
    sent = [patient]
    for index, subject in enumerate(subjects):
        one = copy.deepcopy(referral)
        one["id"] = f"sr-attack-{index}"
        one["subject"] = {"reference": subject}
        one["note"] = [{"text": f"urn:care-gateway:source:Patient:Client:{person}"}]
        sent.append(one)
    items = _pull(sent)
    net.pipeline(HOSPITAL).run(items)
    assert [h for h in net.heads() if h[2] == SHELTER] == shelter_before
    shelter_ids = {h[1] for h in shelter_before}
    stored = [d for kind in ("Patient", "ServiceRequest") for d in net.docs(kind, HOSPITAL)]
    assert stored, "the hospital's own patient lands"
    for doc in stored:
        for reference in _references(doc):
            assert reference.rsplit("/", 1)[-1] not in shelter_ids, reference


@pytest.mark.parametrize(
    "security",
    [
        {"system": ACT_CODE, "code": "SDV"},  # one label, not in a list
        [{"system": f"{ACT_CODE} x", "code": "SDV"}],  # a system that is not a URI
        [{"system": ACT_CODE, "code": "SDV"}, None],
    ],
    ids=["object", "unreadable-system", "null-row"],
)
def test_a_pulled_security_label_is_kept_or_the_record_is_held(net: Network, security: Any) -> None:
    """Promise (mappings/fhir): every label the hospital set is kept; a label that cannot be
    read blocks the record, since dropping it could release restricted data. A referral the
    hospital labelled SDV (sexual and domestic violence: explicit consent) that lands must
    carry SDV in the v3-ActCode system; otherwise it must not land."""
    patient, referral = _hospital_pair()
    referral["meta"] = {**referral.get("meta", {}), "security": security}
    # Nothing else in it makes the write path label it SDV: only the hospital's label does.
    referral.pop("reasonCode", None)
    referral["code"] = {"text": "Referral to a housing programme"}
    items = _pull([patient, referral])
    net.pipeline(HOSPITAL).run(items)
    landed = net.docs("ServiceRequest", HOSPITAL)
    for doc in landed:
        labels = {(s.get("system"), s.get("code")) for s in doc["meta"].get("security", [])}
        assert (ACT_CODE, "SDV") in labels, "the hospital's SDV label was dropped on ingest"
    held = [
        h for h in net.quarantine().list(partner_id=HOSPITAL) if h.record_type == "ServiceRequest"
    ]
    assert landed or held, "the referral neither landed nor was held"


# -- HL7 v2 over the listener's handler ---------------------------------------------------------


def _hl7(net: Network) -> Hl7Ingest:
    return Hl7Ingest(DIRECTORY, lambda partner: net.pipeline(partner.id))


def _quarantined_by(net: Network) -> dict[str, int]:
    t = quarantine_table
    with net.store.engine.connect() as conn:
        rows = conn.execute(select(t.c.partner_id)).all()
    counts: dict[str, int] = {}
    for (partner_id,) in rows:
        counts[partner_id] = counts.get(partner_id, 0) + 1
    return counts


def test_an_unknown_sending_facility_is_refused_and_nothing_is_kept(net: Network) -> None:
    """Promise: a message whose MSH-4 is no partner's facility is answered AR naming MSH-4
    and stores nothing: no record, no quarantine item (the gateway cannot say whose)."""
    (message,) = ref_i12_messages(1, seed=41, sending_facility="NOT_A_PARTNER")
    outcome = _hl7(net).handle(message, peer="127.0.0.1")
    assert isinstance(outcome, Rejected)
    assert _quarantined_by(net) == {}
    assert [h for h in net.heads() if h[0] != "Organization"] == []


def test_a_message_is_the_record_of_its_sender_whatever_its_content_claims(
    net: Network,
) -> None:
    """Promise: what a message's content claims (MSH-6, the PRD of the referred-to provider,
    the referral's facility) never makes it another partner's record: the shelter's referral
    naming the hospital everywhere in its body is the shelter's alone."""
    (message,) = ref_i12_messages(
        1, seed=42, sending_facility="HOPE_SHELTER", receiving_facility="STMARYS"
    )
    _hl7(net).handle(message, peer="127.0.0.1")
    assert set(_quarantined_by(net)) <= {SHELTER}
    assert {h[2] for h in net.heads() if h[0] != "Organization"} <= {SHELTER}


def test_one_sender_cannot_speak_as_two_partners(net: Network) -> None:
    """Promise: a record is the partner's who sent it, and nothing one partner sends changes
    what another partner holds. The MLLP door knows its sender only by MSH-4, which the sender
    writes: the same peer, on the same connection, sending one message as the shelter and one
    as the hospital must not get both kept as those two partners' input."""
    ingest = _hl7(net)
    (as_shelter,) = ref_i12_messages(1, seed=43, sending_facility="HOPE_SHELTER")
    (as_hospital,) = ref_i12_messages(1, seed=44, sending_facility="STMARYS")
    first = ingest.handle(as_shelter, peer="127.0.0.1", source="mllp 127.0.0.1")
    second = ingest.handle(as_hospital, peer="127.0.0.1", source="mllp 127.0.0.1")
    # The shelter's own message reached its pipeline (not refused as from an unknown sender).
    assert not (isinstance(first, Rejected) and first.code is ErrorCode.UNKNOWN_KEY_IDENTIFIER)
    kept = _quarantined_by(net)
    stored = {h[2] for h in net.heads() if h[0] != "Organization"}
    spoofed = "one peer's message was kept as the hospital's because its MSH-4 said so"
    assert not isinstance(second, Accepted), spoofed
    assert HOSPITAL not in kept, spoofed
    assert HOSPITAL not in stored, spoofed


# -- PHI in clear: the CLI's Provenance and output ----------------------------------------------


def test_the_export_file_name_is_not_written_into_provenance_or_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Promise: no value from the input is written in clear. An export's file name is
    partner input (intake staff name files after the client): ``gateway ingest hmis-csv``
    must not copy it into the Provenance it stores (``entity.what.display``), its output or
    the quarantine's clear columns."""
    from gateway.cli import app as cli
    from gateway.keys import FileKeyRing
    from gateway.store.database import make_engine

    monkeypatch.chdir(ROOT)
    for name, value in {
        "GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path}/cli.db",
        "GATEWAY_KEYS_DIR": str(tmp_path / "keys"),
        "GATEWAY_DEMO": "true",
        "GATEWAY_LOG_LEVEL": "CRITICAL",
    }.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    assert runner.invoke(cli, ["keys", "init"]).exit_code == 0
    assert runner.invoke(cli, ["db", "upgrade"]).exit_code == 0
    export = write_hmis_export(
        tmp_path / "Maria-Lopez-1990-04-30.zip", clients=2, year="FY2026", seed=51, as_zip=True
    )
    result = runner.invoke(cli, ["ingest", "hmis-csv", str(export), "--partner", SHELTER])
    assert result.exit_code in (0, 3), result.output
    assert "Maria" not in result.output
    assert "1990-04-30" not in result.output
    engine = make_engine(os.environ["GATEWAY_DATABASE_URL"])
    clock = FrozenClock(START)
    store = SqlStore(engine, FileKeyRing(tmp_path / "keys"), clock)
    try:
        t = resources_table
        with engine.connect() as conn:
            ids = conn.execute(select(t.c.id).where(t.c.resource_type == "Provenance")).all()
            clear = conn.execute(
                select(quarantine_table.c.source, quarantine_table.c.locator)
            ).all()
        assert ids, "the ingest wrote its Provenance"
        for (rid,) in ids:
            located = store.locate("Provenance", rid)
            assert located is not None
            assert located.live is not None
            body = located.live.body.decode()
            assert "Maria" not in body, "the export's file name is in the Provenance"
            assert "1990-04-30" not in body, "the export's file name is in the Provenance"
        for row in clear:
            assert "Maria" not in " ".join(row)
    finally:
        store.close()
