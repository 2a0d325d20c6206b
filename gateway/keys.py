"""Key material in ``KEYS_DIR``: the encryption key ring (AES-256-GCM), the token signing key
(ES384, used by the auth layer) and the audit checkpoint key (Ed25519).

Each is a list, newest first, so that a rotation never strands what the old key made:

- ``encryption-keys.json``: every key, the active one named; older rows decrypt under theirs.
- ``token-signing-key.pem`` (the newest private key, which signs) and
  ``token-signing-key.pub.pem`` (every public key, newest first: tokens signed before a
  rotation verify until they expire). A directory without the public file (made before
  rotation existed) verifies with the private key's public half alone.
- ``audit-signing-key.pem`` and ``audit-signing-key.pub.pem`` likewise: every old checkpoint
  verifies with the public list, offline too. Retired private keys are not kept: nothing needs
  them.

``keys init`` creates whatever is missing and never overwrites a file (a public list it can only
extend); ``keys rotate`` adds a key to a list. A rotation writes the public list first, then the
private key, so a crash between the two leaves a listed key unused, never a key in use unlisted.
The directory is 0700 and every file 0600; keys are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
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
TOKEN_PUBLIC_FILE = "token-signing-key.pub.pem"  # noqa: S105 (a file name)
PEM_PUBLIC_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)
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

    def derive_for(self, key_id: str, info: bytes) -> bytes:
        """A 32-byte key for another purpose (``info``) from one key of the ring: what is keyed
        under it (the blind search index) rotates with the ring, key id by key id."""
        key = self._keys.get(key_id)
        if key is None:
            raise DecryptionError(f"unknown key id {key_id!r}")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key.secret)

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
    """The private key files (each must exist and be 0600 for ``serve``)."""
    return [keys_dir / n for n in (ENCRYPTION_FILE, TOKEN_SIGNING_FILE, AUDIT_SIGNING_FILE)]


def public_files(keys_dir: Path) -> list[Path]:
    return [keys_dir / n for n in (TOKEN_PUBLIC_FILE, AUDIT_PUBLIC_FILE)]


SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class SigningKind:
    """One signing key list: its files and how to make a key of it."""

    name: str  # for messages
    private_file: str
    public_file: str

    def generate(self) -> SigningKey:
        if self.private_file == TOKEN_SIGNING_FILE:
            return ec.generate_private_key(ec.SECP384R1())
        return ed25519.Ed25519PrivateKey.generate()

    def load_private(self, keys_dir: Path) -> SigningKey:
        path = keys_dir / self.private_file
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except FileNotFoundError as exc:
            raise KeyMaterialError(
                f"no {self.private_file} in {keys_dir}; run `gateway keys init`"
            ) from exc
        except ValueError as exc:
            raise KeyMaterialError(f"{self.private_file} is not a PEM private key") from exc
        if self.private_file == TOKEN_SIGNING_FILE:
            if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
                return key
            raise KeyMaterialError(f"{self.private_file} must be an EC P-384 key (ES384)")
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key
        raise KeyMaterialError(f"{self.private_file} is not an Ed25519 key")

    def public_keys(self, keys_dir: Path) -> list[PublicKey]:
        """The public list, newest first; the private key's public half when there is no list
        file (a directory from before rotation), and first when the list lacks it."""
        active = self.load_private(keys_dir).public_key()
        path = keys_dir / self.public_file
        listed = read_public_keys(path) if path.exists() else []
        if not any(_same(active, k) for k in listed):
            listed.insert(0, active)
        return listed


TOKEN_KEYS = SigningKind("token signing key", TOKEN_SIGNING_FILE, TOKEN_PUBLIC_FILE)
AUDIT_KEYS = SigningKind("audit signing key", AUDIT_SIGNING_FILE, AUDIT_PUBLIC_FILE)


def read_public_keys(path: Path) -> list[PublicKey]:
    """Every public key of a PEM file (one or more blocks), in file order."""
    try:
        blocks = PEM_PUBLIC_BLOCK.findall(path.read_bytes())
        keys = [serialization.load_pem_public_key(b) for b in blocks]
    except ValueError as exc:
        raise KeyMaterialError(f"{path.name} holds a malformed public key") from exc
    if not blocks:
        raise KeyMaterialError(f"{path.name} holds no PEM public key")
    out: list[PublicKey] = []
    for key in keys:
        if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
            raise KeyMaterialError(f"{path.name} holds a key of an unexpected type")
        out.append(key)
    return out


def _raw(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _same(a: PublicKey, b: PublicKey) -> bool:
    return _raw(a) == _raw(b)


def _public_pem(keys: list[PublicKey]) -> bytes:
    return b"".join(
        k.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        for k in keys
    )


def ed25519_key_id(public: ed25519.Ed25519PublicKey) -> str:
    """The audit key id a checkpoint names: SHA-256 of the raw public key, 16 hex digits."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _private_dir(keys_dir: Path) -> None:
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys_dir.chmod(0o700)


