"""Disclosure: the FHIR REST surface partners call. Every route reads through the per-request
store ``rest.bind`` hands it (``deps.request_store``), never through the raw store."""
