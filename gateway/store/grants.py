"""Least privilege on PostgreSQL: what the role the gateway runs as may do, and nothing more.

Two roles share a deployment's database:

- the **owner** creates the tables (``gateway db upgrade``) and owns them, the append-only
  trigger function and the schema. Ownership cannot be limited by grants: an owner can drop or
  disable the triggers that refuse UPDATE, DELETE and TRUNCATE on the audit log.
- the **application role** is the one ``GATEWAY_DATABASE_URL`` names when the gateway serves.
  It owns nothing and holds exactly ``TABLE_PRIVILEGES`` and ``SEQUENCE_PRIVILEGES``: it reads
  and writes the resource tables as the store does, and may only append to and read the three
  audit tables. The triggers are then a second wall, not the only one.

``grant_statements`` is the SQL (revoke everything, then grant the list); ``apply_grants`` runs
it as the owner in one transaction, after refusing a role that would defeat it (missing, a
superuser, the owner itself or a member of an owner), and before committing checks the role's
*effective* privileges, which also counts what PUBLIC or another role it belongs to was given.
SQLite has no roles: its file's permissions are its only access control, so it is refused.
"""

from __future__ import annotations

import re

from psycopg import sql
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import URL, make_url

from gateway.store.database import head_revision

# What the gateway does to each table (gateway/store/sql.py, gateway/disclose/auth.py,
# gateway/audit/chain.py), and so all its role may do. A table missing here fails the tests.
TABLE_PRIVILEGES: dict[str, tuple[str, ...]] = {
    # Start-up reads the schema's revision (database.ensure_schema); only the owner migrates.
    "alembic_version": ("SELECT",),
    # A deletion is a new version (a marker), never a DELETE; UPDATE moves the head (and is
    # what SELECT ... FOR UPDATE needs).
    "resources": ("SELECT", "INSERT", "UPDATE"),
    # UPDATE: `gateway keys reencrypt` rewrites payloads under the active key.
    "resource_versions": ("SELECT", "INSERT", "UPDATE"),
    # A new version replaces its resource's index rows.
    "search_index": ("SELECT", "INSERT", "DELETE"),
    # DELETE: expired client-assertion ids are purged.
    "token_replay": ("SELECT", "INSERT", "DELETE"),
    # The audit log: append and read, nothing else.
    "audit_log": ("SELECT", "INSERT"),
    "audit_index": ("SELECT", "INSERT"),
    "audit_checkpoints": ("SELECT", "INSERT"),
    # Counters of unauthenticated refusals, folded into the chain (and then deleted) a minute
    # later: a staging table, not the record (the chain is).
    "audit_noise": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    # The ingest ledger: a source record's gateway id is reserved (INSERT), then marked written
    # with its content digest (UPDATE). No DELETE: a forgotten key would get a second id on the
    # next ingest, a duplicate of a survivor's record.
    "ingest_ledger": ("SELECT", "INSERT", "UPDATE"),
    # A pull's high-water mark moves (UPDATE); a partner's marks are never deleted.
    "ingest_marks": ("SELECT", "INSERT", "UPDATE"),
    # Quarantined input: held (INSERT), then retried, discarded or re-encrypted (UPDATE). No
    # DELETE: input that could not land is never lost; a discard is a status.
    "quarantine": ("SELECT", "INSERT", "UPDATE"),
}
AUDIT_TABLES = ("audit_log", "audit_index", "audit_checkpoints")
# resources.rid is a BIGSERIAL: inserting a resource calls nextval, which USAGE allows.
SEQUENCE_PRIVILEGES: dict[str, tuple[str, ...]] = {"resources_rid_seq": ("USAGE",)}

_TABLE_PRIVILEGE_TYPES = (
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "TRUNCATE",
    "REFERENCES",
    "TRIGGER",
)
_SEQUENCE_PRIVILEGE_TYPES = ("USAGE", "SELECT", "UPDATE")
# Plain lower-case identifiers only: they mean the same quoted or not, so the role the operator
# created with ``CREATE ROLE gateway_app`` is the role granted to.
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_RESERVED = frozenset({"public", "none", "current_user", "current_role", "session_user"})


