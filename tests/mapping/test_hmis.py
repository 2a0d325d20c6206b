"""The HMIS CSV mappings as the gateway's other layers read them: what a Client, an Enrollment
and a release of information become, which labels the consent engine then sees, and whether a
mapped release means to the engine what the survivor signed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.consent.engine import AccessRequest, decide, facts_from_resource
from gateway.consent.labels import labels_for
from gateway.consent.model import parse_consent
from gateway.consent.policy import load_policy
from gateway.mapping import MappingContext, MappingSpecError
from tests.mapping.support import (
    MAPPINGS,
    ROOT,
    apply,
    compile_spec,
    dumps,
    label_tables,
    mappings,
    parse_yaml_file,
    record,
    resolved,
    resource,
)

ACTCODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"


def client(version: str = "FY2026", **fields: str) -> Any:
    base = {"PersonalID": "CL-501", "FirstName": "Ana", "LastName": "Reyes", "NameDataQuality": "1"}
    return record("Client", "CL-501", {**base, **fields}, version=version)


def enrollment(version: str = "FY2026", **fields: Any) -> Any:
    base: dict[str, Any] = {
        "EnrollmentID": "EN-900",
        "PersonalID": "CL-501",
        "EntryDate": "2026-10-02",
        "Project": {"ProjectID": "PR-1", "ProjectType": "0"},
        "Services": [],
        "Exit": None,
        "HealthAndDV": [],
        "CurrentLivingSituation": [],
    }
    return record("Enrollment", "EN-900", {**base, **fields}, version=version)


def release(**fields: str) -> Any:
    base = {
        "ROIID": "ROI-55",
        "PersonalID": "CL-501",
        "RecipientOrganization": "harbor-clinic",
        "Scope": "CarePlan;Patient",
        "Purposes": "TREAT",
        "StartDate": "2026-11-20",
        "EndDate": "2027-05-19",
        "SignedFormReference": "https://records.riverside.example/releases/55.pdf",
        "DateCreated": "2026-11-20 14:30:00",
    }
    return record("ReleaseOfInformation", "ROI-55", {**base, **fields})


def sensitivity(doc: dict[str, Any], kind: str = "shelter") -> set[str]:
    labels = labels_for(resolved(doc), contributor_kind=kind, tables=label_tables())
    return {c["code"] for c in labels if c.get("system") == ACTCODE}


# --- Client -> Patient ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sex", "gender"), [("0", "female"), ("1", "male"), ("8", None), ("9", None), ("99", None)]
)
def test_fy2026_sex_gives_the_administrative_gender(sex: str, gender: str | None) -> None:
    mapped = apply(client(Sex=sex))
    assert resource(mapped, "Patient").get("gender") == gender
    assert mapped.problems == []


def test_an_fy2026_sex_outside_the_list_is_a_problem_naming_sex() -> None:
    mapped = apply(client(Sex="2"))
    assert "gender" not in resource(mapped, "Patient")
    assert [(p.place.column, p.reason) for p in mapped.problems] == [
        ("Sex", "Sex: value is not in code table hmis-sex-gender")
    ]


@pytest.mark.parametrize(
    ("ticked", "gender"),
    [
        ({"Woman"}, "female"),
        ({"Man"}, "male"),
        ({"Woman", "Man"}, None),
        ({"Woman", "Transgender"}, None),
        ({"Man", "Questioning"}, None),
        ({"NonBinary"}, None),
        ({"CulturallySpecific"}, None),
        ({"Woman", "DifferentIdentity"}, None),
        (set(), None),
    ],
)
def test_fy2024_gender_is_given_only_when_woman_or_man_alone_is_ticked(
    ticked: set[str], gender: str | None
) -> None:
    columns = [
        "Woman",
        "Man",
        "NonBinary",
        "CulturallySpecific",
        "Transgender",
        "Questioning",
        "DifferentIdentity",
    ]
    cells = {c: ("1" if c in ticked else "0") for c in columns}
    mapped = apply(client("FY2024", **cells, GenderNone="" if ticked else "9"))
    assert resource(mapped, "Patient").get("gender") == gender
    assert mapped.problems == []


def test_fy2024_sex_column_is_not_read() -> None:
    assert "gender" not in resource(apply(client("FY2024", Sex="0")), "Patient")


@pytest.mark.parametrize(
    ("quality", "use"),
    [("1", "official"), ("2", "anonymous"), ("8", None), ("9", None), ("99", None)],
)
def test_names_are_mapped_only_when_name_data_quality_makes_them_usable(
    quality: str, use: str | None
) -> None:
    patient = resource(apply(client(NameDataQuality=quality)), "Patient")
    if use is None:
        assert "name" not in patient
        assert "Reyes" not in dumps(patient)
    else:
        assert patient["name"] == [{"use": use, "family": "Reyes", "given": ["Ana"]}]


def test_a_missing_name_data_quality_leaves_the_name_out_and_says_so() -> None:
    fields = {"PersonalID": "CL-501", "FirstName": "Ana", "LastName": "Reyes"}
    mapped = apply(record("Client", "CL-501", fields))
    assert "name" not in resource(mapped, "Patient")
    assert [p.reason for p in mapped.problems] == ["NameDataQuality: is missing"]


@pytest.mark.parametrize(
    ("quality", "mapped"), [("1", True), ("2", False), ("8", False), ("9", False), ("99", False)]
)
def test_birth_date_is_mapped_only_for_a_full_dob(quality: str, mapped: bool) -> None:
    patient = resource(apply(client(DOB="1994-03-17", DOBDataQuality=quality)), "Patient")
    assert ("birthDate" in patient) is mapped


def test_the_same_personal_id_at_two_partners_is_two_identifiers() -> None:
    clinic = MappingContext(partner_id="harbor-clinic", partner_kind="clinic")
    at_shelter = resource(apply(client()), "Patient")["identifier"]
    at_clinic = resource(apply(client(), clinic), "Patient")["identifier"]
    assert at_shelter == [
        {"system": "urn:care-gateway:riverside-shelter:hmis:personal-id", "value": "CL-501"}
    ]
    assert at_clinic == [
        {"system": "urn:care-gateway:harbor-clinic:hmis:personal-id", "value": "CL-501"}
    ]


def test_the_ssn_is_never_mapped_and_no_spec_may_read_it() -> None:
    patient = resource(apply(client(SSN="078051120", SSNDataQuality="1")), "Patient")
    assert "078051120" not in dumps(patient)
    spec = parse_yaml_file(MAPPINGS / "hmis-csv" / "Client.yaml")
    assert "SSN" in spec["never_map"]
    spec["resources"][0]["elements"]["identifier"].append(
        {"system": {"$const": "http://hl7.org/fhir/sid/us-ssn"}, "value": {"$field": "SSN"}}
    )
    with pytest.raises(MappingSpecError, match="reads a field listed in never_map"):
        compile_spec(spec)


def test_race_and_ethnicity_are_not_mapped() -> None:
    patient = resource(
        apply(client(AmIndAKNative="1", HispanicLatinao="1", AdditionalRaceEthnicity="Taíno")),
        "Patient",
    )
    assert "extension" not in patient
    assert "Taíno" not in dumps(patient)


# --- Enrollment -> EpisodeOfCare, CarePlan ------------------------------------------------------


def test_an_enrollment_without_exit_is_an_active_stay_and_plan() -> None:
    mapped = apply(enrollment())
    episode, plan = resource(mapped, "EpisodeOfCare"), resource(mapped, "CarePlan")
    assert (episode["status"], plan["status"]) == ("active", "active")
    assert episode["period"] == plan["period"] == {"start": "2026-10-02"}
    assert episode["managingOrganization"] == {"reference": "Organization/riverside-shelter"}
    assert (
        episode["patient"]
        == plan["subject"]
        == {"reference": "urn:care-gateway:source:Patient:Client:CL-501"}
    )
    assert plan["intent"] == "plan"


def test_an_exit_finishes_the_stay_and_completes_the_plan() -> None:
    mapped = apply(enrollment(Exit={"ExitID": "X-1", "ExitDate": "2027-01-15"}))
    episode, plan = resource(mapped, "EpisodeOfCare"), resource(mapped, "CarePlan")
    assert (episode["status"], plan["status"]) == ("finished", "completed")
    assert episode["period"] == plan["period"] == {"start": "2026-10-02", "end": "2027-01-15"}


def test_project_type_becomes_the_episode_type() -> None:
    episode = resource(
        apply(enrollment(Project={"ProjectType": "13", "ProjectName": "Harbor RRH"})),
        "EpisodeOfCare",
    )
    assert episode["type"] == [
        {
            "coding": [
                {
                    "system": "urn:care-gateway:hmis:list:2.02.6",
                    "code": "13",
                    "display": "PH - Rapid Re-Housing",
                }
            ]
        }
    ]
    assert "Harbor RRH" not in dumps(episode)


def test_each_service_row_is_one_completed_activity_on_its_date() -> None:
    services = [
        {
            "ServicesID": "S1",
            "DateProvided": "2026-10-03",
            "RecordType": "200",
            "TypeProvided": "200",
        },
        {
            "ServicesID": "S2",
            "DateProvided": "2026-10-04",
            "RecordType": "144",
            "TypeProvided": "2",
        },
        {
            "ServicesID": "S3",
            "DateProvided": "2026-10-05",
            "RecordType": "142",
            "TypeProvided": "7",
        },
    ]
    plan = resource(apply(enrollment(Services=services)), "CarePlan")
    assert [a["detail"]["status"] for a in plan["activity"]] == ["completed"] * 3
    assert [a["detail"]["scheduledPeriod"] for a in plan["activity"]] == [
        {"start": d, "end": d} for d in ("2026-10-03", "2026-10-04", "2026-10-05")
    ]
    assert [
        (c["system"], c["code"]) for a in plan["activity"] for c in a["detail"]["code"]["coding"]
    ] == [
        ("urn:care-gateway:hmis:list:4.14", "200"),
        ("urn:care-gateway:hmis:list:V2.2", "2"),
        ("urn:care-gateway:hmis:list:R14.2", "7"),
    ]


def test_the_plan_points_at_its_stay() -> None:
    plan = resource(apply(enrollment()), "CarePlan")
    assert plan["supportingInfo"] == [
        {"reference": "urn:care-gateway:source:EpisodeOfCare:Enrollment:EN-900"}
    ]


def test_a_service_row_of_an_unknown_type_is_a_problem_and_no_activity() -> None:
    services = [{"DateProvided": "2026-10-03", "RecordType": "142", "TypeProvided": "99"}]
    mapped = apply(enrollment(Services=services))
    assert "activity" not in resource(mapped, "CarePlan")
    assert [(p.place.field, p.reason) for p in mapped.problems] == [
        (
            "Services[0].RecordType+TypeProvided",
            "RecordType+TypeProvided: value is not in code table hmis-service-type",
        )
    ]


def test_an_enrollment_without_personal_id_produces_nothing() -> None:
    fields = dict(enrollment().fields)
    del fields["PersonalID"]
    mapped = apply(record("Enrollment", "EN-900", fields))
    assert mapped.resources == []
    assert {p.element for p in mapped.problems} == {"EpisodeOfCare.patient", "CarePlan.subject"}


# --- safety facts and labels -------------------------------------------------------------------

R15 = [
    "ExchangeForSex",
    "ExchangeForSexPastThreeMonths",
    "AskedOrForcedToExchangeForSex",
    "AskedOrForcedToExchangeForSexPastThreeMonths",
]
R16 = [
    "WorkPlaceViolenceThreats",
    "WorkplacePromiseDifference",
    "CoercedToContinueWork",
    "LaborExploitPastThreeMonths",
]


def fact_codes(plan: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (c["system"], c["code"])
        for cat in plan["category"]
        for c in cat["coding"]
        if c["system"]
        != "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes"
    ]


def test_a_plan_without_safety_facts_has_no_sensitivity() -> None:
    plan = resource(apply(enrollment(HealthAndDV=[{"DomesticViolenceSurvivor": "0"}])), "CarePlan")
    assert fact_codes(plan) == []
    assert "meta" not in plan
    assert sensitivity(plan) == set()


@pytest.mark.parametrize("answer", ["0", "8", "9", "99"])
def test_only_a_yes_is_a_safety_fact(answer: str) -> None:
    exit_row = {"ExitDate": "2027-01-15", **dict.fromkeys(R15 + R16, answer)}
    rows = [{"DomesticViolenceSurvivor": answer, "CurrentlyFleeing": answer}]
    mapped = apply(enrollment(Exit=exit_row, HealthAndDV=rows))
    assert fact_codes(resource(mapped, "CarePlan")) == []
    assert mapped.problems == []


def test_a_domestic_violence_survivor_in_any_row_labels_the_plan_sdv() -> None:
    rows = [
        {"DomesticViolenceSurvivor": "0", "DataCollectionStage": "1"},
        {"DomesticViolenceSurvivor": "1", "DataCollectionStage": "2"},
    ]
    plan = resource(apply(enrollment(HealthAndDV=rows)), "CarePlan")
    assert fact_codes(plan) == [("urn:care-gateway:hmis:fact", "dv-survivor"), (ICD10CM, "Z91.419")]
    assert sensitivity(plan) == {"SDV"}


def test_currently_fleeing_is_its_own_fact() -> None:
    plan = resource(
        apply(enrollment(HealthAndDV=[{"DomesticViolenceSurvivor": "1", "CurrentlyFleeing": "1"}])),
        "CarePlan",
    )
    assert ("urn:care-gateway:hmis:fact", "dv-currently-fleeing") in fact_codes(plan)


@pytest.mark.parametrize(
    ("column", "fact"),
    [(c, "sexual-exploitation") for c in R15] + [(c, "labor-exploitation") for c in R16],
)
def test_any_trafficking_item_answered_yes_labels_the_plan_sdv(column: str, fact: str) -> None:
    plan = resource(apply(enrollment(Exit={"ExitDate": "2027-01-15", column: "1"})), "CarePlan")
    assert fact_codes(plan) == [("urn:care-gateway:hmis:fact", fact), (ICD10CM, "Z91.42")]
    assert sensitivity(plan) == {"SDV"}


def test_the_icd_codes_alone_make_the_network_label_tables_say_sdv() -> None:
    """labels.yaml knows ICD-10-CM, not the gateway's own HMIS fact codes: each fact carries an
    ICD code it labels SDV, so the plan is SDV even without the mapping's own meta.security."""
    exit_row = {"ExitDate": "2027-01-15", "CoercedToContinueWork": "1"}
    for fields in (
        {"HealthAndDV": [{"DomesticViolenceSurvivor": "1"}]},
        {"HealthAndDV": [{"CurrentlyFleeing": "1"}]},
        {"Exit": exit_row},
    ):
        plan = dict(resource(apply(enrollment(**fields)), "CarePlan"))
        assert {c["code"] for c in plan["meta"]["security"]} == {"SDV"}
        del plan["meta"]
        assert sensitivity(plan) == {"SDV"}, fields


