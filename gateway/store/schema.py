"""Tables of the store (SQLAlchemy Core). The same schema serves SQLite and PostgreSQL; Alembic
migrations in ``migrations/`` create it, and a test holds the two in step.

``resources``          one row per logical resource: where its current version is, and who
                       contributed it (kept here, never in the body).
``resource_versions``  every version, its canonical JSON encrypted (AES-256-GCM) under ``key_id``.
``search_index``       blind search values of each *current* version (``blind.py``).
``token_replay``       client-assertion ``jti`` values already used, until they expire (auth).
``audit_log``          the hash-chained audit events (``gateway/audit``): append-only.
``audit_index``        each event's search values (patient, agent, entity, type, subtype, outcome).
``audit_checkpoints``  signed (Ed25519) statements "the chain's hash at seq N was H".
``ingest_ledger``      the gateway id of each partner source record (``gateway/ingest/ledger``):
                       the source key only as a keyed HMAC, the content only as a keyed digest.
``quarantine``         input that could not land (``gateway/ingest/quarantine``): reasons and
                       places in clear, the bytes and fields encrypted; never deleted.
``ingest_marks``       where each incremental pull (LegalServer, FHIR) stopped, encrypted.
Timestamps are fixed-width UTC strings (``vocabulary.dates.stamp``), so ordering is textual and the
same on both databases.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()


def _only(column: str) -> dict[str, Any]:
    condition = text(f"{column} IS NOT NULL")
    return {"sqlite_where": condition, "postgresql_where": condition}


RowId = BigInteger().with_variant(Integer, "sqlite")

resources = Table(
    "resources",
    metadata,
    Column("rid", RowId, primary_key=True, autoincrement=True),
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", String(32), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    # The partner that created the resource: consent's "contributor may always read it back".
    Column("contributor", String(64), nullable=True),
    # The consent facts of the current version (``vocabulary.registry.FACT_PARAMS``), sealed like a
    # body (AES-256-GCM, ``facts:type/id/version`` as associated data): search under consent
    # decides from them without decrypting bodies, and no clinical code sits in clear.
    Column("facts_key", String(64), nullable=True),
    Column("facts", LargeBinary, nullable=True),
    UniqueConstraint("resource_type", "id", name="uq_resources_type_id"),
    Index("ix_resources_type_updated", "resource_type", "last_updated"),
)

resource_versions = Table(
    "resource_versions",
    metadata,
    Column("rid", RowId, ForeignKey("resources.rid"), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("last_updated", String(32), nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("key_id", String(64), nullable=True),  # null for a deletion marker
    Column("payload", LargeBinary, nullable=True),
    Index("ix_versions_key", "key_id"),
)

# Blind (``gateway/store/blind.py``): tokens, strings and the finer parts of dates are keyed
# HMACs under ``key_id``; references stay in clear (server ids); dates keep their year.
_BLIND = String(32)
_DATE_PARTS = ("month", "day", "hour", "minute", "second")
search_index = Table(
    "search_index",
    metadata,
    Column("rid", RowId, ForeignKey("resources.rid"), nullable=False),
    Column("resource_type", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("key_id", String(64), nullable=True),
    Column("system", _BLIND, nullable=True),
    Column("code", _BLIND, nullable=True),
    Column("text", _BLIND, nullable=True),  # one normalised prefix
    Column("raw", _BLIND, nullable=True),  # the value as written, for :exact
    Column("ref_type", String(64), nullable=True),
    Column("ref_id", String(64), nullable=True),
    Column("low_year", String(4), nullable=True),
    Column("high_year", String(4), nullable=True),
    *(Column(f"low_{part}", _BLIND, nullable=True) for part in _DATE_PARTS),
    *(Column(f"high_{part}", _BLIND, nullable=True) for part in _DATE_PARTS),
    Index("ix_search_rid", "rid"),
    # Partial: each index row lands in the one index of its kind, not in all four.
    Index("ix_search_token", "resource_type", "param", "code", **_only("code")),
    Index("ix_search_ref", "resource_type", "param", "ref_id", **_only("ref_id")),
    Index("ix_search_text", "resource_type", "param", "text", **_only("text")),
    Index("ix_search_date", "resource_type", "param", "low_year", "high_year", **_only("low_year")),
)

# SMART Backend Services replay protection (gateway/disclose/auth.py): a client assertion's jti
# is accepted once; the primary key makes a second insert fail on any instance. Rows can go once
# ``expires_at`` has passed (the assertion would be refused as expired by then).
token_replay = Table(
    "token_replay",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires_at", String(32), nullable=False),
    Index("ix_token_replay_expires", "expires_at"),
)

# The audit chain (gateway/audit/chain.py). ``seq`` is assigned by the one appender holding the
# chain lock, never by the database, so that it has no gaps; ``hash`` = SHA-256 over the
# previous hash, seq, recorded and the canonical event JSON. On PostgreSQL a trigger refuses
# UPDATE, DELETE and TRUNCATE (migration 0004): the log is append-only for the application.
audit_log = Table(
    "audit_log",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    ),
    Column("recorded", String(32), nullable=False),
    Column("event", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Index("ix_audit_log_recorded", "recorded"),
)

# Search values of each event (AuditEvent?patient=…&agent=…), written with it, in its transaction.
audit_index = Table(
    "audit_index",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("param", String(32), nullable=False),
    Column("value", String(255), nullable=False),
    Index("ix_audit_index_lookup", "param", "value", "seq"),
    # ``audit verify`` reads the index in seq order beside the events.
    Index("ix_audit_index_seq", "seq"),
)

# Refusals without a valid token, counted per minute, source and reason until they are folded
# into the chain as one event (``AuditChain.note_unauthenticated``): noise from the internet
# grows the log by one event per source, reason and minute, and no refusal is dropped.
audit_noise = Table(
    "audit_noise",
    metadata,
    Column("minute", String(16), primary_key=True),
    Column("source", String(64), primary_key=True),
    Column("reason", String(64), primary_key=True),
    Column("count", Integer, nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    ),
    Column("hash", String(64), nullable=False),
    Column("signed_at", String(32), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("signature", String(128), nullable=False),
)

# The ingest ledger (gateway/ingest/ledger.py): one row per (partner, system, resource type,
# record type, source id). The source key is never stored: ``blind_key`` is HMAC-SHA-256 of its
# canonical encoding under a key derived from ring key ``key_id``, unique per key id (two
# reservers racing for a key end with one row). ``content_digest`` is a keyed HMAC too (under
# ``content_key_id``): a plain hash of a record would be a dictionary attack away from its
# values. Partner, resource type and the gateway's (random) resource id are in clear.
ingest_ledger = Table(
    "ingest_ledger",
    metadata,
    Column("key_id", String(64), primary_key=True),
    Column("blind_key", String(64), primary_key=True),
    Column("partner_id", String(64), nullable=False),
    Column("resource_type", String(64), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("written", Boolean, nullable=False, default=False),
    Column("content_key_id", String(64), nullable=True),
    Column("content_digest", String(64), nullable=True),
    Column("mapping_sha256", String(64), nullable=False, default=""),
    UniqueConstraint("resource_type", "resource_id", name="uq_ingest_ledger_resource"),
    Index("ix_ingest_ledger_partner", "partner_id", "resource_type"),
)

# Quarantined input (gateway/ingest/quarantine.py). What an operator needs to fix the source is
# in clear and PHI-free by contract (capped, control characters removed): partner, system,
# record type, source, locator, reason and places (names only). The bytes and parsed fields are
# ``payload``: AES-256-GCM under ``key_id`` with the row id and partner as associated data.
# Rows are never deleted (the application role has no DELETE on it): a retry or a discard is a
# status.
quarantine = Table(
    "quarantine",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("received", String(32), nullable=False),
    Column("partner_id", String(64), nullable=False),
    Column("system", String(64), nullable=False),
    Column("record_type", String(64), nullable=False),
    Column("source", String(200), nullable=False),
    Column("locator", String(200), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("places", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("key_id", String(64), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    # A keyed digest of the held input and reason: the same input held once, however often
    # it is ingested again.
    Column("fingerprint", String(64), nullable=True),
    Index("ix_quarantine_status", "status", "received", "id"),
    Index("ix_quarantine_partner", "partner_id", "status", "received", "id"),
    Index("ix_quarantine_key", "key_id"),
    Index("ix_quarantine_fingerprint", "fingerprint", "status"),
)

# Where each incremental pull stopped (gateway/ingest/marks.py): one row per partner, source
# system and source (a base URL: configuration, not PHI). The mark names source records (matter
# uuids, resource ids of the overlap window), so it is ``payload``: AES-256-GCM under ``key_id``
# with the row's key as associated data.
ingest_marks = Table(
    "ingest_marks",
    metadata,
    Column("partner_id", String(64), primary_key=True),
    Column("system", String(64), primary_key=True),
    Column("source", String(200), primary_key=True),
    Column("updated", String(32), nullable=False),
    Column("key_id", String(64), nullable=False),
    Column("payload", LargeBinary, nullable=False),
)
