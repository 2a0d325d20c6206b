"""Versioned, encrypted FHIR R4 store: one port (``port.ResourceStore``), a SQL implementation for
SQLite and PostgreSQL, and an in-memory twin for unit tests."""