def test_every_sdv_code_table_entry_is_paired_with_a_code_the_network_labels_sdv() -> None:
    facts = mappings().get("hmis-csv", "Enrollment")
    assert facts is not None
    icd = parse_yaml_file(MAPPINGS / "codes" / "icd10cm-safety-facts.yaml")
    own = parse_yaml_file(MAPPINGS / "codes" / "hmis-safety-facts.yaml")
    assert {e["value"] for e in own["codes"]} == {e["value"] for e in icd["codes"]}
    for entry in icd["codes"]:
        probe = {
            "resourceType": "CarePlan",
            "category": [{"coding": [{"system": icd["system"], "code": entry["code"]}]}],
        }
        assert sensitivity(probe, "clinic") == {"SDV"}, entry["code"]


@pytest.mark.parametrize(
    ("record_type", "type_provided", "labels"),
    [
        ("142", "17", {"ETH"}),
        ("141", "4", {"PSY"}),
        ("143", "2", {"HIV"}),
        ("142", "28", {"STD"}),
        ("142", "13", {"SEX"}),
        ("200", "200", set()),
    ],
)
def test_a_sensitive_service_labels_the_plan(
    record_type: str, type_provided: str, labels: set[str]
) -> None:
    services = [
        {"DateProvided": "2026-10-03", "RecordType": record_type, "TypeProvided": type_provided}
    ]
    plan = resource(apply(enrollment(Services=services)), "CarePlan")
    assert {c["code"] for c in plan.get("meta", {}).get("security", [])} == labels
    assert labels <= sensitivity(plan)  # the store's labelling keeps the mapping's own labels


