"""Consent engine: decides what a partner may see, then redacts (built in the consent issue)."""
