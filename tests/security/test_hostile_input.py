"""Hostile input on every route, on SQLite and PostgreSQL: never a 500, never a stack trace.

Every partner may be hostile. Whatever it sends (control characters, over-long or malformed
ids and references, thousands of clauses or values, forged paging tokens, impossible dates,
odd unicode, NULs inside JSON strings, deep JSON) the answer is below 500; an error is an
OperationOutcome; and the offending value is never repeated back (it may be PHI, or a probe).

The apps here do not re-raise server exceptions (``tests/security/conftest.py``): a 500 is
observed as the client would see it. This file asserts that none of these inputs gives a 500;
the 500s it found were fixed.
"""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any, Literal
from urllib.parse import quote, urlencode

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.store.query import (
    MAX_INCLUDES,
    MAX_OR_VALUES,
    MAX_SEARCH_CLAUSES,
    MAX_SEARCH_ITEMS,
    MAX_VALUE_CHARS,
)
from tests.support.network import FHIR
from tests.support.reach import Reach
from tests.support.records import care_plan, patient

# In every hostile value: if it is echoed in any encoding (raw, JSON, repr, percent), this is.
MARK = "Zq7HostileMark"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

CONTROLS = ["\x00", "\x01", "\x08", "\x0b", "\x1b", "\x1f", "\x7f", "\t", "\n", "\r"]
UNICODE_ODDITIES = [
    "\u202eevil",  # right-to-left override
    "\u200fRTL\u200e",  # RTL and LTR marks
    "\u200d\u200b\ufeff",  # zero-width joiner, space, BOM
    "\U0001f600\U0001f469\u200d\U0001f4bb",  # emoji, a ZWJ sequence
    "\ufdfa",  # one character that NFKD expands to eighteen
    "\ufffd",  # what a percent-encoded lone surrogate decodes to
    "e\u0301" * 40,  # combining marks
]


# -- what every answer must be -------------------------------------------------------------------


def echoes(body: bytes, secret: str) -> bool:
    """Whether ``body`` repeats ``secret`` (the value, or the marker inside it) in any form."""
    if MARK in secret and MARK.encode() in body:
        return True
    if len(secret) < 6:
        return False  # too short to tell an echo from a coincidence
    forms = {
        secret.encode(errors="surrogatepass"),
        orjson.dumps(secret)[1:-1],
        orjson.dumps(repr(secret)[1:-1])[1:-1],
        quote(secret, safe="").encode(),
    }
    return any(form in body for form in forms)


def assert_answered(response: Any, *secrets: str) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        doc = response.json()
        assert doc["resourceType"] == "OperationOutcome", doc
        assert doc["issue"]
        assert all(i["severity"] and i["code"] for i in doc["issue"])
        assert "Traceback" not in response.text
        for secret in secrets:
            assert not echoes(response.content, secret), (secret, response.text[:300])


def assert_refused(response: Any, parameter: str | None, *secrets: str) -> None:
    """A 400 OperationOutcome naming ``parameter`` (when given), repeating none of ``secrets``."""
    assert_answered(response, *secrets)
    assert response.status_code == 400, (response.status_code, response.text[:300])
    if parameter is not None:
        expressions = [e for i in response.json()["issue"] for e in i.get("expression", [])]
        assert parameter in expressions, response.text[:300]


def cursor_token(doc: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(doc)).decode().rstrip("=")


def marked(value: str) -> str:
    return f"{MARK}{value}{MARK}"


# -- search: the caps ------------------------------------------------------------------------------


def test_more_clauses_than_the_cap_are_refused_quickly(hostile: TestClient) -> None:
    items = [("name", f"n{i}") for i in range(150)]
    assert_refused(hostile.get("/fhir/Patient", params=items), "name")
    # ... and at the cap, the search runs (every clause AND-ed: nothing matches).
    at_cap = hostile.get("/fhir/Patient", params=items[:MAX_SEARCH_CLAUSES])
    assert at_cap.status_code == 200
    assert at_cap.json()["total"] == 0


def test_more_parameters_of_any_kind_than_the_cap_are_refused(hostile: TestClient) -> None:
    items = [("_format", "json")] * (MAX_SEARCH_ITEMS + 1)
    assert_refused(hostile.get("/fhir/Patient", params=items), None)
    form = urlencode([("_pretty", "true")] * 60)
    # 60 in the query string and 60 in the form: each is under the form cap, not together.
    response = hostile.post(f"/fhir/Patient/_search?{form}", content=form, headers=FORM)
    assert_refused(response, None)


@pytest.mark.parametrize("values", [MAX_OR_VALUES + 1, 1000])
def test_more_or_values_than_the_cap_are_refused(hostile: TestClient, values: int) -> None:
    ids = ",".join(f"id-{i}" for i in range(values))
    assert_refused(hostile.get("/fhir/Patient", params={"_id": ids}), "_id")
    names = ",".join(f"n{i}" for i in range(values))
    assert_refused(hostile.get("/fhir/Patient", params={"name": names}), "name")