def test_the_stay_itself_carries_no_safety_fact() -> None:
    mapped = apply(
        enrollment(
            HealthAndDV=[{"DomesticViolenceSurvivor": "1"}],
            Exit={"ExitDate": "2027-01-15", "ExchangeForSex": "1"},
        )
    )
    episode = resource(mapped, "EpisodeOfCare")
    assert "meta" not in episode
    assert sensitivity(episode) == set()


def test_whereabouts_and_project_names_never_reach_the_output() -> None:
    where = "the blue van behind the Lakeview Mall"
    mapped = apply(
        enrollment(
            CurrentLivingSituation=[{"LocationDetails": where, "VerifiedBy": "Lakeview outreach"}],
            Project={
                "ProjectType": "1",
                "ProjectName": "Elm Street House",
                "ProjectCommonName": "Elm",
            },
            Services=[
                {
                    "DateProvided": "2026-10-03",
                    "RecordType": "200",
                    "TypeProvided": "200",
                    "OtherTypeProvided": where,
                }
            ],
            Exit={"ExitDate": "2027-01-15", "OtherDestination": where},
        )
    )
    text = dumps(mapped.as_json())
    for secret in (where, "Lakeview", "Elm Street House"):
        assert secret not in text
    assert not any("location" in r.resource for r in mapped.resources)


