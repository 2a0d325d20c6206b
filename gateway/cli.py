"""The ``gateway`` command line (typer). Each command builds its own settings and objects; the
server runs under granian."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from gateway.clock import SystemClock
from gateway.commands.common import console
from gateway.commands.common import database_failure as _database_failure
from gateway.commands.common import fail as _fail
from gateway.commands.common import one_line as _one_line
from gateway.commands.common import settings_or_fail as _settings
from gateway.commands.ingest import ingest_app
from gateway.commands.mllp import mllp
from gateway.commands.partners import partners_app
from gateway.commands.quarantine import quarantine_app
from gateway.commands.synth import synth_app
from gateway.consent.labels import load_label_tables
from gateway.consent.policy import PolicyError, load_policy
from gateway.keys import (
    AUDIT_KEYS,
    TOKEN_KEYS,
    FileKeyRing,
    KeyMaterialError,
    check_keys,
    complete_keys,
    rotate_encryption_key,
    rotate_signing_key,
)
from gateway.partners import PartnersFileError, partners_for
from gateway.settings import Settings
from gateway.store.database import (
    DatabaseTimeouts,
    SchemaOutOfDate,
    ensure_schema,
    make_engine,
    upgrade,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from gateway.audit.chain import AuditChain
    from gateway.store.sql import SqlStore

app = typer.Typer(help="Care-coordination FHIR gateway.", no_args_is_help=True)
keys_app = typer.Typer(
    help="Encryption, token-signing and audit-signing keys.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(db_app, name="db")
app.add_typer(audit_app, name="audit")
app.add_typer(ingest_app, name="ingest")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(synth_app, name="synth")
app.add_typer(partners_app, name="partners")
app.command("mllp")(mllp)


def _listen_url(host: str, port: int) -> str:
    """The base URL partners reach a gateway on when GATEWAY_BASE_URL is not set: what serve
    listens on (for a wildcard address, this machine's name)."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (naming the wildcard, not binding it)
        host = socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    metrics_port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Also serve /metrics, open, on this port."),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Interface of the --metrics-port listener.")
    ] = "127.0.0.1",
) -> None:
    """Serve the FHIR API under granian (docs/operations.md)."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings

    # Without GATEWAY_BASE_URL, advertise what is served (the workers get it in their
    # environment, which they read their settings from, below).
    derived = {} if os.environ.get("GATEWAY_BASE_URL") else {"base_url": _listen_url(host, port)}
    settings = _settings(**derived)
    try:
        check_keys(settings.keys_dir)
        directory = partners_for(settings)  # a bad partners file stops start-up here, clearly
        load_policy(settings.policies_dir)
        load_label_tables(settings.policies_dir)
        _check_database(settings)
    except (KeyMaterialError, SchemaOutOfDate, PartnersFileError, PolicyError) as exc:
        raise _fail(str(exc)) from exc
    # Every worker writes its metrics here and a scrape adds them up; a fresh private
    # directory per run (a stale one would add old counts), removed when the server stops.
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    worker_env = {"PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    if derived:
        worker_env["GATEWAY_BASE_URL"] = settings.base_url
    previous = {name: os.environ.get(name) for name in worker_env}
    os.environ.update(worker_env)
    try:
        if metrics_port is not None:
            _serve_metrics(metrics_host, metrics_port, metrics_dir)
        console.print(
            f"serving {settings.fhir_base} on http://{host}:{port} ({workers} worker(s)) "
            f"for {len(list(directory))} partner(s)"
        )
        Granian(
            "gateway.app:app_from_environment",
            factory=True,
            address=host,
            port=port,
            workers=workers,
            interface=Interfaces.ASGI,
            http=HTTPModes.http1,  # behind a TLS proxy; and no HTTP/2 sniffing before a timeout
            http1_settings=HTTP1Settings(
                header_read_timeout=int(settings.http_header_timeout_seconds * 1000)
            ),
            websockets=False,
            respawn_failed_workers=True,
            workers_kill_timeout=settings.shutdown_timeout_seconds,
            log_access=False,
        ).serve()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _check_database(settings: Settings) -> None:
    """Start-up: the database answers within the connect timeout and its schema is current."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        engine = make_engine(
            settings.database_url, pool_size=1, timeouts=DatabaseTimeouts.from_settings(settings)
        )
        try:
            ensure_schema(engine)
        finally:
            engine.dispose()
    except (SQLAlchemyError, OSError) as exc:
        raise _database_failure(exc) from exc


