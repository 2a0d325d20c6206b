"""The HL7 v2 (ADT_A01, REF_I12) and LegalServer (matter) mappings attacked by a hostile sender
with valid configuration: the hospital writes whatever it likes into its messages, the legal
aid whatever it likes into its matters. Each test drives the real adapter, the real mappings
in ``mappings/``, the real pipeline, ledger, quarantine, store and audit chain on SQL, and reads
back through REST as another partner where it matters; each docstring names the promise.

A test here that fails shows a real leak or loss: it is not marked xfail."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from adapters.hl7v2 import Accepted, NotMappable, Rejected, ack_for
from adapters.legalserver import LegalServerCoreAPI, legalserver_client
from gateway.app import create_app
from gateway.clock import FrozenClock
from gateway.ingest.hl7 import Hl7Ingest
from gateway.ingest.pipeline import IngestSummary
from gateway.store.sql import SqlStore
from gateway.synth.legalserver import matters, serve_fake_legalserver
from tests.security.test_ingest_attacks import (
    DIRECTORY,
    HOSPITAL,
    SHELTER,
    Network,
)
from tests.support.network import KINDS, gateway_settings, post, release_consent

LEGAL = "northside-legal-aid"
CLINIC = "harbor-clinic"
HOSPITAL_PEER = "10.20.30.7"
SHELTER_PEER = "127.0.0.1"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"

# Values the messages carry that must never be quoted back (made up, distinctive).
FAMILY, GIVEN = "Quintanillaz", "Marisolette"
BIRTH = "19870314"
PHONE = "2025550187"
MRN = "MRN77123409"


# -- HL7 v2 messages, written segment by segment -----------------------------------------------


def _ref_i12(
    *,
    sending: str = "STMARYS",
    receiving: str = "HARBOR_CLINIC",
    control: str = "CTRL0001",
    referral: str = "REF-0001",
    pid3: str | None = None,
    name: str | None = None,
    birth: str = BIRTH,
    rf1_type: str = "Med^Medical^HL70281",
    prd_facility: str = "",
    dg1: tuple[str, ...] = (),
    pr1: tuple[str, ...] = (),
    notes: tuple[str, ...] = ("Needs follow-up",),
) -> bytes:
    """One REF^I12 from ``sending`` to ``receiving``; ``dg1`` entries are DG1-3 (CE),
    ``pr1`` entries PR1-3 (CE)."""
    segments = [
        f"MSH|^~\\&|EHR|{sending}|CARE_GATEWAY|{receiving}|20261120101500||REF^I12^REF_I12|"
        f"{control}|P|2.5.1",
        f"RF1|A^Accepted^HL70283|R^Routine^HL70280|{rf1_type}|AM^Assume management^HL70282|"
        f"O^Outpatient^HL70284|{referral}^{sending}|20261120|20270220|20261120101500",
        "PRD|RP^Referring provider^HL70286|Okafor^Ngozi^^^Dr",
        f"PRD|RT^Referred to provider^HL70286|Lindqvist^Arne^^^Dr||^^^{prd_facility}",
        f"PID|1||{pid3 or MRN + '^^^' + sending + '^MR'}||{name or FAMILY + '^' + GIVEN}||"
        f"{birth}|F|||||^PRN^PH^^^202^{PHONE[3:]}",
    ]
    segments += [f"DG1|{n}||{code}||20261120101500|W" for n, code in enumerate(dg1, 1)]
    segments += [f"PR1|{n}||{code}||20261120101500" for n, code in enumerate(pr1, 1)]
    segments += [f"NTE|{n}|P|{text}" for n, text in enumerate(notes, 1)]
    return ("\r".join(segments) + "\r").encode("utf-8")


def _adt(
    *,
    sending: str = "STMARYS",
    trigger: str = "A04",
    control: str = "ADT0001",
    pid3: str | None = None,
    name: str | None = None,
    birth: str = BIRTH,
    phone: str = PHONE,
) -> bytes:
    segments = [
        f"MSH|^~\\&|REG|{sending}|CARE_GATEWAY|CARE_NETWORK|20261120101500||"
        f"ADT^{trigger}^ADT_A01|{control}|P|2.5.1",
        f"EVN|{trigger}|20261120101500",
        f"PID|1||{pid3 or MRN + '^^^' + sending + '^MR'}||{name or FAMILY + '^' + GIVEN}||"
        f"{birth}|F|||||^PRN^PH^^^{phone[:3]}^{phone[3:]}",
        "PV1|1|O",
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


@pytest.fixture
def net(sql_store: SqlStore, tmp_path: Path, clock: FrozenClock) -> Iterator[Network]:
    """The gateway's app on the SQL store (SQLite, and PostgreSQL when configured), with the
    real audit chain, and each partner's pipeline on it (as tests/security/test_ingest_attacks)."""
    settings = gateway_settings(tmp_path, log_level="CRITICAL")
    app = create_app(settings, store=sql_store, clock=clock, partner_kinds=KINDS)
    yield Network(app, sql_store, settings, clock)
    app.state.gateway.audit.close()


