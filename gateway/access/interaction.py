"""The FHIR interactions a partner can ask for, and the SMART permission each needs."""

from __future__ import annotations

from enum import StrEnum


class Interaction(StrEnum):
    """A restful interaction (R4 ``TypeRestfulInteraction`` names where FHIR has one)."""

    CREATE = "create"
    READ = "read"
    VREAD = "vread"
    HISTORY = "history"
    UPDATE = "update"
    DELETE = "delete"
    SEARCH = "search"

    @property
    def permission(self) -> str:
        """The SMART v2 permission letter (``c r u d s``) that allows it."""
        return PERMISSION[self]

    @property
    def audit_code(self) -> str:
        """The code an AuditEvent's subtype carries for it (FHIR restful-interaction)."""
        return AUDIT_CODES.get(self, self.value)


PERMISSION = {
    Interaction.CREATE: "c",
    Interaction.READ: "r",
    Interaction.VREAD: "r",
    Interaction.HISTORY: "r",
    Interaction.UPDATE: "u",
    Interaction.DELETE: "d",
    Interaction.SEARCH: "s",
}
AUDIT_CODES = {Interaction.SEARCH: "search-type", Interaction.HISTORY: "history-instance"}
