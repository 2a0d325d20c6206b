"""The audit chain: table ``audit_log``, hash-chained, with signed checkpoints.

Every row is ``(seq, recorded, event, prev_hash, hash)``, linked as ``rows.chain_hash`` says;
``event`` is the AuditEvent's canonical JSON (keys sorted, compact). Because seq and recorded are
inside the hash, renumbering or re-dating a row breaks the chain too. Anyone can recompute
SHA-256, so the chain alone only proves *consistency*; the **checkpoints** prove *authenticity*:
every ``checkpoint_every`` events (and on demand) the gateway signs "the chain's hash at seq N is
H" with its Ed25519 key (``checkpoints``). A checkpoint is stored in ``audit_checkpoints`` and
then, once that transaction is committed (and durable), appended to the checkpoint file outside
the database, which is what anchors the log: deleting the tail of the table *and* its
checkpoints, or rewriting it with them, is still detected from outside the database.

Appends are serialised (SQLite: the writer's ``BEGIN IMMEDIATE``; PostgreSQL: a transaction
advisory lock), so seq has no gaps and the chain no forks whatever the number of workers or
instances. Concurrent appenders in one process are **group-committed**: the first one in leads
and commits everybody's events waiting at that moment in one transaction; each caller returns
only once its own events are committed (or raises). Nothing is queued in memory past a failure,
and nothing is written after the response: ``append`` is the choke point that fails closed.

``verify`` reads the checkpoint file, then the database in one snapshot: the events in seq order
and their ``audit_index`` rows alongside them (both streamed, in constant memory), and names
the first bad seq (``verify.verify_chain``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, Select, delete, func, insert, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError

from gateway.audit.checkpoints import (
    Checkpoint,
    CheckpointFile,
    CheckpointSigner,
    checkpoint_message,
    key_id,
    load_public_key,
    load_public_keys,
    public_key_path,
)
from gateway.audit.events import aggregated_refusals
from gateway.audit.export import export_lines
from gateway.audit.rows import GENESIS, canonical_event, chain_hash, index_values
from gateway.audit.verify import PublicKeys, Verification, verify_chain, verify_export
from gateway.clock import Clock
from gateway.errors import ServiceUnavailable
from gateway.store.port import StoreSession
from gateway.store.schema import audit_checkpoints as CP
from gateway.store.schema import audit_index as AI
from gateway.store.schema import audit_log as AL
from gateway.store.schema import audit_noise as NOISE
from gateway.store.sql_session import SqlSession
from gateway.vocabulary.dates import stamp

__all__ = [
    "APPEND_LOCK",
    "GENESIS",
    "AuditChain",
    "AuditPage",
    "AuditQuery",
    "Checkpoint",
    "CheckpointFile",
    "CheckpointSigner",
    "ReindexRefused",
    "Verification",
    "canonical_event",
    "chain_hash",
    "checkpoint_message",
    "export_lines",
    "index_values",
    "key_id",
    "load_public_key",
    "load_public_keys",
    "public_key_path",
    "verify_chain",
    "verify_export",
]

logger = logging.getLogger("gateway.audit")

# Any constant: the one lock every appender on PostgreSQL takes for its transaction.
APPEND_LOCK = 0x6175646974  # "audit"
# Checkpoints kept for the file when it cannot be written (retried after the next commit).
MAX_UNFILED = 1000
NOISE_BATCH = 500  # aggregated events folded per transaction


class ReindexRefused(Exception):
    """``reindex`` found the chain itself bad, or may not rebuild the index (not the owner)."""


@dataclass(frozen=True, slots=True)
class _ChainSql:
    """The append path's statements, in the driver's placeholder style (values are parameters)."""

    lock: str
    head: str
    insert_rows: str
    insert_index: str
    insert_checkpoint: str

    @classmethod
    def for_paramstyle(cls, paramstyle: str) -> _ChainSql:
        mark = "?" if paramstyle == "qmark" else "%s"
        return cls(
            lock=f"SELECT pg_advisory_xact_lock({mark})",
            head="SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            insert_rows=(
                "INSERT INTO audit_log (seq, recorded, event, prev_hash, hash) "  # noqa: S608
                f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark})"
            ),
            insert_index=(
                "INSERT INTO audit_index (seq, param, value) "  # noqa: S608
                f"VALUES ({mark}, {mark}, {mark})"
            ),
            insert_checkpoint=(
                "INSERT INTO audit_checkpoints (seq, hash, signed_at, key_id, signature) "  # noqa: S608
                f"VALUES ({mark}, {mark}, {mark}, {mark}, {mark})"
            ),
        )


@dataclass
class _Batch:
    # (recorded, canonical JSON, search values)
    events: list[tuple[str, bytes, list[tuple[str, str]]]] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    first_seq: int | None = None
    error: BaseException | None = None


@dataclass
class _Linked:
    first: int  # the seq of the first event
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    index: list[tuple[Any, ...]] = field(default_factory=list)
    checkpoints: list[Checkpoint] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class AfterCommit:
    """What ``append_within`` leaves for after its transaction commits."""

    chain: AuditChain
    checkpoints: list[Checkpoint]

    def __call__(self) -> None:
        self.chain.anchor_committed(self.checkpoints)


class AuditChain:
    """Appends events to ``audit_log`` (fail closed), signs checkpoints, verifies the chain."""

    def __init__(
        self,
        engine: Engine,
        signer: CheckpointSigner,
        clock: Clock,
        *,
        checkpoint_every: int = 1000,
        checkpoint_file: Path | None = None,
        site: str = "care-gateway",
    ) -> None:
        self._engine = engine
        self._site = site  # the gateway's FHIR base: AuditEvent.source.site of what it writes
        self._signer = signer
        self._clock = clock
        self._every = checkpoint_every
        self._file = CheckpointFile(checkpoint_file) if checkpoint_file is not None else None
        self._postgres = engine.dialect.name == "postgresql"
        self._sql = _ChainSql.for_paramstyle(engine.dialect.paramstyle)
        self._lock = threading.Lock()
        self._pending: _Batch | None = None
        self._leading = False
        self._writer: Any = None  # the leader's driver connection
        self._file_lock = threading.Lock()
        self._unfiled: list[Checkpoint] = []  # committed, not yet in the file

    @property
    def checkpoint_every(self) -> int:
        return self._every

    @property
    def checkpoint_file(self) -> Path | None:
        return self._file.path if self._file is not None else None

    # -- appending ---------------------------------------------------------------------------

    def append(self, events: Sequence[dict[str, Any]]) -> list[int]:
        """Commit ``events`` to the chain; their seqs. Raises ``ServiceUnavailable`` when they
        could not be written: the caller must then disclose nothing."""
        if not events:
            return []
        recorded = stamp(self._clock.now())
        mine = [(recorded, canonical_event(e), index_values(e)) for e in events]
        with self._lock:
            batch = self._pending
            if batch is None:
                batch = self._pending = _Batch()
            start = len(batch.events)
            batch.events.extend(mine)
            lead = not self._leading
            if lead:
                self._leading = True
        if lead:
            self._lead()
        else:
            batch.done.wait()
        if batch.error is not None:
            raise ServiceUnavailable("the audit log cannot be written") from batch.error
        assert batch.first_seq is not None
        first = batch.first_seq + start
        return list(range(first, first + len(mine)))

    def append_within(
        self, session: StoreSession, events: Sequence[dict[str, Any]]
    ) -> AfterCommit | None:
        """Append ``events`` inside the caller's open store transaction (a write and its audit
        event commit together, or neither does: a client told 503 has written nothing, so its
        retry makes no duplicate). The chain is locked in that transaction (SQLite: the
        writer's ``BEGIN IMMEDIATE`` already holds the database; PostgreSQL: the same advisory
        lock as ``append``) until it commits. Returns what must run once it has committed: the
        checkpoints it signed go to the file only then."""
        if not events:
            return None
        if not isinstance(session, SqlSession):
            raise TypeError("append_within needs a session of the SQL store")
        try:
            return self._append_on(session.conn, events)
        except DBAPIError as exc:
            # The caller's transaction rolls back with it: neither the write nor its event.
            raise ServiceUnavailable("the audit log cannot be written") from exc

    def _append_on(self, conn: Connection, events: Sequence[dict[str, Any]]) -> AfterCommit:
        recorded = stamp(self._clock.now())
        sql = self._sql
        if self._postgres:
            conn.exec_driver_sql(sql.lock, (APPEND_LOCK,))
        last = conn.exec_driver_sql(sql.head).first()
        linked = self._link([(recorded, canonical_event(e), index_values(e)) for e in events], last)
        conn.exec_driver_sql(sql.insert_rows, linked.rows)
        if linked.index:
            conn.exec_driver_sql(sql.insert_index, linked.index)
        if linked.checkpoints:
            conn.exec_driver_sql(sql.insert_checkpoint, [c.row() for c in linked.checkpoints])
        return AfterCommit(self, linked.checkpoints)

    def _link(self, events: list[tuple[str, bytes, list[tuple[str, str]]]], last: Any) -> _Linked:
        """Chain prepared events after the log's head ``last`` (``(seq, hash)`` or None): their
        rows, index rows and the checkpoints due. Both append paths write what this returns."""
        seq, prev = (int(last[0]), bytes.fromhex(last[1])) if last else (0, GENESIS)
        linked = _Linked(seq + 1)
        for recorded, event, values in events:
            seq += 1
            digest = chain_hash(prev, seq, recorded, event)
            linked.rows.append((seq, recorded, event.decode(), prev.hex(), digest.hex()))
            linked.index += [(seq, p, v) for p, v in values]
            prev = digest
            if seq % self._every == 0:
                linked.checkpoints.append(self._signer.sign(seq, digest.hex(), recorded))
        return linked

    # -- unauthenticated noise ----------------------------------------------------------------

    def note_unauthenticated(self, source: str | None, reason: str) -> None:
        """Count one refusal without a valid token (durably: committed before the refusal is
        answered, or ``ServiceUnavailable``), and fold the minutes that have closed into the
        chain, one event per source, reason and minute: the internet's noise grows the log by
        that much, and no refusal is dropped."""
        minute = stamp(self._clock.now())[:16]
        key = {"minute": minute, "source": (source or "unknown")[:64], "reason": reason[:64]}
        upsert = (pg_insert if self._postgres else sqlite_insert)(NOISE).values(**key, count=1)
        upsert = upsert.on_conflict_do_update(
            index_elements=["minute", "source", "reason"], set_={"count": NOISE.c.count + 1}
        )
        try:
            with self._writing() as conn:
                conn.execute(upsert)
                after = self._fold_noise(conn, before=minute)
        except DBAPIError as exc:
            raise ServiceUnavailable("the audit log cannot be written") from exc
        if after is not None:
            after()

    def fold_noise(self) -> int:
        """Fold every counted refusal into the chain now, the current minute included (at
        shutdown, and by ``audit verify`` callers that want a settled log); how many events."""
        folded = 0
        while True:
            with self._writing() as conn:
                pending = conn.execute(select(func.count()).select_from(NOISE)).scalar_one()
                after = self._fold_noise(conn, before=None)
            if after is None:
                return folded
            after()
            folded += min(int(pending), NOISE_BATCH)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A pooled connection in a writer's transaction (SQLite: ``BEGIN IMMEDIATE``)."""
        with self._engine.connect() as raw:
            conn = raw.execution_options(gateway_write=True)
            with conn.begin():
                yield conn

    def _fold_noise(self, conn: Connection, *, before: str | None) -> AfterCommit | None:
        keys = (NOISE.c.minute, NOISE.c.source, NOISE.c.reason)
        closed = select(*keys).order_by(*keys).limit(NOISE_BATCH)
        if before is not None:
            closed = closed.where(NOISE.c.minute < before)
        if conn.execute(closed.limit(1)).first() is None:
            return None
        if self._postgres:  # the chain's lock: this fold's events append in order
            conn.execute(select(func.pg_advisory_xact_lock(APPEND_LOCK)))
        # Taken by DELETE … RETURNING: the count folded is the count removed, even when a
        # refusal of that minute is counted concurrently (it waits for the row, or finds it
        # gone and starts a new one, folded next time). Never read-then-delete: that loses it.
        taken = conn.execute(
            delete(NOISE).where(tuple_(*keys).in_(closed)).returning(*keys, NOISE.c.count)
        ).all()
        if not taken:
            return None
        now = self._clock.now()
        events = [
            aggregated_refusals(
                source_address=source, reason=reason, minute=minute, count=int(count),
                recorded=now, site=self._site,
            )
            for minute, source, reason, count in sorted(taken)
        ]  # fmt: skip
        return self._append_on(conn, events)

    def anchor_committed(self, checkpoints: list[Checkpoint]) -> None:
        """File checkpoints whose transaction has committed (and any an earlier commit could
        not file)."""
        if checkpoints or self._unfiled:
            self._anchor(checkpoints)

    def _lead(self) -> None:
        """Commit batches until none is waiting (followers that arrive meanwhile join the
        next one), then hand leadership back."""
        while True:
            with self._lock:
                batch = self._pending
                self._pending = None
                if batch is None:
                    self._leading = False
                    return
            try:
                batch.first_seq = self._write(batch.events)
            except Exception as exc:
                batch.error = exc
            finally:
                batch.done.set()

    def _write(self, events: list[tuple[str, bytes, list[tuple[str, str]]]]) -> int:
        """One transaction: lock the chain, read its head, chain and insert the batch (rows,
        index values, any checkpoint due); once it is committed, the checkpoints go to the file.
        Only the leader writes, so it keeps one driver connection of its own and sends the
        statements straight to it: a pool checkout and SQLAlchemy's statement handling cost
        more than the database's own work (measured)."""
        dbapi = self._engine.dialect.dbapi
        assert dbapi is not None
        conn = self._writer or self._connect_writer()
        sql = self._sql
        checkpoints: list[Checkpoint] = []
        try:
            cur = conn.cursor()
            if self._postgres:
                cur.execute(sql.lock, (APPEND_LOCK,))
            else:
                cur.execute("BEGIN IMMEDIATE")
            cur.execute(sql.head)
            linked = self._link(events, cur.fetchone())
            first, checkpoints = linked.first, linked.checkpoints
            cur.executemany(sql.insert_rows, linked.rows)
            if linked.index:
                cur.executemany(sql.insert_index, linked.index)
            if checkpoints:
                cur.executemany(sql.insert_checkpoint, [c.row() for c in checkpoints])
                with self._anchoring():
                    conn.commit()
                    # Committed: only now may the file name these seqs (a line for a seq the
                    # database then lost would be an alarm for ever).
                    self._anchor(checkpoints)
            else:
                conn.commit()
            cur.close()
        except dbapi.Error:
            self._drop_writer()
            raise
        if self._unfiled and not checkpoints:
            self._anchor([])  # what an earlier commit could not write
        return first

    def _anchoring(self) -> contextlib.AbstractContextManager[None]:
        return self._file.writing() if self._file is not None else contextlib.nullcontext()

    def _connect_writer(self) -> Any:
        fairy = self._engine.raw_connection()
        fairy.detach()  # owned by the chain, outside the pool
        conn = fairy.dbapi_connection
        self._writer = conn
        return conn

    def _drop_writer(self) -> None:
        conn, self._writer = self._writer, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.rollback()
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """At shutdown: fold the counted refusals into the chain (best effort: what cannot be
        folded now stays counted in the database for the next start), release the writer."""
        try:
            self.fold_noise()
        except Exception as exc:
            logger.warning(
                "unauthenticated refusals not folded at shutdown (%s)", type(exc).__name__
            )
        with self._lock:
            self._drop_writer()

    def _make_durable(self) -> None:
        """SQLite runs ``synchronous=NORMAL``: a commit survives the process, not the machine,
        until the WAL is synced. Before the file names a commit, sync the WAL (PostgreSQL's
        commit is already flushed)."""
        if self._postgres or not self._engine.url.database:
            return
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(f"{self._engine.url.database}-wal", os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _anchor(self, checkpoints: list[Checkpoint], *, strict: bool = False) -> None:
        """Append committed checkpoints (and any the file missed before) to the checkpoint
        file. A failure does not undo the commit (the events are recorded): the checkpoints wait
        for the next commit, the error is logged, and ``verify`` counts the events they cover as
        not yet anchored. ``strict`` raises it instead (an operator's ``audit checkpoint``)."""
        if self._file is None:
            return
        with self._file_lock:
            todo = [*self._unfiled, *checkpoints]
            try:
                self._make_durable()
                self._file.append(todo)
            except OSError as exc:
                self._unfiled = todo[-MAX_UNFILED:]
                logger.error(
                    "audit checkpoint file not written (%s); %d checkpoint(s) wait for the next "
                    "commit",
                    type(exc).__name__,
                    len(self._unfiled),
                )
                if strict:
                    raise
            else:
                self._unfiled = []

    def checkpoint(self) -> Checkpoint | None:
        """Sign the chain's current head now (None for an empty log), store it, then append it
        to the checkpoint file (raises ``OSError`` when the file cannot be written)."""
        with contextlib.ExitStack() as held:
            with self._engine.connect() as conn:
                conn = conn.execution_options(gateway_write=True)
                with conn.begin():
                    if self._postgres:
                        conn.execute(select(func.pg_advisory_xact_lock(APPEND_LOCK)))
                    last = conn.execute(
                        select(AL.c.seq, AL.c.hash).order_by(AL.c.seq.desc()).limit(1)
                    ).first()
                    if last is None:
                        return None
                    done = conn.execute(select(CP.c.seq).where(CP.c.seq == last.seq)).first()
                    signed = self._signer.sign(last.seq, last.hash, stamp(self._clock.now()))
                    if done is None:
                        conn.exec_driver_sql(self._sql.insert_checkpoint, [signed.row()])
                    held.enter_context(self._anchoring())  # released once the line is written
            # Committed. Written even when the database held one for this seq already: the
            # file may lack it (a crash after that commit), and it is what anchors the log.
            self._anchor([signed], strict=True)
        return signed

    # -- reading -----------------------------------------------------------------------------

    def rows(
        self, *, since: datetime | None = None, batch: int = 10_000
    ) -> Generator[tuple[int, str, str, str, str], None, None]:
        """(seq, recorded, event, prev_hash, hash) in seq order, streamed."""
        query = select(AL.c.seq, AL.c.recorded, AL.c.event, AL.c.prev_hash, AL.c.hash)
        if since is not None:
            query = query.where(AL.c.recorded >= stamp(since))
        with self._engine.connect() as conn:
            yield from _stream(conn, query.order_by(AL.c.seq), batch)

    def search(self, query: AuditQuery) -> AuditPage:
        """Events matching every criterion (values of one parameter OR-ed), newest first."""
        where: list[Any] = []
        for param, values in query.criteria:
            where.append(
                AL.c.seq.in_(
                    select(AI.c.seq).where(AI.c.param == param, AI.c.value.in_(list(values)))
                )
            )
        if query.recorded_from is not None:
            where.append(AL.c.recorded >= query.recorded_from)
        if query.recorded_to is not None:
            where.append(AL.c.recorded <= query.recorded_to)
        with self._engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(AL).where(*where)).scalar_one()
            page = select(AL.c.seq, AL.c.event).where(*where)
            if query.before_seq is not None:
                page = page.where(AL.c.seq < query.before_seq)
            rows = conn.execute(page.order_by(AL.c.seq.desc()).limit(query.count + 1)).all()
        more = len(rows) > query.count
        events = [(row.seq, orjson.loads(row.event)) for row in rows[: query.count]]
        return AuditPage(events, total, events[-1][0] if more and events else None)

    def checkpoints(self) -> list[Checkpoint]:
        with self._engine.connect() as conn:
            return _checkpoints(conn)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """One read transaction: everything read through it is one state of the database (on
        PostgreSQL REPEATABLE READ; on SQLite one WAL snapshot, taken at the first read)."""
        with self._engine.connect() as conn:
            if self._postgres:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def verify(
        self, public: PublicKeys, *, checkpoint_files: Sequence[Path] | None = None
    ) -> Verification:
        """Verify the chain, its index and checkpoints, and the anchor: the checkpoints in
        ``checkpoint_files`` (default: the chain's own file; ``()``: none, and the database's
        checkpoints anchor). More than ``checkpoint_every`` events past the last anchoring
        checkpoint is a failure."""
        files = (
            [CheckpointFile(p) for p in checkpoint_files]
            if checkpoint_files is not None
            else [self._file]
            if self._file is not None
            else []
        )
        external: list[Checkpoint] = []
        notes: list[str] = []
        for file in files:  # before the snapshot: every line read names a seq it holds
            try:
                found, skipped = file.read()
            except OSError as exc:
                problem = f"cannot read the checkpoint file {file.path} ({type(exc).__name__})"
                return Verification(False, 0, 0, None, problem)
            external += found
            if skipped:
                notes.append(f"{skipped} unreadable line(s) in {file.path} skipped")
        anchor = "the database"
        if files:
            anchor = "the checkpoint file"
            if not any(f.exists() for f in files):
                anchor += " (absent)"
        with self._snapshot() as conn:
            head = conn.execute(select(func.max(AL.c.seq))).scalar_one() or 0
            external += self._anchored_meanwhile(files, external, head)
            stored = _checkpoints(conn)
            events = select(AL.c.seq, AL.c.recorded, AL.c.event, AL.c.prev_hash, AL.c.hash)
            index = select(AI.c.seq, AI.c.param, AI.c.value)
            # closing: verify may stop at the first bad row, and a cursor must not leak
            with (
                closing(_stream(conn, events.order_by(AL.c.seq))) as rows,
                closing(_stream(conn, index.order_by(AI.c.seq))) as index_rows,
            ):
                result = verify_chain(
                    rows,
                    stored,
                    public,
                    external=external,
                    index=index_rows,
                    external_anchors=bool(files),
                    max_unanchored=self._every,
                    anchor=anchor,
                )
        return replace(result, notes=tuple(notes)) if notes else result

    @staticmethod
    def _anchored_meanwhile(
        files: list[CheckpointFile], known: list[Checkpoint], head: int
    ) -> list[Checkpoint]:
        """Lines written since the first read for seqs the snapshot holds: commits between that
        read and the snapshot (their writers are waited for), which anchor it too."""
        seen = {c.row() for c in known}
        later: list[Checkpoint] = []
        for file in files:
            with contextlib.suppress(OSError):
                found, _ = file.read(wait=True)
                later += [c for c in found if c.seq <= head and c.row() not in seen]
        return later

    # -- repair --------------------------------------------------------------------------------

    def reindex(self, public: PublicKeys, *, batch: int = 5_000) -> int:
        """Rebuild ``audit_index`` from the events, once the chain and its checkpoints verify
        (the index is what may be wrong, so it is not checked first); the number of events.
        On PostgreSQL the append-only trigger of ``audit_index`` is switched off inside the
        transaction, which only the tables' owner may do (as migrations run)."""
        events = select(AL.c.seq, AL.c.recorded, AL.c.event, AL.c.prev_hash, AL.c.hash)
        with self._snapshot() as conn, closing(_stream(conn, events.order_by(AL.c.seq))) as rows:
            found = verify_chain(rows, _checkpoints(conn), public)
        if not found.ok:
            raise ReindexRefused(f"the chain does not verify ({found})")
        count = 0
        with self._engine.connect() as conn:
            conn = conn.execution_options(gateway_write=True)
            with conn.begin():
                if self._postgres:
                    conn.execute(select(func.pg_advisory_xact_lock(APPEND_LOCK)))
                    try:
                        conn.exec_driver_sql(
                            "ALTER TABLE audit_index DISABLE TRIGGER audit_index_no_change"
                        )
                    except DBAPIError as exc:
                        raise ReindexRefused(
                            "only the owner of the audit tables may rebuild audit_index"
                        ) from exc
                conn.execute(delete(AI))
                if self._postgres:
                    conn.exec_driver_sql(
                        "ALTER TABLE audit_index ENABLE TRIGGER audit_index_no_change"
                    )
                after = 0
                while True:
                    chunk = conn.execute(
                        select(AL.c.seq, AL.c.event)
                        .where(AL.c.seq > after)
                        .order_by(AL.c.seq)
                        .limit(batch)
                    ).all()
                    if not chunk:
                        break
                    values = [
                        {"seq": seq, "param": p, "value": v}
                        for seq, event in chunk
                        for p, v in index_values(orjson.loads(event))
                    ]
                    if values:
                        conn.execute(insert(AI), values)
                    after, count = chunk[-1].seq, count + len(chunk)
        return count


def _stream(
    conn: Connection, query: Select[Any], batch: int = 10_000
) -> Generator[Any, None, None]:
    result = conn.execute(query, execution_options={"stream_results": True, "yield_per": batch})
    try:
        for row in result:
            yield tuple(row)
    finally:
        result.close()  # a server-side cursor left open warns (and holds the snapshot)


def _checkpoints(conn: Connection) -> list[Checkpoint]:
    return [
        Checkpoint(r.seq, r.hash, r.signed_at, r.key_id, r.signature)
        for r in conn.execute(select(CP).order_by(CP.c.seq))
    ]


@dataclass(frozen=True, slots=True)
class AuditQuery:
    criteria: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (param, values OR-ed), AND-ed
    recorded_from: str | None = None  # stamps (vocabulary.dates.stamp), inclusive
    recorded_to: str | None = None
    count: int = 50
    before_seq: int | None = None  # keyset paging, newest first


@dataclass(frozen=True, slots=True)
class AuditPage:
    events: list[tuple[int, dict[str, Any]]]  # (seq, event), newest first
    total: int
    next_before: int | None = None
