"""Security labels set at write time, from the code tables in ``consent_policies/labels.yaml``.

``labels_for(resource, contributor_kind=..., tables=...)`` returns the ``meta.security``
Codings a resource should carry when it is stored:

- the writer's own labels, always kept (in their order);
- sensitivity labels (system v3-ActCode) for the codes it carries: SUD codes → ETH,
  mental-health codes → PSY, trafficking and violence codes → SDV (exact codes, or ICD-10
  prefixes compared with dots removed and upper-cased; systems, in the resource as in the tables,
  by canonical URI, ``gateway.vocabulary.codesystems``: an OID or other alias of ICD-10-CM labels
  alike). Codes are read from every Coding in the resource except ``meta`` and, on a Consent,
  ``provision`` (what a Consent governs is not the
  patient's condition);
- LOCIS when a partner of a location kind (shelter) contributed a Patient with an address, or
  any resource with a location element or a Location reference;
- a confidentiality (system v3-Confidentiality): the highest of the writer's own, the
  contributor kind's (shelter → R) and the labels' (ETH/PSY/SDV/LOCIS → R). Never lowered: a
  writer's V stays V; a writer's N is raised to R (a resource has one confidentiality).

Pure: no I/O once the tables are loaded (``load_label_tables``).
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.consent.policy import read_validated
from gateway.vocabulary.codesystems import canonical_system
from gateway.vocabulary.references import local_reference

LABELS_FILE = "labels.yaml"

_DISPLAY = {
    "ETH": "substance abuse information sensitivity",
    "PSY": "psychiatry disorder information sensitivity",
    "SDV": "sexual assault, abuse, or domestic violence information sensitivity",
    "LOCIS": "location information sensitivity",
    "U": "unrestricted",
    "L": "low",
    "M": "moderate",
    "N": "normal",
    "R": "restricted",
    "V": "very restricted",
}


@dataclass(frozen=True, slots=True)
class LabelTables:
    sensitivity_system: str
    confidentiality_system: str
    exact: Mapping[tuple[str, str], frozenset[str]]  # (system, code) -> labels
    prefixes: Mapping[str, tuple[tuple[str, str], ...]]  # system -> ((prefix, label), ...)
    location_label: str | None
    location_kinds: frozenset[str]
    patient_elements: tuple[str, ...]
    location_keys: frozenset[str]
    location_reference_types: frozenset[str]
    confidentiality_order: tuple[str, ...]
    confidentiality_by_kind: Mapping[str, str]
    confidentiality_by_label: Mapping[str, str]


def load_label_tables(policies_dir: Path) -> LabelTables:
    """Read ``labels.yaml``, validated against ``schema.json#/$defs/labelTables``."""
    return tables_from_dict(read_validated(Path(policies_dir), LABELS_FILE, "labelTables"))


def tables_from_dict(doc: Mapping[str, Any]) -> LabelTables:
    exact: dict[tuple[str, str], set[str]] = {}
    prefixes: dict[str, list[tuple[str, str]]] = {}
    for label, rules in doc["sensitivity"].items():
        for rule in rules:
            system = canonical_system(rule["system"])
            for code in rule.get("codes", ()):
                exact.setdefault((system, code), set()).add(label)
            for prefix in rule.get("prefixes", ()):
                prefixes.setdefault(system, []).append((_fold(prefix), label))
    location = doc.get("location") or {}
    conf = doc.get("confidentiality") or {}
    return LabelTables(
        sensitivity_system=doc["sensitivity_system"],
        confidentiality_system=doc["confidentiality_system"],
        exact={k: frozenset(v) for k, v in exact.items()},
        prefixes={k: tuple(v) for k, v in prefixes.items()},
        location_label=location.get("label"),
        location_kinds=frozenset(location.get("contributor_kinds", ())),
        patient_elements=tuple(location.get("patient_elements", ())),
        location_keys=frozenset(location.get("location_keys", ())),
        location_reference_types=frozenset(location.get("reference_types", ())),
        confidentiality_order=tuple(conf.get("order", ("U", "L", "M", "N", "R", "V"))),
        confidentiality_by_kind=dict(conf.get("by_contributor_kind", {})),
        confidentiality_by_label=dict(conf.get("by_label", {})),
    )


