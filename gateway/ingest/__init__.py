"""Ingest: everything that writes goes through here first (validate; later label, identity,
Provenance)."""
