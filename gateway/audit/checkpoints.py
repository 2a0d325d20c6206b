"""Signed checkpoints: "the chain's hash at seq N is H", signed Ed25519 with the audit key, and
the append-only file outside the database that anchors them.

The audit signing key is a list (``keys rotate --audit``): the newest private key in
``KEYS_DIR/audit-signing-key.pem`` signs; ``audit-signing-key.pub.pem`` holds every public key,
newest first, and any of them verifies a checkpoint carrying its key id. A single-key public
file (before rotation existed) is a list of one.

``CheckpointFile`` appends one JSON line per checkpoint (directory created 0700, file 0600,
``O_APPEND``, fsynced). The chain writes a line only **after** the database commit it signs, so a
line never names a seq the database does not hold; a crash between the two leaves a checkpoint
in the database without its line, which ``verify`` counts as not yet anchored.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.keys import AUDIT_PUBLIC_FILE, AUDIT_SIGNING_FILE, PEM_PUBLIC_BLOCK, ed25519_key_id

CHECKPOINT_CONTEXT = b"care-gateway audit checkpoint v1\n"

key_id = ed25519_key_id


def checkpoint_message(seq: int, hash_hex: str, signed_at: str) -> bytes:
    return CHECKPOINT_CONTEXT + f"{seq}\n{hash_hex}\n{signed_at}\n".encode()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    signed_at: str
    key_id: str
    signature: str  # base64

    def row(self) -> tuple[int, str, str, str, str]:
        return (self.seq, self.hash, self.signed_at, self.key_id, self.signature)

    def as_json(self, *, zulu: bool = False) -> bytes:
        """The checkpoint as a JSON object; ``zulu`` writes ``signed_at`` with its ``Z`` (UTC)
        for readers outside the gateway (the signed form has none; see ``from_json``)."""
        return orjson.dumps(
            {
                "seq": self.seq,
                "hash": self.hash,
                "signed_at": self.signed_at + "Z" if zulu else self.signed_at,
                "key_id": self.key_id,
                "signature": self.signature,
            }
        )

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Checkpoint:
        seq, texts = doc["seq"], [doc[k] for k in ("hash", "signed_at", "key_id", "signature")]
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError("a checkpoint's seq is not an integer")
        digest, signed_at, kid, signature = (_text(v) for v in texts)
        return cls(seq, digest, signed_at.removesuffix("Z"), kid, signature)


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("a checkpoint field is not a string")
    return value


class CheckpointSigner:
    """Signs checkpoints with the gateway's newest Ed25519 audit key."""

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


def load_public_keys(path: Path) -> list[ed25519.Ed25519PublicKey]:
    """Every Ed25519 public key in a PEM file (one or more blocks), in file order."""
    blocks = PEM_PUBLIC_BLOCK.findall(path.read_bytes())
    if not blocks:
        raise ValueError(f"{path.name} holds no PEM public key")
    keys = []
    for block in blocks:
        key = serialization.load_pem_public_key(block)
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ValueError(f"{path.name} holds a key that is not an Ed25519 public key")
        keys.append(key)
    return keys


def load_public_key(path: Path) -> ed25519.Ed25519PublicKey:
    """The first (newest) public key of a PEM file."""
    return load_public_keys(path)[0]


def public_key_path(keys_dir: Path) -> Path:
    return keys_dir / AUDIT_PUBLIC_FILE


class CheckpointFile:
    """Checkpoints kept outside the database: one JSON line each, appended and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _open(self) -> int:
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            parent.chmod(0o700)
        return os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Held (an exclusive ``flock``) from before the commit of a checkpoint until its line is
        written, so that a reader who waits for it (``read(wait=True)``) finds the line of every
        commit it can see. Without a file to lock (storage away) nothing is held."""
        try:
            fd = self._open()
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def append(self, checkpoints: Sequence[Checkpoint]) -> None:
        if not checkpoints:
            return
        fd = self._open()
        try:
            data = b"".join(c.as_json() + b"\n" for c in checkpoints)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # a torn line from a crash mid-write stays a line of its own
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def exists(self) -> bool:
        return self.path.exists()

    def read(self, *, wait: bool = False) -> tuple[list[Checkpoint], int]:
        """Every checkpoint in the file ([] when there is none), and how many lines were not
        checkpoints: a line cut short by a crash while it was written is skipped (it can anchor
        nothing, and a line made up cannot either: it would need the key's signature).
        ``wait``: first wait for writers between their commit and their line."""
        try:
            with self.path.open("rb") as fh:
                if wait:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
                raw = fh.read()
        except FileNotFoundError:
            return [], 0
        out, skipped = [], 0
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                out.append(Checkpoint.from_json(orjson.loads(line)))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                skipped += 1
        return out, skipped
