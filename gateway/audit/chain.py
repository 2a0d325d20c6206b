"""The audit chain: table ``audit_log``, hash-chained, with signed checkpoints.

Every row is ``(seq, recorded, event, prev_hash, hash)``:

    hash(n) = SHA-256( prev_hash(n) ‖ seq(n) as 8 bytes big-endian ‖ recorded(n) ‖ 0x00 ‖ event(n) )
    prev_hash(1) = 32 zero bytes;  prev_hash(n) = hash(n-1)

``event`` is the AuditEvent's canonical JSON (keys sorted, compact). Because seq and recorded are
inside the hash, renumbering or re-dating a row breaks the chain too. Anyone can recompute
SHA-256, so the chain alone only proves *consistency*; the **checkpoints** prove *authenticity*:
every ``checkpoint_every`` events (and on demand) the gateway signs "the chain's hash at seq N is
H" with its Ed25519 key (``KEYS_DIR/audit-signing-key.pem``; the public key is exported beside
it). A checkpoint is stored in ``audit_checkpoints`` and, when a checkpoint file is configured,
appended to that file too, so that deleting the tail of the table *and* its checkpoints is still
detected from outside the database.

Appends are serialised (SQLite: the writer's ``BEGIN IMMEDIATE``; PostgreSQL: a transaction
advisory lock), so seq has no gaps and the chain no forks whatever the number of workers or
instances. Concurrent appenders in one process are **group-committed**: the first one in leads
and commits everybody's events waiting at that moment in one transaction; each caller returns
only once its own events are committed (or raises). Nothing is queued in memory past a failure,
and nothing is written after the response: ``append`` is the choke point that fails closed.

``verify`` streams the table in seq order in constant memory and names the first bad seq:
deleted (a gap), edited (a row whose hash does not recompute), reordered or inserted (a row that
recomputes but does not follow its predecessor), rewritten (a checkpoint whose hash disagrees
with the chain), truncated (a checkpoint beyond the end of the log), or a bad signature.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import Engine, func, select

from gateway.clock import Clock
from gateway.errors import ServiceUnavailable
from gateway.keys import AUDIT_PUBLIC_FILE, AUDIT_SIGNING_FILE
from gateway.store.schema import audit_checkpoints as CP
from gateway.store.schema import audit_index as AI
from gateway.store.schema import audit_log as AL
from gateway.store.searchparams import stamp

GENESIS = bytes(32)
CHECKPOINT_CONTEXT = b"care-gateway audit checkpoint v1\n"
# Any constant: the one lock every appender on PostgreSQL takes for its transaction.
APPEND_LOCK = 0x6175646974  # "audit"


def index_values(event: dict[str, Any]) -> list[tuple[str, str]]:
    """The search values of one AuditEvent (R4 search parameters): ``patient`` (entities of
    role 1), ``entity`` (every entity, with and without its version), ``agent`` (who.reference),
    ``altid`` (the client id), ``type``, ``subtype``, ``outcome``, ``action``."""
    out: list[tuple[str, str]] = []
    for e in event.get("entity") or ():
        ref = (e.get("what") or {}).get("reference")
        if not isinstance(ref, str):
            continue
        out.append(("entity", ref))
        if "/_history/" in ref:
            out.append(("entity", ref.split("/_history/", 1)[0]))
        if (e.get("role") or {}).get("code") == "1":
            out.append(("patient", ref))
    for a in event.get("agent") or ():
        who = (a.get("who") or {}).get("reference")
        if isinstance(who, str):
            out.append(("agent", who))
        if isinstance(a.get("altId"), str):
            out.append(("altid", a["altId"]))
    out.append(("type", str((event.get("type") or {}).get("code"))))
    out += [("subtype", str(c.get("code"))) for c in event.get("subtype") or ()]
    out += [("outcome", str(event.get("outcome"))), ("action", str(event.get("action")))]
    return [(p, v[:255]) for p, v in dict.fromkeys(out)]


def canonical_event(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: bytes, seq: int, recorded: str, event: bytes) -> bytes:
    digest = hashlib.sha256(prev_hash)
    digest.update(seq.to_bytes(8, "big"))
    digest.update(recorded.encode())
    digest.update(b"\x00")
    digest.update(event)
    return digest.digest()


def checkpoint_message(seq: int, hash_hex: str, signed_at: str) -> bytes:
    return CHECKPOINT_CONTEXT + f"{seq}\n{hash_hex}\n{signed_at}\n".encode()


def key_id(public: ed25519.Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    signed_at: str
    key_id: str
    signature: str  # base64

    def row(self) -> tuple[int, str, str, str, str]:
        return (self.seq, self.hash, self.signed_at, self.key_id, self.signature)

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "seq": self.seq,
                "hash": self.hash,
                "signed_at": self.signed_at,
                "key_id": self.key_id,
                "signature": self.signature,
            }
        )


class CheckpointSigner:
    """Signs checkpoints with the gateway's Ed25519 audit key."""

    def __init__(self, private: ed25519.Ed25519PrivateKey) -> None:
        self._private = private
        self.key_id = key_id(private.public_key())

    @classmethod
    def from_keys_dir(cls, keys_dir: Path) -> CheckpointSigner:
        key = serialization.load_pem_private_key(
            (keys_dir / AUDIT_SIGNING_FILE).read_bytes(), password=None
        )
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{AUDIT_SIGNING_FILE} is not an Ed25519 key")
        return cls(key)

    def sign(self, seq: int, hash_hex: str, signed_at: str) -> Checkpoint:
        signature = self._private.sign(checkpoint_message(seq, hash_hex, signed_at))
        return Checkpoint(
            seq, hash_hex, signed_at, self.key_id, base64.b64encode(signature).decode()
        )


