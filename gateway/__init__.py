"""Care-coordination FHIR R4 gateway: consent-scoped disclosure between survivor-serving partners."""

__version__ = "0.1.0"