def test_or_values_are_counted_across_the_whole_query(hostile: TestClient) -> None:
    fifty = ",".join(f"n{i}" for i in range(50))
    at_cap = hostile.get("/fhir/Patient", params=[("name", fifty), ("family", fifty)])
    assert at_cap.status_code == 200
    over = [("name", fifty), ("family", fifty), ("given", "x")]
    assert_refused(hostile.get("/fhir/Patient", params=over), "given")


def test_an_over_long_value_is_refused_without_echo(hostile: TestClient) -> None:
    long_value = marked("x" * MAX_VALUE_CHARS)
    assert_refused(hostile.get("/fhir/Patient", params={"name": long_value}), "name", long_value)
    huge = marked("y" * 20_000)
    assert_refused(hostile.get("/fhir/Patient", params={"family": huge}), "family", huge)
    assert_refused(hostile.get("/fhir/Patient", params={"_sort": huge}), "_sort", huge)


def test_more_includes_than_the_cap_are_refused(hostile: TestClient) -> None:
    includes = [("_include", "CarePlan:patient")] * (MAX_INCLUDES + 1)
    assert_refused(hostile.get("/fhir/CarePlan", params=includes), "_include")
    mixed = [("_include", "CarePlan:patient")] * 5 + [("_revinclude", "Task:focus")] * 6
    assert_refused(hostile.get("/fhir/CarePlan", params=mixed), "_revinclude")


def test_sort_may_not_repeat_a_field(hostile: TestClient) -> None:
    assert_refused(hostile.get("/fhir/Patient", params={"_sort": "_id,-_id"}), "_sort")
    assert hostile.get("/fhir/Patient", params={"_sort": "-_lastUpdated,_id"}).status_code == 200


# -- search: control characters, references, ids, dates ---------------------------------------


@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
@pytest.mark.parametrize(
    ("resource_type", "parameter"),
    [
        ("Patient", "name"),
        ("Patient", "name:exact"),
        ("Patient", "identifier"),
        ("Patient", "_id"),
        ("Patient", "birthdate"),
        ("Patient", "_lastUpdated"),
        ("Patient", "_profile"),
        ("CarePlan", "patient"),
        ("CarePlan", "status"),
        ("Patient", "_sort"),
        ("Patient", "_count"),
        ("CarePlan", "_include"),
        ("Patient", "_cursor"),
        ("Patient", "_total"),
    ],
)
def test_a_control_character_in_a_search_value_is_a_400_naming_the_parameter(
    hostile: TestClient, resource_type: str, parameter: str, char: str
) -> None:
    value = marked(f"Ma{char}ria")
    assert_refused(
        hostile.get(f"/fhir/{resource_type}", params={parameter: value}), parameter, value
    )


def test_a_nul_in_a_parameter_name_is_refused_without_echo(hostile: TestClient) -> None:
    name = marked("na\x00me")
    assert_refused(hostile.get("/fhir/Patient", params={name: "x"}), None, name)
    lenient = {"Prefer": "handling=lenient"}
    assert_refused(hostile.get("/fhir/Patient", params={name: "x"}, headers=lenient), None, name)


def test_nul_through_every_search_door(hostile: TestClient) -> None:
    value = marked("\x00")
    form = urlencode({"name": value})
    assert_refused(hostile.post("/fhir/Patient/_search", content=form, headers=FORM), "name")
    conditional = hostile.post(
        "/fhir/Patient",
        content=orjson.dumps(patient()),
        headers={**FHIR, "If-None-Exist": form},
    )
    assert_refused(conditional, "name", value)
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": f"Patient?{form}"}}],
    }
    response = hostile.post("/fhir", content=orjson.dumps(batch), headers=FHIR)
    assert_answered(response, value)
    entry = response.json()["entry"][0]
    assert entry["response"]["status"].startswith("400")
    assert not echoes(orjson.dumps(entry), value)


@pytest.mark.parametrize("length", [64, 65, 300])
@pytest.mark.parametrize("form", ["{id}", "Patient/{id}", "http://elsewhere.example/Patient/{id}"])
def test_long_reference_values(hostile: TestClient, length: int, form: str) -> None:
    ref_id = ("r" + MARK + "x" * length)[:length]
    value = form.format(id=ref_id)
    response = hostile.get("/fhir/CarePlan", params={"patient": value})
    if length <= 64:
        assert response.status_code == 200
        assert response.json()["total"] == 0
    else:
        assert_refused(response, "patient", value)


@pytest.mark.parametrize(
    "value",
    ["Patient/", "/", "Patient/a b", "Pat ient/1", "patient/1", "_history/1", "urn:uuid:abc",
     "Patient/1/_history/2", "#contained", "Patient/\u00e9", "Patient/\U0001f600"],
)  # fmt: skip
def test_reference_values_that_name_no_record(hostile: TestClient, value: str) -> None:
    response = hostile.get("/fhir/CarePlan", params={"patient": value})
    assert_answered(response)
    if response.status_code == 200:
        assert response.json()["total"] == 0
    else:
        assert_refused(response, "patient")


