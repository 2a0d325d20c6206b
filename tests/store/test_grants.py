"""Least privilege on PostgreSQL (``gateway db grants``): the role the gateway serves as runs
the whole gateway, appends to the audit log and reads it, and can do nothing else to it.

The PostgreSQL tests deploy the way docs/audit.md says: a scratch database owned by an owner role
(not a superuser) that runs the migrations, and an application role with a random name that is
granted by ``gateway db grants --apply`` and then used for everything else.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from gateway.access.requester import Requester
from gateway.app import create_app
from gateway.audit.chain import AuditChain, CheckpointSigner
from gateway.audit.events import Activity, Actor, audit_events
from gateway.cli import app as cli
from gateway.clock import FrozenClock
from gateway.disclose.deps import fixed_requester
from gateway.keys import KeyRing, check_keys, init_keys
from gateway.partners import partners_for
from gateway.settings import Settings
from gateway.store.database import ensure_schema, head_revision, make_engine, upgrade
from gateway.store.grants import (
    AUDIT_TABLES,
    SEQUENCE_PRIVILEGES,
    TABLE_PRIVILEGES,
    GrantsRefused,
    apply_grants,
    grant_statements,
    grants_sql,
)
from gateway.store.query import parse_search
from gateway.store.schema import metadata
from gateway.store.sql import SqlStore
from tests.conftest import POSTGRES_URL, START
from tests.support.databases import admin_url, create_database, drop_database
from tests.support.network import BASE, FHIR
from tests.support.records import patient
from tests.support.server import ROOT
from tests.support.valid import valid

runner = CliRunner()
postgres = pytest.mark.postgres


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip() and not s.strip().startswith("--")]


# -- the statements (no database) ---------------------------------------------------------------


def test_the_script_revokes_everything_before_it_grants_anything() -> None:
    body = [s for s in _statements(grants_sql("gateway_app")) if s not in ("BEGIN", "COMMIT")]
    kinds = [s.split()[0] for s in body]
    assert kinds[:3] == ["REVOKE"] * 3
    assert set(kinds[3:]) == {"GRANT"}
    assert 'REVOKE ALL ON ALL TABLES IN SCHEMA "public" FROM "gateway_app"' in body


@pytest.mark.parametrize("table", AUDIT_TABLES)
def test_the_audit_tables_are_granted_insert_and_select_and_nothing_else(table: str) -> None:
    script = grants_sql("gateway_app")
    mentions = [s for s in _statements(script) if f'"{table}"' in s]
    assert mentions == [f'GRANT SELECT, INSERT ON TABLE "public"."{table}" TO "gateway_app"']


def test_every_table_of_the_schema_has_its_grants_listed() -> None:
    """A table added by a later migration must say what the gateway's role may do to it."""
    assert set(TABLE_PRIVILEGES) == {*metadata.tables, "alembic_version"}


@pytest.mark.parametrize(
    "role",
    [
        "",
        "gateway-app",
        'gateway_app"; DROP TABLE audit_log; --',
        "gateway app",
        "Gateway_App",  # means gateway_app unquoted and "Gateway_App" quoted: refused
        "1gateway",
        "g" * 64,
        "public",  # GRANT ... TO PUBLIC would grant everyone
        "current_user",
        "pg_write_all_data",
    ],
)
def test_a_role_name_that_is_not_a_plain_identifier_is_refused(role: str) -> None:
    with pytest.raises(GrantsRefused, match=r"role name"):
        grants_sql(role)


def test_a_malformed_schema_name_is_refused() -> None:
    with pytest.raises(GrantsRefused, match=r"malformed schema name"):
        grants_sql("gateway_app", schema='public"."x')


@pytest.fixture
def sqlite_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"sqlite:///{tmp_path}/gateway.db")


@pytest.mark.parametrize("args", [["gateway_app"], ["gateway_app", "--apply"]])
@pytest.mark.usefixtures("sqlite_env")
def test_the_command_refuses_sqlite_in_one_line(args: list[str]) -> None:
    result = runner.invoke(cli, ["db", "grants", *args])
    assert result.exit_code == 1
    assert "GRANT" not in result.output
    assert result.output.strip().splitlines() == [
        "error: grants are a PostgreSQL thing: this database is sqlite, where the file's "
        "permissions are the only access control"
    ]


