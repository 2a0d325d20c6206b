"""Concurrent writers on the real databases: no lost update, no duplicate resource."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import orjson

from gateway.access.requester import Requester
from gateway.consent.store import ConsentedSession
from gateway.disclose.interactions import Interactions, Prefer
from gateway.errors import Conflict, PreconditionFailed
from gateway.store.query import parse_search
from gateway.store.sql import SqlStore
from tests.support.records import MRN, organization, patient
from tests.support.valid import checked, valid

WRITERS = 6
ROUNDS = 5


def test_optimistic_writers_never_lose_an_update(sql_store: SqlStore) -> None:
    """Each writer adds its own tag with If-Match, retrying when it loses the race."""
    first = sql_store.create(valid(patient()))

    def writer(n: int) -> int:
        attempts = 0
        for round_ in range(ROUNDS):
            while True:
                attempts += 1
                current = sql_store.read("Patient", first.id)
                doc = orjson.loads(current.body)
                tags = doc.setdefault("meta", {}).setdefault("tag", [])
                tags.append({"system": "urn:test:writer", "code": f"w{n}-r{round_}"})
                try:
                    sql_store.update("Patient", first.id, valid(doc), if_match=current.version_id)
                    break
                except (PreconditionFailed, Conflict):
                    continue
        return attempts

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(writer, range(WRITERS)))
    final = sql_store.read("Patient", first.id)
    assert final.version_id == 1 + WRITERS * ROUNDS
    codes = {t["code"] for t in orjson.loads(final.body)["meta"]["tag"]}
    assert len(codes) == WRITERS * ROUNDS


def test_racing_creates_of_one_id_make_one_resource(sql_store: SqlStore) -> None:
    def create(_: int) -> str:
        try:
            _stored, created = sql_store.update(
                "Organization",
                "harbor-clinic",
                valid(organization("harbor-clinic", "Harbor")),
                if_match=None,
            )
        except Conflict:
            return "conflict"
        return "created" if created else "updated"

    with ThreadPoolExecutor(WRITERS) as pool:
        outcomes = list(pool.map(create, range(WRITERS)))
    assert outcomes.count("created") == 1
    head = sql_store.read("Organization", "harbor-clinic")
    assert head.version_id == outcomes.count("created") + outcomes.count("updated")


WRITER = Requester("riverside-shelter", "shelter", scopes=("system/*.cruds",))


def test_racing_conditional_creates_make_one_resource(sql_store: SqlStore) -> None:
    """The REST path: If-None-Exist runs check-then-create under a lock on its criteria."""
    interactions = Interactions("http://gateway.test/fhir", default_count=50, max_count=500)
    criteria = f"identifier={MRN}|RSH-000412"

    def conditional_create(_: int) -> str:
        with sql_store.transaction() as tx:
            result = interactions.create(
                ConsentedSession(tx, WRITER),
                checked(patient()),
                prefer=Prefer(),
                if_none_exist=criteria,
            )
        return "created" if result.status == 201 else "existing"

    with ThreadPoolExecutor(WRITERS) as pool:
        outcomes = list(pool.map(conditional_create, range(WRITERS)))
    assert outcomes.count("created") == 1
    assert (
        sql_store.search(parse_search("Patient", [("identifier", f"{MRN}|RSH-000412")])).total == 1
    )