# --- ReleaseOfInformation -> Consent ------------------------------------------------------------


def test_the_mapped_release_parses_as_a_permit_for_the_recipient() -> None:
    consent = dict(
        resolved(
            resource(
                apply(release(Purposes="TREAT; COC", Scope="CarePlan;Patient;EpisodeOfCare")),
                "Consent",
            )
        )
    )
    consent["id"] = "roi-55"
    parsed = parse_consent(consent, recorder="riverside-shelter")
    assert parsed.counts
    assert parsed.can_permit
    assert parsed.written
    assert parsed.patient_id == "client-cl-501"
    assert parsed.period == (
        datetime(2026, 11, 20, tzinfo=UTC),
        datetime(2027, 5, 19, 23, 59, 59, 999999, tzinfo=UTC),
    )
    root = parsed.root
    assert root is not None
    assert not root.deny
    assert not root.never
    assert root.actors == frozenset({"Organization/harbor-clinic"})
    assert root.purposes == frozenset({"TREAT", "COC"})
    assert root.classes == frozenset({"CarePlan", "Patient", "EpisodeOfCare"})


def test_a_revoked_release_is_an_inactive_consent_that_does_not_count() -> None:
    consent = resolved(resource(apply(release(RevokedDate="2026-12-01")), "Consent"))
    assert consent["status"] == "inactive"
    assert not parse_consent(consent, recorder="riverside-shelter").counts


