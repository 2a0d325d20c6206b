"""Runtime settings, read from the environment with the ``GATEWAY_`` prefix (pydantic-settings).

Nothing reads settings at import time: the CLI builds a ``Settings`` and hands it to the app
factory, so tests build their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

DEFAULT_CHECKPOINT_FILE = "audit-checkpoints"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    database_url: str = "sqlite:///./var/gateway.db"
    partners_file: Path = Path("examples/partners.yaml")
    policies_dir: Path = Path("consent_policies")
    mappings_dir: Path = Path("mappings")
    keys_dir: Path = Path("./var/keys")
    base_url: str = "http://127.0.0.1:8080"

    max_body_bytes: Annotated[int, Field(gt=0)] = 5 * 1024 * 1024
    max_json_depth: Annotated[int, Field(gt=0, le=512)] = 64
    default_page_size: Annotated[int, Field(gt=0)] = 50
    max_page_size: Annotated[int, Field(gt=0)] = 500
    log_level: str = "INFO"
    # Operations (docs/operations.md). Database bounds, so that a frozen or unreachable database
    # fails requests with 503 after seconds instead of holding them for the whole outage:
    # connecting; one statement (PostgreSQL statement_timeout, and the client gives up on a
    # server that does not answer a little after it); waiting for a lock (PostgreSQL
    # lock_timeout, SQLite busy timeout); waiting for a free pooled connection.
    db_connect_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 5
    db_statement_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30
    db_lock_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 10
    db_pool_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10
    # /readyz answers 503 when its probe (database, audit log writable, keys) takes longer.
    ready_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 3
    # /metrics outside the demo: only with this bearer token (or on `serve --metrics-port`).
    metrics_token: SecretStr | None = None
    # The HTTP server: a connection must send its request headers within this bound (a client
    # that connects and sends nothing is closed), and a worker that does not stop within the
    # shutdown bound is killed.
    http_header_timeout_seconds: Annotated[float, Field(ge=1, le=60)] = 10
    shutdown_timeout_seconds: Annotated[int, Field(ge=1, le=1800)] = 30
    # Audit (gateway/audit): a signed checkpoint every N events, stored in the database and
    # then appended to a file outside it (``checkpoint_file``: by default beside the database;
    # put it on other storage), which anchors the log: truncating or rewriting the tables and
    # their checkpoints is still detected. Retention: the gateway never deletes audit events;
    # keep them at least this long (HIPAA 45 CFR 164.316(b)(2): six years), then archive by
    # export.
    audit_checkpoint_every: Annotated[int, Field(gt=0)] = 1000
    audit_checkpoint_file: Path | None = None  # GATEWAY_AUDIT_CHECKPOINT_FILE; see checkpoint_file
    audit_retention_days: Annotated[int, Field(ge=2190)] = 2190
    # The demo is the only run allowed to invent things (keys, sample data); see cli.demo.
    demo: bool = False

    @field_validator("base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must be an absolute http(s) URL")
        return value.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("metrics_token")
    @classmethod
    def _long_enough_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("metrics_token must be at least 16 characters")
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql+psycopg://")):
            raise ValueError("database_url must be sqlite:///PATH or postgresql+psycopg://…")
        return value

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}/fhir"

    @property
    def checkpoint_file(self) -> Path:
        """Where audit checkpoints are appended outside the database: ``audit_checkpoint_file``
        when set; else ``audit-checkpoints`` beside (not inside) a SQLite database file
        (``./var/gateway.db`` → ``./var/audit-checkpoints``); else ``./var/audit-checkpoints``
        (relative to the working directory)."""
        if self.audit_checkpoint_file is not None:
            return self.audit_checkpoint_file
        url = make_url(self.database_url)
        if url.get_backend_name() == "sqlite" and url.database:
            return Path(url.database).parent / DEFAULT_CHECKPOINT_FILE
        return Path("var") / DEFAULT_CHECKPOINT_FILE
