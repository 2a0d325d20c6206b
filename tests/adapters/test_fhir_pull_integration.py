"""The FHIR pull over real HTTP on loopback against the fake hospital (``serve_fake_fhir``), with
a real ES384 client key: discovery, a token endpoint that really verifies the assertion, paging,
failures the shared client retries, a token that dies mid-pull, a replayed ``jti``, a hostile
next link, and the high-water mark; and every record pulled maps to strict R4."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from adapters._http import SourceClient, SourceRefused
from adapters.fhir import FhirPull, Pull
from adapters.smart import SmartBackendAuth, public_jwk
from gateway.mapping import MappingContext, load_mappings, rewrite_placeholders
from gateway.synth.fhir import Failures, hospital_resources, serve_fake_fhir
from gateway.write.admit import check
from tests.adapters.test_http_client import FakeTime

CLIENT_ID = "care-gateway-metro"
SCOPE = "system/Patient.rs system/ServiceRequest.rs system/CarePlan.rs"
KEY = ec.generate_private_key(ec.SECP384R1())
JWK = public_jwk(KEY)
RESOURCES = hospital_resources(250, seed=7)
ROOT = Path(__file__).resolve().parents[2]


def auth_for(base: str, time: FakeTime, key: ec.EllipticCurvePrivateKey = KEY) -> SmartBackendAuth:
    return SmartBackendAuth(
        client_id=CLIENT_ID,
        private_key=key,
        key_id=public_jwk(key)["kid"],
        algorithm="ES384",
        scope=SCOPE,
        fhir_base=base,
        sleep=time.sleep,
    )


def pull_from(base: str, time: FakeTime, **options: Any) -> tuple[Pull, SmartBackendAuth]:
    since = options.pop("since", None)
    auth = auth_for(base, time)
    with SourceClient(base, auth=auth, sleep=time.sleep) as client:
        pull = FhirPull(client, base, page_size=40, **options).pull(since)
    return pull, auth


@pytest.fixture
def log() -> list[str]:
    return []


@pytest.fixture
def hospital(log: list[str]) -> Iterator[str]:
    with serve_fake_fhir(
        RESOURCES, client_id=CLIENT_ID, public_jwks={"keys": [JWK]}, log=log
    ) as base:
        yield base


def test_a_full_pull_reads_every_resource_over_several_pages(hospital: str, log: list[str]) -> None:
    time = FakeTime()
    pull, auth = pull_from(hospital, time)
    assert not pull.problems
    assert not pull.notices
    assert len(pull.records) == 250
    assert {r.source_id for r in pull.records} == {r["id"] for r in RESOURCES}
    pages = [line for line in log if line == "GET /fhir/Patient"]
    assert len(pages) >= 3  # 84 Patients at 40 a page
    assert log[:2] == ["GET /fhir/.well-known/smart-configuration", "POST /auth/token"]
    assert auth.tokens_fetched == 1
    assert not time.sleeps
    assert {r.version for r in pull.records} == {"R4"}
    assert {r.origin.locator for r in pull.records} >= {"page 3, entry 0"}


def test_every_pulled_record_maps_to_strict_r4() -> None:
    mappings = load_mappings(ROOT / "mappings")
    context = MappingContext(partner_id="metro-general", partner_kind="hospital")
    with serve_fake_fhir(RESOURCES, client_id=CLIENT_ID, public_jwks={"keys": [JWK]}) as base:
        pull, _ = pull_from(base, FakeTime())
    assert len(pull.records) == 250
    for record in pull.records:
        mapped = mappings.apply(record, context)
        assert not mapped.problems, record.source_id
        (resource,) = mapped.resources
        local = rewrite_placeholders(
            resource.resource, lambda key: f"{key.resource_type}/{key.source_id}"
        )
        check(local)
        assert "text" not in local
        assert "address" not in local


def test_a_503_is_retried_and_the_pull_completes(log: list[str]) -> None:
    time = FakeTime()
    with serve_fake_fhir(
        RESOURCES,
        client_id=CLIENT_ID,
        public_jwks={"keys": [JWK]},
        fail=Failures(unavailable_on=frozenset({4}), rate_limited_on=frozenset({7})),
        log=log,
    ) as base:
        pull, _ = pull_from(base, time)
    assert not pull.problems
    assert len(pull.records) == 250
    assert len(time.sleeps) == 2  # one backoff after the 503, Retry-After: 0 after the 429
    assert time.sleeps[1] == 0.0


def test_a_token_that_dies_mid_pull_is_renewed_once_and_the_pull_completes(
    log: list[str],
) -> None:
    time = FakeTime()
    with serve_fake_fhir(
        RESOURCES,
        client_id=CLIENT_ID,
        public_jwks={"keys": [JWK]},
        fail=Failures(expire_tokens_on=frozenset({5})),
        log=log,
    ) as base:
        pull, auth = pull_from(base, time)
    assert not pull.problems
    assert len(pull.records) == 250
    assert auth.tokens_fetched == 2
    assert log.count("POST /auth/token") == 2
    assert log[4:7] == ["GET /fhir/Patient", "POST /auth/token", "GET /fhir/Patient"]


def test_a_replayed_assertion_is_refused_by_the_hospital(hospital: str) -> None:
    auth = auth_for(hospital, FakeTime())
    endpoint = str(auth.token_endpoint())
    assertion = auth.assertion(endpoint)
    form = {
        "grant_type": "client_credentials",
        "scope": SCOPE,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    first = httpx.post(endpoint, data=form)
    again = httpx.post(endpoint, data=form)
    assert first.status_code == 200
    assert first.json()["token_type"] == "bearer"
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_client"


def test_an_assertion_for_another_audience_is_refused(hospital: str) -> None:
    auth = auth_for(hospital, FakeTime())
    endpoint = str(auth.token_endpoint())
    form = {
        "grant_type": "client_credentials",
        "scope": SCOPE,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": auth.assertion("https://other.example/token"),
    }
    answer = httpx.post(endpoint, data=form)
    assert answer.status_code == 400
    assert answer.json()["error"] == "invalid_client"


def test_a_key_the_hospital_did_not_register_gets_no_token_and_no_echo(
    hospital: str, log: list[str]
) -> None:
    stranger = ec.generate_private_key(ec.SECP384R1())
    auth = SmartBackendAuth(
        client_id=CLIENT_ID,
        private_key=stranger,
        key_id=JWK["kid"],  # claims the registered kid, signs with another key
        algorithm="ES384",
        scope=SCOPE,
        fhir_base=hospital,
    )
    with pytest.raises(SourceRefused) as refused:
        auth.token()
    message = str(refused.value)
    assert message == "POST /auth/token answered 400 (invalid_client)"
    with SourceClient(hospital, auth=auth) as client:
        pull = FhirPull(client, hospital).pull()
    (problem,) = pull.problems  # the refusal stops the whole pull
    assert problem.fatal
    assert "invalid_client" in problem.reason
    assert "rejected" not in problem.reason  # the server's error_description is not repeated
    assert not any(line.startswith("GET /fhir/Patient") for line in log)


def test_a_next_link_to_another_host_is_not_followed(log: list[str]) -> None:
    trap_log: list[str] = []
    with serve_fake_fhir(
        RESOURCES, client_id=CLIENT_ID, public_jwks={"keys": [JWK]}, log=trap_log
    ) as trap:
        netloc = urlsplit(trap).netloc
        with serve_fake_fhir(
            RESOURCES,
            client_id=CLIENT_ID,
            public_jwks={"keys": [JWK]},
            next_link_host=netloc,
            log=log,
        ) as base:
            pull, _ = pull_from(base, FakeTime())
    assert trap_log == []
    assert len(pull.problems) == 3  # one per type, each fatal for its type
    assert all(p.fatal and "another server" in p.reason for p in pull.problems)
    assert len(pull.records) == 120  # the first page of each type
    assert pull.high_water_mark.updated == ()


def test_the_next_pull_sends_only_what_changed() -> None:
    resources = copy.deepcopy(RESOURCES)
    with serve_fake_fhir(resources, client_id=CLIENT_ID, public_jwks={"keys": [JWK]}) as base:
        first, _ = pull_from(base, FakeTime())
        mark = first.high_water_mark
        assert {t for t, _ in mark.updated} == {"Patient", "ServiceRequest", "CarePlan"}
        again, _ = pull_from(base, FakeTime(), since=mark)
        assert again.records == []
        changed = next(r for r in resources if r["resourceType"] == "CarePlan")
        changed["meta"] = {**changed["meta"], "lastUpdated": "2026-12-01T12:00:00.000Z"}
        changed["status"] = "completed"
        third, _ = pull_from(base, FakeTime(), since=again.high_water_mark)
    assert [(r.record_type, r.source_id) for r in third.records] == [("CarePlan", changed["id"])]
    assert third.records[0].fields["status"] == "completed"
