"""Source-system adapters: each yields SourceRecords from one kind of partner system, never FHIR."""
