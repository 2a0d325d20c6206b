"""Care-coordination FHIR R4 gateway: consent-scoped disclosure between survivor partners."""

__version__ = "0.1.0"
