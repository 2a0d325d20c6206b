"""Disclosure: the FHIR REST surface partners call. Every route reads through the per-request
store the dependencies hand it (``deps.RequestStore``), never through the raw store."""