@pytest.mark.parametrize("length", [64, 65, 300])
def test_long_ids_in_an_id_search(hostile: TestClient, length: int) -> None:
    value = ("i" + MARK + "x" * length)[:length]
    response = hostile.get("/fhir/Patient", params={"_id": value})
    if length <= 64:
        assert response.status_code == 200
    else:
        assert_refused(response, "_id", value)


@pytest.mark.parametrize(
    "value",
    ["9999-12-31", "9999-12-31T23:59:59Z", "9999-12-31T23:59:59-14:00",
     "0001-01-01T00:00:00+14:00"],
)  # fmt: skip
@pytest.mark.parametrize("parameter", ["birthdate", "_lastUpdated"])
def test_dates_at_the_edges_of_the_calendar_are_valid_and_answered(
    hostile: TestClient, parameter: str, value: str
) -> None:
    # Valid FHIR: their implicit range is clamped to what a timestamp holds, never an error.
    response = hostile.get("/fhir/Patient", params={parameter: value})
    assert response.status_code == 200
    assert response.json()["total"] == 0


@pytest.mark.parametrize(
    "value",
    ["0000", "10000-01-01", "2024-02-30", "2024-13", "2024x03",
     "+123", " 994", "\u0661\u0669\u0669\u0664", "19940317", "2024-W10-1", "2024-03-17 10:00",
     "2024-03-17T25:00:00Z", "2024-03-17T10:00:00+99:00", "ge", "sa2024", "eb", "9" * 400],
)  # fmt: skip
@pytest.mark.parametrize("parameter", ["birthdate", "_lastUpdated"])
def test_malformed_and_extreme_dates_are_400(
    hostile: TestClient, parameter: str, value: str
) -> None:
    assert_refused(hostile.get("/fhir/Patient", params={parameter: value}), parameter, value)


@pytest.mark.parametrize(
    "value",
    ["1994", "1994-03", "1994-03-17", "ge1994-03-17T10:00Z", "lt2026-11-23T10:00:00.5Z",
     "0001-01-01", "le9999-12-30"],
)  # fmt: skip
def test_good_dates_still_search(hostile: TestClient, value: str) -> None:
    assert hostile.get("/fhir/Patient", params={"birthdate": value}).status_code == 200


@pytest.mark.parametrize(
    "value", ["9" * 30, "9" * 5000, "0" * 40 + "7", "-1", "abc", "1.5", "1e3", "\u00b2", "\u0663",
              "", " 1", "0x10"],
)  # fmt: skip
def test_count_values(hostile: TestClient, value: str) -> None:
    response = hostile.get("/fhir/Patient", params={"_count": value})
    assert_answered(response, value)
    if value.isascii() and value.isdigit() and len(value) <= MAX_VALUE_CHARS:
        assert response.status_code == 200  # clamped to the page size limit
    else:
        assert_refused(response, "_count")


@pytest.mark.parametrize(
    "token",
    ["", "!!!", "%%%", "A" * 5000, "A" * 20_000, cursor_token({"k": ["x"], "a": True}),
     cursor_token({"k": [2**62], "a": True}), cursor_token({"k": ["a\x00", 1], "a": True}),
     cursor_token({"k": [], "a": True}), cursor_token([1, 2]), cursor_token("x"),
     base64.urlsafe_b64encode(b"\xff\xfe" * 40).decode()],
)  # fmt: skip
@pytest.mark.parametrize("sort", [None, "_id", "-_lastUpdated,_id"])
def test_forged_and_malformed_cursors_are_400(
    hostile: TestClient, planted: dict[str, str], token: str, sort: str | None
) -> None:
    params = {"_cursor": token, **({"_sort": sort} if sort else {})}
    response = hostile.get("/fhir/Patient", params=params)
    assert_answered(response, token)
    assert 400 <= response.status_code < 500


def test_a_real_cursor_still_pages(hostile: TestClient, planted: dict[str, str]) -> None:
    for _ in range(2):
        hostile.post("/fhir/Patient", content=orjson.dumps(patient()), headers=FHIR)
    first = hostile.get("/fhir/Patient", params={"_count": "1"}).json()
    (next_url,) = [link["url"] for link in first["link"] if link["relation"] == "next"]
    assert hostile.get(next_url).status_code == 200


@pytest.mark.parametrize("oddity", UNICODE_ODDITIES)
@pytest.mark.parametrize("parameter", ["name", "identifier", "_profile", "_summary", "_sort"])
def test_unicode_oddities_in_search_values(
    hostile: TestClient, oddity: str, parameter: str
) -> None:
    value = marked(oddity)
    assert_answered(hostile.get("/fhir/Patient", params={parameter: value}), value)


