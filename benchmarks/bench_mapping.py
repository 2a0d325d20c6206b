"""Records per second through the HMIS CSV mappings, and what a JSONata expression costs next to
the engine's fast path.

Part 1, the shipped specs (``mappings/hmis-csv``) on realistic records: a FY2024 and a FY2026
Client (every Client.csv column filled, SSN included), an Enrollment with 3 Services rows, an
Exit with R15/R16 answers, two HealthAndDV rows, a CurrentLivingSituation row and its Project
(2 resources: EpisodeOfCare and CarePlan), and a ReleaseOfInformation (1 Consent, whose signed
form URL is the one JSONata expression the shipped specs use). Target: mapping well under
100 µs a resource (the ingest target is 2,000 resources/s stored on SQLite, and storing costs
150-300 µs a resource).

Part 2, one element computed two ways inside the engine: the marginal µs a record of a spec
with the element against the same spec without it, for a plain field, a condition (the
EpisodeOfCare status from Exit) and the FY2024 gender rule; and a bare
``Expression.evaluate`` of the expressions, outside the engine. Nothing here asserts on timings.

    .venv/bin/python benchmarks/bench_mapping.py [--number N] [--repeat R]
"""

from __future__ import annotations

import argparse
import copy
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from gateway.mapping import (
    MappingContext,
    compile_document,
    load_code_tables,
    load_mappings,
    read_schema,
)
from gateway.mapping.expressions import Expression
from gateway.vocabulary.source import Origin, SourceRecord

ROOT = Path(__file__).resolve().parents[1]
MAPPINGS = ROOT / "mappings"
SHELTER = MappingContext(partner_id="riverside-shelter", partner_kind="shelter")
TARGET_US_PER_RESOURCE = 100.0
CONSOLE = Console(width=110)

CLIENT_COMMON = {
    "PersonalID": "CL-31102", "FirstName": "Marisol", "MiddleName": "Inés",
    "LastName": "Quintero-Ávila", "NameSuffix": "", "NameDataQuality": "1", "SSN": "078051120",
    "SSNDataQuality": "1", "DOB": "1994-03-17", "DOBDataQuality": "1", "AmIndAKNative": "0",
    "Asian": "0", "BlackAfAmerican": "0", "MidEastNAfrican": "0", "NativeHIPacific": "0",
    "White": "1", "RaceNone": "", "AdditionalRaceEthnicity": "", "VeteranStatus": "0",
    "YearEnteredService": "", "YearSeparated": "", "WorldWarII": "", "KoreanWar": "",
    "VietnamWar": "", "DesertStorm": "", "AfghanistanOEF": "", "IraqOIF": "", "IraqOND": "",
    "OtherTheater": "", "MilitaryBranch": "", "DischargeStatus": "",
    "DateCreated": "2026-10-02 09:15:00", "DateUpdated": "2026-10-02 09:15:00",
    "UserID": "advocate-7", "DateDeleted": "", "ExportID": "EX-2026-10",
}  # fmt: skip
CLIENT_FY2024 = {
    **CLIENT_COMMON, "HispanicLatinaeo": "1", "Woman": "1", "Man": "0", "NonBinary": "0",
    "CulturallySpecific": "0", "Transgender": "0", "Questioning": "0", "DifferentIdentity": "0",
    "GenderNone": "", "DifferentIdentityText": "",
}  # fmt: skip
CLIENT_FY2026 = {**CLIENT_COMMON, "HispanicLatinao": "1", "Sex": "0"}


def service(n: int, record_type: str, type_provided: str, day: str) -> dict[str, str]:
    return {
        "ServicesID": f"SV-{n}", "EnrollmentID": "EN-7731", "PersonalID": "CL-31102",
        "DateProvided": day, "RecordType": record_type, "TypeProvided": type_provided,
        "OtherTypeProvided": "", "MovingOnOtherType": "", "SubTypeProvided": "", "FAAmount": "",
        "FAStartDate": "", "FAEndDate": "", "ReferralOutcome": "",
        "DateCreated": f"{day} 10:00:00", "DateUpdated": f"{day} 10:00:00", "UserID": "advocate-7",
        "DateDeleted": "", "ExportID": "EX-2027-01",
    }  # fmt: skip


