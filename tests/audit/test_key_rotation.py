"""Signing keys are lists: ``keys rotate --token`` and ``--audit`` add a newest key that signs,
and every older public key still verifies what it signed (checkpoints, offline exports, access
tokens until they expire). ``keys init`` creates only what is missing. A directory from before
rotation existed (one key file each) still loads."""

from __future__ import annotations

import asyncio
import stat
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Engine

from gateway.audit.chain import (
    AuditChain,
    CheckpointSigner,
    export_lines,
    load_public_keys,
    public_key_path,
    verify_export,
)
from gateway.clock import FrozenClock
from gateway.disclose.auth import (
    ASSERTION_TYPE,
    MemoryReplayGuard,
    TokenService,
    load_token_verification_keys,
    token_public_jwk,
)
from gateway.errors import Unauthorized
from gateway.keys import (
    AUDIT_KEYS,
    AUDIT_PUBLIC_FILE,
    AUDIT_SIGNING_FILE,
    ENCRYPTION_FILE,
    TOKEN_KEYS,
    TOKEN_PUBLIC_FILE,
    TOKEN_SIGNING_FILE,
    KeyMaterialError,
    check_keys,
    complete_keys,
    init_keys,
    rotate_signing_key,
)
from gateway.partners import load_partners, mint_client_assertion, public_jwk
from gateway.settings import Settings
from tests.audit.helpers import EVERY, fill
from tests.conftest import START
from tests.support.network import BASE

ALL_FILES = (
    ENCRYPTION_FILE,
    TOKEN_SIGNING_FILE,
    TOKEN_PUBLIC_FILE,
    AUDIT_SIGNING_FILE,
    AUDIT_PUBLIC_FILE,
)


def contents(keys_dir: Path) -> dict[str, bytes]:
    return {name: (keys_dir / name).read_bytes() for name in ALL_FILES}


# -- keys init ----------------------------------------------------------------------------------


def test_init_makes_every_key_file_private_in_a_private_directory(tmp_path: Path) -> None:
    made = complete_keys(tmp_path / "keys", START)
    assert sorted(p.name for p in made.created) == sorted(ALL_FILES)
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    for name in ALL_FILES:
        assert stat.S_IMODE((tmp_path / "keys" / name).stat().st_mode) == 0o600, name
    check_keys(tmp_path / "keys")


def test_init_creates_only_what_is_missing_and_keeps_the_rest_byte_for_byte(
    tmp_path: Path,
) -> None:
    keys = tmp_path / "keys"
    init_keys(keys, START)
    before = contents(keys)
    (keys / TOKEN_SIGNING_FILE).unlink()
    (keys / TOKEN_PUBLIC_FILE).unlink()
    (keys / AUDIT_PUBLIC_FILE).unlink()
    made = complete_keys(keys, START)
    assert sorted(p.name for p in made.created) == sorted(
        [TOKEN_SIGNING_FILE, TOKEN_PUBLIC_FILE, AUDIT_PUBLIC_FILE]
    )
    assert sorted(p.name for p in made.kept) == sorted([ENCRYPTION_FILE, AUDIT_SIGNING_FILE])
    after = contents(keys)
    assert after[ENCRYPTION_FILE] == before[ENCRYPTION_FILE]
    assert after[AUDIT_SIGNING_FILE] == before[AUDIT_SIGNING_FILE]
    assert after[AUDIT_PUBLIC_FILE] == before[AUDIT_PUBLIC_FILE]  # remade from the private key
    assert after[TOKEN_SIGNING_FILE] != before[TOKEN_SIGNING_FILE]  # a new token key
    check_keys(keys)


