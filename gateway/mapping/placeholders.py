"""Placeholder references: how a mapped resource names another mapped record before ids exist.

A mapping never knows the id a record will be stored under (the pipeline derives it from the
record's key), so a reference to another mapped record is written as a placeholder the pipeline
rewrites before validation::

    {"reference": "urn:care-gateway:source:<ResourceType>:<record_type>:<source_id>"}

- ``<ResourceType>`` is a FHIR resource type name (``[A-Z][A-Za-z]{0,63}``), written as is;
- ``<record_type>`` and ``<source_id>`` are percent-encoded (RFC 3986): every octet of their
  UTF-8 form except the unreserved characters ``A-Z a-z 0-9 - . _ ~`` is written ``%XX`` with
  upper-case hex digits. So neither can contain ``:``, ``/`` or ``#``, and the three parts always
  split unambiguously. ``Client`` / ``PersonalID 4711:a`` becomes ``Client:4711%3Aa``.

Only the canonical spelling parses (lower-case hex, an unescaped reserved character or an empty
part is refused), so one record has exactly one placeholder. A placeholder is resolved only
within the ingest of the partner whose records produced it: the same ``source_id`` at another
partner is another person.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple
from urllib.parse import quote, unquote

from gateway.vocabulary.references import TYPE_PATTERN

PREFIX = "urn:care-gateway:source:"
_PART = re.compile(r"(?:[A-Za-z0-9\-._~]|%[0-9A-F]{2})+")


class SourceKey(NamedTuple):
    """What a mapped resource is, before it has an id: (FHIR type, source record type, id)."""

    resource_type: str
    record_type: str
    source_id: str

    def placeholder(self) -> str:
        return source_reference(self.resource_type, self.record_type, self.source_id)


_UNRESERVED = re.compile(r"[A-Za-z0-9\-._~]+")


def _escape(part: str) -> str:
    if _UNRESERVED.fullmatch(part):  # most ids: nothing to escape, and quote() is slow
        return part
    return quote(part, safe="", encoding="utf-8", errors="strict")


def source_reference(resource_type: str, record_type: str, source_id: str) -> str:
    """The placeholder reference string for a mapped record; ValueError for an unusable part
    (the message names the part, never its value)."""
    if not TYPE_PATTERN.fullmatch(resource_type):
        raise ValueError("resource_type is not a FHIR resource type name")
    if not record_type:
        raise ValueError("record_type is empty")
    if not source_id:
        raise ValueError("source_id is empty")
    try:
        return f"{PREFIX}{resource_type}:{_escape(record_type)}:{_escape(source_id)}"
    except UnicodeEncodeError:
        raise ValueError("record_type or source_id is not encodable as UTF-8") from None


def parse_source_reference(text: Any) -> SourceKey | None:
    """The key a placeholder names; None for anything that is not a canonical placeholder."""
    if not isinstance(text, str) or not text.startswith(PREFIX):
        return None
    parts = text[len(PREFIX) :].split(":")
    if len(parts) != 3:
        return None
    resource_type, record_type, source_id = parts
    if not TYPE_PATTERN.fullmatch(resource_type):
        return None
    if not _PART.fullmatch(record_type) or not _PART.fullmatch(source_id):
        return None
    try:
        key = SourceKey(
            resource_type,
            unquote(record_type, errors="strict"),
            unquote(source_id, errors="strict"),
        )
    except UnicodeDecodeError:
        return None
    # Canonical spelling only: re-escaping gives the same text.
    return key if key.placeholder() == text else None


def rewrite_placeholders(node: Any, resolve: Callable[[SourceKey], str | None]) -> Any:
    """A copy of ``node`` where each placeholder ``reference`` is replaced by ``resolve(key)``
    (a local ``Type/id``). A placeholder ``resolve`` answers None for is left as it is, so the
    validator refuses the resource rather than it pointing at the wrong record."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                parsed = parse_source_reference(value)
                target = resolve(parsed) if parsed is not None else None
                out[key] = target if target is not None else value
            else:
                out[key] = rewrite_placeholders(value, resolve)
        return out
    if isinstance(node, list):
        return [rewrite_placeholders(v, resolve) for v in node]
    return node