ENROLLMENT = {
    "EnrollmentID": "EN-7731", "PersonalID": "CL-31102", "ProjectID": "PR-12",
    "EntryDate": "2026-10-02", "HouseholdID": "HH-551", "RelationshipToHoH": "1",
    "EnrollmentCoC": "XX-501", "LivingSituation": "116", "LengthOfStay": "2",
    "DisablingCondition": "0", "DateCreated": "2026-10-02 09:20:00",
    "DateUpdated": "2027-01-15 16:00:00", "UserID": "advocate-7", "DateDeleted": "",
    "ExportID": "EX-2027-01",
    "Project": {"ProjectID": "PR-12", "OrganizationID": "ORG-3", "ProjectName": "Elm House",
                "ProjectType": "0", "TargetPopulation": "1"},
    "Services": [service(1, "200", "200", "2026-10-02"), service(2, "142", "14", "2026-10-09"),
                 service(3, "142", "17", "2026-11-06")],
    "Exit": {"ExitID": "EX-90", "ExitDate": "2027-01-15", "Destination": "435",
             "ExchangeForSex": "0", "AskedOrForcedToExchangeForSex": "1",
             "WorkPlaceViolenceThreats": "0", "WorkplacePromiseDifference": "0",
             "CoercedToContinueWork": "0", "LaborExploitPastThreeMonths": "0"},
    "HealthAndDV": [
        {"HealthAndDVID": "HD-1", "InformationDate": "2026-10-02", "DomesticViolenceSurvivor": "1",
         "WhenOccurred": "1", "CurrentlyFleeing": "1", "DataCollectionStage": "1"},
        {"HealthAndDVID": "HD-2", "InformationDate": "2027-01-15", "DomesticViolenceSurvivor": "1",
         "WhenOccurred": "2", "CurrentlyFleeing": "0", "DataCollectionStage": "3"},
    ],
    "CurrentLivingSituation": [{"CurrentLivingSitID": "CLS-4", "InformationDate": "2026-10-01",
                                "CurrentLivingSituation": "116", "LocationDetails": "a car park"}],
}  # fmt: skip
RELEASE = {
    "ROIID": "ROI-412", "PersonalID": "CL-31102", "RecipientOrganization": "harbor-clinic",
    "Scope": "CarePlan;Patient;EpisodeOfCare", "Purposes": "TREAT;COC",
    "StartDate": "2026-11-20", "EndDate": "2027-05-19",
    "SignedFormReference": "https://records.riverside.example/releases/000412.pdf",
    "RevokedDate": "", "DateCreated": "2026-11-20 14:30:00", "DateUpdated": "2026-11-20 14:30:00",
}  # fmt: skip


def record(record_type: str, fields: dict[str, Any], version: str) -> SourceRecord:
    return SourceRecord(
        "hmis-csv", record_type, "SRC-1", fields, Origin(f"{record_type}.csv", "row 2"), version
    )


