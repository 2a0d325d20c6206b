"""The ``gateway`` command line (typer). Each command builds its own settings and objects; the
server runs under granian."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from gateway.clock import SystemClock
from gateway.consent.labels import load_label_tables
from gateway.consent.policy import PolicyError, load_policy
from gateway.keys import (
    FileKeyRing,
    KeyMaterialError,
    check_keys,
    init_keys,
    rotate_encryption_key,
)
from gateway.partners import PartnersFileError, partners_for
from gateway.settings import Settings
from gateway.store.database import SchemaOutOfDate, ensure_schema, make_engine, upgrade

if TYPE_CHECKING:
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
console = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        raise _fail(f"bad settings: {exc}") from exc


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Serve the FHIR API under granian."""
    from granian import Granian
    from granian.constants import Interfaces

    settings = _settings()
    try:
        check_keys(settings.keys_dir)
        directory = partners_for(settings)  # a bad partners file stops start-up here, clearly
        load_policy(settings.policies_dir)
        load_label_tables(settings.policies_dir)
        ensure_schema(make_engine(settings.database_url, pool_size=1))
    except (KeyMaterialError, SchemaOutOfDate, PartnersFileError, PolicyError) as exc:
        raise _fail(str(exc)) from exc
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
        log_access=False,
    ).serve()


@app.command()
def demo() -> None:
    """Run the end-to-end demo on embedded SQLite under ./var/ and exit 0."""
    from gateway.demo import run_demo

    raise typer.Exit(run_demo(Settings(demo=True, log_level="WARNING"), Console()))


@keys_app.command("init")
def keys_init() -> None:
    """Create KEYS_DIR with fresh keys; refuses to overwrite existing ones."""
    settings = _settings()
    try:
        created = init_keys(settings.keys_dir, SystemClock().now())
    except KeyMaterialError as exc:
        raise _fail(str(exc)) from exc
    for path in created:
        console.print(f"created {path}")


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Add a new encryption key; new writes use it, older rows stay readable."""
    settings = _settings()
    try:
        ring = rotate_encryption_key(settings.keys_dir, SystemClock().now())
    except KeyMaterialError as exc:
        raise _fail(str(exc)) from exc
    chain, _ = _audit_chain()
    _audit_operator_action(chain, "key-rotation")
    chain.close()
    console.print(f"active encryption key is now {ring.active} ({len(ring.key_ids)} keys)")
    console.print("run `gateway keys reencrypt` to move older rows to it")


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
    """Re-encrypt every stored version under the active key."""
    store, keys = _keyed_store()
    pending = sum(n for k, n in store.count_by_key().items() if k != keys.current().active)
    _in_batches("re-encrypting", pending, store.reencrypt(batch))
    console.print(f"re-encrypted {pending} versions under {keys.current().active}")
    store.close()


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply schema migrations (Alembic) to DATABASE_URL."""
    settings = _settings()
    engine = make_engine(settings.database_url, pool_size=1)
    upgrade(engine, revision)
    console.print(f"database at {revision}")
    engine.dispose()


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
        checkpoint_file=settings.audit_checkpoint_file,
    )
    return chain, settings


def _audit_operator_action(chain: AuditChain, action: str) -> None:
    """An AuditEvent for something an operator did at the command line (key rotation, an
    export of the log): the log records its own custodians too. Fails loudly (exit 1)."""
    from gateway.audit.events import Activity, Actor, audit_events
    from gateway.errors import ServiceUnavailable

    settings = _settings()
    actor = Actor(None, None, display=f"operator: gateway {action.replace('-', ' ')}")
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


@audit_app.command("verify")
def audit_verify(
    public_key: Annotated[
        Path | None, typer.Option(help="Ed25519 public key (default: KEYS_DIR's).")
    ] = None,
    checkpoint_file: Annotated[
        Path | None, typer.Option(help="Checkpoints kept outside the database.")
    ] = None,
    export: Annotated[
        Path | None, typer.Option(help="Verify an `audit export` file instead of the database.")
    ] = None,
) -> None:
    """Recompute the hash chain and check every signed checkpoint; exit 1 at the first bad seq."""
    from gateway.audit.chain import load_public_key, public_key_path, verify_export

    settings = _settings()
    try:
        public = load_public_key(public_key or public_key_path(settings.keys_dir))
    except (OSError, ValueError) as exc:
        raise _fail(f"cannot read the audit public key: {exc}") from exc
    if export is not None:
        try:
            with export.open("rb") as fh:
                result = verify_export(iter(fh), public)
        except (OSError, ValueError, KeyError) as exc:
            raise _fail(f"cannot read the export: {exc}") from exc
    else:
        chain, settings = _audit_chain()
        result = chain.verify(
            public, checkpoint_file=checkpoint_file or settings.audit_checkpoint_file
        )
    typer.echo(str(result))
    if not result.ok:
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign the chain's current head now (also done every AUDIT_CHECKPOINT_EVERY events)."""
    chain, _ = _audit_chain()
    signed = chain.checkpoint()
    chain.close()
    typer.echo("the audit log is empty" if signed is None else f"signed seq {signed.seq}")


@audit_app.command("export")
def audit_export(
    since: Annotated[
        datetime | None, typer.Option(help="Events recorded at or after this instant (UTC).")
    ] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="Only ndjson: one JSON object per line.")
    ] = "ndjson",
    output: Annotated[Path | None, typer.Option(help="File to write (default: stdout).")] = None,
) -> None:
    """Export events and signed checkpoints for a SIEM; `audit verify --export` checks a file."""
    from gateway.audit.chain import export_lines

    if output_format != "ndjson":
        raise _fail("--format must be ndjson")
    chain, _ = _audit_chain()
    _audit_operator_action(chain, "audit-export")
    moment = since.replace(tzinfo=UTC) if since is not None and since.tzinfo is None else since
    sink = output.open("wb") if output is not None else sys.stdout.buffer
    try:
        for line in export_lines(chain, since=moment):
            sink.write(line + b"\n")
    finally:
        chain.close()
        if output is not None:
            sink.close()


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
    counts = SqlStore(engine, keys, SystemClock()).count_by_key()
    table = Table("key id", "active", "versions")
    for key_id in keys.current().key_ids:
        table.add_row(
            key_id, "yes" if key_id == keys.current().active else "", str(counts.get(key_id, 0))
        )
    Console().print(table)
    engine.dispose()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
