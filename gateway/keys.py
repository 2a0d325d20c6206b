"""Key material in ``KEYS_DIR``: the encryption key ring (AES-256-GCM), the token signing key
(ES384, used by the auth layer) and the audit checkpoint key (Ed25519).

``keys init`` makes them all and refuses to overwrite; ``keys rotate`` adds an encryption key that
new writes use while older rows stay readable under their own key id. The directory is 0700 and
every file 0600; keys are never logged.
"""

from __future__ import annotations

import base64
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ENCRYPTION_FILE = "encryption-keys.json"
TOKEN_SIGNING_FILE = "token-signing-key.pem"  # noqa: S105 (a file name)
AUDIT_SIGNING_FILE = "audit-signing-key.pem"
AUDIT_PUBLIC_FILE = "audit-signing-key.pub.pem"
NONCE_BYTES = 12


class KeyMaterialError(Exception):
    """Key material is missing, malformed or a placeholder (a start-up error, never a 500)."""


class DecryptionError(Exception):
    """A row does not decrypt under its key id and associated data: tampered or mis-keyed."""


@dataclass(frozen=True, slots=True)
class EncryptionKey:
    key_id: str
    created: str
    secret: bytes


class KeyRing:
    """AES-256-GCM over a set of keys; ``active`` encrypts, any known key id decrypts."""

    def __init__(self, keys: list[EncryptionKey], active: str) -> None:
        if not keys:
            raise KeyMaterialError("the key ring is empty")
        self._keys = {k.key_id: k for k in keys}
        if active not in self._keys:
            raise KeyMaterialError("the active key id is not in the key ring")
        for key in keys:
            _check_secret(key)
        self._aead = {k.key_id: AESGCM(k.secret) for k in keys}
        self.active = active

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)

    def knows(self, key_id: str) -> bool:
        return key_id in self._aead

    def encrypt(self, plaintext: bytes, aad: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        return self.active, nonce + self._aead[self.active].encrypt(nonce, plaintext, aad)

    def decrypt(self, key_id: str, blob: bytes, aad: bytes) -> bytes:
        aead = self._aead.get(key_id)
        if aead is None:
            raise DecryptionError(f"unknown key id {key_id!r}")
        try:
            return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag as exc:
            raise DecryptionError("ciphertext does not authenticate") from exc

    def derive(self, info: bytes) -> bytes:
        """A 32-byte key for another purpose (``info``), from the ring's first key: the same
        in every worker, and unchanged by a rotation (which appends)."""
        first = next(iter(self._keys.values()))
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(first.secret)

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "active": self.active,
                "keys": [
                    {
                        "id": k.key_id,
                        "created": k.created,
                        "key": base64.b64encode(k.secret).decode(),
                    }
                    for k in self._keys.values()
                ],
            },
            option=orjson.OPT_INDENT_2,
        )

    @classmethod
    def from_json(cls, raw: bytes) -> KeyRing:
        try:
            doc = orjson.loads(raw)
            keys = [
                EncryptionKey(k["id"], k["created"], base64.b64decode(k["key"], validate=True))
                for k in doc["keys"]
            ]
            return cls(keys, doc["active"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise KeyMaterialError(f"{ENCRYPTION_FILE} is malformed") from exc

    def with_new_key(self, now: datetime) -> KeyRing:
        key = new_encryption_key(now)
        return KeyRing([*self._keys.values(), key], key.key_id)


def _check_secret(key: EncryptionKey) -> None:
    if len(key.secret) != 32:
        raise KeyMaterialError(f"encryption key {key.key_id} is not 256 bits")
    if len(set(key.secret)) < 8:
        raise KeyMaterialError(f"encryption key {key.key_id} looks like a placeholder")


def new_encryption_key(now: datetime) -> EncryptionKey:
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S")
    return EncryptionKey(
        f"k{stamp}-{secrets.token_hex(3)}", now.isoformat(), AESGCM.generate_key(256)
    )


class FileKeyRing:
    """The key ring file, re-read when it changes on disk, so that a ``keys rotate`` run beside a
    serving gateway takes effect for new writes without a restart. The file is looked at no more
    than once per ``recheck_seconds``, not on every row."""

    def __init__(self, keys_dir: Path, *, recheck_seconds: float = 1.0) -> None:
        self._path = keys_dir / ENCRYPTION_FILE
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._recheck = recheck_seconds
        self._checked = time.monotonic()
        self._ring = self._load()

    def _load(self) -> KeyRing:
        try:
            stat = self._path.stat()
            ring = KeyRing.from_json(self._path.read_bytes())
        except FileNotFoundError as exc:
            raise KeyMaterialError(
                f"no encryption keys in {self._path.parent}; run `gateway keys init`"
            ) from exc
        self._stamp = (stat.st_mtime_ns, stat.st_size)
        return ring

    def current(self) -> KeyRing:
        now = time.monotonic()
        if now - self._checked < self._recheck:
            return self._ring
        self._checked = now
        try:
            stat = self._path.stat()
        except FileNotFoundError:
            return self._ring
        if (stat.st_mtime_ns, stat.st_size) != self._stamp:
            with self._lock:
                self._ring = self._load()
        return self._ring


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def key_files(keys_dir: Path) -> list[Path]:
    return [keys_dir / n for n in (ENCRYPTION_FILE, TOKEN_SIGNING_FILE, AUDIT_SIGNING_FILE)]


def init_keys(keys_dir: Path, now: datetime) -> list[Path]:
    """Create fresh keys; refuse if any key file already exists (never overwrite a key)."""
    existing = [p for p in key_files(keys_dir) if p.exists()]
    if existing:
        raise KeyMaterialError(f"keys already exist in {keys_dir}; refusing to overwrite")
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys_dir.chmod(0o700)
    ring = KeyRing([key := new_encryption_key(now)], key.key_id)
    _write_private(keys_dir / ENCRYPTION_FILE, ring.to_json())
    token_key = ec.generate_private_key(ec.SECP384R1())
    _write_private(keys_dir / TOKEN_SIGNING_FILE, _pem(token_key))
    audit_key = ed25519.Ed25519PrivateKey.generate()
    _write_private(keys_dir / AUDIT_SIGNING_FILE, _pem(audit_key))
    public = audit_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (keys_dir / AUDIT_PUBLIC_FILE).write_bytes(public)
    return [*key_files(keys_dir), keys_dir / AUDIT_PUBLIC_FILE]


def _pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def rotate_encryption_key(keys_dir: Path, now: datetime) -> KeyRing:
    ring = FileKeyRing(keys_dir).current().with_new_key(now)
    _write_private(keys_dir / ENCRYPTION_FILE, ring.to_json())
    return ring


def check_keys(keys_dir: Path) -> None:
    """Start-up check for ``serve``: every key present, private, and not a placeholder."""
    missing = [p.name for p in key_files(keys_dir) if not p.exists()]
    if missing:
        raise KeyMaterialError(
            f"missing keys in {keys_dir}: {', '.join(missing)}; run `gateway keys init`"
        )
    for path in key_files(keys_dir):
        if path.stat().st_mode & 0o077:
            raise KeyMaterialError(f"{path.name} is readable by others; chmod 600 it")
    FileKeyRing(keys_dir).current()
    for name in (TOKEN_SIGNING_FILE, AUDIT_SIGNING_FILE):
        try:
            serialization.load_pem_private_key((keys_dir / name).read_bytes(), password=None)
        except ValueError as exc:
            raise KeyMaterialError(f"{name} is not a PEM private key") from exc