def best_us(call: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def shipped(number: int, repeat: int) -> None:
    mappings = load_mappings(MAPPINGS)
    table = Table(title="HMIS CSV mappings: best of runs")
    for column in ("record", "resources", "µs / record", "records / s", "µs / resource", "target"):
        table.add_column(column, justify="left" if column == "record" else "right")
    cases = [
        ("Client FY2024", record("Client", CLIENT_FY2024, "FY2024")),
        ("Client FY2026", record("Client", CLIENT_FY2026, "FY2026")),
        ("Enrollment + 3 Services, Exit, DV", record("Enrollment", ENROLLMENT, "FY2026")),
        ("ReleaseOfInformation (1 JSONata)", record("ReleaseOfInformation", RELEASE, "FY2026")),
    ]
    for name, rec in cases:
        mapped = mappings.apply(rec, SHELTER)
        assert not mapped.problems, (name, mapped.problems)
        count = len(mapped.resources)

        def call(r: SourceRecord = rec) -> object:
            return mappings.apply(r, SHELTER)

        us = best_us(call, number, repeat)
        per_resource = us / count
        table.add_row(
            name,
            str(count),
            f"{us:.1f}",
            f"{1e6 / us:,.0f}",
            f"{per_resource:.1f}",
            "ok" if per_resource < TARGET_US_PER_RESOURCE else "OVER",
        )
    CONSOLE.print(table)


def _spec(elements: dict[str, Any]) -> dict[str, Any]:
    return {
        "system": "hmis-csv",
        "record_type": "Enrollment",
        "version": "0.0.1",
        "source_versions": ["FY2024", "FY2026"],
        "never_map": [],
        "resources": [
            {
                "resourceType": "EpisodeOfCare",
                "elements": {"status": {"$const": "active"}, **elements},
            }
        ],
    }


GENDER_EXPR = (
    '$count([NonBinary, CulturallySpecific, Transgender, Questioning, DifferentIdentity][$ = "1"])'
    ' = 0 ? (Woman = "1" and $not(Man = "1") ? "female"'
    ' : (Man = "1" and $not(Woman = "1") ? "male"))'
)
_OTHERS = {
    "not": {
        "any": [
            {"field": c, "equals": "1"}
            for c in ("NonBinary", "CulturallySpecific", "Transgender", "Questioning")
        ]
        + [{"field": "DifferentIdentity", "equals": "1"}]
    }
}


def _alone(yes: str, no: str) -> dict[str, Any]:
    return {"all": [{"field": yes, "equals": "1"}, {"not": {"field": no, "equals": "1"}}, _OTHERS]}


GENDER_FAST: dict[str, Any] = {
    "$first": [
        {"$when": _alone("Woman", "Man"), "$const": "female"},
        {"$when": _alone("Man", "Woman"), "$const": "male"},
    ]
}
STATUS_EXPR = 'Exit.ExitDate ? "finished" : "active"'
STATUS_FAST: dict[str, Any] = {
    "$first": [
        {"$when": {"field": "Exit.ExitDate", "present": True}, "$const": "finished"},
        {"$const": "active"},
    ]
}
SIGNED_FORM_EXPR = (
    '$contains($, /^https?:\\/\\//) ? $ : "urn:care-gateway:" & $context.partner_id'
    ' & ":hmis:signed-form:" & $encodeUrlComponent($)'
)


def expressions(number: int, repeat: int) -> None:
    schema = read_schema(MAPPINGS)
    tables, _docs = load_code_tables(MAPPINGS, schema)
    fields = {**ENROLLMENT, **CLIENT_FY2024}
    rec = record("Enrollment", fields, "FY2024")

    def marginal(element: dict[str, Any]) -> float:
        base = compile_document(_spec({}), schema=schema, tables=tables)
        with_element = compile_document(
            _spec({"identifier": [{"value": element}]}), schema=schema, tables=tables
        )
        assert with_element.apply(rec, SHELTER).problems == []
        return best_us(lambda: with_element.apply(rec, SHELTER), number, repeat) - best_us(
            lambda: base.apply(rec, SHELTER), number, repeat
        )

    table = Table(title="One element, two ways: marginal µs per record inside the engine")
    for column in ("element", "fast path", "JSONata", "JSONata / fast"):
        table.add_column(column, justify="left" if column == "element" else "right")
    rows: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("a field (PersonalID)", {"$field": "PersonalID"}, {"$expr": "PersonalID"}),
        ("status from Exit (condition)", STATUS_FAST, {"$expr": STATUS_EXPR}),
        ("FY2024 gender rule", GENDER_FAST, {"$expr": GENDER_EXPR}),
    ]
    for name, fast, jsonata in rows:
        fast_us = max(marginal(fast), 0.05)
        slow_us = marginal(jsonata)
        table.add_row(name, f"{fast_us:.1f}", f"{slow_us:.1f}", f"{slow_us / fast_us:.0f}x")
    CONSOLE.print(table)

    bare = Table(title="Expression.evaluate alone: µs per call")
    bare.add_column("expression")
    bare.add_column("µs", justify="right")
    context = {"partner_id": "riverside-shelter"}
    cases: list[tuple[str, str, Any]] = [
        ("PersonalID", "PersonalID", fields),
        ("status from Exit", STATUS_EXPR, fields),
        ("FY2024 gender rule", GENDER_EXPR, fields),
        ("signed form URL (shipped), a URL", SIGNED_FORM_EXPR, RELEASE["SignedFormReference"]),
        ("signed form URL (shipped), a document id", SIGNED_FORM_EXPR, "SCAN 2026/377-a"),
    ]
    for name, text, data in cases:
        expression, value = Expression(text), copy.deepcopy(data)

        def call(e: Expression = expression, v: Any = value) -> object:
            return e.evaluate(v, context)

        bare.add_row(name, f"{best_us(call, number, repeat):.1f}")
    CONSOLE.print(bare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=2000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs (the best is shown)")
    args = parser.parse_args()
    shipped(args.number, args.repeat)
    expressions(args.number, args.repeat)


if __name__ == "__main__":
    main()