@pytest.mark.parametrize(
    "query",
    ["name=%ED%A0%80", "name=%ED%B0%80x", "name=%C0%80", "name=%FF%FE", "%ED%A0%80=1",
     "name=%E2%80%AE", "name=%", "name=%zz", "=x", "&&&", "name", "name=a&name=b&name=c",
     "_id=%00", "organization=Organization%2F%00"],
)  # fmt: skip
def test_raw_query_strings(hostile: TestClient, query: str) -> None:
    assert_answered(hostile.get(f"/fhir/Patient?{query}"))
    assert_answered(hostile.post("/fhir/Patient/_search", content=query, headers=FORM))


# -- instance routes: ids and versions --------------------------------------------------------


HOSTILE_IDS = [
    "a%00b", "%00", "a%01", "a%7F", "%0A", "%ED%A0%80", "%E2%80%AE", "%F0%9F%98%80", "..", ".",
    "a" * 65, "a" * 300, "a%2Fb", "a%5Cb", "a%20b", "%25", "_history", "$explain",
]  # fmt: skip


@pytest.mark.parametrize("resource_id", HOSTILE_IDS)
def test_hostile_ids_on_every_instance_route(hostile: TestClient, resource_id: str) -> None:
    base = f"/fhir/Patient/{resource_id}"
    body = orjson.dumps({**patient(), "id": resource_id})
    for method, url, content in [
        ("GET", base, None),
        ("PUT", base, body),
        ("DELETE", base, None),
        ("GET", f"{base}/_history", None),
        ("GET", f"{base}/_history/1", None),
        ("GET", f"{base}/$accounting-of-disclosures", None),
    ]:
        response = hostile.request(method, url, content=content, headers=FHIR)
        assert_answered(response, resource_id)


def test_a_64_character_id_is_a_valid_id_and_65_is_not(hostile: TestClient) -> None:
    resource_id = "a" * 64
    for url in (f"/fhir/Patient/{resource_id}", f"/fhir/Patient/{resource_id}/_history/1"):
        unknown = hostile.get(url)
        assert_answered(unknown)
        assert unknown.status_code == 404
    too_long = resource_id + "a"
    assert_refused(hostile.get(f"/fhir/Patient/{too_long}"), None, too_long)


@pytest.mark.parametrize(
    "version", ["0", "-1", "9" * 9, "9" * 10, "9" * 30, "abc", "1.0", "%00", "%ED%A0%80"]
)
def test_hostile_versions(hostile: TestClient, planted: dict[str, str], version: str) -> None:
    response = hostile.get(f"/fhir/Patient/{planted['patient']}/_history/{version}")
    assert_answered(response, version)
    assert 400 <= response.status_code < 500


@pytest.mark.parametrize("version", ["\u00b2", "\u0663"])
def test_unicode_digit_versions(hostile: TestClient, planted: dict[str, str], version: str) -> None:
    response = hostile.get(f"/fhir/Patient/{planted['patient']}/_history/{quote(version)}")
    assert_answered(response, version)
    assert 400 <= response.status_code < 500


@pytest.mark.parametrize(
    "params",
    [{"_count": "9" * 30}, {"_count": "-1"}, {"_count": "abc"}, {"_count": "\u00b2"},
     {"_count": "9" * 5000}, {"_page": "9" * 30}, {"_page": "abc"},
     {"_since": "9999-12-31T23:59:59-14:00"}, {"_since": "0001-01-01T00:00:00+14:00"},
     {"_since": "not-a-date"}, {"_since": "2020-01-01T00:00:00\x00"},
     {"_since": "2020-01-01T00:00:00"}, {"unknown": "x"}, {"\x00": "x"}],
)  # fmt: skip
def test_hostile_history_parameters(
    hostile: TestClient, planted: dict[str, str], params: dict[str, str]
) -> None:
    response = hostile.get(f"/fhir/Patient/{planted['patient']}/_history", params=params)
    assert_answered(response, *(v for v in params.values() if len(v) > 5))


@pytest.mark.parametrize(
    "if_match",
    [b'W/"' + b"9" * 30 + b'"', b'W/"-1"', b"*", b"", b"W/", b'W/"1", W/"2"', b'W/"\xb2"',
     b'W/"\xb9"'],
)  # fmt: skip
def test_hostile_if_match(hostile: TestClient, planted: dict[str, str], if_match: bytes) -> None:
    # The last two are read as latin-1 by the server: '²' and '¹' (digits to str.isdigit).
    doc = {**patient(), "id": planted["patient"]}
    response = hostile.put(
        f"/fhir/Patient/{planted['patient']}",
        content=orjson.dumps(doc),
        headers={**FHIR, "If-Match": if_match},
    )
    assert_answered(response)