def _hl7(net: Network) -> Hl7Ingest:
    return Hl7Ingest(DIRECTORY, lambda partner: net.pipeline(partner.id))


def _send(net: Network, message: bytes, peer: str = HOSPITAL_PEER) -> Any:
    return _hl7(net).handle(message, peer=peer, source="mllp test")


def _dumps(doc: Any) -> str:
    return orjson.dumps(doc).decode()


def _labels(doc: dict[str, Any]) -> set[tuple[str | None, str | None]]:
    return {(s.get("system"), s.get("code")) for s in doc.get("meta", {}).get("security", [])}


def _total(client: TestClient, path: str) -> int:
    answer = client.get(path)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return int(body.get("total", len(body.get("entry", []))))


def _status(client: TestClient, path: str) -> int:
    code: int = client.get(path).status_code
    return code


# -- Whose Patient: PID-3 never reaches another partner's record -------------------------------


def test_a_hospital_registration_with_the_shelters_pid3_never_touches_the_shelters_patient(
    net: Network,
) -> None:
    """Promise: a record is the partner's who sent it; what a message's PID-3 claims (the
    very identifier and assigning authority the shelter uses for a survivor) never reaches or
    changes the shelter's Patient. The hospital registers "her" with the shelter's MRN and
    authority, then updates (A08) with another name: the shelter's Patient keeps one version
    and its name, and the hospital's Patient is the hospital's alone."""
    shelter = _ref_i12(sending="HOPE_SHELTER", receiving="HARBOR_CLINIC", control="S1")
    assert isinstance(_send(net, shelter, SHELTER_PEER), Accepted)
    (shelter_patient,) = net.docs("Patient", SHELTER)
    pid3 = f"{MRN}^^^HOPE_SHELTER^MR"
    for trigger, name in (("A04", "Impostor^Mallory"), ("A08", "Impostor^Eve")):
        outcome = _send(net, _adt(trigger=trigger, control=f"H{trigger}", pid3=pid3, name=name))
        assert isinstance(outcome, Accepted), outcome
    (after,) = net.docs("Patient", SHELTER)
    assert after["id"] == shelter_patient["id"]
    assert after["meta"]["versionId"] == shelter_patient["meta"]["versionId"]
    assert after["name"] == shelter_patient["name"]
    hospital = net.docs("Patient", HOSPITAL)
    assert len(hospital) == 1, "one Patient for one PID-3 at the hospital (A04 then A08)"
    assert hospital[0]["id"] != shelter_patient["id"]
    assert hospital[0]["name"][0]["given"] == ["Eve"], "the A08 updated the hospital's Patient"


def test_the_same_pid3_from_two_partners_is_two_patients_each_partners_own(
    net: Network,
) -> None:
    """Promise: the same key from two partners is two people (keys are per partner). The
    shelter and the hospital both refer a person with the same PID-3 (same id, same
    authority, an OID): each referral's subject is its own sender's Patient, and the hospital
    reading as itself sees only its own Patient."""
    pid3 = f"{MRN}^^^SHARED&2.16.840.1.113883.19.5&ISO^MR"
    assert isinstance(
        _send(net, _ref_i12(sending="HOPE_SHELTER", control="S2", pid3=pid3), SHELTER_PEER),
        Accepted,
    )
    assert isinstance(_send(net, _ref_i12(control="H2", pid3=pid3)), Accepted)
    (shelter_patient,) = net.docs("Patient", SHELTER)
    (hospital_patient,) = net.docs("Patient", HOSPITAL)
    assert shelter_patient["id"] != hospital_patient["id"]
    for partner, patient in ((SHELTER, shelter_patient), (HOSPITAL, hospital_patient)):
        for kind in ("ServiceRequest", "Task"):
            for doc in net.docs(kind, partner):
                subject = doc.get("subject", doc.get("for"))
                assert subject == {"reference": f"Patient/{patient['id']}"}, (partner, kind)
    with net.reader(HOSPITAL, "TREAT") as hospital:
        assert _status(hospital, f"/fhir/Patient/{shelter_patient['id']}") == 404
        assert _status(hospital, f"/fhir/Patient/{hospital_patient['id']}") == 200