class GrantsRefused(Exception):
    """The grants cannot be printed or applied as asked; the message is one line for the
    operator and names no data."""


def require_postgres(database_url: str | URL) -> None:
    backend = make_url(database_url).get_backend_name()
    if backend != "postgresql":
        raise GrantsRefused(
            f"grants are a PostgreSQL thing: this database is {backend}, where the file's "
            "permissions are the only access control"
        )


def check_name(value: str, *, what: str = "role") -> str:
    """``value`` when it is a plain lower-case identifier that names an ordinary role (or
    schema); refuses anything else rather than quoting it into something unexpected."""
    if not _NAME.fullmatch(value):
        raise GrantsRefused(
            f"malformed {what} name {value!r}: use lower-case letters, digits and _ "
            "(at most 63, not starting with a digit)"
        )
    if (what == "role" and value in _RESERVED) or value.startswith("pg_"):
        raise GrantsRefused(f"{what} name {value!r} is reserved by PostgreSQL")
    return value


def grant_statements(role: str, *, schema: str = "public") -> list[sql.Composed]:
    """Revoke everything ``role`` holds in ``schema``, then grant it what the gateway needs."""
    who, where = sql.Identifier(check_name(role)), sql.Identifier(check_name(schema, what="schema"))
    statements = [
        sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA {} FROM {}").format(where, who),
        sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA {} FROM {}").format(where, who),
        sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(where, who),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(where, who),
    ]
    for kind, granted in (("TABLE", TABLE_PRIVILEGES), ("SEQUENCE", SEQUENCE_PRIVILEGES)):
        for name, privileges in granted.items():
            statements.append(
                sql.SQL("GRANT {} ON {} {} TO {}").format(
                    sql.SQL(", ".join(privileges)),
                    sql.SQL(kind),
                    sql.Identifier(schema, name),
                    who,
                )
            )
    return statements


def grants_sql(role: str, *, schema: str = "public") -> str:
    """The statements as a script for ``psql``, run as the owner of the gateway's tables."""
    body = "".join(f"{s.as_string()};\n" for s in grant_statements(role, schema=schema))
    return (
        f"-- Least privilege for the gateway's role {role}: run as the tables' owner.\n"
        f"-- {role} must exist, must not be a superuser, and must neither own these tables nor\n"
        "-- belong to their owner's role: `gateway db grants --apply` checks all of this.\n"
        f"BEGIN;\n{body}COMMIT;\n"
    )


def apply_grants(engine: Engine, role: str, *, schema: str = "public") -> list[str]:
    """Run ``grant_statements`` on ``engine`` (connected as the owner) in one transaction and
    return them. Nothing is committed unless ``role`` ends up with exactly the privileges listed
    here on the gateway's tables."""
    require_postgres(engine.url)
    rendered = [s.as_string() for s in grant_statements(role, schema=schema)]
    with engine.begin() as conn:
        _refuse_unfit(conn, role, schema)
        for statement in rendered:
            conn.exec_driver_sql(statement)
        _check_effective(conn, role, schema)
    return rendered


def _refuse_unfit(conn: Connection, role: str, schema: str) -> None:
    found = conn.execute(
        text("SELECT rolsuper, rolname = current_user AS me FROM pg_roles WHERE rolname = :r"),
        {"r": role},
    ).first()
    if found is None:
        raise GrantsRefused(
            f"role {role} does not exist: create it first (CREATE ROLE {role} LOGIN PASSWORD "
            "'...'), then grant again"
        )
    if found.rolsuper:
        raise GrantsRefused(f"role {role} is a superuser: no grant or revoke limits it")
    if found.me:
        raise GrantsRefused(
            f"role {role} is the role DATABASE_URL connects as: connect as the tables' owner, "
            "and let the gateway run as another role"
        )
    missing = [
        name
        for name in (*TABLE_PRIVILEGES, *SEQUENCE_PRIVILEGES)
        if conn.execute(
            text("SELECT to_regclass(format('%I.%I', CAST(:s AS text), CAST(:n AS text)))"),
            {"s": schema, "n": name},
        ).scalar_one()
        is None
    ]
    if missing:
        raise GrantsRefused(f"{schema} has no {', '.join(missing)}: run `gateway db upgrade` first")
    version = conn.execute(
        text(f"SELECT version_num FROM {_quoted(conn, schema)}.alembic_version")  # noqa: S608
    ).scalar_one_or_none()
    if version != head_revision():
        raise GrantsRefused(
            f"the schema is at {version}, these grants are for {head_revision()}: "
            "run `gateway db upgrade` first"
        )
    _refuse_owners(conn, role, schema)


