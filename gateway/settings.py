"""Runtime settings, read from the environment with the ``GATEWAY_`` prefix (pydantic-settings).

Nothing reads settings at import time: the CLI builds a ``Settings`` and hands it to the app
factory, so tests build their own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    # Audit (gateway/audit): a signed checkpoint every N events; optionally also appended to a
    # file outside the database (put it on other storage), so that truncating the table and its
    # checkpoints is still detected. Retention: the gateway never deletes audit events; keep
    # them at least this long (HIPAA 45 CFR 164.316(b)(2): six years), then archive by export.
    audit_checkpoint_every: Annotated[int, Field(gt=0)] = 1000
    audit_checkpoint_file: Path | None = None
    audit_retention_days: Annotated[int, Field(ge=2190)] = 2190
    # The demo is the only run allowed to invent things (keys, sample data); see cli.demo.
    demo: bool = False

    @field_validator("base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must be an absolute http(s) URL")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql+psycopg://")):
            raise ValueError("database_url must be sqlite:///PATH or postgresql+psycopg://…")
        return value

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}/fhir"
