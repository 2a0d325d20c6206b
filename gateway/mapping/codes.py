"""Code tables (``mappings/codes/*.yaml``): a source value → a FHIR code, Coding or nothing.

Each entry maps one source value (a string, exactly as the source writes it after trimming) to a
``code`` (default: the value itself), a ``system`` (default: the table's), a ``display``, and
optionally one or more sensitivity ``label``s (ETH, PSY, SDV, HIV, STD, SEX, LOCIS) that the
mapping writes to ``meta.security`` of any resource carrying that code, so that a code of our
own systems (which ``consent_policies/labels.yaml`` does not know) still labels the resource.
An entry with ``omit: true`` is a value the source defines that maps to no element (``Data not
collected``). ``versions`` limits an entry to some source versions (a value added in FY2026).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CodeEntry:
    code: str | None  # None for an ``omit`` entry
    system: str | None
    display: str | None
    labels: frozenset[str]
    versions: frozenset[str] | None

    def coding(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.system:
            out["system"] = self.system
        if self.code is not None:
            out["code"] = self.code
        if self.display:
            out["display"] = self.display
        return out


@dataclass(frozen=True, slots=True)
class CodeTable:
    name: str
    system: str | None
    entries: Mapping[str, CodeEntry]


def table_from_dict(doc: Mapping[str, Any]) -> CodeTable:
    """A table from its (schema-validated) document; ValueError naming a duplicated value or an
    entry that needs a system it does not have."""
    system = doc.get("system")
    entries: dict[str, CodeEntry] = {}
    for position, item in enumerate(doc["codes"]):
        value = item["value"]
        if value in entries:
            raise ValueError(f"codes[{position}]: value is listed twice")
        omit = bool(item.get("omit", False))
        versions = item.get("versions")
        label = item.get("label") or ()
        entries[value] = CodeEntry(
            code=None if omit else item.get("code", value),
            system=None if omit else item.get("system", system),
            display=item.get("display"),
            labels=frozenset([label] if isinstance(label, str) else label),
            versions=frozenset(versions) if versions is not None else None,
        )
    return CodeTable(name=doc["name"], system=system, entries=entries)
