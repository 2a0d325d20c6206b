"""Security-labelling vocabulary shared by the store's index and the consent layer (DS4P)."""

from __future__ import annotations

# The DS4P inline security label: an element carrying it is labelled on its own (e.g. LOCIS on
# one address of a Patient), and a redaction obligation can remove just that element.
INLINE_LABEL = (
    "http://hl7.org/fhir/uv/security-label-ds4p/StructureDefinition/extension-inline-sec-label"
)