# -- write bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource_type", "doc"),
    [
        pytest.param("Patient", {**patient(), "birthDate": "9999-12-31"}, id="9999-12-31"),
        pytest.param("Patient", {**patient(), "birthDate": "0001-01-01"}, id="0001-01-01"),
        pytest.param(
            "CarePlan",
            {**care_plan("x"), "period": {"start": "0001-01-01T00:00:00+14:00"}},
            id="0001-01-01T00:00:00+14:00",
        ),
        pytest.param(
            "CarePlan",
            {**care_plan("x"), "period": {"end": "9999-12-31T23:59:59-14:00"}},
            id="9999-12-31T23:59:59-14:00",
        ),
    ],
)
def test_extreme_dates_in_written_resources(
    hostile: TestClient, resource_type: str, doc: dict[str, Any]
) -> None:
    response = hostile.post(f"/fhir/{resource_type}", content=orjson.dumps(doc), headers=FHIR)
    assert_answered(response)


def deep(depth: int) -> bytes:
    return b'{"resourceType":"Patient","extension":' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    "body",
    [b"", b"   ", b"null", b"[]", b'"Patient"', b"{", b"\xff\xfe", b'{"resourceType":"Patient"',
     b'{"resourceType":"Patient","name":[{"family":"\\ud800"}]}',
     b'{"resourceType":"Patient","name":[{"family":"\xed\xa0\x80"}]}',
     b'{"resourceType":"Patient","resourceType":"Task"}', b'{"resourceType":"' + b"P" * 300 + b'"}',
     b'{"resourceType":"Patient","birthDate":"' + b"9" * 400 + b'"}',
     deep(65), deep(2000), deep(200_000)[:60_000]],
)  # fmt: skip
def test_malformed_bodies_on_create_and_update(hostile: TestClient, body: bytes) -> None:
    assert_answered(hostile.post("/fhir/Patient", content=body, headers=FHIR))
    assert_answered(hostile.put("/fhir/Patient/p1", content=body, headers=FHIR))
    assert_answered(hostile.post("/fhir", content=body, headers=FHIR))


def test_an_over_large_body_is_413(hostile: TestClient) -> None:
    body = orjson.dumps({**patient(), "text": {"status": "generated", "div": "x" * 70_000}})
    response = hostile.post("/fhir/Patient", content=body, headers=FHIR)
    assert_answered(response)
    assert response.status_code == 413


@pytest.mark.parametrize("char", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
@pytest.mark.parametrize("where", ["family", "identifier", "gender", "text"])
def test_control_characters_inside_body_strings(hostile: TestClient, char: str, where: str) -> None:
    value = marked(f"A{char}b")
    doc = patient()
    if where == "family":
        doc["name"][0]["family"] = value
    elif where == "identifier":
        doc["identifier"][0]["value"] = value
    elif where == "gender":
        doc["gender"] = value
    else:
        doc["text"] = {"status": "generated", "div": f"<div>{value}</div>"}
    created = hostile.post("/fhir/Patient", content=orjson.dumps(doc), headers=FHIR)
    assert_answered(created, value)
    again = orjson.dumps({**doc, "id": "nul-probe"})
    updated = hostile.put("/fhir/Patient/nul-probe", content=again, headers=FHIR)
    assert_answered(updated, value)
    if char not in "\t\n\r":  # R4 strings admit no other control character
        assert created.status_code in (400, 422), created.text[:300]
        assert updated.status_code in (400, 404, 422), updated.text[:300]


def test_nul_inside_a_transaction_entry(hostile: TestClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:0b1f0f8e-8c5b-4f73-9d84-000000000001",
                "resource": patient(family=marked("\x00")),
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }
    assert_answered(hostile.post("/fhir", content=orjson.dumps(bundle), headers=FHIR), MARK)


@pytest.mark.parametrize(
    "reference",
    ["Patient/" + "a" * 64, "Patient/" + "a" * 65, "Patient/" + "a" * 300, "P" * 70 + "/x",
     "Patient/a\x00b", "Patient/\u202e1", "http://elsewhere.example/fhir/Patient/" + "a" * 300,
     "urn:uuid:" + "f" * 300, "#" + "c" * 300, "Patient/1/_history/" + "9" * 80],
)  # fmt: skip
def test_long_and_odd_references_on_writes(hostile: TestClient, reference: str) -> None:
    doc = {**care_plan("x"), "subject": {"reference": reference}}
    created = hostile.post("/fhir/CarePlan", content=orjson.dumps(doc), headers=FHIR)
    assert_answered(created, reference)
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b1f0f8e-8c5b-4f73-9d84-000000000002", "resource": doc,
         "request": {"method": "POST", "url": "CarePlan"}}]}  # fmt: skip
    assert_answered(hostile.post("/fhir", content=orjson.dumps(transaction), headers=FHIR))


