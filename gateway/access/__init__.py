"""Who asks and what they may do: the requester, SMART scopes and the FHIR interactions, shared
by every layer that acts for a partner (the consent-bound store, REST, ingest, exchange)."""
