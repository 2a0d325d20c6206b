"""Microseconds per ``decide`` with 1, 10 and 100 Consents on one patient.

The Consents are parsed once (as the store will keep them) and ``decide`` never re-parses.
Each Consent is a realistic release of information: LOINC 64292-6, a signed form, a one-year
period, a permit naming one partner for some purposes, a nested deny for ETH and a nested
permit for one referral. One in ten names the requesting clinic; the rest name other partners,
so decide walks every Consent (the worst case for a permit is the last Consent matching).

Scenarios: a CarePlan the clinic may see (shelter data, released), an ETH-labelled referral
(denied by a nested deny) and a Patient seen by legal aid (no permit: every Consent abstains).
Target: ≤ 20 µs per decide with 10 Consents. Nothing here asserts on timings.

    .venv/bin/python benchmarks/bench_consent.py [--number N]
"""

from __future__ import annotations

import argparse
import sys
import timeit
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from gateway.consent.engine import AccessRequest, ResourceFacts, decide
from gateway.consent.model import ParsedConsent, parse_consent
from gateway.consent.policy import load_policy

POLICY = load_policy(Path(__file__).resolve().parents[1] / "consent_policies")
NOW = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)
TARGET_US = 20.0
PARTNERS = (
    "harbor-clinic",
    "northside-legal-aid",
    "eastgate-hospital",
    "lakeside-clinic",
    "westend-legal",
    "st-marys-hospital",
    "bayview-clinic",
    "metro-legal",
    "county-hospital",
    "hillside-clinic",
)


def consent(n: int, partner: str) -> dict[str, Any]:
    org = f"Organization/{partner}"
    return {
        "resourceType": "Consent",
        "id": f"roi-{n}",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "64292-6"}]}],
        "patient": {"reference": "Patient/p1"},
        "dateTime": "2026-06-01T15:20:00Z",
        "sourceAttachment": {"contentType": "application/pdf", "data": "JVBERi0xLjQK"},
        "provision": {
            "type": "permit",
            "period": {"start": "2026-06-01", "end": "2027-05-31"},
            "actor": [{"reference": {"reference": org}}],
            "action": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                            "code": "access",
                        }
                    ]
                }
            ],
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p}
                for p in ("TREAT", "COC")
            ],
            "provision": [
                {
                    "type": "deny",
                    "securityLabel": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                            "code": "ETH",
                        }
                    ],
                },
                {
                    "type": "permit",
                    "data": [
                        {"meaning": "related", "reference": {"reference": f"ServiceRequest/sr{n}"}}
                    ],
                },
            ],
        },
    }


def consents(count: int) -> list[ParsedConsent]:
    # The matching Consent comes last: decide has to look at every other one first.
    docs = [consent(i, PARTNERS[1 + i % (len(PARTNERS) - 1)]) for i in range(count - 1)]
    docs.append(consent(count, "harbor-clinic"))
    return [parse_consent(d) for d in docs]


def facts(rtype: str, rid: str, labels: frozenset[str], kind: str) -> ResourceFacts:
    return ResourceFacts(
        resource_type=rtype,
        id=rid,
        patient_id="p1",
        labels=labels,
        contributor="riverside-shelter",
        contributor_kind=kind,
        codes=frozenset({("http://snomed.info/sct", "734163000")}),
        clinical_period=("2026-09-01T00:00:00.000000", "2027-03-01T23:59:59.999999"),
        references=frozenset({"Patient/p1", "Organization/riverside-shelter"}),
        authors=frozenset({"Organization/riverside-shelter"}),
    )


SCENARIOS = (
    (
        "CarePlan to clinic (permit)",
        AccessRequest("harbor-clinic", "clinic", "Organization/harbor-clinic", ("TREAT",), "read"),
        facts("CarePlan", "cp1", frozenset({"R"}), "shelter"),
        True,
    ),
    (
        "ETH referral to clinic (nested deny)",
        AccessRequest("harbor-clinic", "clinic", "Organization/harbor-clinic", ("TREAT",), "read"),
        facts("ServiceRequest", "sr9", frozenset({"ETH", "R"}), "clinic"),
        False,
    ),
    (
        "Patient to legal aid (no permit)",
        AccessRequest(
            "northside-legal-aid", "legal-aid", "Organization/other-legal", ("HLEGAL",), "search"
        ),
        facts("Patient", "p1", frozenset(), "clinic"),
        False,
    ),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000, help="decides per timing run")
    args = parser.parse_args()
    table = Table(title="consent decide: µs per call (best of 5 runs)")
    table.add_column("scenario")
    for count in (1, 10, 100):
        table.add_column(f"{count} consent{'s' * (count > 1)}", justify="right")
    table.add_column("target (10)", justify="right")
    for name, request, resource, expected in SCENARIOS:
        row = [name]
        for count in (1, 10, 100):
            parsed = consents(count)
            decision = decide(request, resource, parsed, POLICY, NOW)
            assert decision.permit is expected, (name, count, decision)
            number = max(200, args.number // count)
            runs = timeit.repeat(
                lambda p=parsed, q=request, r=resource: decide(q, r, p, POLICY, NOW),  # type: ignore[misc]
                number=number,
                repeat=5,
            )
            row.append(f"{min(runs) / number * 1e6:.2f}")
        ten = float(row[2])
        row.append(
            f"[green]≤ {TARGET_US:.0f} ✓[/]" if ten <= TARGET_US else f"[red]≤ {TARGET_US:.0f} ✗[/]"
        )
        table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    main()
