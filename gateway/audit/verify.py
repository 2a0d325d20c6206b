"""Verifying the audit log: the hash chain, the search index derived from it, the signed
checkpoints, and how much of the log is anchored.

``verify_chain`` streams rows in seq order in constant memory and names the first bad seq:

- the chain: deleted (a gap), edited (a row whose hash does not recompute), reordered or
  inserted (a row that recomputes but does not follow its predecessor);
- the index (``audit_index``, what the compliance review searches): each event's rows are
  recomputed from the event and compared with the rows stored for its seq; a row missing, altered
  or added, or a row naming no event, is a failure;
- the checkpoints: a bad signature, an unknown key, two that disagree, one that disagrees with
  the chain (rewritten), one beyond the end of the log (truncated);
- the anchor: the events after the last checkpoint the anchor holds are **not yet anchored**
  (always reported); more than ``max_unanchored`` of them is a failure. With a checkpoint file
  configured only its checkpoints anchor: whoever can rewrite the tables can also delete the
  database's checkpoints, so those cannot vouch for the tail.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.audit.checkpoints import Checkpoint, checkpoint_message, key_id
from gateway.audit.rows import GENESIS, canonical_event, chain_hash, index_values

Row = tuple[int, str, str, str, str]  # seq, recorded, event, prev_hash, hash
IndexRow = tuple[int, str, str]  # seq, param, value
PublicKeys = ed25519.Ed25519PublicKey | Sequence[ed25519.Ed25519PublicKey]


@dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    events: int
    checkpoints: int
    bad_seq: int | None = None
    problem: str | None = None
    unanchored: int = 0  # events after the last checkpoint the anchor holds
    anchor: str = "the database"  # where the anchoring checkpoints were read from
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        if not self.ok:
            where = f"seq {self.bad_seq}: " if self.bad_seq is not None else ""
            return f"{where}{self.problem}"
        notes = "".join(f"; {n}" for n in self.notes)
        return (
            f"verified {self.events} events and {self.checkpoints} signed checkpoints; "
            f"{self.unanchored} events not yet anchored in {self.anchor}{notes}"
        )


def _keys(public: PublicKeys) -> dict[str, ed25519.Ed25519PublicKey]:
    keys = [public] if isinstance(public, ed25519.Ed25519PublicKey) else list(public)
    return {key_id(k): k for k in keys}


def _index_problem(expected: list[tuple[str, str]], stored: list[tuple[str, str]]) -> str:
    want, have = Counter(expected), Counter(stored)
    missing, extra = want - have, have - want
    params = sorted({p for p, _ in missing} | {p for p, _ in extra})
    return (
        f"audit_index rows do not match the event ({sum(missing.values())} missing, "
        f"{sum(extra.values())} not the event's; {', '.join(params)})"
    )


def verify_chain(
    rows: Iterable[Row],
    stored: Sequence[Checkpoint],
    public: PublicKeys,
    *,
    external: Sequence[Checkpoint] = (),
    start: tuple[int, str] = (1, GENESIS.hex()),
    index: Iterable[IndexRow] | None = None,
    external_anchors: bool = False,
    max_unanchored: int | None = None,
    anchor: str = "the database",
) -> Verification:
    """Check ``rows`` (seq order), their ``index`` rows (seq order; None: not checked) and every
    checkpoint; the first problem found, by seq. ``start`` is where the rows begin (seq,
    prev_hash): the genesis for a whole log. ``external`` are the checkpoint file's; with
    ``external_anchors`` only they count as the anchor."""
    keys = _keys(public)
    checkpoints: dict[int, Checkpoint] = {}
    for c in (*stored, *external):
        public_key = keys.get(c.key_id)
        if public_key is None:
            problem = f"checkpoint signed by an unknown key {c.key_id}"
            return Verification(False, 0, 0, c.seq, problem)
        try:
            public_key.verify(
                base64.b64decode(c.signature), checkpoint_message(c.seq, c.hash, c.signed_at)
            )
        except (InvalidSignature, ValueError):
            return Verification(False, 0, 0, c.seq, "checkpoint signature does not verify")
        known = checkpoints.get(c.seq)
        if known is not None and known.hash != c.hash:
            return Verification(False, 0, 0, c.seq, "two signed checkpoints disagree")
        checkpoints[c.seq] = c
    anchors = {c.seq for c in external} if external_anchors else set(checkpoints)
    pending: Iterator[IndexRow] | None = iter(index) if index is not None else None
    waiting = next(pending, None) if pending is not None else None
    expected, prev = start
    count = 0

    def fail(seq: int, problem: str) -> Verification:
        return Verification(False, count, len(checkpoints), seq, problem)

    for seq, recorded, event, prev_hash, digest in rows:
        if seq != expected:
            if seq > expected:
                return fail(expected, "event deleted")
            return fail(seq, "seq out of order")
        body, before = event.encode(), bytes.fromhex(prev_hash)
        if chain_hash(before, seq, recorded, body).hex() != digest:
            moved = [
                s
                for s in (seq - 1, seq + 1)
                if chain_hash(before, s, recorded, body).hex() == digest
            ]
            return fail(
                seq,
                f"event moved here from seq {moved[0]} (events reordered or inserted)"
                if moved
                else "event edited (its hash does not recompute)",
            )
        if prev_hash != prev:
            return fail(seq, "event reordered or inserted (it does not follow the one before)")
        signed = checkpoints.get(seq)
        if signed is not None and signed.hash != digest:
            return fail(seq, "the chain was rewritten (a signed checkpoint disagrees)")
        if pending is not None:
            found: list[tuple[str, str]] = []
            while waiting is not None and waiting[0] <= seq:
                if waiting[0] < seq:
                    return fail(waiting[0], "an audit_index row names no event")
                found.append((waiting[1], waiting[2]))
                waiting = next(pending, None)
            values = index_values(orjson.loads(body))
            if sorted(found) != sorted(values):
                return fail(seq, _index_problem(values, found))
        prev, expected, count = digest, expected + 1, count + 1
    beyond = [s for s in checkpoints if s >= expected]
    if beyond:
        return fail(expected, f"log truncated: a signed checkpoint names seq {max(beyond)}")
    if waiting is not None:
        return fail(waiting[0], "an audit_index row names no event")
    first = start[0]
    last_anchor = max((s for s in anchors if s >= first), default=first - 1)
    unanchored = expected - 1 - last_anchor
    if max_unanchored is not None and unanchored > max_unanchored:
        return fail(
            last_anchor + 1,
            f"{unanchored} events are not anchored by a checkpoint in {anchor} "
            f"(at most {max_unanchored} may be): its checkpoints are missing",
        )
    return Verification(True, count, len(checkpoints), unanchored=unanchored, anchor=anchor)


def verify_export(lines: Iterable[bytes], public: PublicKeys) -> Verification:
    """Verify an export: a chain that may start mid-way (``--since``), and its checkpoints (only
    those inside the exported range are checked against it). Stamps may end in ``Z`` (exports
    write them so); the hashed and signed forms have none."""
    rows: list[Row] = []
    signed: list[Checkpoint] = []
    for line in lines:
        if not line.strip():
            continue
        doc = orjson.loads(line)
        if "checkpoint" in doc:
            signed.append(Checkpoint.from_json(doc["checkpoint"]))
        else:
            event = canonical_event(doc["event"]).decode()
            recorded = str(doc["recorded"]).removesuffix("Z")
            rows.append((int(doc["seq"]), recorded, event, doc["prev_hash"], doc["hash"]))
    if not rows:
        return Verification(True, 0, 0, anchor="the export")
    first = rows[0][0]
    # A checkpoint past the export's end means it was cut short; one before its start is
    # outside the range exported.
    inside = [c for c in signed if c.seq >= first]
    return verify_chain(iter(rows), inside, public, start=(first, rows[0][3]), anchor="the export")
