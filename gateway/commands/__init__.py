"""The command groups of the ``gateway`` CLI beyond its core: ingest, quarantine, synth, mllp."""