# -- Bundles --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["Patient?name=%00", "CarePlan?patient=" + "a" * 65, "Patient/a%00", "Patient/\x00",
     "Patient/" + "a" * 300, "Patient?" + "&".join(f"name=n{i}" for i in range(150)),
     "Patient?_id=" + ",".join(str(i) for i in range(1000)), "Patient?_count=" + "9" * 5000,
     "Patient?_cursor=!!!", "Patient?birthdate=9999-12-31", "Patient/x/_history/" + "9" * 30,
     "Patient/x/_history/\u00b2", "../../etc/passwd", "http://evil.example/fhir/Patient", "",
     "?", "Patient?" + "&" * 5000, "Patient?" + "a=1&" * 200, "/" * 300, "Patient/x/y/z/w"],
)  # fmt: skip
@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT", "POST"])
def test_hostile_bundle_entry_urls(
    hostile: TestClient, planted: dict[str, str], url: str, method: str
) -> None:
    entry: dict[str, Any] = {"request": {"method": method, "url": url}}
    if method in ("PUT", "POST"):
        entry["resource"] = patient()
    for kind in ("batch", "transaction"):
        doc = {"resourceType": "Bundle", "type": kind, "entry": [entry]}
        assert_answered(hostile.post("/fhir", content=orjson.dumps(doc), headers=FHIR))


@pytest.mark.parametrize(
    "entry",
    [None, 1, "x", [], {}, {"request": None}, {"request": {"method": 5, "url": []}},
     {"request": {"method": "GET\x00", "url": "Patient"}},
     {"request": {"method": "PATCH", "url": "Patient/1"}},
     {"fullUrl": "\x00", "resource": {"resourceType": "Patient"},
      "request": {"method": "POST", "url": "Patient"}},
     {"fullUrl": "urn:uuid:" + "a" * 5000, "resource": {"resourceType": "Patient"},
      "request": {"method": "POST", "url": "Patient"}}],
)  # fmt: skip
def test_malformed_bundle_entries(hostile: TestClient, entry: Any) -> None:
    for kind in ("batch", "transaction", "searchset", "\x00", None):
        doc = {"resourceType": "Bundle", "type": kind, "entry": [entry]}
        assert_answered(hostile.post("/fhir", content=orjson.dumps(doc), headers=FHIR))


def test_a_bundle_of_many_hostile_searches(hostile: TestClient) -> None:
    urls = [f"Patient?name={marked('%00')}", "Patient?" + "&".join(["name=x"] * 150)]
    doc = {"resourceType": "Bundle", "type": "batch",
           "entry": [{"request": {"method": "GET", "url": u}} for u in urls * 50]}  # fmt: skip
    response = hostile.post("/fhir", content=orjson.dumps(doc), headers=FHIR)
    assert_answered(response, MARK)
    if response.status_code == 200:
        statuses = {e["response"]["status"][:3] for e in response.json()["entry"]}
        assert statuses == {"400"}
        assert MARK.encode() not in response.content


# -- $explain, AuditEvent, $accounting-of-disclosures -----------------------------------------


@pytest.mark.parametrize(
    "params",
    [{"partner": marked("\x00"), "resource": "CarePlan/{plan}"},
     {"partner": "a" * 300, "resource": "CarePlan/{plan}"},
     {"partner": "harbor-clinic", "resource": "CarePlan/" + "a" * 65},
     {"partner": "harbor-clinic", "resource": "CarePlan/a\x00"},
     {"partner": "harbor-clinic", "resource": "\x00/x"},
     {"partner": "harbor-clinic", "resource": "/"},
     {"partner": "harbor-clinic", "resource": "CarePlan/{plan}", "purpose": marked("\x00")},
     {"partner": "harbor-clinic", "resource": "CarePlan/{plan}",
      "purpose": ",".join(["TREAT"] * 1000)},
     {"partner": "harbor-clinic", "resource": "CarePlan/{plan}", "purpose": "\u202e" * 100},
     {"partner": "harbor-clinic", "resource": "CarePlan/{plan}", "patient": marked("\x00")},
     {"partner": "harbor-clinic"}, {}],
)  # fmt: skip
def test_hostile_explain(
    hostile: TestClient,
    hostile_reviewer: TestClient,
    planted: dict[str, str],
    params: dict[str, str],
) -> None:
    filled = {k: v.format(**planted) for k, v in params.items()}
    secrets = [v for v in filled.values() if MARK in v]
    for client in (hostile_reviewer, hostile):
        assert_answered(client.get("/fhir/Consent/$explain", params=filled), *secrets)


@pytest.mark.parametrize(
    "params",
    [{"patient": marked("\x00")}, {"type": marked("\x00")}, {"date": "9999-12-31"},
     {"_cursor": "9" * 30}, {"_count": "\u00b2"}, {"_count": "9" * 5000},
     {"patient": "a" * 300}, {"patient": ",".join(["x"] * 1000)}, {"patient": "\u202e" * 50},
     {"date": "not-a-date"}, {"_count": "-1"}, {"_cursor": "abc"}, {"unknown": "x"}],
)  # fmt: skip
def test_hostile_audit_search(hostile_reviewer: TestClient, params: dict[str, str]) -> None:
    secrets = [v for v in params.values() if MARK in v]
    assert_answered(hostile_reviewer.get("/fhir/AuditEvent", params=params), *secrets)


