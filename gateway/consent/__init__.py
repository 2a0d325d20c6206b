"""Consent engine: decides what a partner may see, then redacts.

- ``model.parse_consent``: R4 Consent → ``ParsedConsent`` (once, when a Consent is written);
- ``policy.load_policy``: ``consent_policies/network.yaml`` → ``Policy``;
- ``engine.decide``: pure decision for one (request, resource) with the patient's Consents;
- ``redact.redact``: apply a permit's obligations to the body;
- ``labels.labels_for``: the security labels to set at write time.

See docs/consent.md.
"""
