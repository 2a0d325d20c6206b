"""Paging tokens a client can neither read nor forge.

A search's next/previous links carry the keyset position of the page's edge (``query.Cursor``:
the sort key and the row number of the last row shown). Row numbers are global: in clear, two
tokens would tell a partner how many records *other* partners wrote in between. So the
consent layer hands clients only sealed tokens: AES-256-GCM under a key derived (HKDF) from the
gateway's encryption key, with the requester and the query as associated data, the plaintext
padded to a fixed size. A token opens only for the partner it was issued to, on the search it
was issued for; an edited, foreign or stale one (after a key rotation) is a 400.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.errors import BadRequest
from gateway.keys import KeyRing

NONCE_BYTES = 12
PADDED = 160  # every position fits (64-character ids, 19-digit row numbers): one token length
INFO = b"care-gateway paging cursor v1"


class CursorSeal:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a cursor key is 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_ring(cls, ring: KeyRing) -> CursorSeal:
        """A seal keyed from the gateway's key ring: every worker derives the same key."""
        return cls(ring.derive(INFO))

    @classmethod
    def ephemeral(cls) -> CursorSeal:
        """For a gateway without key material (the in-memory twin in tests): one process."""
        return cls(AESGCM.generate_key(bit_length=256))

    def seal(self, position: str, binding: bytes) -> str:
        plain = position.encode()
        size = max(PADDED, -(-len(plain) // 64) * 64)
        padded = plain + b" " * (size - len(plain))
        nonce = os.urandom(NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, padded, binding)
        return base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def open(self, token: str, binding: bytes) -> str:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            if len(raw) <= NONCE_BYTES + 16 or len(raw) > 4096:
                raise ValueError
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], binding)
            return plain.decode().rstrip(" ")
        except (binascii.Error, InvalidTag, ValueError, UnicodeDecodeError) as exc:
            raise BadRequest("_cursor is not a paging token of this search") from exc