def test_a_signed_form_given_as_a_document_id_becomes_a_partner_scoped_urn() -> None:
    consent = resource(apply(release(SignedFormReference=" SCAN 2026/55 ")), "Consent")
    assert (
        consent["sourceAttachment"]["url"]
        == "urn:care-gateway:riverside-shelter:hmis:signed-form:SCAN%202026%2F55"
    )


@pytest.mark.parametrize(
    ("fields", "column"),
    [
        ({"SignedFormReference": ""}, "SignedFormReference"),
        ({"Purposes": ""}, "Purposes"),
        ({"Purposes": "TREAT;MARKETING"}, "Purposes"),
        ({"Scope": "CarePlan;Careplan"}, "Scope"),
        ({"Scope": " ; "}, "Scope"),
        ({"RecipientOrganization": "Harbor Clinic"}, "RecipientOrganization"),
        ({"StartDate": "20/11/2026"}, "StartDate"),
        ({"PersonalID": ""}, "PersonalID"),
    ],
)
def test_a_release_that_cannot_be_read_exactly_produces_no_consent(
    fields: dict[str, str], column: str
) -> None:
    mapped = apply(release(**fields))
    assert mapped.resources == []
    assert [p.place.column for p in mapped.problems if p.blocking] == [column]


POLICIES = ROOT / "consent_policies"
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
CLINIC = AccessRequest(
    partner_id="harbor-clinic",
    partner_kind="clinic",
    organization="Organization/harbor-clinic",
    purposes=("TREAT",),
    interaction="read",
)


def stored(doc: dict[str, Any], rid: str) -> dict[str, Any]:
    """As the write path stores it: placeholders resolved, an id, labels from the tables."""
    out = dict(resolved(doc))
    out["id"] = rid
    out["meta"] = {"security": labels_for(out, contributor_kind="shelter", tables=label_tables())}
    return out


def decision(plan_fields: dict[str, Any]) -> Any:
    plan = stored(resource(apply(enrollment(**plan_fields)), "CarePlan"), "careplan-en-900")
    consent = stored(resource(apply(release()), "Consent"), "roi-55")
    facts = facts_from_resource(plan, contributor="riverside-shelter", contributor_kind="shelter")
    parsed = parse_consent(consent, recorder="riverside-shelter")
    return decide(CLINIC, facts, [parsed], load_policy(POLICIES), NOW)


def test_the_mapped_release_lets_the_clinic_see_the_shelters_plan() -> None:
    answer = decision({})
    assert answer.permit
    assert answer.rule == "consent:Consent/roi-55#provision"


def test_a_plan_with_safety_facts_needs_a_release_that_names_sdv() -> None:
    """An HMIS release names types and purposes, not sensitivities: it never releases an SDV
    plan. That takes a Consent listing SDV, recorded on purpose (explicit_consent_labels)."""
    refused = decision({"HealthAndDV": [{"DomesticViolenceSurvivor": "1"}]})
    assert not refused.permit
    assert refused.rule == "explicit-label"