def test_the_function_refuses_sqlite(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/gateway.db")
    with pytest.raises(GrantsRefused, match=r"PostgreSQL"):
        apply_grants(engine, "gateway_app")


# -- a deployment on PostgreSQL -----------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    owner: str  # owns the database and runs the migrations
    app_role: str  # what the gateway serves as
    owner_url: str
    app_url: str


def _as(url: str, role: str) -> str:
    return make_url(url).set(username=role).render_as_string(hide_password=False)


def _admin(sql: str, database: str | None = None) -> None:
    """Run ``sql`` as the test server's superuser, in its own database or in ``database``."""
    assert POSTGRES_URL is not None
    url = make_url(POSTGRES_URL)
    url = url.set(database=database) if database else url
    with psycopg.connect(
        admin_url(url.render_as_string(hide_password=False)), autocommit=True
    ) as conn:
        conn.execute(sql)


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    if not POSTGRES_URL:
        pytest.skip("GATEWAY_TEST_POSTGRES_URL is not set and no local PostgreSQL answered")
    suffix = uuid.uuid4().hex[:10]
    owner, app_role = f"gw_owner_{suffix}", f"gw_app_{suffix}"
    _admin(f"CREATE ROLE {owner} LOGIN")
    _admin(f"CREATE ROLE {app_role} LOGIN")
    url = create_database(POSTGRES_URL, "gateway_grants")
    _admin(f'ALTER DATABASE "{make_url(url).database}" OWNER TO {owner}')
    owner_engine = make_engine(_as(url, owner), pool_size=1)
    upgrade(owner_engine)  # the schema is the owner's, as in a deployment
    owner_engine.dispose()
    try:
        yield Deployment(owner, app_role, _as(url, owner), _as(url, app_role))
    finally:
        drop_database(POSTGRES_URL, "gateway_grants")  # and with it all granted in it
        for role in (app_role, owner):
            _admin(f"DROP OWNED BY {role}")
            _admin(f"DROP ROLE {role}")


@pytest.fixture(scope="module")
def granted(deployment: Deployment) -> Deployment:
    """The application role after ``gateway db grants ROLE --apply`` run as the owner."""
    result = runner.invoke(
        cli,
        ["db", "grants", deployment.app_role, "--apply"],
        env={"GATEWAY_DATABASE_URL": deployment.owner_url},
    )
    assert result.exit_code == 0, result.output
    assert f"applied {len(grant_statements(deployment.app_role))} statements" in result.output
    return deployment


@pytest.fixture
def owner_engine(deployment: Deployment) -> Iterator[Engine]:
    engine = make_engine(deployment.owner_url, pool_size=1)
    yield engine
    engine.dispose()


@pytest.fixture
def app_engine(granted: Deployment) -> Iterator[Engine]:
    engine = make_engine(granted.app_url, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture
def temporary_role(deployment: Deployment) -> Iterator[str]:
    role = f"gw_other_{uuid.uuid4().hex[:10]}"
    _admin(f"CREATE ROLE {role} LOGIN")
    yield role
    _admin(
        f"DROP OWNED BY {role}", make_url(deployment.owner_url).database
    )  # what a test granted it there
    _admin(f"DROP ROLE {role}")


@postgres
def test_the_printed_script_run_by_the_owner_grants_what_apply_grants(
    granted: Deployment, temporary_role: str
) -> None:
    """Piping `gateway db grants ROLE` into psql is the same as --apply."""
    with psycopg.connect(admin_url(granted.owner_url), autocommit=True) as conn:
        for statement in _statements(grants_sql(temporary_role)):
            conn.execute(statement)
        held = conn.execute(
            "SELECT table_name, string_agg(privilege_type, ',' ORDER BY privilege_type) "
            "FROM information_schema.role_table_grants WHERE grantee = %s GROUP BY table_name",
            (temporary_role,),
        ).fetchall()
    assert dict(held) == {t: ",".join(sorted(p)) for t, p in TABLE_PRIVILEGES.items()}


@postgres
def test_every_sequence_of_the_migrated_schema_has_its_grants_listed(owner_engine: Engine) -> None:
    with owner_engine.connect() as conn:
        sequences = conn.execute(
            text("SELECT sequence_name FROM information_schema.sequences")
        ).scalars()
        assert set(sequences) == set(SEQUENCE_PRIVILEGES)


@postgres
def test_applying_again_through_the_function_changes_nothing(
    granted: Deployment, owner_engine: Engine
) -> None:
    def held() -> list[tuple[str, str]]:
        with owner_engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
                    "WHERE grantee = :r ORDER BY 1, 2"
                ),
                {"r": granted.app_role},
            )
            return [(r[0], r[1]) for r in rows]

    before = held()
    applied = apply_grants(owner_engine, granted.app_role)
    assert held() == before
    assert applied[0].startswith("REVOKE ALL")
    assert ("audit_log", "UPDATE") not in before
    assert ("audit_log", "INSERT") in before