@pytest.mark.parametrize(
    "field",
    ["name", "note", "pid3"],
)
def test_a_placeholder_or_reference_in_a_field_value_never_becomes_a_reference(
    net: Network, field: str
) -> None:
    """Promise: a placeholder resolves only where the mapping put one, and only in the
    sender's own ledger. The hospital writes the gateway's placeholder syntax (naming the
    shelter's Patient's key) and a local reference to the shelter's Patient into a name, a
    note and PID-3: nothing the hospital stores refers to, or names the id of, the shelter's
    Patient, and the shelter's Patient is unchanged."""
    assert isinstance(_send(net, _ref_i12(sending="HOPE_SHELTER", control="S3"), SHELTER_PEER),
                      Accepted)  # fmt: skip
    (target,) = net.docs("Patient", SHELTER)
    placeholder = f"urn:care-gateway:source:Patient:PID:HOPE_SHELTER|{MRN}"
    local = f"Patient/{target['id']}"
    message = {
        "name": _ref_i12(control="H3", name=f"{placeholder}^{local}"),
        "note": _ref_i12(control="H3", notes=(placeholder, local)),
        "pid3": _ref_i12(control="H3", pid3=f"{placeholder}^^^HOPE_SHELTER^MR"),
    }[field]
    _send(net, message)
    (after,) = net.docs("Patient", SHELTER)
    assert after["meta"]["versionId"] == target["meta"]["versionId"]
    stored = [d for k in ("Patient", "ServiceRequest", "Task") for d in net.docs(k, HOSPITAL)]
    for doc in stored:
        text = _dumps(doc)
        assert target["id"] not in text.replace(local, ""), "a field became the shelter's id"
        assert f'"reference":"{local}"' not in text, "a field value became a reference"


# -- Whom a referral addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("receiving", "prd_facility"),
    [
        ("HOPE_SHELTER", ""),  # MSH-6 names the shelter
        ("", "HOPE_SHELTER"),  # PRD-4.4 of the referred-to provider names it
        ("hope_shelter", ""),  # case
        (" HOPE_SHELTER ", ""),  # spaces
        ("\uff28\uff2f\uff30\uff25_SHELTER", ""),  # full-width confusable
        ("HOPE\u200b_SHELTER", ""),  # a zero-width space
    ],
    ids=["msh6", "prd", "case", "spaces", "fullwidth", "zero-width"],
)
def test_a_referral_addressed_to_another_partner_discloses_nothing_without_consent(
    net: Network, receiving: str, prd_facility: str
) -> None:
    """Promise: naming a recipient is not releasing to it. The hospital addresses a referral
    to the shelter (MSH-6, the referred-to PRD, odd spellings of its facility): the shelter,
    reading as itself, sees none of the hospital's Patient, ServiceRequest or Task, since the
    hospital wrote no Consent. Where the performer/owner is set it names only a partner's
    Organization (never a made-up one)."""
    outcome = _send(net, _ref_i12(receiving=receiving, prd_facility=prd_facility, control="H4"))
    assert isinstance(outcome, Accepted), outcome
    stored = {k: net.docs(k, HOSPITAL) for k in ("Patient", "ServiceRequest", "Task")}
    assert all(stored.values()), "the referral landed"
    partners = {p.organization for p in DIRECTORY}
    for doc in stored["ServiceRequest"]:
        for performer in doc.get("performer", []):
            assert performer["reference"] in partners
    for doc in stored["Task"]:
        if "owner" in doc:
            assert doc["owner"]["reference"] in partners
    with net.reader(SHELTER, "COC") as shelter:
        for kind, docs in stored.items():
            for doc in docs:
                assert _status(shelter, f"/fhir/{kind}/{doc['id']}") == 404, kind
            assert _total(shelter, f"/fhir/{kind}") == 0, kind