def _serve_metrics(host: str, port: int, metrics_dir: str) -> None:
    """/metrics of every worker on a listener of its own (keep it off the partners' network)."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise _fail(f"cannot listen for metrics on {host}:{port}: {_one_line(exc)}") from exc


@app.command()
def demo() -> None:
    """Run the end-to-end demo on embedded SQLite under ./var/ and exit 0."""
    from gateway.demo import run_demo

    raise typer.Exit(run_demo(Settings(demo=True, log_level="WARNING"), Console()))


@keys_app.command("init")
def keys_init() -> None:
    """Create whichever keys KEYS_DIR lacks; never overwrites an existing key file."""
    settings = _settings()
    try:
        made = complete_keys(settings.keys_dir, SystemClock().now())
    except (KeyMaterialError, OSError) as exc:
        raise _fail(_one_line(exc)) from exc
    if not made.created and not made.extended:
        raise _fail(f"keys already exist in {settings.keys_dir}; refusing to overwrite")
    parts = [
        f"{label} {', '.join(p.name for p in paths)}"
        for label, paths in (
            ("created", made.created),
            ("added the new key to", made.extended),
            ("kept", made.kept),
        )
        if paths
    ]
    console.print(f"{'; '.join(parts)} in {settings.keys_dir}")


@keys_app.command("rotate")
def keys_rotate(
    encryption: Annotated[
        bool, typer.Option("--encryption", help="The encryption key (the default).")
    ] = False,
    token: Annotated[bool, typer.Option("--token", help="The access-token signing key.")] = False,
    audit: Annotated[bool, typer.Option("--audit", help="The audit checkpoint key.")] = False,
) -> None:
    """Add a new newest key; older rows, tokens and checkpoints stay readable and verifiable."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    from gateway.audit.checkpoints import key_id
    from gateway.disclose.auth import token_public_jwk

    settings = _settings()
    encryption = encryption or not (token or audit)
    done: list[tuple[str, str]] = []  # (what, message)
    try:
        if encryption:
            ring = rotate_encryption_key(settings.keys_dir, SystemClock().now())
            done.append(
                (
                    "encryption key",
                    f"active encryption key is now {ring.active} ({len(ring.key_ids)} keys); "
                    "run `gateway keys reencrypt` to move older rows to it",
                )
            )
        if token:
            keys = rotate_signing_key(settings.keys_dir, TOKEN_KEYS)
            assert isinstance(keys[0], ec.EllipticCurvePublicKey)
            kid = token_public_jwk(keys[0])["kid"]
            done.append(
                (
                    "token signing key",
                    f"token signing key is now {kid} ({len(keys)} keys verify tokens); "
                    "restart the gateway to sign with it",
                )
            )
        if audit:
            keys = rotate_signing_key(settings.keys_dir, AUDIT_KEYS)
            assert isinstance(keys[0], ed25519.Ed25519PublicKey)
            kid = key_id(keys[0])
            done.append(
                (
                    "audit signing key",
                    f"audit signing key is now {kid} ({len(keys)} keys verify checkpoints); "
                    "restart the gateway to sign with it",
                )
            )
    except (KeyMaterialError, OSError) as exc:
        raise _fail(_one_line(exc)) from exc
    chain, _ = _audit_chain()
    for what, _message in done:
        _audit_operator_action(chain, "key-rotation", detail=what)
    chain.close()
    for _what, message in done:
        console.print(message)


def _in_batches(label: str, total: int, batches: Iterator[int]) -> None:
    """Run a batched job with a progress bar (each batch yields how many rows it did)."""
    with Progress(console=console) as progress:
        task = progress.add_task(label, total=total)
        for done in batches:
            progress.advance(task, done)


def _keyed_store() -> tuple[SqlStore, FileKeyRing]:
    """The store at DATABASE_URL with the key ring: for commands that decrypt every row."""
    from gateway.store.sql import SqlStore

    settings = _settings()
    try:
        keys = FileKeyRing(settings.keys_dir)
        engine = make_engine(settings.database_url)
        ensure_schema(engine)
    except (KeyMaterialError, SchemaOutOfDate) as exc:
        raise _fail(str(exc)) from exc
    return SqlStore(engine, keys, SystemClock()), keys