@postgres
def test_a_role_that_does_not_exist_is_refused(owner_engine: Engine) -> None:
    with pytest.raises(GrantsRefused, match=r"role gw_nobody does not exist: create it first"):
        apply_grants(owner_engine, "gw_nobody")


@postgres
def test_the_command_refuses_a_missing_role_in_one_line(deployment: Deployment) -> None:
    result = runner.invoke(
        cli,
        ["db", "grants", "gw_nobody", "--apply"],
        env={"GATEWAY_DATABASE_URL": deployment.owner_url},
    )
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert "role gw_nobody does not exist" in result.output


@postgres
def test_the_owner_itself_is_refused(deployment: Deployment, owner_engine: Engine) -> None:
    with pytest.raises(GrantsRefused, match=r"is the role DATABASE_URL connects as"):
        apply_grants(owner_engine, deployment.owner)


@postgres
def test_a_member_of_the_owner_role_is_refused(
    deployment: Deployment, owner_engine: Engine, temporary_role: str
) -> None:
    """A member can SET ROLE to the owner, and the owner can drop the audit triggers."""
    _admin(f"GRANT {deployment.owner} TO {temporary_role}")
    try:
        with pytest.raises(
            GrantsRefused, match=r"owns \(or is a member of the owner of\) database"
        ):
            apply_grants(owner_engine, temporary_role)
    finally:
        _admin(f"REVOKE {deployment.owner} FROM {temporary_role}")


@postgres
def test_a_superuser_is_refused(owner_engine: Engine) -> None:
    with pytest.raises(GrantsRefused, match=r"postgres is a superuser"):
        apply_grants(owner_engine, "postgres")


@postgres
def test_a_schema_without_the_gateway_tables_is_refused(
    owner_engine: Engine, granted: Deployment
) -> None:
    with pytest.raises(GrantsRefused, match=r"run `gateway db upgrade` first"):
        apply_grants(owner_engine, granted.app_role, schema="elsewhere")


@postgres
def test_granting_as_a_role_that_does_not_own_the_tables_is_refused_in_one_line(
    granted: Deployment, owner_engine: Engine, temporary_role: str
) -> None:
    """Connected as the application role instead of the owner: the database refuses (or, where
    a non-owner's GRANT only warns, the effective check does), and nothing is granted."""
    result = runner.invoke(
        cli,
        ["db", "grants", temporary_role, "--apply"],
        env={"GATEWAY_DATABASE_URL": granted.app_url},
    )
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert re.search(r"permission denied|connect as the tables' owner", result.output)
    with owner_engine.connect() as conn:
        held = [
            table
            for table in TABLE_PRIVILEGES
            if conn.execute(
                text("SELECT has_table_privilege(:r, :t, 'SELECT')"),
                {"r": temporary_role, "t": table},
            ).scalar_one()
        ]
    assert held == []


@postgres
@pytest.mark.parametrize(
    ("privilege", "reported"),
    [
        ("UPDATE ON audit_log", "UPDATE on audit_log"),
        ("DELETE ON audit_index", "DELETE on audit_index"),
        ("TRUNCATE ON audit_checkpoints", "TRUNCATE on audit_checkpoints"),
        ("UPDATE (event) ON audit_log", "UPDATE on audit_log"),  # a column grant counts too
        ("CREATE ON SCHEMA public", "CREATE on schema public"),  # PUBLIC's before PostgreSQL 15
    ],
)
def test_a_privilege_granted_to_public_is_caught_and_nothing_is_changed(
    granted: Deployment, owner_engine: Engine, privilege: str, reported: str
) -> None:
    """Revoking from the role does not reach what PUBLIC holds: the effective check does."""
    with owner_engine.begin() as conn:
        conn.execute(text(f"GRANT {privilege} TO PUBLIC"))
    try:
        with pytest.raises(GrantsRefused, match=re.escape(f"{reported} (granted to PUBLIC")):
            apply_grants(owner_engine, granted.app_role)
    finally:
        with owner_engine.begin() as conn:
            conn.execute(text(f"REVOKE {privilege} FROM PUBLIC"))


# -- what the application role can do -----------------------------------------------------------


@postgres
def test_the_application_role_creates_reads_updates_and_searches_resources(
    app_engine: Engine, key_ring: KeyRing, clock: FrozenClock
) -> None:
    store = SqlStore(app_engine, key_ring, clock)
    created = store.create(valid(patient(family="Okafor", mrn="RSH-GRANTS-1"), "riverside"))
    changed = orjson.loads(created.body) | {"birthDate": "1990-01-02"}
    updated, was_created = store.update("Patient", created.id, valid(changed), if_match=1)
    assert not was_created
    assert updated.version_id == 2
    assert orjson.loads(store.read("Patient", created.id).body)["birthDate"] == "1990-01-02"
    found = store.search(parse_search("Patient", [("family", "Okafor")]))
    assert [r.id for r in found.matches] == [created.id]
    assert store.delete("Patient", created.id) is not None  # a deletion is a new version
    store.close()


