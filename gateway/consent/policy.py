"""The network policy (``consent_policies/network.yaml``): the rules above every Consent.

``load_policy(policies_dir)`` reads ``network.yaml``, validates it against
``consent_policies/schema.json`` (JSON Schema 2020-12), checks what a schema cannot (rule ids
unique), and returns an immutable ``Policy`` of frozensets that ``engine.decide`` reads without
further work. A bad file raises ``PolicyError`` naming the file and the field, e.g.
``network.yaml: kinds.legal-aid.resource_types[0]: 'Foo' is not one of [...]``.

What the policy says (see the comments in network.yaml):
- deny by default: a partner kind not listed receives nothing; a listed kind receives only its
  ``resource_types`` (and the ``directory_types`` that belong to no patient);
- ``explicit_consent_labels`` (default ETH, PSY, SDV, LOCIS) and per kind
  ``labels_needing_provision`` (e.g. legal aid: PSY) are released only by a permit provision
  that lists them; per kind ``never_labels`` are never released;
- ``shelter``: the kinds whose data needs a written, time-limited Consent (VAWA) and the
  maximum length of that Consent in days;
- ``redactions``: obligations attached to a release;
- ``person_identifiers``: the identifier systems that name a person network-wide (Patients
  sharing one are the same person; only these identifiers travel to other partners);
- ``emergency``: break-glass rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from gateway.vocabulary.registry import REGISTRY

NETWORK_FILE = "network.yaml"
SCHEMA_FILE = "schema.json"


class PolicyError(ValueError):
    """A policy file is missing, unreadable or invalid; the message names file and field."""

    def __init__(self, file: str, field: str, message: str) -> None:
        self.file = file
        self.field = field
        super().__init__(f"{file}: {field}: {message}" if field else f"{file}: {message}")


@dataclass(frozen=True, slots=True)
class Obligation:
    """Something that must happen to a released resource (``redact`` does the body part).

    - ``remove``: drop ``elements`` (dotted paths, lists flattened at every step);
    - ``remove-labelled``: drop every element carrying an inline security label ``label``
      (DS4P inline-sec-label extension);
    - ``notice``: add ``security`` (e.g. v3-ActCode NORDSCLCD) to ``meta.security`` and send
      ``text`` with the disclosure (the 42 CFR Part 2 re-disclosure notice);
    - ``keep-identifiers``: keep only the ``identifier`` entries whose system is in
      ``systems`` (the network's person identifiers): a partner's own record numbers name the
      partner (a shelter's MRN system says she is a client of that shelter).
    ``rule`` is the policy rule id, for the audit event.
    """

    rule: str
    action: str
    elements: tuple[str, ...] = ()
    label: str | None = None
    security: tuple[str, str, str | None] | None = None  # (system, code, display)
    text: str | None = None
    systems: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class KindRule:
    kind: str
    resource_types: frozenset[str]
    labels_needing_provision: frozenset[str]
    never_labels: frozenset[str]
    required_labels: frozenset[str]  # explicit_consent_labels | labels_needing_provision


@dataclass(frozen=True, slots=True)
class RedactionRule:
    """When a release carries ``obligation``: every condition given must hold."""

    obligation: Obligation
    resource_types: frozenset[str] | None  # None: every type
    partner_kinds: frozenset[str] | None
    contributor_kinds: frozenset[str] | None
    when_labels: frozenset[str] | None  # the resource carries any of them

    @property
    def id(self) -> str:
        return self.obligation.rule


@dataclass(frozen=True, slots=True)
class EmergencyRule:
    id: str
    purposes: frozenset[str]
    partner_kinds: frozenset[str]
    resource_types: frozenset[str]
    release_labels: frozenset[str]
    release_shelter_data: bool


@dataclass(frozen=True, slots=True)
class Policy:
    explicit_labels: frozenset[str]
    shelter_kinds: frozenset[str]
    shelter_max_days: int
    directory_types: frozenset[str]
    kinds: Mapping[str, KindRule]
    redactions: tuple[RedactionRule, ...]
    emergency: tuple[EmergencyRule, ...]
    source: str = "<memory>"
    # Who may record a Consent; absent from the file means nobody (deny by default).
    consent_writers: frozenset[str] = frozenset()
    consent_needs_written_source: bool = True
    # Identifier systems that name a person network-wide: Patients sharing one are linked.
    person_identifier_systems: frozenset[str] = frozenset()


def load_policy(policies_dir: Path) -> Policy:
    """Read and validate ``network.yaml`` in ``policies_dir``; raise ``PolicyError`` if bad."""
    doc = read_validated(Path(policies_dir), NETWORK_FILE, "network")
    return policy_from_dict(doc, source=str(Path(policies_dir) / NETWORK_FILE))


def policy_from_dict(doc: Mapping[str, Any], *, source: str = "<memory>") -> Policy:
    """Build a ``Policy`` from an already validated document (tests build variants this way)."""
    explicit = frozenset(doc["explicit_consent_labels"])
    person_systems = frozenset(doc.get("person_identifiers", {}).get("systems", ()))
    kinds: dict[str, KindRule] = {}
    for kind, rule in doc["kinds"].items():
        needing = frozenset(rule.get("labels_needing_provision", ()))
        kinds[kind] = KindRule(
            kind=kind,
            resource_types=frozenset(rule["resource_types"]),
            labels_needing_provision=needing,
            never_labels=frozenset(rule.get("never_labels", ())),
            required_labels=explicit | needing,
        )
    redactions = tuple(
        RedactionRule(
            obligation=Obligation(
                rule=r["id"],
                action=r["action"],
                elements=tuple(r.get("elements", ())),
                label=r.get("label"),
                security=(
                    (r["security"]["system"], r["security"]["code"], r["security"].get("display"))
                    if "security" in r
                    else None
                ),
                text=r.get("text"),
                systems=person_systems if r["action"] == "keep-identifiers" else frozenset(),
            ),
            resource_types=_opt(r.get("resource_types")),
            partner_kinds=_opt(r.get("partner_kinds")),
            contributor_kinds=_opt(r.get("contributor_kinds")),
            when_labels=_opt(r.get("when_labels")),
        )
        for r in doc.get("redactions", ())
    )
    emergency = tuple(
        EmergencyRule(
            id=e["id"],
            purposes=frozenset(e["purposes"]),
            partner_kinds=frozenset(e["partner_kinds"]),
            resource_types=frozenset(e["resource_types"]),
            release_labels=frozenset(e.get("release_labels", ())),
            release_shelter_data=bool(e.get("release_shelter_data", False)),
        )
        for e in doc.get("emergency", ())
    )
    _unique("redactions", (r.id for r in redactions))
    _unique("emergency", (e.id for e in emergency))
    return Policy(
        explicit_labels=explicit,
        shelter_kinds=frozenset(doc["shelter"]["contributor_kinds"]),
        shelter_max_days=int(doc["shelter"]["max_consent_days"]),
        directory_types=frozenset(doc.get("directory_types", ())),
        kinds=kinds,
        redactions=redactions,
        emergency=emergency,
        source=source,
        consent_writers=frozenset(doc.get("consent_writing", {}).get("partner_kinds", ())),
        consent_needs_written_source=bool(
            doc.get("consent_writing", {}).get("written_source_required", True)
        ),
        person_identifier_systems=person_systems,
    )


def _opt(values: Iterable[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


def _unique(field: str, ids: Iterable[str]) -> None:
    seen: set[str] = set()
    for i, rule_id in enumerate(ids):
        if rule_id in seen:
            raise PolicyError(NETWORK_FILE, f"{field}[{i}].id", f"duplicate rule id {rule_id!r}")
        seen.add(rule_id)


# ---------------------------------------------------------------------------------------------
# Reading and validating YAML against schema.json


def read_validated(policies_dir: Path, file: str, definition: str) -> dict[str, Any]:
    """Load ``policies_dir/file`` and validate it against ``schema.json#/$defs/<definition>``."""
    path = policies_dir / file
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(file, "", f"cannot read ({exc.strerror or exc})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise PolicyError(file, where, f"not valid YAML ({getattr(exc, 'problem', exc)})") from None
    validator = _validator(policies_dir / SCHEMA_FILE, definition)
    errors = sorted(validator.iter_errors(doc), key=lambda e: (list(e.absolute_path), e.message))
    if errors:
        error = _most_specific(errors[0])
        raise PolicyError(file, field_path(error.absolute_path) or "(top level)", error.message)
    if not isinstance(doc, dict):  # pragma: no cover (the schema requires an object)
        raise PolicyError(file, "(top level)", "must be a mapping")
    return doc


def _most_specific(error: ValidationError) -> ValidationError:
    """For anyOf/oneOf failures, descend to the deepest sub-error (names the real field)."""
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    return error


def field_path(path: Iterable[Any]) -> str:
    """``kinds.legal-aid.resource_types[0]`` from a jsonschema path."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


@cache
def _schema(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PolicyError(path.name, "", f"cannot read the schema ({exc})") from None
    Draft202012Validator.check_schema(doc)
    if not isinstance(doc, dict):  # pragma: no cover
        raise PolicyError(path.name, "", "schema must be an object")
    return doc


def _validator(schema_path: Path, definition: str) -> Draft202012Validator:
    schema = dict(_schema(schema_path))
    schema["$ref"] = f"#/$defs/{definition}"
    defs = dict(schema.get("$defs") or {})
    if "resourceType" in defs:  # the registry says which types there are
        defs["resourceType"] = {**defs["resourceType"], "enum": list(REGISTRY)}
        schema["$defs"] = defs
    return Draft202012Validator(schema)