def load_public_key(path: Path) -> ed25519.Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ValueError(f"{path.name} is not an Ed25519 public key")
    return key


def public_key_path(keys_dir: Path) -> Path:
    return keys_dir / AUDIT_PUBLIC_FILE


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
    ) -> None:
        self._engine = engine
        self._signer = signer
        self._clock = clock
        self._every = checkpoint_every
        self._file = checkpoint_file
        self._postgres = engine.dialect.name == "postgresql"
        self._sql = _ChainSql.for_paramstyle(engine.dialect.paramstyle)
        self._lock = threading.Lock()
        self._pending: _Batch | None = None
        self._leading = False
        self._writer: Any = None  # the leader's driver connection

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
        index values, any checkpoint due). Only the leader writes, so it keeps one driver
        connection of its own and sends the statements straight to it: a pool checkout and
        SQLAlchemy's statement handling cost more than the database's own work (measured)."""
        dbapi = self._engine.dialect.dbapi
        assert dbapi is not None
        conn = self._writer or self._connect_writer()
        sql = self._sql
        try:
            cur = conn.cursor()
            if self._postgres:
                cur.execute(sql.lock, (APPEND_LOCK,))
            else:
                cur.execute("BEGIN IMMEDIATE")
            cur.execute(sql.head)
            last = cur.fetchone()
            seq, prev = (int(last[0]), bytes.fromhex(last[1])) if last else (0, GENESIS)
            first = seq + 1
            rows: list[tuple[Any, ...]] = []
            index: list[tuple[Any, ...]] = []
            checkpoints = []
            for recorded, event, values in events:
                seq += 1
                digest = chain_hash(prev, seq, recorded, event)
                rows.append((seq, recorded, event.decode(), prev.hex(), digest.hex()))
                index += [(seq, p, v) for p, v in values]
                prev = digest
                if seq % self._every == 0:
                    checkpoints.append(self._signer.sign(seq, digest.hex(), recorded))
            cur.executemany(sql.insert_rows, rows)
            if index:
                cur.executemany(sql.insert_index, index)
            if checkpoints:
                cur.executemany(sql.insert_checkpoint, [c.row() for c in checkpoints])
                self._write_checkpoint_file(checkpoints)
            conn.commit()
            cur.close()
        except (dbapi.Error, OSError):
            self._drop_writer()
            raise
        return first

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
        with self._lock:
            self._drop_writer()

    def _store_checkpoints(self, conn: Any, checkpoints: list[Checkpoint]) -> None:
        if not checkpoints:
            return
        conn.exec_driver_sql(self._sql.insert_checkpoint, [c.row() for c in checkpoints])
        self._write_checkpoint_file(checkpoints)

    def _write_checkpoint_file(self, checkpoints: list[Checkpoint]) -> None:
        if self._file is not None:
            # Inside the transaction: if the file cannot be written, nothing is committed.
            with self._file.open("ab") as fh:
                for c in checkpoints:
                    fh.write(c.as_json() + b"\n")
                fh.flush()
                os.fsync(fh.fileno())

    def checkpoint(self) -> Checkpoint | None:
        """Sign the chain's current head now (None for an empty log)."""
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
                    self._store_checkpoints(conn, [signed])
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
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(
                query.order_by(AL.c.seq)
            )
            try:
                for row in result:
                    yield row.seq, row.recorded, row.event, row.prev_hash, row.hash
            finally:
                result.close()  # a server-side cursor left open warns (and holds the snapshot)

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
            return [
                Checkpoint(r.seq, r.hash, r.signed_at, r.key_id, r.signature)
                for r in conn.execute(select(CP).order_by(CP.c.seq))
            ]

    def verify(
        self, public: ed25519.Ed25519PublicKey, *, checkpoint_file: Path | None = None
    ) -> Verification:
        # closing: verify may stop at the first bad row, and a streaming cursor must not leak
        with closing(self.rows()) as rows:
            return verify_chain(
                rows, self.checkpoints(), public, external=_read_checkpoints(checkpoint_file)
            )