@dataclass(frozen=True, slots=True)
class KeysMade:
    """What ``complete_keys`` did: files it created, public lists it extended, files it kept."""

    created: list[Path] = field(default_factory=list)
    extended: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)


def complete_keys(keys_dir: Path, now: datetime) -> KeysMade:
    """Create whichever key files are missing and leave every existing one as it is. A public
    list whose private key is missing gets the new key's public half added in front (nothing in
    it is dropped); a missing public list is made from its private key."""
    _private_dir(keys_dir)
    made = KeysMade()
    ring_path = keys_dir / ENCRYPTION_FILE
    if ring_path.exists():
        made.kept.append(ring_path)
    else:
        ring = KeyRing([key := new_encryption_key(now)], key.key_id)
        _write_private(ring_path, ring.to_json())
        made.created.append(ring_path)
    for kind in (TOKEN_KEYS, AUDIT_KEYS):
        private, public = keys_dir / kind.private_file, keys_dir / kind.public_file
        if private.exists():
            made.kept.append(private)
            if public.exists():
                made.kept.append(public)
            else:
                _write_private(public, _public_pem(kind.public_keys(keys_dir)))
                made.created.append(public)
            continue
        signing = kind.generate()
        listed = read_public_keys(public) if public.exists() else []
        _write_private(public, _public_pem([signing.public_key(), *listed]))
        (made.extended if listed else made.created).append(public)
        _write_private(private, _pem(signing))
        made.created.append(private)
    return made


def init_keys(keys_dir: Path, now: datetime) -> list[Path]:
    """Create the missing key files (all of them in a new directory); the files created.
    Refuses when every key exists already (never overwrite a key)."""
    made = complete_keys(keys_dir, now)
    if not made.created and not made.extended:
        raise KeyMaterialError(f"keys already exist in {keys_dir}; refusing to overwrite")
    return [*made.created, *made.extended]


def _pem(key: SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def rotate_encryption_key(keys_dir: Path, now: datetime) -> KeyRing:
    ring = FileKeyRing(keys_dir).current().with_new_key(now)
    _write_private(keys_dir / ENCRYPTION_FILE, ring.to_json())
    return ring


def rotate_signing_key(keys_dir: Path, kind: SigningKind) -> list[PublicKey]:
    """A new newest key of ``kind``; the public list afterwards (the new key first). The list
    is written before the private key: a verifier knows a key before anything is signed with
    it. Gateways already running sign with the key they loaded until they restart, and that key
    stays in the list."""
    listed = kind.public_keys(keys_dir)  # also: the current private key loads
    key = kind.generate()
    keys = [key.public_key(), *listed]
    _write_private(keys_dir / kind.public_file, _public_pem(keys))
    _write_private(keys_dir / kind.private_file, _pem(key))
    return keys


def check_keys(keys_dir: Path) -> None:
    """Start-up check for ``serve``: every key present, private, and not a placeholder, and each
    signing key in its public list."""
    missing = [p.name for p in key_files(keys_dir) if not p.exists()]
    if missing:
        raise KeyMaterialError(
            f"missing keys in {keys_dir}: {', '.join(missing)}; run `gateway keys init`"
        )
    for path in key_files(keys_dir):
        if path.stat().st_mode & 0o077:
            raise KeyMaterialError(f"{path.name} is readable by others; chmod 600 it")
    FileKeyRing(keys_dir).current()
    for kind in (TOKEN_KEYS, AUDIT_KEYS):
        active = kind.load_private(keys_dir).public_key()
        path = keys_dir / kind.public_file
        if path.exists() and not any(_same(active, k) for k in read_public_keys(path)):
            raise KeyMaterialError(
                f"{kind.public_file} does not list the {kind.name} of {kind.private_file}; "
                "restore the files that belong together"
            )