def test_a_confusable_facility_is_not_resolved_to_a_partner(net: Network) -> None:
    """Promise: a recipient resolves to a partner only when it is exactly the partner's
    facility (HL7 facilities are codes, not names): a full-width or zero-width spelling of the
    shelter's facility gives no performer and no owner, and the record is held as landed in
    part, naming the field and not the value."""
    confusable = "\uff28\uff2f\uff30\uff25_SHELTER"
    _send(net, _ref_i12(receiving=confusable, control="H5"))
    for doc in net.docs("ServiceRequest", HOSPITAL):
        assert "performer" not in doc
    for doc in net.docs("Task", HOSPITAL):
        assert "owner" not in doc
    held = net.quarantine().list(partner_id=HOSPITAL)
    assert held, "the unresolved recipient is held as landed in part"
    for item in held:
        assert confusable not in item.reason
        assert "SHELTER" not in item.reason


# -- Labels cannot be stripped by spelling ------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "Z91.42^Personal history of forced labor^I10C",
        "Z9142^Personal history of forced labor^I10C",
        "z91.42^Personal history of forced labor^I10C",
        "Z91.42 ^Personal history of forced labor^I10C",
        "Z91.42^Personal history of forced labor^I10",
        "Z91.42^Personal history of forced labor^ICD10",
        "\uff3a\uff19\uff11\uff0e\uff14\uff12^Personal history of forced labor^I10C",
        "T74.11XA^Adult physical abuse, confirmed^I10C",
        "t7411xa^Adult physical abuse, confirmed^I10C",
    ],
    ids=[
        "dotted",
        "undotted",
        "lower",
        "trailing-space",
        "i10",
        "unknown-system",
        "fullwidth",
        "t74",
        "t74-lower",
    ],
)
def test_a_violence_diagnosis_labels_the_referral_and_task_sdv_however_it_is_spelled(
    net: Network, code: str
) -> None:
    """Promise: a referral whose diagnosis says she was abused or trafficked is labelled SDV
    (explicit consent), the ServiceRequest and its Task alike, whatever the spelling of the
    ICD-10-CM code (dotted, undotted, lower case, trailing spaces, full-width, under another
    coding system name); or, if the code cannot be read, the referral does not land
    unlabelled. The DG1's text alone says "forced labor": dropping the label would release
    it on a plain release."""
    outcome = _send(net, _ref_i12(dg1=(code,), control="H6"))
    landed = [d for k in ("ServiceRequest", "Task") for d in net.docs(k, HOSPITAL)]
    if not landed:
        assert not isinstance(outcome, Accepted)
        return
    assert {d["resourceType"] for d in landed} == {"ServiceRequest", "Task"}
    for doc in landed:
        assert (ACT_CODE, "SDV") in _labels(doc), (doc["resourceType"], _labels(doc))


@pytest.mark.parametrize(
    "procedure",
    [
        "90834^Psychotherapy, 45 minutes^C4",
        "90834^Psychotherapy, 45 minutes^CPT",
        "90834^Psychotherapy, 45 minutes^CPT4",
        "90834^Psychotherapy, 45 minutes^",
        " 90834^Psychotherapy, 45 minutes^C4",
        "90834-95^Psychotherapy, 45 minutes, telehealth^C4",
    ],
    ids=["c4", "cpt", "cpt4", "no-system", "leading-space", "modifier"],
)
def test_a_psychotherapy_procedure_labels_the_referral_psy_whatever_its_coding_system(
    net: Network, procedure: str
) -> None:
    """Promise: a referral for psychotherapy (CPT 90834) is labelled PSY, ServiceRequest and
    Task, whether PR1-3.3 says C4, CPT, CPT4 or nothing, and with a leading space or a
    modifier: the label follows the code, not the sender's name for its coding system."""
    _send(net, _ref_i12(pr1=(procedure,), control="H7"))
    landed = [d for k in ("ServiceRequest", "Task") for d in net.docs(k, HOSPITAL)]
    assert {d["resourceType"] for d in landed} == {"ServiceRequest", "Task"}
    for doc in landed:
        assert (ACT_CODE, "PSY") in _labels(doc), (doc["resourceType"], _labels(doc))