@keys_app.command("reencrypt")
def keys_reencrypt(
    batch: Annotated[int, typer.Option(min=1, help="Rows per transaction.")] = 500,
) -> None:
    """Re-encrypt every stored version, and every quarantined item, under the active key."""
    from gateway.ingest.quarantine import Quarantine

    store, keys = _keyed_store()
    active = keys.current().active
    pending = sum(n for k, n in store.count_by_key().items() if k != active)
    _in_batches("re-encrypting", pending, store.reencrypt(batch))
    console.print(f"re-encrypted {pending} versions under {active}")
    held = Quarantine(store.engine, keys.current)
    waiting = sum(n for k, n in held.count_by_key().items() if k != active)
    if waiting:
        _in_batches("re-encrypting the quarantine", waiting, held.reencrypt(batch))
        console.print(f"re-encrypted {waiting} quarantined items under {active}")
    store.close()


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply schema migrations (Alembic) to DATABASE_URL."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    settings = _settings()
    try:
        engine = make_engine(
            settings.database_url, pool_size=1, timeouts=DatabaseTimeouts(connect=10)
        )
    except (SQLAlchemyError, OSError) as exc:
        raise _database_failure(exc) from exc
    try:
        upgrade(engine, revision)
        stale = _unindexed(engine)
    except CommandError as exc:
        raise _fail(f"cannot upgrade to {revision!r}: {_one_line(exc)}") from exc
    except (SQLAlchemyError, OSError) as exc:
        raise _database_failure(exc) from exc
    finally:
        engine.dispose()
    console.print(f"database at {revision}")
    if stale:
        console.print(
            f"[yellow]{stale} records predate the blind search index[/yellow]: run "
            "`gateway db reindex` (until then search finds none of them and consent releases "
            "none of them)"
        )


def _unindexed(engine: Engine) -> int:
    """Live records without sealed consent facts (written before migration 0005)."""
    from sqlalchemy import inspect

    from gateway.store.sql_rows import count_unindexed

    if "facts" not in {c["name"] for c in inspect(engine).get_columns("resources")}:
        return 0
    with engine.connect() as conn:
        return count_unindexed(conn)


@db_app.command("reindex")
def db_reindex(
    batch: Annotated[int, typer.Option(min=1, help="Resources per transaction.")] = 500,
) -> None:
    """Derive the search index of every stored resource afresh (needs the keys: it decrypts).

    Run it once after an upgrade whose notes say the index changed, e.g. to add the consent
    facts that search under consent decides from: until then, records indexed before it are
    not released by search (they are still released, where consent permits, by reads by id).
    """
    store, _ = _keyed_store()
    total = store.count_live()
    _in_batches("reindexing", total, store.reindex(batch))
    console.print(f"reindexed {total} resources")
    store.close()


@db_app.command("grants")
def db_grants(
    role: Annotated[str, typer.Argument(help="The role the gateway serves as (it must exist).")],
    apply: Annotated[
        bool, typer.Option("--apply", help="Run them now as DATABASE_URL's role (the owner).")
    ] = False,
    schema: Annotated[str, typer.Option(help="The schema of the gateway's tables.")] = "public",
) -> None:
    """Print (or --apply) the PostgreSQL grants of the gateway's own role: read and write the
    resource tables, only append to and read the audit log, own nothing."""
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.store.grants import GrantsRefused, apply_grants, grants_sql, require_postgres

    settings = _settings()
    try:
        require_postgres(settings.database_url)
        if not apply:
            typer.echo(grants_sql(role, schema=schema), nl=False)
            return
        engine = make_engine(settings.database_url, pool_size=1)
        try:
            applied = apply_grants(engine, role, schema=schema)
        finally:
            engine.dispose()
    except GrantsRefused as exc:
        raise _fail(str(exc)) from exc
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise _fail(f"the database refused the grants: {reason}") from exc
    console.print(f"applied {len(applied)} statements: {role} may append to the audit log only")


