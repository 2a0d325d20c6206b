"""The contract every adapter keeps, run against each one on its synthetic source: it yields
``SourceItem``s only; each record names its system, record type and source id; a mapping
exists for every record type it yields, and maps it to strict R4 without a blocking problem;
and nothing an operator is shown in clear (``Origin.source``, ``Origin.locator``, a problem's
reason, a notice) holds a value of a record."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from adapters._http import SourceClient
from adapters.fhir import FhirPull
from adapters.hl7v2 import read_hl7_file
from adapters.hmis import read_export
from adapters.legalserver import LegalServerCoreAPI, legalserver_client
from adapters.smart import SmartBackendAuth, public_jwk
from gateway.mapping import MappingContext, load_mappings, rewrite_placeholders
from gateway.synth.fhir import hospital_resources, serve_fake_fhir
from gateway.synth.hl7 import adt_a04_messages, ref_i12_messages, write_mllp_file
from gateway.synth.hmis import write_hmis_export
from gateway.synth.legalserver import matters, serve_fake_legalserver
from gateway.vocabulary.source import SourceItem, SourceNotice, SourceProblem, SourceRecord
from gateway.write.admit import check

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = load_mappings(ROOT / "mappings")
KEY = ec.generate_private_key(ec.SECP384R1())


def _hmis(tmp: Path) -> Iterator[SourceItem]:
    export = write_hmis_export(
        tmp / "export", clients=15, year="FY2026", seed=21, releases_to=("harbor-clinic",)
    )
    yield from read_export(export, partner_kind="shelter")


def _hmis_2024_zip(tmp: Path) -> Iterator[SourceItem]:
    export = write_hmis_export(tmp / "e.zip", clients=10, year="FY2024", seed=22, as_zip=True)
    yield from read_export(export, partner_kind="shelter")


def _legalserver(tmp: Path) -> Iterator[SourceItem]:
    with serve_fake_legalserver(matters(10, seed=23), token="t0ken") as base:
        client = legalserver_client(base, token="t0ken")
        try:
            yield from LegalServerCoreAPI(client, page_size=4).pull(None).items
        finally:
            client.close()


def _hl7(tmp: Path) -> Iterator[SourceItem]:
    path = tmp / "messages.hl7"
    write_mllp_file(
        path,
        [
            *ref_i12_messages(6, seed=24, sending_facility="STMARYS"),
            *adt_a04_messages(4, seed=25, sending_facility="STMARYS", trigger="A08"),
        ],
    )
    yield from read_hl7_file(path)


def _fhir(tmp: Path) -> Iterator[SourceItem]:
    jwk = public_jwk(KEY)
    with serve_fake_fhir(
        hospital_resources(24, seed=26), client_id="gw", public_jwks={"keys": [jwk]}
    ) as base:
        auth = SmartBackendAuth(
            client_id="gw",
            private_key=KEY,
            key_id=jwk["kid"],
            algorithm="ES384",
            scope="system/Patient.rs system/ServiceRequest.rs system/CarePlan.rs",
            fhir_base=base,
        )
        with SourceClient(base, auth=auth) as client:
            yield from FhirPull(client, base, page_size=10).pull(None).items


ADAPTERS: dict[str, tuple[Callable[[Path], Iterator[SourceItem]], str, str]] = {
    # name: (items, the partner's kind, its id)
    "hmis-csv FY2026": (_hmis, "shelter", "riverside-shelter"),
    "hmis-csv FY2024 zip": (_hmis_2024_zip, "shelter", "riverside-shelter"),
    "legalserver": (_legalserver, "legal-aid", "northside-legal-aid"),
    "hl7v2 file": (_hl7, "hospital", "st-marys-hospital"),
    "fhir pull": (_fhir, "hospital", "st-marys-hospital"),
}


# Not values of a person: the message control id (HL7 echoes it in every ACK, and it is
# generated per message) and FHIR's resource type names.
NOT_PHI = frozenset({"control_id", "message_control_id", "resourceType"})


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in NOT_PHI:
                yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


@pytest.fixture(params=sorted(ADAPTERS), scope="module")
def yielded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    make, kind, partner = ADAPTERS[request.param]
    items = list(make(tmp_path_factory.mktemp("adapter")))
    return request.param, kind, partner, items


def test_an_adapter_yields_only_source_items_and_records_name_themselves(yielded: Any) -> None:
    name, _, _, items = yielded
    records = [i for i in items if isinstance(i, SourceRecord)]
    assert records, f"{name} yielded no record from its synthetic source"
    assert all(isinstance(i, SourceRecord | SourceProblem | SourceNotice) for i in items)
    for record in records:
        assert record.system
        assert record.record_type
        assert isinstance(record.source_id, str)
        assert record.source_id
        assert record.origin.source


def test_every_record_type_an_adapter_yields_has_a_mapping_that_maps_it_to_strict_r4(
    yielded: Any,
) -> None:
    name, kind, partner, items = yielded
    context = MappingContext(partner_id=partner, partner_kind=kind)
    for record in (i for i in items if isinstance(i, SourceRecord)):
        mapped = MAPPINGS.apply(record, context)
        assert not mapped.blocked, (name, record.record_type, [p.reason for p in mapped.problems])
        assert mapped.resources
        for resource in mapped.resources:
            local = rewrite_placeholders(
                resource.resource, lambda key: f"{key.resource_type}/x-{len(key.source_id)}"
            )
            check({**local, "id": "contract-1"}, expected_type=resource.key.resource_type)


def test_nothing_shown_in_clear_holds_a_value_of_a_record(yielded: Any) -> None:
    """Sources, locators, reasons and notices are shown to operators and kept in clear (the
    quarantine's columns, Provenance): none may quote a value of any record yielded."""
    name, _, _, items = yielded
    values = {
        v
        for record in items
        if isinstance(record, SourceRecord)
        for v in _strings(dict(record.fields))
        if len(v) >= 6 and not v.isdigit() and v not in ("active", "unknown", "female")
    }
    shown: list[str] = []
    for item in items:
        if isinstance(item, SourceRecord | SourceProblem):
            shown += [item.origin.source, item.origin.locator]
        if isinstance(item, SourceProblem):
            shown.append(item.reason)
        if isinstance(item, SourceNotice):
            shown.append(item.message)
    leaks = sorted({v for v in values for text in shown if v in text})
    assert not leaks, f"{name} shows record values in clear: {len(leaks)} of them"