@pytest.mark.parametrize(
    "rf1_3", ["Psy^Psychiatric^HL70281", "PSY^Psychiatric^HL70281", "psy^Psychiatric^HL70281"]
)
def test_a_psychiatric_referral_type_labels_psy_in_any_case(net: Network, rf1_3: str) -> None:
    """Promise: RF1-3 "Psychiatric" (table 0281 Psy) says she is referred for mental health
    care: ServiceRequest and Task carry PSY whatever the case of the code."""
    _send(net, _ref_i12(rf1_type=rf1_3, control="H8"))
    landed = [d for k in ("ServiceRequest", "Task") for d in net.docs(k, HOSPITAL)]
    assert {d["resourceType"] for d in landed} == {"ServiceRequest", "Task"}
    for doc in landed:
        assert (ACT_CODE, "PSY") in _labels(doc), (doc["resourceType"], _labels(doc))


# -- PHI in clear: ACKs, ERR, quarantine reasons -----------------------------------------------


def _leaked(text: str) -> list[str]:
    return [v for v in (FAMILY, GIVEN, BIRTH, PHONE[3:], MRN, "1987-03-14") if v in text]


@pytest.mark.parametrize(
    "message",
    [
        _ref_i12(birth="19871314", control="P1"),  # not a date: AE naming PID-7
        _ref_i12(pid3=f"^^^^MR~{MRN}^^^^SS", control="P2"),  # no usable PID-3: blocked
        _ref_i12(receiving=GIVEN, control="P3"),  # a recipient that is no partner
        _ref_i12(receiving=f"{FAMILY}{GIVEN}", control="P6"),  # too long for MSH-6 (IS)
        _adt(birth="1987031", control="P4"),
        _adt(trigger="A99", control="P5"),  # no mapping for it
    ],
    ids=[
        "bad-birth",
        "no-pid3",
        "unknown-recipient",
        "overlong-msh6",
        "adt-bad-birth",
        "unmapped-trigger",
    ],
)
def test_acks_and_quarantine_reasons_never_quote_the_message(net: Network, message: bytes) -> None:
    """Promise: nothing written outside the encrypted store quotes a value from the message:
    the ACK's MSA and ERR the hospital gets back, and the quarantine's clear columns (reason,
    places, source, locator) name segments and fields, never her name, MRN, birth date or
    phone. (The ACK's MSH swaps the message's own MSH-3..6 back, as HL7 requires: that is
    routing the sender wrote about itself, not checked here.) Each message is refused or held,
    so the check reaches the quarantine."""
    outcome = _send(net, message)
    segments = ack_for(message, outcome).decode("utf-8", "replace").split("\r")
    answer = "\r".join(s for s in segments if not s.startswith("MSH|"))
    assert answer.startswith("MSA|")
    assert _leaked(answer) == [], answer
    if isinstance(outcome, (NotMappable, Rejected)):
        assert _leaked(outcome.text) == []
    held = net.quarantine().list(partner_id=HOSPITAL, status=None)
    assert held or not isinstance(outcome, Accepted), "neither refused nor held"
    for item in held:
        clear = " ".join([item.reason, item.source, item.locator, repr(item.places)])
        assert _leaked(clear) == [], clear


# -- Idempotence --------------------------------------------------------------------------------


def test_an_a08_for_the_same_pid3_updates_one_patient(net: Network) -> None:
    """Promise: a registration and its updates are one Patient: A04 then A08 (a new phone)
    for the same PID-3 leave one hospital Patient, at version 2, with the new phone."""
    assert isinstance(_send(net, _adt(control="I1")), Accepted)
    assert isinstance(_send(net, _adt(trigger="A08", control="I2", phone="2025550111")), Accepted)
    (patient,) = net.docs("Patient", HOSPITAL)
    assert patient["meta"]["versionId"] == "2"
    assert [t["value"] for t in patient.get("telecom", [])] == ["202 5550111"] or any(
        "5550111" in t["value"] for t in patient.get("telecom", [])
    )


def test_a_resent_referral_stores_nothing_twice(net: Network) -> None:
    """Promise: a resend (same message, same control id, or a new control id) is acknowledged
    AA and stores nothing: no new resource, no new version, no new Provenance."""
    first = _ref_i12(control="R1")
    assert isinstance(_send(net, first), Accepted)
    before = [(d["resourceType"], d["id"], d["meta"]["versionId"]) for d in _all(net)]
    assert isinstance(_send(net, first), Accepted)
    assert isinstance(_send(net, _ref_i12(control="R2")), Accepted)
    after = [(d["resourceType"], d["id"], d["meta"]["versionId"]) for d in _all(net)]
    assert after == before