def _fold(code: str) -> str:
    # Only short codes are cached (the cache is bounded in entries, so here in bytes too).
    return _fold_cached(code) if len(code) <= 128 else _fold_cached.__wrapped__(code)


@functools.lru_cache(maxsize=65_536)
def _fold_cached(code: str) -> str:
    return _plain(code).replace(".", "").upper()


def _plain(code: str) -> str:
    return _plain_cached(code) if len(code) <= 128 else _plain_cached.__wrapped__(code)


@functools.lru_cache(maxsize=65_536)
def _plain_cached(code: str) -> str:
    """A code as compared: compatibility-normalised (a fullwidth F is F), invisible format
    characters (zero-width spaces) dropped, and a SNOMED expression's ``|term|`` cut off."""
    text = unicodedata.normalize("NFKC", code)
    text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return text.split("|", 1)[0].strip()


def _codings(node: Any, *, skip: frozenset[str]) -> Iterator[dict[str, Any]]:
    """Every dict with a string ``system`` and ``code`` under ``node`` (top-level ``skip`` keys
    left out)."""
    stack: list[Any] = (
        [v for k, v in node.items() if k not in skip] if isinstance(node, dict) else []
    )
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("system"), str) and isinstance(item.get("code"), str):
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def sensitivity_of(resource: Mapping[str, Any], tables: LabelTables) -> set[str]:
    """The sensitivity labels the resource's codes call for."""
    skip = frozenset(
        {"meta", "provision"} if resource.get("resourceType") == "Consent" else {"meta"}
    )
    found: set[str] = set()
    for coding in _codings(resource, skip=skip):
        system, code = canonical_system(coding["system"]), coding["code"]
        found |= tables.exact.get((system, _plain(code)), frozenset())
        rules = tables.prefixes.get(system)
        if rules:
            folded = _fold(code)
            found.update(label for prefix, label in rules if folded.startswith(prefix))
    return found


def _has_location(resource: Mapping[str, Any], tables: LabelTables) -> bool:
    if resource.get("resourceType") == "Patient" and any(
        resource.get(e) for e in tables.patient_elements
    ):
        return True
    stack: list[Any] = [{k: v for k, v in resource.items() if k != "meta"}]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in tables.location_keys and value:
                    return True
                if key == "reference" and isinstance(value, str):
                    ref = local_reference(value)
                    if ref and ref.split("/", 1)[0] in tables.location_reference_types:
                        return True
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return False


def labels_for(
    resource: Mapping[str, Any], *, contributor_kind: str | None, tables: LabelTables
) -> list[dict[str, Any]]:
    """The ``meta.security`` Codings to store: the writer's own, plus what the tables add."""
    meta = resource.get("meta")
    own = meta.get("security") if isinstance(meta, dict) else None
    kept: list[dict[str, Any]] = [dict(c) for c in own or () if isinstance(c, dict)]

    wanted = sensitivity_of(resource, tables)
    if (
        tables.location_label
        and contributor_kind in tables.location_kinds
        and _has_location(resource, tables)
    ):
        wanted.add(tables.location_label)
    present = {c.get("code") for c in kept if c.get("system") in (tables.sensitivity_system, None)}
    out = kept + [_coding(tables.sensitivity_system, label) for label in sorted(wanted - present)]

    # Confidentiality: the highest asked for; never lower than the writer's.
    order = tables.confidentiality_order
    rank = {code: i for i, code in enumerate(order)}
    conf_system = tables.confidentiality_system
    existing = [c for c in out if c.get("system") == conf_system and c.get("code") in rank]
    by_label = tables.confidentiality_by_label
    asked = [by_label[x] for c in out if isinstance(x := c.get("code"), str) and x in by_label]
    if contributor_kind is not None and contributor_kind in tables.confidentiality_by_kind:
        asked.append(tables.confidentiality_by_kind[contributor_kind])
    asked = [a for a in asked if a in rank]
    if not asked:
        return out
    target = max(asked, key=rank.__getitem__)
    current = max((rank[c["code"]] for c in existing), default=-1)
    if current >= rank[target]:
        return out
    out = [c for c in out if not (c.get("system") == conf_system and c.get("code") in rank)]
    out.append(_coding(conf_system, target))
    return out


def _coding(system: str, code: str) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if code in _DISPLAY:
        coding["display"] = _DISPLAY[code]
    return coding
