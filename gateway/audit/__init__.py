"""The audit log: every disclosure and refusal, hash-chained with signed checkpoints
(``chain``), as IHE BALP-shaped AuditEvents (``events``), written before the response or the
request fails (``trail``)."""
