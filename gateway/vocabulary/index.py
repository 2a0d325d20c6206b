"""Index entries: what a resource says about itself for search and for consent, derived at
write time from the registry's paths (``gateway.vocabulary.registry``).

Each resource version is reduced, when it is written, to ``IndexEntry`` rows (token, reference,
date, string), so that a search runs on the index and never decrypts a row it will not return,
and the consent engine reads the same facts (``consent.engine.facts_from_index``).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from gateway.vocabulary.codesystems import canonical_system
from gateway.vocabulary.dates import date_span
from gateway.vocabulary.references import reference_parts as reference_of
from gateway.vocabulary.registry import (
    _BY_TYPE,
    ANY_PATIENT,
    CONSENT_ACTIVE,
    CONSENT_ACTOR,
    CONSENT_PATIENT,
    FACT_PARAMS,
    INLINE_LABEL_PARAM,
    Kind,
    SearchParam,
)
from gateway.vocabulary.security import INLINE_LABEL


class IndexEntry(NamedTuple):
    """One index row. A tuple: immutable, hashable, and cheap to build (a search under consent
    builds hundreds from the index; a frozen dataclass cost more than the query)."""

    param: str
    system: str | None = None
    code: str | None = None
    text: str | None = None  # normalised: accent- and case-folded
    raw: str | None = None  # as written, for :exact
    ref_type: str | None = None
    ref_id: str | None = None
    low: str | None = None  # date range, as UTC timestamp strings (sortable)
    high: str | None = None


ANY_PATIENT_ENTRY = IndexEntry(CONSENT_PATIENT, ref_type="Patient", ref_id=ANY_PATIENT)
# An actor a Consent names that is not a local record (a foreign URL, an identifier): a deny
# naming it applies to every requester (fail closed), so the probe must find it too.
ANY_ACTOR_ENTRY = IndexEntry(CONSENT_ACTOR, ref_type="*", ref_id="*")
CONSENT_ACTIVE_ENTRY = IndexEntry(CONSENT_ACTIVE)


# Per type: (parameter, path split into steps), computed once; the client's parameters and the
# internal consent facts.
_PLAN: dict[str, tuple[tuple[SearchParam, tuple[str, ...]], ...]] = {
    t: tuple(
        (p, tuple(path.split(".")))
        for p in (*by_name.values(), *FACT_PARAMS.get(t, ()))
        for path in p.paths
    )
    for t, by_name in _BY_TYPE.items()
}


def extract(resource: dict[str, Any]) -> list[IndexEntry]:
    """All index rows for one resource; duplicates removed, order stable."""
    entries: dict[IndexEntry, None] = {}
    for param, steps in _PLAN[resource["resourceType"]]:
        for value in values_at(resource, steps):
            for entry in _entries(param, value):
                entries[entry] = None
    if resource["resourceType"] == "Consent" and not any(
        e.param == CONSENT_PATIENT for e in entries
    ):
        # A Consent whose patient cannot be read still denies (for every patient of its
        # recorder): it is filed under every patient, so that it is read with each one's.
        entries[ANY_PATIENT_ENTRY] = None
    if resource["resourceType"] == "Consent" and resource.get("status") == "active":
        entries[CONSENT_ACTIVE_ENTRY] = None
    for label in sorted(_inline_labels(resource)):
        entries[IndexEntry(INLINE_LABEL_PARAM, code=label)] = None
    return list(entries)


def _inline_labels(resource: dict[str, Any]) -> set[str]:
    found: set[str] = set()
    stack: list[Any] = [resource]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("url") == INLINE_LABEL:
                coding = node.get("valueCoding")
                if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                    found.add(coding["code"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def values_at(resource: Any, steps: Sequence[str]) -> list[Any]:
    """The values at a dotted path, lists flattened at every step (FHIRPath-style)."""
    nodes: list[Any] = [resource]
    for step in steps:
        found: list[Any] = []
        for node in nodes:
            if isinstance(node, dict):
                value = node.get(step)
                if isinstance(value, list):
                    found.extend(value)
                elif value is not None:
                    found.append(value)
        if not found:
            return found
        nodes = found
    return nodes


def _entries(param: SearchParam, value: Any) -> Iterator[IndexEntry]:
    if param.kind is Kind.TOKEN:
        yield from _tokens(param.name, value)
    elif param.name == CONSENT_ACTOR:
        ref = reference_of(value)
        yield IndexEntry(param.name, ref_type=ref[0], ref_id=ref[1]) if ref else ANY_ACTOR_ENTRY
    elif param.kind is Kind.REFERENCE:
        ref = reference_of(value)
        if ref and (not param.targets or ref[0] in param.targets):
            yield IndexEntry(param.name, ref_type=ref[0], ref_id=ref[1])
    elif param.kind is Kind.DATE:
        span = date_span(value)
        if span:
            yield IndexEntry(param.name, low=span[0], high=span[1])
    elif param.kind in (Kind.STRING, Kind.URI) and isinstance(value, str):
        yield IndexEntry(param.name, text=normalise(value), raw=value)


def _tokens(name: str, value: Any) -> Iterator[IndexEntry]:
    """Token rows. Systems are indexed canonical (``gateway.vocabulary.codesystems``: an alias
    of a listed code system as its URI, any other system as written), so that search and
    consent compare one code system alike however it was spelt; the resource keeps its own."""
    if isinstance(value, bool):
        yield IndexEntry(name, code="true" if value else "false")
    elif isinstance(value, str):
        yield IndexEntry(name, code=value)
    elif isinstance(value, dict):
        if "coding" in value:  # CodeableConcept
            for coding in value.get("coding") or []:
                if isinstance(coding, dict) and coding.get("code"):
                    system = canonical_system(coding.get("system"))
                    yield IndexEntry(name, system=system, code=coding["code"])
        elif "value" in value and isinstance(value["value"], str):  # Identifier
            system = canonical_system(value.get("system"))
            yield IndexEntry(name, system=system, code=value["value"])
        elif value.get("code"):  # Coding
            yield IndexEntry(name, system=canonical_system(value.get("system")), code=value["code"])


def normalise(text: str) -> str:
    """FHIR string search: case- and accent-insensitive."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()
