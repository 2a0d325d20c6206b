"""Paging links reveal nothing of other partners' writes and cannot be edited: a ``_cursor``
is sealed (AES-GCM), bound to the partner it was issued to and to its search."""

from __future__ import annotations

import base64

import orjson
from fastapi.testclient import TestClient

from gateway.clock import FrozenClock
from gateway.settings import Settings
from gateway.store.sql import SqlStore
from tests.support.network import partner_client, post
from tests.support.records import care_plan, patient


def _next(bundle: dict[str, object]) -> str:
    links = bundle["link"]
    assert isinstance(links, list)
    url: str = next(link["url"] for link in links if link["relation"] == "next")
    return url


def _cursor(url: str) -> str:
    return url.split("_cursor=", 1)[1].split("&", 1)[0]


def _plans(client: TestClient, n: int, title: str) -> None:
    own = post(client, "/fhir/Patient", patient(mrn=f"{title}-1")).json()["id"]
    for i in range(n):
        post(client, "/fhir/CarePlan", care_plan(own, title=f"{title} {i}"))


def test_a_paging_token_tells_nothing_of_other_partners_writes(
    shelter: TestClient, clinic: TestClient
) -> None:
    _plans(clinic, 3, "Clinic")
    first = _cursor(_next(clinic.get("/fhir/CarePlan?_count=1").json()))
    _plans(shelter, 40, "Shelter")  # another partner writes a lot in between
    second = _cursor(_next(clinic.get("/fhir/CarePlan?_count=1").json()))
    assert len(first) == len(second)
    raw = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4))
    assert b'"k"' not in raw  # no position in clear
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("a paging token is readable JSON")


def test_an_edited_forged_or_foreign_token_is_refused(
    settings: Settings, sql_store: SqlStore, clock: FrozenClock, clinic: TestClient
) -> None:
    _plans(clinic, 3, "Clinic")
    url = _next(clinic.get("/fhir/CarePlan?_count=1").json())
    assert clinic.get(url).status_code == 200
    token = _cursor(url)
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    assert clinic.get(url.replace(token, flipped)).status_code == 400
    plain = base64.urlsafe_b64encode(orjson.dumps({"k": ["x' OR 1=1"], "a": True})).decode()
    assert clinic.get(f"/fhir/CarePlan?_count=1&_cursor={plain}").status_code == 400
    # another search's token, and another partner's
    assert clinic.get(url.replace("_count=1", "_count=2")).status_code == 400
    with partner_client(settings, sql_store, clock, "st-marys-hospital", "hospital") as other:
        assert other.get(url).status_code == 400