def test_audit_search_caps_its_clauses_like_every_search(hostile_reviewer: TestClient) -> None:
    params = [("patient", f"p{i}") for i in range(3 * MAX_SEARCH_CLAUSES)]
    response = hostile_reviewer.get("/fhir/AuditEvent", params=params)
    assert_answered(response)
    assert response.status_code == 400


@pytest.mark.parametrize(
    "params",
    [{"_since": "9999-12-31T23:59:59-14:00"}, {"_since": "\x00"}, {"_until": "9" * 400},
     {"_since": "2026-01-01", "_until": "2025-01-01"}, {"x": "y"}],
)  # fmt: skip
def test_hostile_accounting_of_disclosures(
    hostile_reviewer: TestClient, planted: dict[str, str], params: dict[str, str]
) -> None:
    url = f"/fhir/Patient/{planted['patient']}/$accounting-of-disclosures"
    assert_answered(hostile_reviewer.get(url, params=params))


# -- headers and unknown routes ---------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"Accept": "text/html"}, {"Accept": "\x7f"}, {"Prefer": "return=" + "x" * 5000},
     {"Prefer": "handling=lenient, handling=strict"},
     {"Content-Type": "application/fhir+json; charset=latin-1"},
     {"If-None-Exist": "name=" + "%00"}, {"If-None-Exist": "&".join(["name=x"] * 150)},
     {"If-None-Exist": "_id=" + "a" * 65}, {"If-None-Exist": "?"}, {"If-None-Exist": "_count=1"},
     {"X-Request-Id": "\x7f" * 200}],
)  # fmt: skip
def test_hostile_headers(hostile: TestClient, headers: dict[str, str]) -> None:
    merged = {**FHIR, **headers}
    assert_answered(hostile.post("/fhir/Patient", content=orjson.dumps(patient()), headers=merged))
    assert_answered(hostile.get("/fhir/Patient", headers=merged))


@pytest.mark.parametrize(
    ("method", "url"),
    [("GET", "/fhir/Unknown"), ("GET", "/fhir/%00"), ("GET", "/fhir/" + "P" * 300),
     ("POST", "/fhir/Patient/x"), ("PATCH", "/fhir/Patient/x"), ("GET", "/fhir/Patient/x/y/z"),
     ("POST", "/fhir/%00/_search"), ("GET", "/fhir/Patient/_search"), ("DELETE", "/fhir/Patient"),
     ("GET", "/fhir/Patient/x/_history/1/extra")],
)  # fmt: skip
def test_unknown_routes_and_types(hostile: TestClient, method: str, url: str) -> None:
    response = hostile.request(method, url, content=orjson.dumps(patient()), headers=FHIR)
    assert_answered(response)


# -- property-based: arbitrary values, names and ids ------------------------------------------


# Criteria by type (free-text values reach SQL), and result parameters with the values a client
# would send (so that an example is not refused for them before its criteria reach the store).
CRITERIA = {
    "Patient": ["name", "family", "name:contains", "name:exact", "identifier", "gender",
                "birthdate", "organization", "_id", "_lastUpdated", "_profile", "_tag"],
    "CarePlan": ["identifier", "patient", "subject", "status", "category", "date", "_security"],
    "Task": ["identifier", "patient", "status", "business-status", "code", "focus", "owner"],
    "Consent": ["identifier", "patient", "actor", "purpose", "period", "security-label"],
}  # fmt: skip
RESULT_PARAMS = {"_count": ["0", "1", "50", "99999"], "_sort": ["_id", "-_lastUpdated,_id"],
                 "_summary": ["count", "false"], "_total": ["none", "accurate"],
                 "_format": ["json"], "_cursor": [], "_include": [], "_revinclude": []}  # fmt: skip
# Every character but lone surrogates (the HTTP client cannot encode them; the percent-encoded
# forms are above), weighted towards the troublesome ones.
LONE_SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
ANY_CHAR = st.characters(exclude_categories=LONE_SURROGATES)
HOSTILE_CHAR = st.one_of(
    st.sampled_from(["\x00", "\x00", *CONTROLS]),
    st.sampled_from([",", "\\", "|", "/", ":", "$", "%", "&", "=", "\u202e", "\ufeff"]),
    st.sampled_from("abcXYZ019-."),
    ANY_CHAR,
)
# A list joined, not st.text: text() merges its alphabet into one set of characters and
# would draw the troublesome ones no more often than any other.
HOSTILE_TEXT = st.lists(HOSTILE_CHAR, max_size=40).map("".join)