def _refuse_owners(conn: Connection, role: str, schema: str) -> None:
    """An owner (or a member of one, who can SET ROLE to it) can drop the audit triggers or the
    tables: the database's, the schema's (which may drop anything in it), any of the gateway's
    tables or sequences, and the trigger function's (which could be replaced by a no-op)."""
    owned = conn.execute(
        text(
            """
            SELECT 'database ' || d.datname FROM pg_database d
             WHERE d.datname = current_database() AND pg_has_role(:r, d.datdba, 'MEMBER')
            UNION ALL
            SELECT 'schema ' || n.nspname FROM pg_namespace n
             WHERE n.nspname = :s AND pg_has_role(:r, n.nspowner, 'MEMBER')
            UNION ALL
            SELECT 'table ' || c.relname FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = :s AND pg_has_role(:r, c.relowner, 'MEMBER')
            UNION ALL
            SELECT 'function ' || p.proname FROM pg_proc p
              JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = :s AND pg_has_role(:r, p.proowner, 'MEMBER')
            """
        ),
        {"r": role, "s": schema},
    ).scalars()
    names = sorted(owned)
    if names:
        raise GrantsRefused(
            f"role {role} owns (or is a member of the owner of) {', '.join(names[:3])}"
            f"{' and more' if len(names) > 3 else ''}: it could drop the audit log's "
            "triggers; run the gateway as a role that owns nothing"
        )
    # PostgreSQL 15 lets a superuser grant SET on a superuser-only parameter.
    if (conn.dialect.server_version_info or (0,)) >= (15,) and conn.execute(
        text("SELECT has_parameter_privilege(:r, 'session_replication_role', 'SET')"),
        {"r": role},
    ).scalar_one():
        raise GrantsRefused(
            f"role {role} may SET session_replication_role, which silences every trigger: "
            "revoke that first"
        )


def _check_effective(conn: Connection, role: str, schema: str) -> None:
    """Compare what ``role`` can do (its own grants, PUBLIC's and its roles') with the lists."""
    problems: list[str] = []
    # PUBLIC may create in schema public before PostgreSQL 15: the gateway never needs to.
    if conn.execute(
        text("SELECT has_schema_privilege(:r, :s, 'CREATE')"), {"r": role, "s": schema}
    ).scalar_one():
        problems.append(f"CREATE on schema {schema} (granted to PUBLIC or a role of its)")
    for kind, granted, types in (
        ("table", TABLE_PRIVILEGES, _TABLE_PRIVILEGE_TYPES),
        ("sequence", SEQUENCE_PRIVILEGES, _SEQUENCE_PRIVILEGE_TYPES),
    ):
        for name, wanted in granted.items():
            target = f"{_quoted(conn, schema)}.{_quoted(conn, name)}"
            for privilege in types:
                # Column grants count too: UPDATE of one column is an UPDATE.
                check = (
                    "has_any_column_privilege"
                    if kind == "table" and privilege in ("SELECT", "INSERT", "UPDATE", "REFERENCES")
                    else f"has_{kind}_privilege"
                )
                held = conn.execute(
                    text(f"SELECT {check}(:r, :t, :p)"),
                    {"r": role, "t": target, "p": privilege},
                ).scalar_one()
                if held and privilege not in wanted:
                    problems.append(f"{privilege} on {name} (granted to PUBLIC or a role of its)")
                elif not held and privilege in wanted:
                    problems.append(f"no {privilege} on {name} (connect as the tables' owner)")
    if problems:
        raise GrantsRefused(
            f"role {role} would not hold exactly the gateway's privileges, nothing was changed: "
            + "; ".join(problems)
        )


def _quoted(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)
