"""Tamper-evident audit log of every disclosure and refusal (built in the audit issue)."""