def test_property_any_search_value_is_answered(
    hostile: TestClient, planted: dict[str, str]
) -> None:
    seen: Counter[int] = Counter()  # statuses of the examples that passed every assertion
    reach = Reach("hostile search values answered")

    def items_for(resource_type: str) -> st.SearchStrategy[list[tuple[str, str]]]:
        criterion = st.tuples(
            st.sampled_from(CRITERIA[resource_type]),
            st.one_of(HOSTILE_TEXT, HOSTILE_TEXT.map(marked)),
        )
        result = st.sampled_from(sorted(RESULT_PARAMS)).flatmap(
            lambda n: st.tuples(
                st.just(n), st.one_of(*map(st.just, RESULT_PARAMS[n]), HOSTILE_TEXT.map(marked))
            )
        )
        return st.lists(st.one_of(criterion, criterion, result), min_size=1, max_size=4)

    @settings(
        max_examples=60,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        resource_type_and_items=st.sampled_from(sorted(CRITERIA)).flatmap(
            lambda t: st.tuples(st.just(t), items_for(t))
        ),
        by_post=st.booleans(),
    )
    def check(resource_type_and_items: tuple[str, list[tuple[str, str]]], by_post: bool) -> None:
        reach.example()
        resource_type, items = resource_type_and_items
        if by_post:
            form = urlencode(items)
            response = hostile.post(f"/fhir/{resource_type}/_search", content=form, headers=FORM)
        else:
            response = hostile.get(f"/fhir/{resource_type}", params=items)
        reach.hit()
        assert_answered(response, *(v for _, v in items if MARK in v))
        seen[response.status_code] += 1

    check()
    reach.check(minimum=1.0, at_least=60)  # every example reaches assert_answered
    assert {200, 400} <= set(seen), seen  # searches that run, and searches refused


def test_property_any_parameter_name_is_answered(hostile: TestClient) -> None:
    seen: Counter[int] = Counter()  # statuses of the examples that passed every assertion
    reach = Reach("hostile parameter names answered")

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(
        names=st.lists(
            st.one_of(HOSTILE_TEXT.filter(bool), st.sampled_from(["_format", "_pretty"])),
            min_size=1,
            max_size=3,
        ),
        value=HOSTILE_TEXT,
    )
    def check(names: list[str], value: str) -> None:
        reach.example()
        response = hostile.get("/fhir/Patient", params=[(n, value) for n in names])
        reach.hit()
        assert_answered(response)
        seen[response.status_code] += 1

    check()
    reach.check(minimum=1.0, at_least=40)  # every example reaches assert_answered
    assert 400 in seen, seen


def test_property_any_id_is_answered(hostile: TestClient, planted: dict[str, str]) -> None:
    seen: Counter[int] = Counter()  # statuses of the examples that passed every assertion
    reach = Reach("hostile ids answered")

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(
        resource_id=st.one_of(HOSTILE_TEXT.filter(bool), st.text("a-", min_size=60, max_size=70)),
        route=st.sampled_from(["", "/_history", "/_history/1", "/$accounting-of-disclosures"]),
    )
    def check(resource_id: str, route: str) -> None:
        reach.example()
        response = hostile.get(f"/fhir/Patient/{quote(resource_id, safe='')}{route}")
        reach.hit()
        assert_answered(response, marked(resource_id))
        seen[response.status_code] += 1

    check()
    reach.check(minimum=1.0, at_least=40)  # every example reaches assert_answered
    assert {400, 404} <= set(seen), seen  # refused ids, and unknown ones


def test_property_any_reference_value_is_answered(
    hostile: TestClient, planted: dict[str, str]
) -> None:
    segment = st.one_of(st.text("abZ09-.", min_size=1, max_size=70), HOSTILE_TEXT)
    seen: Counter[int] = Counter()  # statuses of the examples that passed every assertion
    reach = Reach("hostile reference values answered")

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(parts=st.lists(segment, min_size=1, max_size=4))
    def check(parts: list[str]) -> None:
        reach.example()
        value = "/".join(parts)
        response = hostile.get("/fhir/CarePlan", params={"patient": value})
        reach.hit()
        assert_answered(response)
        if response.status_code == 200:
            assert response.json()["total"] == 0  # no such patient
        seen[response.status_code] += 1

    check()
    reach.check(minimum=1.0, at_least=40)  # every example reaches assert_answered
    assert {200, 400} <= set(seen), seen


def test_property_any_string_in_a_body_is_answered(hostile: TestClient) -> None:
    text = HOSTILE_TEXT
    fields = ["family", "given", "mrn", "gender", "birth_date", "hmis"]
    seen: Counter[int] = Counter()  # statuses of the examples that passed every assertion
    reach = Reach("hostile body strings answered")

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(hostile_fields=st.dictionaries(st.sampled_from(fields), text, min_size=1, max_size=2))
    def check(hostile_fields: dict[str, str]) -> None:
        reach.example()
        doc = patient(**hostile_fields)  # the other fields as a real client writes them
        response = hostile.post("/fhir/Patient", content=orjson.dumps(doc), headers=FHIR)
        reach.hit()
        assert_answered(response)
        seen[response.status_code] += 1

    check()
    reach.check(minimum=1.0, at_least=40)  # every example reaches assert_answered
    assert 201 in seen, seen  # some were written
    assert {400, 422} & set(seen), seen  # some were refused
