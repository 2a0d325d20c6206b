"""One code system, however a partner spells it: ``canonical_system`` maps every alias of a
listed code system to its FHIR R4 URI, and leaves every other system exactly as written."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from gateway.vocabulary import codesystems
from gateway.vocabulary.codesystems import aliases_from_dict, canonical_system, canonical_uris

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

# The HL7 OIDs of the listed code systems (FHIR R4 terminologies-systems; HL7 Terminology).
OIDS = {
    ICD10CM: "2.16.840.1.113883.6.90",
    ICD10: "2.16.840.1.113883.6.3",
    SNOMED: "2.16.840.1.113883.6.96",
    LOINC: "2.16.840.1.113883.6.1",
    RXNORM: "2.16.840.1.113883.6.88",
}


def spellings(uri: str) -> list[str]:
    """Every alias form of a listed code system the gateway must read as that system."""
    oid = OIDS[uri]
    scheme, _, rest = uri.partition("://")
    host, _, path = rest.partition("/")
    tail = f"/{path}" if path else ""
    return [
        uri,
        f"urn:oid:{oid}",
        f"URN:OID:{oid}",
        f"Urn:Oid:{oid}",
        f"urn:oid:{oid}/",
        oid,  # a bare OID (not a FHIR system, but seen in data mapped from v2 and CDA)
        f"https://{rest}",
        f"HTTPS://{rest}",
        f"{uri}/",
        f"{uri}//",
        f"https://{rest}/",
        f"{scheme}://{host.upper()}{tail}",
        f"https://{host.upper()}{tail}/",
        f"  {uri}\n",
        f" urn:oid:{oid} ",
    ]


@pytest.mark.parametrize(
    ("uri", "alias"), [(uri, alias) for uri in OIDS for alias in spellings(uri)]
)
def test_every_alias_of_a_listed_code_system_is_its_canonical_uri(uri: str, alias: str) -> None:
    assert canonical_system(alias) == uri


def test_the_table_lists_exactly_the_five_code_systems_with_their_hl7_oids() -> None:
    assert canonical_uris() == frozenset(OIDS)
    doc = json.loads(codesystems.TABLE_FILE.read_text(encoding="utf-8"))
    assert {e["uri"]: e["oid"] for e in doc["code_systems"]} == OIDS


def test_the_tho_stub_uri_of_icd10_is_icd10() -> None:
    assert canonical_system("http://terminology.hl7.org/CodeSystem/icd10") == ICD10


@pytest.mark.parametrize(
    "system",
    [
        "urn:oid:2.16.840.1.113883.3.9999.1",  # the shelter's record numbers
        "URN:OID:2.16.840.1.113883.3.9999.1",  # unknown: not even its case is touched
        "urn:oid:2.16.840.1.113883.6.900",  # an OID that merely starts like ICD-10-CM's
        "urn:oid:2.16.840.1.113883.6.90.1",
        "2.16.840.1.113883.6.9",
        "http://example.org/local",
        "HTTPS://Example.org/local/",  # unknown systems are never normalised
        "http://hl7.org/fhir/sid/icd-10-cm-pcs",
        "http://hl7.org/fhir/sid/icd-10-cm/extra",
        "http://hl7.org/fhir/sid/ICD-10-CM",  # the path is compared as written
        "http://hl7.org/fhir/sid/icd-9-cm",
        "http://snomed.info/sctx/731000124108",
        "http://terminology.hl7.org/CodeSystem/v3-ActCode",
        "ftp://loinc.org",
        "loinc.org",
        "",
        " ",
    ],
)
def test_other_systems_are_returned_exactly_as_written(system: str) -> None:
    assert canonical_system(system) == system


def test_no_system_stays_no_system() -> None:
    assert canonical_system(None) is None


def test_two_code_systems_never_share_an_alias() -> None:
    clash = {
        "code_systems": [
            {"uri": ICD10CM, "oid": "2.16.840.1.113883.6.90"},
            {
                "uri": ICD10,
                "oid": "2.16.840.1.113883.6.3",
                "aliases": ["https://hl7.org/fhir/sid/icd-10-cm/"],
            },
        ]
    }
    with pytest.raises(ValueError, match="names both"):
        aliases_from_dict(clash)


def test_a_canonical_uri_must_be_written_in_normal_form() -> None:
    with pytest.raises(ValueError, match="normal form"):
        aliases_from_dict({"code_systems": [{"uri": "https://loinc.org/", "oid": "1.2"}]})


def test_the_vocabulary_floor_imports_nothing_from_the_gateway() -> None:
    source = Path(codesystems.__file__).read_text(encoding="utf-8")
    imported = [
        name
        for node in ast.walk(ast.parse(source))
        for name in (
            [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    ]
    assert not [m for m in imported if m == "gateway" or m.startswith("gateway.")]


@pytest.mark.parametrize(
    "edition",
    ["http://snomed.info/sct/731000124108", "http://snomed.info/sct/900000000000207008/",
     "https://snomed.info/sct/731000124108/version/20250301"],
)  # fmt: skip
def test_a_snomed_edition_uri_is_snomed_ct(edition: str) -> None:
    # The SNOMED URI standard: an edition (and version) of SNOMED CT is still SNOMED CT, and a
    # US-edition code must get the label its international code gets.
    assert canonical_system(edition) == "http://snomed.info/sct"