def test_a_changed_referral_with_the_same_rf1_6_makes_one_new_version(net: Network) -> None:
    """Promise: RF1-6 names the referral: a second REF^I12 with the same RF1-6 and a new note
    updates the ServiceRequest (one new version, same id) and adds no second ServiceRequest or
    Task; the Patient, unchanged, gets no new version."""
    assert isinstance(_send(net, _ref_i12(control="C1")), Accepted)
    (request,) = net.docs("ServiceRequest", HOSPITAL)
    (patient,) = net.docs("Patient", HOSPITAL)
    (task,) = net.docs("Task", HOSPITAL)
    changed = _ref_i12(control="C2", notes=("Moved to the evening clinic",))
    assert isinstance(_send(net, changed), Accepted)
    (request2,) = net.docs("ServiceRequest", HOSPITAL)
    (patient2,) = net.docs("Patient", HOSPITAL)
    (task2,) = net.docs("Task", HOSPITAL)
    assert request2["id"] == request["id"]
    assert request2["meta"]["versionId"] == "2"
    assert request2["note"] == [{"text": "Moved to the evening clinic"}]
    assert patient2["meta"]["versionId"] == patient["meta"]["versionId"]
    assert task2["id"] == task["id"]
    assert task2["meta"]["versionId"] == task["meta"]["versionId"]


def _all(net: Network) -> list[dict[str, Any]]:
    return [
        d
        for kind in ("Patient", "ServiceRequest", "Task", "Provenance")
        for d in net.docs(kind, HOSPITAL)
    ]


# -- LegalServer: a consent releases no more than the matter says -------------------------------

TOKEN = "ls-t0ken"


def _matter(**changes: Any) -> dict[str, Any]:
    (one,) = copy.deepcopy(matters(1, seed=61))
    one.update(
        first=GIVEN,
        last=FAMILY,
        date_of_birth="1987-03-14",
        legal_problem_code={"lookup_value_name": "63 Private Landlord/Tenant"},
        special_legal_problem_code=[],
        victim_of_domestic_violence=False,
        outgoing_referrals=[],
        consent_to_share=True,
        consent_recipients=["Harbor Clinic"],
        consent_start_date="2026-11-01",
        consent_end_date="2027-05-01",
        consent_form="ROI-2026-00001.pdf",
        mobile_phone=f"202-{PHONE[3:6]}-{PHONE[6:]}",
        mobile_phone_safe=False,
        home_phone=None,
        work_phone=None,
        client_email_address="marisolette@example.org",
    )
    one.update(changes)
    return one


def _ingest_matters(net: Network, records: list[dict[str, Any]]) -> IngestSummary:
    with serve_fake_legalserver(records, token=TOKEN) as base:
        client = legalserver_client(base, token=TOKEN)
        try:
            items = list(LegalServerCoreAPI(client, page_size=10).pull(None).items)
        finally:
            client.close()
    return net.pipeline(LEGAL).run(items)


@pytest.mark.parametrize(
    "recipients",
    [
        ["Nobody Known Here"],
        ["HARBOR   clinic"],  # case and spaces: a partner's name (by design, resolves)
        ["Harbor Cl\u0456nic"],  # a Cyrillic i: not the clinic
        ["harbor-clinic"],  # the partner's id, not its name
        [],
    ],
    ids=["unknown", "casefold", "confusable", "id", "none"],
)
def test_a_legal_consent_releases_only_to_the_partners_it_names(
    net: Network, recipients: list[str]
) -> None:
    """Promise: a consent to share releases the matter's records only to the partners the
    matter names: an unknown recipient, a confusable spelling or an empty list releases to
    no one; the shelter and the hospital, never named, read nothing of her Patient or
    CarePlan in any case; the clinic reads her Patient only when the name resolved to it."""
    _ingest_matters(net, [_matter(consent_recipients=recipients)])
    patients = net.docs("Patient", LEGAL)
    plans = net.docs("CarePlan", LEGAL)
    assert patients
    assert plans
    resolved = recipients == ["HARBOR   clinic"]
    for reader in (SHELTER, HOSPITAL, CLINIC):
        with net.reader(reader, "COC") as client:
            for patient in patients:
                status = _status(client, f"/fhir/Patient/{patient['id']}")
                expect = 200 if (reader == CLINIC and resolved) else 404
                assert status == expect, (reader, status)
            for plan in plans:
                if not (reader == CLINIC and resolved):
                    assert _status(client, f"/fhir/CarePlan/{plan['id']}") == 404


