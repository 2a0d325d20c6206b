"""Synthetic source files for the demo and the benchmarks (``gateway synth``): HMIS CSV exports
(FY2024 and FY2026), LegalServer matters, HL7 v2 messages. Every person in them is made up, with
English, Spanish and Vietnamese names; nothing here imports the rest of the gateway."""