def _events(n: int) -> list[dict[str, object]]:
    actor = Actor("riverside-shelter", "Organization/riverside-shelter")
    return [
        e
        for i in range(n)
        for e in audit_events(
            Activity("read", "Patient", target=f"Patient/p{i}", target_patient=f"p{i}"),
            actor,
            START,
            source=f"{BASE}/fhir",
        )
    ]


@postgres
def test_the_application_role_appends_to_the_audit_chain_and_it_verifies(
    app_engine: Engine, clock: FrozenClock
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    chain = AuditChain(app_engine, CheckpointSigner(key), clock, checkpoint_every=2)
    seqs = chain.append(_events(3))
    assert len(seqs) == 3
    assert chain.checkpoint() is not None
    result = chain.verify(key.public_key())
    chain.close()
    assert result.ok, str(result)
    assert result.events >= 3


FORBIDDEN = [
    *(f"UPDATE {t} SET seq = seq" for t in AUDIT_TABLES),
    *(f"DELETE FROM {t}" for t in AUDIT_TABLES),
    *(f"TRUNCATE {t}" for t in AUDIT_TABLES),
    "ALTER TABLE audit_log DISABLE TRIGGER ALL",
    "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_change",
    "DROP TRIGGER audit_log_no_change ON audit_log",
    "DROP TRIGGER audit_index_no_truncate ON audit_index",
    "DROP TABLE audit_log",
    "DROP TABLE audit_checkpoints CASCADE",
    "ALTER TABLE audit_log RENAME TO audit_log_old",
    "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger AS "
    "$$ BEGIN RETURN NEW; END; $$ LANGUAGE plpgsql",
    "SET session_replication_role = replica",
]


@postgres
@pytest.mark.parametrize("statement", FORBIDDEN, ids=lambda s: " ".join(s.split()[:4]))
def test_the_application_role_cannot_change_the_audit_log(
    app_engine: Engine, statement: str
) -> None:
    """Refused for want of privilege (42501), before any trigger is reached: the triggers are
    the second wall, not the only one."""
    with app_engine.connect() as conn, pytest.raises(DBAPIError) as refused:
        conn.execute(text(statement))
    assert getattr(refused.value.orig, "sqlstate", None) == "42501", str(refused.value.orig)


@postgres
def test_the_triggers_are_still_there_after_the_attempts(owner_engine: Engine) -> None:
    with owner_engine.connect() as conn:
        triggers = conn.execute(
            text(
                "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgenabled = 'O' "
                "AND tgname LIKE 'audit%'"
            )
        ).scalars()
        assert len(set(triggers)) == 6


@postgres
def test_the_gateway_starts_and_serves_as_the_application_role(
    granted: Deployment, owner_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `gateway serve` and its granian factory run at start-up, then an audited request."""
    monkeypatch.chdir(ROOT)
    keys = tmp_path / "keys"
    init_keys(keys, START)
    settings = Settings(
        database_url=granted.app_url,
        keys_dir=keys,
        base_url=BASE,
        demo=True,  # the example partners file's keys are placeholders outside the demo
        log_level="WARNING",
    )
    check_keys(settings.keys_dir)
    serve_check = make_engine(settings.database_url, pool_size=1)
    assert ensure_schema(serve_check) == head_revision()  # reads alembic_version
    serve_check.dispose()
    shelter = Requester(
        partner_id="riverside-shelter",
        kind="shelter",
        organization="Organization/riverside-shelter",
        scopes=("system/*.cruds",),
    )
    app = create_app(
        settings, partners=partners_for(settings), authenticate=fixed_requester(shelter)
    )
    with TestClient(app, base_url=BASE) as client:  # start-up creates partner Organizations
        assert client.get("/readyz").status_code == 200
        created = client.post(
            "/fhir/Patient", content=orjson.dumps(patient(mrn="RSH-GRANTS-2")), headers=FHIR
        )
        assert created.status_code == 201, created.text
        read = client.get(f"/fhir/Patient/{created.json()['id']}")
        assert read.status_code == 200, read.text
    with owner_engine.connect() as conn:
        subtypes = conn.execute(
            text("SELECT value FROM audit_index WHERE param = 'subtype'")
        ).scalars()
        assert {"create", "read"} <= set(subtypes)