@pytest.mark.parametrize("flag", ["true", 1, "1", "yes", "T", "false", 0, "f"])
def test_consent_to_share_other_than_true_or_t_releases_nothing(net: Network, flag: Any) -> None:
    """Promise: only an unambiguous yes (JSON true, or LegalServer's custom-field 't') makes a
    Consent; "true", 1, "yes", "T", "false", 0 or "f" make none, so the clinic named as
    recipient reads nothing of her."""
    _ingest_matters(net, [_matter(consent_to_share=flag)])
    assert net.docs("Consent", LEGAL) == []
    with net.reader(CLINIC, "COC") as clinic:
        for patient in net.docs("Patient", LEGAL):
            assert _status(clinic, f"/fhir/Patient/{patient['id']}") == 404


def test_an_unsafe_phone_an_email_and_addresses_are_never_mapped(net: Network) -> None:
    """Promise: only phones marked safe become telecom; the email and the addresses never
    do. A matter with a mobile marked unsafe (and the flag spelled "true" as text), an email
    and home and mailing addresses: her stored Patient has no telecom, no address, and no
    trace of them anywhere in what the legal aid stores."""
    record = _matter(
        mobile_phone_safe="true",
        home_phone="202-555-0133",
        home_phone_safe="yes",
        work_phone="202-555-0144",
        work_phone_safe=1,
    )
    _ingest_matters(net, [record])
    (patient,) = net.docs("Patient", LEGAL)
    assert "telecom" not in patient
    assert "address" not in patient
    everything = [d for k in ("Patient", "CarePlan", "Consent") for d in net.docs(k, LEGAL)]
    text = _dumps(everything)
    for value in ("5550187", "555-0187", "555-0133", "555-0144", "marisolette@"):
        assert value not in text, value
    street = record["client_address_home"]["street"]
    assert street not in text


def test_an_immigration_matter_is_labelled_and_named_nowhere_searchable(net: Network) -> None:
    """Promise: immigration (LSC 81) is never written into an element (no title, no category,
    no code) and labels the matter's CarePlan and referrals SDV; a search by the words of
    the problem finds nothing, even for the legal aid itself."""
    record = _matter(
        legal_problem_code={"lookup_value_name": "81 Immigration/Naturalization"},
        outgoing_referrals=[
            {
                "referral_uuid": "7d1f0a4e-2b9c-4d3e-8f10-3a2b1c0d9e8f",
                "referred_to": {"organization_name": "Harbor Clinic", "organization_uuid": None},
                "referral_date": "2026-11-05",
                "referral_type": {"lookup_value_name": "Warm Handoff"},
                "status": {"lookup_value_name": "Pending"},
            }
        ],
    )
    _ingest_matters(net, [record])
    docs = [d for k in ("CarePlan", "ServiceRequest") for d in net.docs(k, LEGAL)]
    assert {d["resourceType"] for d in docs} == {"CarePlan", "ServiceRequest"}
    for doc in docs:
        assert (ACT_CODE, "SDV") in _labels(doc), doc["resourceType"]
        assert "mmigra" not in _dumps({k: v for k, v in doc.items() if k != "meta"})
        assert "81" not in _dumps(doc.get("title", "")) + _dumps(doc.get("category", []))