@dataclass(frozen=True, slots=True)
class AuditQuery:
    criteria: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (param, values OR-ed), AND-ed
    recorded_from: str | None = None  # stamps (searchparams.stamp), inclusive
    recorded_to: str | None = None
    count: int = 50
    before_seq: int | None = None  # keyset paging, newest first


@dataclass(frozen=True, slots=True)
class AuditPage:
    events: list[tuple[int, dict[str, Any]]]  # (seq, event), newest first
    total: int
    next_before: int | None = None


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    events: int
    checkpoints: int
    bad_seq: int | None = None
    problem: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return f"verified {self.events} events and {self.checkpoints} signed checkpoints"
        return f"seq {self.bad_seq}: {self.problem}"


def _read_checkpoints(path: Path | None) -> list[Checkpoint]:
    if path is None or not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        doc = orjson.loads(line)
        out.append(
            Checkpoint(
                int(doc["seq"]), doc["hash"], doc["signed_at"], doc["key_id"], doc["signature"]
            )
        )
    return out


def verify_chain(
    rows: Iterator[tuple[int, str, str, str, str]] | Sequence[tuple[int, str, str, str, str]],
    stored: Sequence[Checkpoint],
    public: ed25519.Ed25519PublicKey,
    *,
    external: Sequence[Checkpoint] = (),
    start: tuple[int, str] = (1, GENESIS.hex()),
) -> Verification:
    """Check ``rows`` (seq order) and every checkpoint; the first problem found, by seq.
    ``start`` is where the rows begin (seq, prev_hash): the genesis for a whole log. A
    checkpoint past the last row is a truncation."""
    signing_key = key_id(public)
    checkpoints: dict[int, Checkpoint] = {}
    for c in (*stored, *external):
        try:
            public.verify(
                base64.b64decode(c.signature), checkpoint_message(c.seq, c.hash, c.signed_at)
            )
        except (InvalidSignature, ValueError):
            return Verification(False, 0, 0, c.seq, "checkpoint signature does not verify")
        if c.key_id != signing_key:  # pragma: no cover (a valid signature implies the key)
            return Verification(False, 0, 0, c.seq, "checkpoint signed by another key")
        known = checkpoints.get(c.seq)
        if known is not None and known.hash != c.hash:
            return Verification(False, 0, 0, c.seq, "two signed checkpoints disagree")
        checkpoints[c.seq] = c
    expected, prev = start
    count = 0
    for seq, recorded, event, prev_hash, digest in rows:
        if seq != expected:
            if seq > expected:
                return Verification(False, count, len(checkpoints), expected, "event deleted")
            return Verification(False, count, len(checkpoints), seq, "seq out of order")
        body, before = event.encode(), bytes.fromhex(prev_hash)
        if chain_hash(before, seq, recorded, body).hex() != digest:
            moved = [
                s
                for s in (seq - 1, seq + 1)
                if chain_hash(before, s, recorded, body).hex() == digest
            ]
            problem = (
                f"event moved here from seq {moved[0]} (events reordered or inserted)"
                if moved
                else "event edited (its hash does not recompute)"
            )
            return Verification(False, count, len(checkpoints), seq, problem)
        if prev_hash != prev:
            problem = "event reordered or inserted (it does not follow the one before)"
            return Verification(False, count, len(checkpoints), seq, problem)
        signed = checkpoints.get(seq)
        if signed is not None and signed.hash != digest:
            problem = "the chain was rewritten (a signed checkpoint disagrees)"
            return Verification(False, count, len(checkpoints), seq, problem)
        prev, expected, count = digest, expected + 1, count + 1
    beyond = [s for s in checkpoints if s >= expected]
    if beyond:
        problem = f"log truncated: a signed checkpoint names seq {max(beyond)}"
        return Verification(False, count, len(checkpoints), expected, problem)
    return Verification(True, count, len(checkpoints))


