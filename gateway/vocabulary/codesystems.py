"""Code systems compared by canonical URI: one code system, however a partner spells it.

``canonical_system(system)`` is the URI FHIR R4 gives a code system (``Coding.system``) for any
of its aliases, from the table shipped next to this module (``code_systems.json``: ICD-10-CM,
ICD-10, SNOMED CT, LOINC, RxNorm, each with its HL7 OID). Before the lookup a system is
normalised: whitespace trimmed, trailing slashes dropped, ``urn:oid:`` read case-insensitively
(and a bare OID as ``urn:oid:``), scheme and host compared case-insensitively, ``https`` read as
``http``. The path is compared as written.

A system that is not in the table is returned **exactly as written**: two distinct systems
(e.g. two partners' identifier namespaces) are never conflated. A code system gets another
alias only by an entry in the table, so the rule "one code system, one entry" is reviewable in
one place.

Comparisons (labels, consent facts, the search index, search criteria, Consent provisions)
canonicalise; a stored resource keeps the system as its writer wrote it.

The floor below every layer: imports nothing from ``gateway``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, overload

TABLE_FILE = Path(__file__).with_name("code_systems.json")

_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
_OID_PREFIX = "urn:oid:"
# SNOMED CT edition URIs: http://snomed.info/sct/<module>[/version/<date>] (SNOMED URI standard)
_SNOMED_EDITION = re.compile(r"(http://snomed\.info/sct)/[0-9]+(?:/version/[0-9]+)?")


def _key(system: str) -> str:
    """The normalised form a system is looked up by (never returned for an unknown system)."""
    text = system.strip().rstrip("/")
    if text[: len(_OID_PREFIX)].lower() == _OID_PREFIX:
        return _OID_PREFIX + text[len(_OID_PREFIX) :]
    if _OID.fullmatch(text):
        return _OID_PREFIX + text
    scheme, sep, rest = text.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        host, slash, path = rest.partition("/")
        return f"http://{host.lower()}{slash}{path}"
    return text


def aliases_from_dict(doc: Mapping[str, Any]) -> dict[str, str]:
    """Normalised alias -> canonical URI, from a table document; ValueError when the table is
    inconsistent (a canonical URI not in normal form, an alias claimed by two code systems)."""
    out: dict[str, str] = {}
    for entry in doc["code_systems"]:
        uri = entry["uri"]
        if _key(uri) != uri:
            raise ValueError(f"code system URI {uri!r} is not in normal form")
        spellings = [uri, _OID_PREFIX + entry["oid"], *entry.get("aliases", ())]
        for spelling in spellings:
            key = _key(spelling)
            if out.setdefault(key, uri) != uri:
                raise ValueError(f"{spelling!r} names both {out[key]!r} and {uri!r}")
    return out


def load_table(path: Path = TABLE_FILE) -> dict[str, str]:
    return aliases_from_dict(json.loads(path.read_text(encoding="utf-8")))


_CANONICAL: Mapping[str, str] = load_table()


@overload
def canonical_system(system: str) -> str: ...
@overload
def canonical_system(system: None) -> None: ...
@overload
def canonical_system(system: str | None) -> str | None: ...


def canonical_system(system: str | None) -> str | None:
    """The canonical URI of a listed code system; any other system (and None) unchanged."""
    if not isinstance(system, str):
        return system
    # Only plausible URIs are cached: the cache is bounded in entries and so, here, in bytes.
    return _canonical(system) if len(system) <= 256 else _canonical.__wrapped__(system)


@functools.lru_cache(maxsize=16_384)  # a network uses a few dozen systems, in every record
def _canonical(system: str) -> str:
    key = _key(system)
    edition = _SNOMED_EDITION.fullmatch(key)
    if edition is not None:  # an edition (and version) URI is still SNOMED CT
        key = edition.group(1)
    return _CANONICAL.get(key, system)


def canonical_uris() -> frozenset[str]:
    """The canonical URIs of the code systems in the table."""
    return frozenset(_CANONICAL.values())