@pytest.mark.parametrize(
    ("problem", "special"),
    [
        ("37 Domestic Abuse", []),
        ("37", []),
        ("37-Domestic Abuse", []),
        (" 37 Domestic Abuse", []),
        ("63 Private Landlord/Tenant", ["Human Trafficking"]),
        ("63 Private Landlord/Tenant", ["human trafficking"]),
        ("63 Private Landlord/Tenant", ["Protective order"]),
        ("63 Private Landlord/Tenant", [" Stalking "]),
        ("63 Private Landlord/Tenant", ["T-visa"]),
    ],
    ids=[
        "37",
        "37-bare",
        "37-dash",
        "37-leading-space",
        "trafficking",
        "trafficking-lower",
        "protective-order-case",
        "stalking-spaces",
        "t-visa-case",
    ],
)
def test_a_dv_or_trafficking_matter_labels_its_careplan_sdv_however_it_is_spelled(
    net: Network, problem: str, special: list[str]
) -> None:
    """Promise: a DV (37) matter, or one whose special problem code says trafficking,
    protective order, stalking or T visa, labels its CarePlan SDV, whatever the case or the
    spaces of the site's lookup names; a CarePlan that escapes SDV is readable on a plain
    release by a partner that must see it only with explicit consent."""
    record = _matter(
        legal_problem_code={"lookup_value_name": problem},
        special_legal_problem_code=[{"lookup_value_name": s} for s in special],
    )
    _ingest_matters(net, [record])
    plans = net.docs("CarePlan", LEGAL)
    assert plans, "the CarePlan landed"
    for plan in plans:
        assert (ACT_CODE, "SDV") in _labels(plan), (problem, special, _labels(plan))


def test_a_matter_with_bad_input_is_held_without_quoting_it(net: Network) -> None:
    """Promise: a matter the adapter or the mapping cannot read exactly is held, and the
    quarantine's clear columns name fields, never her name, birth date, phone or email."""
    records = [
        _matter(date_of_birth="1987-13-14", consent_to_share="yes"),
        _matter(case_id=999, client_id=59_999, consent_start_date="14/03/1987"),
        _matter(case_id=998, client_id=59_998, legal_problem_code={"lookup_value_name": "XX"}),
    ]
    _ingest_matters(net, records)
    held = net.quarantine().list(partner_id=LEGAL, status=None)
    assert held, "the bad matters are held"
    for item in held:
        clear = " ".join([item.reason, item.source, item.locator, repr(item.places)])
        assert _leaked(clear) == [], clear
        for value in ("1987-13-14", "14/03/1987", "marisolette", "yes"):
            assert value not in clear, (value, clear)


# -- What an unlabelled record then discloses ---------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "Z91.42^Personal history of forced labor^I10C",
        "z91.42^Personal history of forced labor^I10C",
    ],
    ids=["control-dotted", "lower"],
)
def test_a_plain_release_never_shows_a_trafficking_referrals_task(net: Network, code: str) -> None:
    """Promise: a plain release (no SDV) never discloses a record about trafficking. The
    hospital refers her with a forced-labour diagnosis, then releases her records to the
    clinic for treatment (a REST Consent without SDV): the clinic reads her Patient but
    neither the referral nor its Task, however the diagnosis code was spelled."""
    assert isinstance(_send(net, _ref_i12(dg1=(code,), control="L1")), Accepted)
    (patient,) = net.docs("Patient", HOSPITAL)
    with net.reader(HOSPITAL, "TREAT") as hospital:
        consent = release_consent(patient["id"], recipient=f"Organization/{CLINIC}")
        written = post(hospital, "/fhir/Consent", consent)
        assert written.status_code == 201, written.text
    with net.reader(CLINIC, "TREAT") as clinic:
        assert _status(clinic, f"/fhir/Patient/{patient['id']}") == 200  # the release works
        for kind in ("ServiceRequest", "Task"):
            for doc in net.docs(kind, HOSPITAL):
                assert _status(clinic, f"/fhir/{kind}/{doc['id']}") == 404, kind


@pytest.mark.parametrize(
    "special", ["Human Trafficking", "human trafficking"], ids=["control", "lower"]
)
def test_a_legal_release_never_shows_a_trafficking_matters_careplan(
    net: Network, special: str
) -> None:
    """Promise: the legal aid's consent to share (a plain release to the clinic) never
    discloses the CarePlan of a trafficking matter (SDV: explicit consent): the clinic reads
    her Patient, not her CarePlan, however the site's lookup capitalises the special problem
    code."""
    record = _matter(special_legal_problem_code=[{"lookup_value_name": special}])
    _ingest_matters(net, [record])
    (patient,) = net.docs("Patient", LEGAL)
    plans = net.docs("CarePlan", LEGAL)
    assert plans
    with net.reader(CLINIC, "COC") as clinic:
        assert _status(clinic, f"/fhir/Patient/{patient['id']}") == 200  # the release works
        for plan in plans:
            assert _status(clinic, f"/fhir/CarePlan/{plan['id']}") == 404