# ---------------------------------------------------------------------------------------------
# Export (NDJSON, for a SIEM) and its offline verification


def export_lines(chain: AuditChain, *, since: datetime | None = None) -> Iterator[bytes]:
    """One JSON object per line: every event row (``seq``, ``recorded``, ``prev_hash``,
    ``hash``, ``event``), then every signed checkpoint (``checkpoint``). The event is the stored
    canonical JSON as an object; re-serialised canonically it hashes to ``hash`` again, so the
    file verifies offline with the public key alone (``verify_export``)."""
    with closing(chain.rows(since=since)) as rows:
        for seq, recorded, event, prev_hash, digest in rows:
            yield (
                b'{"seq":%d,"recorded":"%s","prev_hash":"%s","hash":"%s","event":%s}'
                % (seq, recorded.encode(), prev_hash.encode(), digest.encode(), event.encode())
            )
    for c in chain.checkpoints():
        yield b'{"checkpoint":%s}' % c.as_json()


def verify_export(lines: Iterator[bytes], public: ed25519.Ed25519PublicKey) -> Verification:
    """Verify an export: a chain that may start mid-way (``--since``), and its checkpoints (only
    those inside the exported range are checked against it)."""
    rows: list[tuple[int, str, str, str, str]] = []
    signed: list[Checkpoint] = []
    for line in lines:
        if not line.strip():
            continue
        doc = orjson.loads(line)
        if "checkpoint" in doc:
            c = doc["checkpoint"]
            signed.append(
                Checkpoint(int(c["seq"]), c["hash"], c["signed_at"], c["key_id"], c["signature"])
            )
        else:
            event = canonical_event(doc["event"]).decode()
            rows.append((doc["seq"], doc["recorded"], event, doc["prev_hash"], doc["hash"]))
    if not rows:
        return Verification(True, 0, 0)
    first = rows[0][0]
    # A checkpoint past the export's end means it was cut short; one before its start is
    # outside the range exported.
    inside = [c for c in signed if c.seq >= first]
    return verify_chain(iter(rows), inside, public, start=(first, rows[0][3]))
