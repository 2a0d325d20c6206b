"""Redaction: apply a ``Decision``'s obligations to a resource body (DESIGN.md section 4,
"Decide, then redact"). Pure: returns a new dict, never changes its argument.

- ``remove``: drop the elements at the obligation's dotted paths (lists flattened at every
  step), with their primitive extensions (``_birthDate``); containers left empty are dropped
  too, so the result stays valid JSON for FHIR (no ``{}`` or ``[]``);
- ``remove-labelled``: drop every element that carries the DS4P inline security label
  extension with the obligation's label (e.g. LOCIS), wherever it is;
- ``keep-identifiers``: keep only the top-level ``identifier`` entries in the obligation's
  ``systems`` (the network's person identifiers);
- ``notice``: add the obligation's security Coding (NORDSCLCD for 42 CFR Part 2) to
  ``meta.security``; the notice text itself goes with the disclosure (the caller's part);
- when something was removed, ``meta.security`` also gets v3-ObservationValue REDACTED, so the
  recipient knows the copy is incomplete.

An obligation this module does not know raises ``ValueError``: an obligation that cannot be
honoured must stop the disclosure, never be skipped.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from gateway.consent.policy import Obligation
from gateway.vocabulary.security import INLINE_LABEL

OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
REDACTED = {"system": OBSERVATION_VALUE, "code": "REDACTED", "display": "redacted"}


def redact(resource: dict[str, Any], obligations: Sequence[Obligation]) -> dict[str, Any]:
    """A copy of ``resource`` with ``obligations`` applied."""
    out: dict[str, Any] = _copy(resource)
    removed = False
    for ob in obligations:
        if ob.action == "remove":
            for path in ob.elements:
                removed |= _remove_path(out, path.split("."))
        elif ob.action == "remove-labelled":
            if ob.label is None:
                raise ValueError(f"obligation {ob.rule}: remove-labelled without a label")
            removed |= _remove_labelled(out, ob.label)
        elif ob.action == "keep-identifiers":
            removed |= _keep_identifiers(out, ob.systems)
        elif ob.action == "notice":
            if ob.security is not None:
                system, code, display = ob.security
                coding = {"system": system, "code": code}
                if display:
                    coding["display"] = display
                _add_security(out, coding)
        else:
            raise ValueError(f"obligation {ob.rule}: unknown action {ob.action!r}")
    if removed:
        _add_security(out, dict(REDACTED))
    return out


def may_change(body: bytes, obligation: Obligation) -> bool:
    """Whether ``redact`` could change the resource whose canonical JSON is ``body`` (compact,
    as ``store.records.canonical`` writes it) under ``obligation``; False only when it
    certainly could not, so a release without such obligations skips parsing and copying.
    A ``remove`` needs the first step of a path as a key somewhere in the body (``"address":``
    or ``"_address":``), a ``remove-labelled`` the inline label extension's URL, a
    ``keep-identifiers`` an ``identifier``; a ``notice`` always changes ``meta.security``."""
    if obligation.action in ("remove", "remove-labelled", "keep-identifiers"):
        return _marker(obligation).search(body) is not None
    return True  # notice, and any action redact would refuse: let redact decide


@functools.lru_cache(maxsize=256)
def _marker(obligation: Obligation) -> re.Pattern[bytes]:
    """One pattern, one pass over the body: any of the keys (or the URL) it must contain."""
    if obligation.action == "remove-labelled":
        return re.compile(re.escape(INLINE_LABEL.encode()))
    if obligation.action == "keep-identifiers":
        return re.compile(b'"identifier":')
    steps = sorted({path.split(".", 1)[0] for path in obligation.elements})
    if not steps:
        return re.compile(b"(?!)")  # removes nothing: matches nothing
    keys = b"|".join(re.escape(step.encode()) for step in steps)
    return re.compile(b'"_?(?:' + keys + b')":')


def _keep_identifiers(resource: dict[str, Any], systems: frozenset[str]) -> bool:
    identifiers = resource.get("identifier")
    if not isinstance(identifiers, list):
        return resource.pop("identifier", None) is not None
    kept = [i for i in identifiers if isinstance(i, dict) and i.get("system") in systems]
    if len(kept) == len(identifiers):
        return False
    if kept:
        resource["identifier"] = kept
    else:
        del resource["identifier"]
    return True


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _add_security(resource: dict[str, Any], coding: dict[str, Any]) -> None:
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        meta = resource["meta"] = {}
    security = meta.get("security")
    if not isinstance(security, list):
        security = meta["security"] = []
    key = (coding.get("system"), coding.get("code"))
    if not any(isinstance(c, dict) and (c.get("system"), c.get("code")) == key for c in security):
        security.append(coding)


def _remove_path(node: Any, steps: list[str]) -> bool:
    """Remove the elements at ``steps`` under ``node``; True when something was removed."""
    if isinstance(node, list):
        removed = False
        for item in node:
            removed |= _remove_path(item, steps)
        if removed:
            node[:] = [i for i in node if not _empty(i)]
        return removed
    if not isinstance(node, dict):
        return False
    step = steps[0]
    if len(steps) == 1:
        found = step in node or f"_{step}" in node
        node.pop(step, None)
        node.pop(f"_{step}", None)
        return found
    child = node.get(step)
    if child is None or not _remove_path(child, steps[1:]):
        return False
    if _empty(child):
        del node[step]
    return True


def _empty(value: Any) -> bool:
    return isinstance(value, dict | list) and not value


def _carries(value: Any, label: str) -> bool:
    if not isinstance(value, dict):
        return False
    extensions = value.get("extension")
    for ext in extensions if isinstance(extensions, list) else ():
        if isinstance(ext, dict) and ext.get("url") == INLINE_LABEL:
            coding = ext.get("valueCoding")
            if isinstance(coding, dict) and coding.get("code") == label:
                return True
    return False


def _remove_labelled(node: Any, label: str) -> bool:
    removed = False
    if isinstance(node, list):
        kept = [i for i in node if not _carries(i, label)]
        if len(kept) != len(node):
            node[:] = kept
            removed = True
        for item in node:
            removed |= _remove_labelled(item, label)
        if removed:
            node[:] = [i for i in node if not _empty(i)]
        return removed
    if not isinstance(node, dict):
        return False
    for key in list(node):
        if key not in node:
            continue
        value = node[key]
        if _carries(value, label):
            del node[key]
            # the primitive and its extension holder go together: "birthDate" / "_birthDate"
            node.pop(key[1:] if key.startswith("_") else f"_{key}", None)
            removed = True
            continue
        if key.startswith("_") and isinstance(value, list) and isinstance(node.get(key[1:]), list):
            marked = {i for i, v in enumerate(value) if _carries(v, label)}
            if marked:
                node[key[1:]] = [v for i, v in enumerate(node[key[1:]]) if i not in marked]
                node[key] = [v for i, v in enumerate(value) if i not in marked]
                removed = True
                for k in (key, key[1:]):
                    if not node[k] or all(v is None for v in node[k]):
                        del node[k]
                continue
        if _remove_labelled(value, label):
            removed = True
            if _empty(value):
                del node[key]
    return removed