def test_a_lost_private_key_is_replaced_and_its_public_list_kept(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    init_keys(keys, START)
    old = load_public_keys(keys / AUDIT_PUBLIC_FILE)
    (keys / AUDIT_SIGNING_FILE).unlink()
    made = complete_keys(keys, START)
    assert [p.name for p in made.extended] == [AUDIT_PUBLIC_FILE]
    listed = load_public_keys(keys / AUDIT_PUBLIC_FILE)
    assert len(listed) == 2
    assert listed[1].public_bytes_raw() == old[0].public_bytes_raw()  # old checkpoints verify
    check_keys(keys)


def test_init_refuses_when_nothing_is_missing(tmp_path: Path) -> None:
    init_keys(tmp_path / "keys", START)
    before = contents(tmp_path / "keys")
    with pytest.raises(KeyMaterialError, match="refusing to overwrite"):
        init_keys(tmp_path / "keys", START)
    assert contents(tmp_path / "keys") == before


def old_layout(keys: Path) -> Path:
    """A keys directory from before rotation: no token public list."""
    init_keys(keys, START)
    (keys / TOKEN_PUBLIC_FILE).unlink()
    return keys


def test_a_directory_from_before_rotation_still_loads(tmp_path: Path) -> None:
    keys = old_layout(tmp_path / "keys")
    check_keys(keys)
    verification = load_token_verification_keys(keys)
    signing = TOKEN_KEYS.load_private(keys)
    assert isinstance(signing, ec.EllipticCurvePrivateKey)
    assert list(verification) == [public_jwk(signing)["kid"]]
    assert len(load_public_keys(public_key_path(keys))) == 1


# -- rotation -----------------------------------------------------------------------------------


def test_rotation_puts_the_new_key_first_and_keeps_every_old_public_key(tmp_path: Path) -> None:
    keys = old_layout(tmp_path / "keys")
    first = TOKEN_KEYS.load_private(keys).public_key()
    rotate_signing_key(keys, TOKEN_KEYS)
    listed = rotate_signing_key(keys, TOKEN_KEYS)
    assert len(listed) == 3
    assert listed[-1] == first
    assert TOKEN_KEYS.load_private(keys).public_key() == listed[0]
    for name in (TOKEN_SIGNING_FILE, TOKEN_PUBLIC_FILE):
        assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
    check_keys(keys)


def test_rotation_without_a_key_to_rotate_says_to_run_keys_init(tmp_path: Path) -> None:
    with pytest.raises(KeyMaterialError, match="keys init"):
        rotate_signing_key(tmp_path, AUDIT_KEYS)


def test_a_public_list_that_lacks_the_signing_key_stops_start_up(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    init_keys(keys, START)
    other = tmp_path / "other"
    init_keys(other, START)
    (keys / AUDIT_PUBLIC_FILE).write_bytes((other / AUDIT_PUBLIC_FILE).read_bytes())
    with pytest.raises(KeyMaterialError, match="does not list the audit signing key"):
        check_keys(keys)


def test_checkpoints_signed_before_an_audit_key_rotation_still_verify(
    engine: Engine, keys: Path, chain: AuditChain, checkpoint_file: Path
) -> None:
    fill(chain, 15)  # checkpoint 10 under the first key
    chain.close()
    rotate_signing_key(keys, AUDIT_KEYS)
    rotated = AuditChain(
        engine,
        CheckpointSigner.from_keys_dir(keys),
        FrozenClock(START),
        checkpoint_every=EVERY,
        checkpoint_file=checkpoint_file,
    )
    fill(rotated, 10, offset=15)  # checkpoint 20 under the new one
    signers = {c.key_id for c in rotated.checkpoints()}
    assert len(signers) == 2
    listed = load_public_keys(public_key_path(keys))
    result = rotated.verify(listed)
    assert result.ok, result
    newest_only = rotated.verify(listed[0])
    assert not newest_only.ok
    assert newest_only.bad_seq == 10
    assert "unknown key" in (newest_only.problem or "")
    # Offline, with the public list alone.
    offline = verify_export(iter(list(export_lines(rotated))), listed)
    assert offline.ok, offline
    rotated.close()


# -- access tokens across a token key rotation --------------------------------------------------

SHELTER_KEY = ec.generate_private_key(ec.SECP384R1())


def token_service(home: Path, clock: FrozenClock) -> TokenService:
    """A gateway's token service over the keys in ``home/keys`` (made when there are none): a
    new one after a rotation is the gateway restarted."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "keys").exists():
        init_keys(home / "keys", START)
    partners = home / "partners.yaml"
    entry = {
        "id": "riverside-shelter",
        "name": "Riverside Safe Haven",
        "kind": "shelter",
        "organization": "Organization/riverside-shelter",
        "jwks": {"keys": [public_jwk(SHELTER_KEY)]},
        "scopes": ["system/*.rs"],
        "purposes": ["COC"],
        "default_purpose": "COC",
    }
    partners.write_text(yaml.safe_dump({"partners": [entry]}))
    settings = Settings(
        database_url=f"sqlite:///{home}/unused.db", keys_dir=home / "keys", base_url=BASE
    )
    return TokenService.from_settings(settings, load_partners(partners), clock, MemoryReplayGuard())


def issue(service: TokenService, clock: FrozenClock) -> str:
    assertion = mint_client_assertion(
        "riverside-shelter", SHELTER_KEY, service.token_endpoint, now=clock.now().timestamp()
    )
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": "system/*.rs",
    }
    token = asyncio.run(service.exchange(form))["access_token"]
    assert isinstance(token, str)
    return token


def test_tokens_issued_before_a_token_key_rotation_stay_valid_until_they_expire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FrozenClock(START)
    before = token_service(tmp_path, clock)  # makes the keys
    old_token = issue(before, clock)
    rotate_signing_key(tmp_path / "keys", TOKEN_KEYS)
    after = token_service(tmp_path, clock)  # a restarted gateway
    new_token = issue(after, clock)
    assert after.requester_for(old_token).partner_id == "riverside-shelter"
    assert after.requester_for(new_token).partner_id == "riverside-shelter"
    kids = [k["kid"] for k in after.jwks()["keys"]]
    assert len(kids) == 2
    assert kids[0] == public_jwk(after.signing_key)["kid"]
    assert all("d" not in k for k in after.jwks()["keys"])  # public keys only
    # A gateway still running the old key learns the new one from the list.
    monkeypatch.setattr("gateway.disclose.auth.KEY_RECHECK_SECONDS", 0.0)
    assert before.requester_for(new_token).partner_id == "riverside-shelter"
    clock.advance(timedelta(hours=1))
    with pytest.raises(Unauthorized):
        after.requester_for(old_token)


def test_a_token_whose_kid_no_list_holds_is_refused(tmp_path: Path) -> None:
    clock = FrozenClock(START)
    service = token_service(tmp_path, clock)
    stranger = token_service(tmp_path / "elsewhere", clock)
    with pytest.raises(Unauthorized):
        service.requester_for(issue(stranger, clock))


def test_the_published_kid_is_the_kid_tokens_carry(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    init_keys(keys, START)
    signing = TOKEN_KEYS.load_private(keys)
    assert isinstance(signing, ec.EllipticCurvePrivateKey)
    assert token_public_jwk(signing.public_key())["kid"] == public_jwk(signing)["kid"]