def _audit_chain() -> tuple[AuditChain, Settings]:
    from gateway.audit.chain import AuditChain, CheckpointSigner

    settings = _settings()
    try:
        engine = make_engine(settings.database_url, pool_size=1)
        ensure_schema(engine)
        signer = CheckpointSigner.from_keys_dir(settings.keys_dir)
    except (SchemaOutOfDate, OSError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    chain = AuditChain(
        engine,
        signer,
        SystemClock(),
        checkpoint_every=settings.audit_checkpoint_every,
        checkpoint_file=settings.checkpoint_file,
    )
    return chain, settings


def _audit_operator_action(chain: AuditChain, action: str, *, detail: str | None = None) -> None:
    """An AuditEvent for something an operator did at the command line (key rotation, an
    export of the log): the log records its own custodians too. Fails loudly (exit 1)."""
    from gateway.audit.events import Activity, Actor, audit_events
    from gateway.errors import ServiceUnavailable

    settings = _settings()
    display = f"operator: gateway {action.replace('-', ' ')}"
    actor = Actor(None, None, display=f"{display} ({detail})" if detail else display)
    events = audit_events(
        Activity("operation", None, subtypes=(action,)),
        actor,
        SystemClock().now(),
        source=settings.fhir_base,
    )
    try:
        chain.append(events)
    except ServiceUnavailable as exc:
        raise _fail(f"the audit log could not record {action}: {exc}") from exc


def _audit_public_keys(paths: list[Path] | None, settings: Settings) -> list[Any]:
    """The Ed25519 public keys that verify checkpoints: every key of every file given, else
    KEYS_DIR's list."""
    from gateway.audit.chain import load_public_keys, public_key_path

    keys = []
    try:
        for path in paths or [public_key_path(settings.keys_dir)]:
            keys += load_public_keys(path)
    except (OSError, ValueError) as exc:
        raise _fail(
            f"cannot read the audit public keys: {_one_line(exc)} "
            "(`gateway keys init` makes KEYS_DIR's list from its private key)"
        ) from exc
    return keys


@audit_app.command("verify")
def audit_verify(
    public_key: Annotated[
        list[Path] | None,
        typer.Option(help="Ed25519 public keys (PEM; repeatable; default: KEYS_DIR's)."),
    ] = None,
    checkpoint_file: Annotated[
        list[Path] | None,
        typer.Option(
            help="Checkpoints kept outside the database (repeatable; default: "
            "GATEWAY_AUDIT_CHECKPOINT_FILE, else audit-checkpoints beside the database)."
        ),
    ] = None,
    export: Annotated[
        Path | None, typer.Option(help="Verify an `audit export` file instead of the database.")
    ] = None,
) -> None:
    """Recompute the hash chain and the search index, check every signed checkpoint and the
    anchor in the checkpoint file; exit 1 at the first bad seq."""
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.audit.chain import verify_export

    settings = _settings()
    public = _audit_public_keys(public_key, settings)
    if export is not None:
        try:
            with export.open("rb") as fh:
                result = verify_export(iter(fh), public)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _fail(f"cannot read the export: {_one_line(exc)}") from exc
    else:
        chain, settings = _audit_chain()
        try:
            result = chain.verify(public, checkpoint_files=checkpoint_file or None)
        except SQLAlchemyError as exc:
            raise _database_failure(exc) from exc
        finally:
            chain.close()
    typer.echo(str(result))
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign the chain's current head now (also done every AUDIT_CHECKPOINT_EVERY events) and
    append it to the checkpoint file."""
    chain, settings = _audit_chain()
    try:
        signed = chain.checkpoint()
    except OSError as exc:
        raise _fail(
            "the checkpoint is in the database but not in the checkpoint file "
            f"{settings.checkpoint_file}: {_one_line(exc)}"
        ) from exc
    finally:
        chain.close()
    typer.echo("the audit log is empty" if signed is None else f"signed seq {signed.seq}")


@audit_app.command("reindex")
def audit_reindex(
    public_key: Annotated[
        list[Path] | None,
        typer.Option(help="Ed25519 public keys (PEM; repeatable; default: KEYS_DIR's)."),
    ] = None,
) -> None:
    """Rebuild audit_index (what the compliance review searches) from the events, once the
    chain verifies. On PostgreSQL run it as the owner of the audit tables."""
    from gateway.audit.chain import ReindexRefused

    settings = _settings()
    public = _audit_public_keys(public_key, settings)
    chain, _ = _audit_chain()
    try:
        count = chain.reindex(public)
    except ReindexRefused as exc:
        chain.close()
        raise _fail(f"audit_index not rebuilt: {exc}") from exc
    _audit_operator_action(chain, "audit-reindex")
    chain.close()
    typer.echo(f"rebuilt audit_index from {count} events")


@audit_app.command("export")
def audit_export(
    since: Annotated[
        datetime | None, typer.Option(help="Events recorded at or after this instant (UTC).")
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="Only ndjson: one JSON object per line.")
    ] = "ndjson",
    output: Annotated[Path | None, typer.Option(help="File to write (default: stdout).")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite --output if it exists.")
    ] = False,
) -> None:
    """Export events and signed checkpoints for a SIEM (UTC stamps ending in Z); `audit verify
    --export` checks a file."""
    from gateway.audit.chain import export_lines

    if output_format != "ndjson":
        raise _fail("--format must be ndjson")
    sink: BinaryIO = sys.stdout.buffer
    if output is not None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
        try:
            sink = os.fdopen(os.open(output, flags, 0o600), "wb")
        except FileExistsError as exc:
            raise _fail(f"{output} exists; pass --force to overwrite it") from exc
        except OSError as exc:
            raise _fail(f"cannot write the export: {_one_line(exc)}") from exc
    chain, _ = _audit_chain()
    moment = since.replace(tzinfo=UTC) if since is not None and since.tzinfo is None else since
    try:
        _audit_operator_action(chain, "audit-export")
        for line in export_lines(chain, since=moment):
            sink.write(line + b"\n")
    finally:
        chain.close()
        if output is not None:
            sink.close()


@audit_app.command("report")
def audit_report(
    patient: Annotated[
        str | None, typer.Option(help="Only the events of this survivor (a Patient id).")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Events recorded on or after this FHIR date or dateTime (UTC)."),
    ] = None,
    lang: Annotated[str, typer.Option(help="Language of the report: en or es.")] = "en",
) -> None:
    """Disclosures and refusals from the audit log as a table for compliance staff: when, who,
    what, why and under which Consent (searches with their query, opened with KEYS_DIR)."""
    from rich.markup import escape
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.audit import report
    from gateway.audit.chain import AuditQuery
    from gateway.audit.sealing import EventSeal
    from gateway.vocabulary.dates import stamp

    try:
        phrases = report.parse_lang(lang)
        moment = report.parse_since(since) if since is not None else None
        wanted = report.ReportFilter(report.parse_patient(patient) if patient else None)
    except ValueError as exc:
        raise _fail(escape(str(exc)), code=2) from exc
    settings = _settings()
    try:
        names = {p.id: p.name for p in partners_for(settings)}
    except PartnersFileError as exc:
        names = {}
        console.print(
            f"[yellow]warning:[/yellow] partner names as recorded in the events "
            f"({escape(_one_line(exc))})"
        )
    try:
        seal: EventSeal | None = EventSeal(FileKeyRing(settings.keys_dir).current)
    except KeyMaterialError as exc:
        seal = None
        console.print(f"[yellow]warning:[/yellow] queries stay sealed ({escape(str(exc))})")
    chain, _ = _audit_chain()
    out = Console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = 160  # a file or a pipe: wide enough for five columns
    lines = report.EventLines(phrases, names, wanted, report.opener(seal))
    try:
        _audit_operator_action(chain, "audit-report")  # it shows queries: the log records it
        start = stamp(moment) if moment is not None else None
        total = chain.search(AuditQuery(recorded_from=start, count=1)).total
        with Progress(
            console=console,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
            disable=not console.is_terminal,
        ) as progress:
            task = progress.add_task(phrases.reading, total=total)
            rows = ((row[0], row[2]) for row in chain.rows(since=moment))
            shown = report.print_report(
                lines(report.counted(rows, progress, task)), out, phrases, progress=progress
            )
    except SQLAlchemyError as exc:
        raise _database_failure(exc) from exc
    finally:
        chain.close()
    if shown:
        console.print(phrases.summary.format(lines=shown, events=lines.counts.shown))


@keys_app.command("status")
def keys_status() -> None:
    """Show key ids and how many stored versions each one protects."""
    from gateway.store.sql import SqlStore

    settings = _settings()
    try:
        keys = FileKeyRing(settings.keys_dir)
        engine = make_engine(settings.database_url, pool_size=1)
        ensure_schema(engine)
    except (KeyMaterialError, SchemaOutOfDate) as exc:
        raise _fail(str(exc)) from exc
    from gateway.ingest.quarantine import Quarantine

    counts = SqlStore(engine, keys, SystemClock()).count_by_key()
    held = Quarantine(engine, keys.current).count_by_key()
    table = Table("key id", "active", "versions", "quarantined")
    for key_id in keys.current().key_ids:
        table.add_row(
            key_id,
            "yes" if key_id == keys.current().active else "",
            str(counts.get(key_id, 0)),
            str(held.get(key_id, 0)),
        )
    Console().print(table)
    engine.dispose()


def main() -> None:
    """The console script: an error nobody caught is one line and exit 1, not a traceback
    (which may quote data); GATEWAY_CLI_TRACEBACK=1 shows it, for a developer."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("GATEWAY_CLI_TRACEBACK") == "1":
            raise
        if isinstance(exc, SQLAlchemyError | OSError):
            message = _one_line(exc)
        else:
            message = type(exc).__name__
        console.print(f"[red]error:[/red] {message} (GATEWAY_CLI_TRACEBACK=1 shows the traceback)")
        sys.exit(1)


if __name__ == "__main__":
    main()
