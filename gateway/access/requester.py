"""The requester: who is asking, what its token was granted and why it asks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Requester:
    """Who is asking: a partner (its client id, kind and Organization), what its token was
    granted (SMART scopes) and why it asks (v3 PurposeOfUse codes)."""

    partner_id: str
    kind: str  # shelter | legal-aid | clinic | hospital | compliance | admin
    organization: str = ""  # "Organization/<id>"
    scopes: tuple[str, ...] = ()
    purpose_of_use: tuple[str, ...] = ()
