"""What a mapping takes and gives: ``MappingContext`` in, ``Mapped`` out.

``Mapped.resources`` are FHIR R4 dicts **without** ``id`` (the pipeline derives one from each
``MappedResource.key``); references to other mapped records are placeholders
(``gateway.mapping.placeholders``). ``Mapped.problems`` say what could not be mapped: the place
(file, row, column or field path) and a reason naming fields, tables and elements, **never a
source value**. A problem marked ``blocking`` (a required element) means the record produced no
resources at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.mapping.placeholders import SourceKey
from gateway.vocabulary.references import ID_PATTERN
from gateway.vocabulary.source import Place

ORGANIZATION_PREFIXES = frozenset({"facility", "name", "id"})
_ORGANIZATION_REFERENCE = re.compile(r"Organization/[A-Za-z0-9\-.]{1,64}")


@dataclass(frozen=True, slots=True)
class MappingContext:
    """Who the records come from: the partner's id (its Organization is
    ``Organization/<partner_id>``) and its kind (``shelter``, ``clinic``, ...).

    ``organizations``: the network's partner Organizations by lookup key, for ``$organization``
    (a referral's or a consent's recipient): ``facility:<hl7_sending_facility>``,
    ``name:<partner name, case-folded, runs of spaces made one>``, ``id:<partner id>`` ->
    ``Organization/<partner id>``. Empty by default: then every recipient is unknown."""

    partner_id: str
    partner_kind: str
    organizations: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The partner id becomes part of identifier systems and a local reference.
        if not isinstance(self.partner_id, str) or not ID_PATTERN.fullmatch(self.partner_id):
            raise ValueError("partner_id is not a FHIR id")
        if not isinstance(self.partner_kind, str) or not self.partner_kind:
            raise ValueError("partner_kind is empty")
        if not isinstance(self.organizations, Mapping):
            raise ValueError("organizations is not a mapping")
        copy: dict[str, str] = {}
        for key, reference in self.organizations.items():
            if not isinstance(key, str) or not key.partition(":")[2]:
                raise ValueError("an organizations key is not <prefix>:<value>")
            if key.partition(":")[0] not in ORGANIZATION_PREFIXES:
                raise ValueError("an organizations key is not <prefix>:<value>")
            if not isinstance(reference, str) or not _ORGANIZATION_REFERENCE.fullmatch(reference):
                raise ValueError("an organizations value is not Organization/<id>")
            copy[key] = reference
        object.__setattr__(self, "organizations", copy)  # a copy the caller cannot change


@dataclass(frozen=True, slots=True)
class MappingVersion:
    """Which mapping made a resource (for Provenance): the spec's declared ``version`` and the
    SHA-256 of its content together with the code tables it uses."""

    system: str
    record_type: str
    version: str
    sha256: str


@dataclass(frozen=True, slots=True)
class MappingProblem:
    place: Place
    reason: str
    element: str = ""  # the FHIR element it concerns (``Patient.birthDate``), when there is one
    blocking: bool = False  # a required element: the record produced no resources

    def as_json(self) -> dict[str, Any]:
        place = {
            k: v
            for k in ("file", "row", "column", "segment", "field")
            if (v := getattr(self.place, k)) not in ("", None)
        }
        out: dict[str, Any] = {"place": place, "reason": self.reason}
        if self.element:
            out["element"] = self.element
        out["blocking"] = self.blocking
        return out


@dataclass(frozen=True, slots=True)
class MappedResource:
    key: SourceKey
    resource: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"key": list(self.key), "resource": self.resource}


@dataclass(slots=True)
class Mapped:
    resources: list[MappedResource] = field(default_factory=list)
    problems: list[MappingProblem] = field(default_factory=list)
    mapping: MappingVersion | None = None

    @property
    def blocked(self) -> bool:
        return any(p.blocking for p in self.problems)

    def as_json(self) -> dict[str, Any]:
        """The JSON form the golden tests compare (the content hash left out: it changes with
        every edit of a spec's comments, the declared version does not)."""
        out: dict[str, Any] = {
            "resources": [r.as_json() for r in self.resources],
            "problems": [p.as_json() for p in self.problems],
        }
        if self.mapping is not None:
            out["mapping"] = {
                "system": self.mapping.system,
                "record_type": self.mapping.record_type,
                "version": self.mapping.version,
            }
        return out
