"""Strict FHIR R4 validation on write, as the contract states it: invalid means invalid R4 (a
primitive of the wrong JSON type, a code outside a required binding, a malformed date or
reference), answered 422 with an OperationOutcome that names the element and never echoes the
value; what is stored is the very resource that passed, never reshaped."""

from __future__ import annotations

import copy
import glob
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from benchmarks.fhir_data import mixed_resources
from gateway.access.requester import Requester
from gateway.app import create_app
from gateway.clock import FrozenClock
from gateway.disclose.deps import fixed_requester
from gateway.errors import Issue, Unprocessable
from gateway.keys import init_keys
from gateway.settings import Settings
from gateway.store.sql import SqlStore
from gateway.vocabulary.registry import RESOURCE_TYPES
from gateway.write import validate as v
from gateway.write.validate import validate_resource
from tests.conftest import START
from tests.support.network import BASE, FHIR
from tests.support.reach import Reach
from tests.support.records import care_plan, organization, patient, referral, task

EXAMPLES = sorted(glob.glob(str(Path(__file__).parents[2] / "examples" / "fhir" / "*.json")))


def check(resource: dict[str, Any]) -> dict[str, Any]:
    return validate_resource(resource, allowed_types=RESOURCE_TYPES)


def refused(resource: dict[str, Any], *secrets: Any) -> list[Issue]:
    """The issues of a refusal, after checking that none of them repeats a value sent."""
    with pytest.raises(Unprocessable) as caught:
        check(resource)
    issues = caught.value.issues
    said = json.dumps([[i.code, i.diagnostics, *i.expression] for i in issues], ensure_ascii=False)
    for secret in secrets:
        assert str(secret) not in said, f"the outcome echoes {secret!r}"
    assert caught.value.status == 422
    return issues


def expressions(issues: list[Issue]) -> list[str]:
    return [e for issue in issues for e in issue.expression]


def consent(patient_id: str = "p1", **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        },
        "provision": {
            "type": "permit",
            "data": [{"meaning": "related", "reference": {"reference": "Patient/p1"}}],
        },
    }
    doc.update(changes)
    return doc


def valid_resources() -> list[dict[str, Any]]:
    docs = [
        patient(),
        patient("Nguyễn", "Thị Lan", hmis="HMIS-0042", gender="other"),
        care_plan("p1"),
        referral("p1"),
        task("sr1", "p1"),
        organization("harbor-clinic", "Harbor Community Clinic"),
        consent(),
    ]
    docs += mixed_resources(120)
    for path in EXAMPLES:
        # release-to-harbor-clinic.json is a template: gateway/demo.py fills in PATIENT_ID.
        text = Path(path).read_text(encoding="utf-8").replace("PATIENT_ID", "p1")
        doc = json.loads(text)
        entries = (
            doc.get("entry", []) if doc.get("resourceType") == "Bundle" else [{"resource": doc}]
        )
        docs += [e["resource"] for e in entries if "resource" in e]
    return docs


VALID = valid_resources()


# -- realistic, valid resources still pass, untouched ---------------------------------------------


@pytest.mark.parametrize(
    "resource",
    VALID[:7],
    ids=["patient", "patient-unicode", "care-plan", "referral", "task", "organization", "consent"],
)
def test_a_valid_record_passes_and_comes_back_as_the_very_same_dict(
    resource: dict[str, Any],
) -> None:
    before = copy.deepcopy(resource)
    assert check(resource) is resource
    assert resource == before


def test_every_resource_of_the_example_bundles_and_the_benchmark_records_is_valid() -> None:
    assert EXAMPLES, "examples/fhir/*.json are expected"
    for resource in VALID:
        check(resource)


def test_the_definitions_are_r4_4_0_1_shipped_as_data() -> None:
    raw = orjson.loads((Path(v.__file__).with_name("r4spec.json")).read_bytes())
    assert raw["fhirVersion"] == "4.0.1"
    assert "Patient" in raw["resources"]
    assert "SubscriptionStatus" not in raw["resources"]  # R4B, not R4
    assert raw["definitions"]["Patient"]["p"]["gender"][2] == (
        "http://hl7.org/fhir/ValueSet/administrative-gender"
    )


# -- primitives: the JSON type R4 names, never coerced --------------------------------------------


def test_a_boolean_written_as_a_string_is_refused_naming_the_element() -> None:
    issues = refused({**patient(), "active": "yes"}, "yes")
    assert expressions(issues) == ["Patient.active"]
    assert issues[0].code == "value"


@pytest.mark.parametrize("value", [1, 0, "true", None, [True]])
def test_a_boolean_is_only_json_true_or_false(value: Any) -> None:
    assert expressions(refused({**patient(), "active": value})) == ["Patient.active"]


@pytest.mark.parametrize("value", ["2", 2.0, 2.5, True, 2**31])
def test_an_integer_written_as_a_string_a_float_a_boolean_or_past_32_bits_is_refused(
    value: Any,
) -> None:
    issues = refused({**patient(), "multipleBirthInteger": value})
    assert expressions(issues) == ["Patient.multipleBirthInteger"]


def test_positive_and_unsigned_integers_keep_their_ranges() -> None:
    timing = {"repeat": {"frequency": 0, "count": 1, "period": 1, "periodUnit": "d"}}
    activity = {"detail": {"status": "scheduled", "scheduledTiming": timing}}
    plan = {**care_plan("p1"), "activity": [activity]}
    issues = refused(plan)
    assert expressions(issues) == ["CarePlan.activity[0].detail.scheduledTiming.repeat.frequency"]
    timing["repeat"]["frequency"] = 1
    check(plan)
    timing["repeat"]["count"] = 0  # positiveInt
    assert expressions(refused(plan)) == [
        "CarePlan.activity[0].detail.scheduledTiming.repeat.count"
    ]


@pytest.mark.parametrize("value", ["1.5", True, None])
def test_a_decimal_is_a_json_number_not_a_string_nor_a_boolean(value: Any) -> None:
    timing = {"repeat": {"period": value, "periodUnit": "d"}}
    plan = {
        **care_plan("p1"),
        "activity": [{"detail": {"status": "scheduled", "scheduledTiming": timing}}],
    }
    assert expressions(refused(plan)) == [
        "CarePlan.activity[0].detail.scheduledTiming.repeat.period"
    ]
    timing["repeat"]["period"] = 1.5
    check(plan)


@pytest.mark.parametrize(
    "birth_date", ["17/03/1994", "1994-3-17", "1994-02-30", "2023-02-29", "1994-03-17T10:00:00Z"]
)
def test_a_malformed_or_impossible_date_is_refused_without_echoing_it(birth_date: str) -> None:
    issues = refused(patient(birth_date=birth_date), birth_date)
    assert expressions(issues) == ["Patient.birthDate"]


def test_partial_dates_and_leap_days_are_dates() -> None:
    for birth_date in ("1994", "1994-03", "2024-02-29", "2000-02-29"):
        check(patient(birth_date=birth_date))


def test_a_date_time_with_a_time_needs_a_time_zone() -> None:
    issues = refused({**referral("p1"), "authoredOn": "2026-11-20T15:04:00"})
    assert expressions(issues) == ["ServiceRequest.authoredOn"]


def test_an_instant_is_a_full_date_time() -> None:
    issues = refused({**patient(), "meta": {"lastUpdated": "2026-11-20"}})
    assert expressions(issues) == ["Patient.meta.lastUpdated"]


@pytest.mark.parametrize("text", ["Mar\x00ía", "Mar\x07ía", "Mar\x7fía", "Mar\ud800ía"])
def test_control_characters_and_lone_surrogates_in_a_string_are_refused(text: str) -> None:
    issues = refused(patient(family=text), text)
    assert expressions(issues) == ["Patient.name[0].family"]


def test_tabs_and_newlines_are_text_and_an_empty_string_is_not() -> None:
    check({**care_plan("p1"), "description": "line one\r\n\tline two"})
    assert expressions(refused(patient(family=""))) == ["Patient.name[0].family"]


def test_a_code_with_inner_double_spaces_or_a_uri_with_a_space_is_refused() -> None:
    bad_code = refused({**patient(), "gender": "fe  male"})
    assert expressions(bad_code) == ["Patient.gender"]
    bad_uri = refused(patient(mrn="x") | {"identifier": [{"system": "urn:x y", "value": "1"}]})
    assert expressions(bad_uri) == ["Patient.identifier[0].system"]


def test_an_id_longer_than_64_characters_or_with_other_characters_is_refused() -> None:
    assert expressions(refused({**patient(), "id": "a" * 65})) == ["Patient.id"]
    assert expressions(refused({**patient(), "id": "a/b"})) == ["Patient.id"]


def test_base64_must_decode_and_narrative_must_be_an_xhtml_div() -> None:
    photo = {"contentType": "image/png", "data": "aGVsbG8="}
    check({**patient(), "photo": [photo]})
    assert expressions(refused({**patient(), "photo": [{**photo, "data": "not base64!"}]})) == [
        "Patient.photo[0].data"
    ]
    div = '<div xmlns="http://www.w3.org/1999/xhtml">Safety plan</div>'
    check({**care_plan("p1"), "text": {"status": "generated", "div": div}})
    issues = refused({**care_plan("p1"), "text": {"status": "generated", "div": "plain"}})
    assert expressions(issues) == ["CarePlan.text.div"]


# -- structure ----------------------------------------------------------------------------------


def test_unknown_elements_nulls_and_empty_objects_or_arrays_are_refused() -> None:
    assert expressions(refused({**patient(), "nickname": "x"})) == ["Patient.nickname"]
    assert expressions(refused({**patient(), "gender": None})) == ["Patient.gender"]
    assert expressions(refused({**patient(), "name": [{}]})) == ["Patient.name[0]"]
    assert expressions(refused({**patient(), "telecom": []})) == ["Patient.telecom"]


def test_an_element_name_that_is_not_a_name_is_not_echoed() -> None:
    issues = refused({**patient(), "María Álvarez 1994": 1}, "María")
    assert expressions(issues) == ["Patient.(invalid name)"]


def test_arrays_exactly_where_the_element_repeats() -> None:
    assert expressions(refused({**patient(), "name": {"family": "x"}})) == ["Patient.name"]
    assert expressions(refused(patient() | {"name": [{"family": ["x"]}]})) == [
        "Patient.name[0].family"
    ]
    assert expressions(refused(patient() | {"name": [{"given": "x"}]})) == ["Patient.name[0].given"]


def test_a_missing_required_element_is_refused() -> None:
    plan = care_plan("p1")
    del plan["intent"]
    assert expressions(refused(plan)) == ["CarePlan.intent"]
    linked = {**patient(), "link": [{"type": "seealso"}]}
    assert expressions(refused(linked)) == ["Patient.link[0].other"]


def test_a_primitive_may_carry_extensions_instead_of_a_value() -> None:
    absent = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "asked-declined",
            }
        ]
    }
    plan = care_plan("p1")
    del plan["intent"]
    check({**plan, "_intent": absent})
    given = {"family": "Álvarez", "given": ["María", None], "_given": [None, absent]}
    check(patient() | {"name": [given]})
    assert expressions(refused(patient() | {"name": [{"given": ["María", None]}]})) == [
        "Patient.name[0].given[1]"
    ]
    assert expressions(refused({**patient(), "_id": absent})) == ["Patient._id"]


def test_only_one_member_of_a_choice_element() -> None:
    issues = refused({**patient(), "deceasedBoolean": False, "deceasedDateTime": "2020-01-01"})
    assert expressions(issues) == ["Patient.deceased[x]"]


def test_an_extension_has_a_url_and_either_a_value_or_extensions() -> None:
    ext = {"url": "http://example.org/ext", "valueString": "x"}
    check({**patient(), "extension": [ext]})
    assert expressions(refused({**patient(), "extension": [{"valueString": "x"}]})) == [
        "Patient.extension[0].url"
    ]
    assert expressions(refused({**patient(), "extension": [{"url": "http://x"}]})) == [
        "Patient.extension[0]"
    ]
    nested = {**ext, "extension": [ext]}
    assert expressions(refused({**patient(), "extension": [nested]})) == ["Patient.extension[0]"]


def test_r4b_only_datatypes_are_not_r4() -> None:
    ext = {"url": "http://x", "valueCodeableReference": {"concept": {"text": "x"}}}
    assert expressions(refused({**patient(), "extension": [ext]})) == [
        "Patient.extension[0].valueCodeableReference"
    ]


def test_a_contained_resource_is_validated_as_its_own_type() -> None:
    org = {"resourceType": "Organization", "id": "o1", "name": "Harbor"}
    check({**patient(), "contained": [org], "managingOrganization": {"reference": "#o1"}})
    issues = refused(
        {
            **patient(),
            "contained": [{**org, "active": "yes"}],
            "managingOrganization": {"reference": "#o1"},
        }
    )
    assert expressions(issues) == ["Patient.contained[0].active"]
    unknown = refused({**patient(), "contained": [{"resourceType": "Nope"}]})
    assert expressions(unknown) == ["Patient.contained[0].resourceType"]


# -- required bindings: codes from the R4 value sets, shipped as data ------------------------------


def _with(doc: dict[str, Any], path: str, code: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    node[int(last) if last.isdigit() else last] = code
    return doc


TIMING = {"repeat": {"period": 1, "periodUnit": "d", "dayOfWeek": ["mon"], "when": ["MORN"]}}
FULL_PATIENT = {
    **patient(),
    "identifier": [{"use": "official", "system": "urn:x", "value": "1"}],
    "telecom": [{"system": "phone", "value": "555", "use": "mobile"}],
    "address": [{"use": "home", "type": "postal", "city": "Riverside"}],
    "contact": [{"gender": "female", "name": {"use": "usual", "text": "A"}}],
    "link": [{"other": {"reference": "Patient/p2"}, "type": "seealso"}],
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
}
PLAN = {
    **care_plan("p1"),
    "activity": [{"detail": {"kind": "Task", "status": "scheduled", "scheduledTiming": TIMING}}],
}
EPISODE = {
    "resourceType": "EpisodeOfCare",
    "status": "active",
    "statusHistory": [{"status": "planned", "period": {"start": "2026-01-01"}}],
    "patient": {"reference": "Patient/p1"},
}
PROVENANCE = {
    "resourceType": "Provenance",
    "target": [{"reference": "Patient/p1"}],
    "recorded": "2026-11-20T15:04:00Z",
    "agent": [{"who": {"reference": "Organization/riverside-shelter"}}],
    "entity": [{"role": "source", "what": {"reference": "Patient/p1"}}],
}
SUBSCRIPTION = {
    "resourceType": "Subscription",
    "status": "requested",
    "reason": "r",
    "criteria": "Task?owner=Organization/harbor-clinic",
    "channel": {
        "type": "rest-hook",
        "endpoint": "https://x.example/hook",
        "payload": "application/fhir+json",
    },
}
QUANTITY_TASK = {
    **task("sr1", "p1"),
    "priority": "urgent",
    "input": [{"type": {"text": "n"}, "valueQuantity": {"value": 1, "comparator": "<"}}],
}

BINDINGS = [
    (FULL_PATIENT, "gender", "Patient.gender"),
    (FULL_PATIENT, "contact.0.gender", "Patient.contact[0].gender"),
    (FULL_PATIENT, "link.0.type", "Patient.link[0].type"),
    (FULL_PATIENT, "identifier.0.use", "Patient.identifier[0].use"),
    (FULL_PATIENT, "contact.0.name.use", "Patient.contact[0].name.use"),
    (FULL_PATIENT, "telecom.0.system", "Patient.telecom[0].system"),
    (FULL_PATIENT, "telecom.0.use", "Patient.telecom[0].use"),
    (FULL_PATIENT, "address.0.use", "Patient.address[0].use"),
    (FULL_PATIENT, "address.0.type", "Patient.address[0].type"),
    (FULL_PATIENT, "text.status", "Patient.text.status"),
    (task("sr1", "p1"), "status", "Task.status"),
    (task("sr1", "p1"), "intent", "Task.intent"),
    (QUANTITY_TASK, "priority", "Task.priority"),
    (QUANTITY_TASK, "input.0.valueQuantity.comparator", "Task.input[0].valueQuantity.comparator"),
    (referral("p1"), "status", "ServiceRequest.status"),
    (referral("p1"), "intent", "ServiceRequest.intent"),
    ({**referral("p1"), "priority": "routine"}, "priority", "ServiceRequest.priority"),
    (PLAN, "status", "CarePlan.status"),
    (PLAN, "intent", "CarePlan.intent"),
    (PLAN, "activity.0.detail.kind", "CarePlan.activity[0].detail.kind"),
    (PLAN, "activity.0.detail.status", "CarePlan.activity[0].detail.status"),
    (
        PLAN,
        "activity.0.detail.scheduledTiming.repeat.periodUnit",
        "CarePlan.activity[0].detail.scheduledTiming.repeat.periodUnit",
    ),
    (
        PLAN,
        "activity.0.detail.scheduledTiming.repeat.dayOfWeek.0",
        "CarePlan.activity[0].detail.scheduledTiming.repeat.dayOfWeek[0]",
    ),
    (
        PLAN,
        "activity.0.detail.scheduledTiming.repeat.when.0",
        "CarePlan.activity[0].detail.scheduledTiming.repeat.when[0]",
    ),
    (consent(), "status", "Consent.status"),
    (consent(), "provision.type", "Consent.provision.type"),
    (consent(), "provision.data.0.meaning", "Consent.provision.data[0].meaning"),
    (EPISODE, "status", "EpisodeOfCare.status"),
    (EPISODE, "statusHistory.0.status", "EpisodeOfCare.statusHistory[0].status"),
    (PROVENANCE, "entity.0.role", "Provenance.entity[0].role"),
    (SUBSCRIPTION, "status", "Subscription.status"),
    (SUBSCRIPTION, "channel.type", "Subscription.channel.type"),
]


@pytest.mark.parametrize(("doc", "path", "expression"), BINDINGS, ids=[b[2] for b in BINDINGS])
def test_a_code_outside_a_required_binding_is_refused_naming_the_element(
    doc: dict[str, Any], path: str, expression: str
) -> None:
    check(doc)  # the valid form passes
    issues = refused(_with(doc, path, "bogus-code"), "bogus-code")
    assert expressions(issues) == [expression]
    assert issues[0].code == "code-invalid"


def test_the_contract_examples_gender_task_status_and_intent_are_refused() -> None:
    assert expressions(refused(patient(gender="woman"), "woman")) == ["Patient.gender"]
    assert expressions(refused({**task("sr1", "p1"), "status": "bogus"}, "bogus")) == [
        "Task.status"
    ]
    assert expressions(refused({**referral("p1"), "intent": "wish"}, "wish")) == [
        "ServiceRequest.intent"
    ]


def test_a_mimetype_binding_is_checked_by_its_syntax() -> None:
    bad = _with(SUBSCRIPTION, "channel.payload", "json please")
    assert expressions(refused(bad)) == ["Subscription.channel.payload"]


# -- references ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reference",
    [
        "Patient/p1",
        "Patient/p1/_history/3",
        "https://fhir.riverside.example/r4/Patient/p1",
        "http://fhir.example:8080/fhir/Patient/p1/_history/2",
        "urn:uuid:7d0f6c1e-2a55-4d51-9a0b-3f3e0c5a1b01",
        "urn:oid:2.16.840.1.113883.3.9999.1",
    ],
)
def test_a_reference_may_be_relative_absolute_a_urn_or_a_fragment(reference: str) -> None:
    check(care_plan("p1") | {"subject": {"reference": reference}})


@pytest.mark.parametrize(
    "reference",
    [
        "María Álvarez",
        "patient/p1",
        "Patient/",
        "Patient/" + "a" * 65,
        "Nonsense/p1",
        "Patient/p1?_format=json",
        "ftp://x.example/Patient/p1",
        "urn:uuid:not-a-uuid",
        "#",
        "#o1",
        "Patient/p1/_history/",
    ],
)
def test_a_malformed_reference_is_refused_naming_the_element(reference: str) -> None:
    issues = refused(care_plan("p1") | {"subject": {"reference": reference}}, reference)
    assert expressions(issues) == ["CarePlan.subject.reference"]


def test_a_fragment_reference_names_a_contained_resource() -> None:
    goal = {
        "resourceType": "Goal",
        "id": "g1",
        "lifecycleStatus": "active",
        "description": {"text": "Stable housing"},
        "subject": {"reference": "#"},
    }
    check(care_plan("p1") | {"contained": [goal], "goal": [{"reference": "#g1"}]})
    nested = {**goal, "contained": [{"resourceType": "Organization", "id": "o"}]}
    assert expressions(
        refused(care_plan("p1") | {"contained": [nested], "goal": [{"reference": "#g1"}]})
    ) == ["CarePlan.contained[0].contained[0]"]


# -- properties ---------------------------------------------------------------------------------


def _primitives(doc: dict[str, Any]) -> list[tuple[tuple[Any, ...], str, int]]:
    """Every primitive value of a resource: (its location, its FHIRPath-like name, its kind)."""
    spec = v.spec()
    found: list[tuple[tuple[Any, ...], str, int]] = []
    stack: list[tuple[Any, str, tuple[Any, ...], str]] = [
        (doc, doc["resourceType"], (), doc["resourceType"])
    ]
    while stack:
        node, def_name, loc, name = stack.pop()
        props = spec.definitions[def_name].props
        for key, val in node.items():
            prop = props.get(key)
            if prop is None:
                continue
            items = list(enumerate(val)) if prop.array else [(None, val)]
            for i, item in items:
                where = loc + ((key, i) if i is not None else (key,))
                label = f"{name}.{key}" + (f"[{i}]" if i is not None else "")
                if prop.primitive >= 0:
                    if item is not None:
                        found.append((where, label, prop.primitive))
                elif prop.target == "Resource":
                    stack.append((item, item["resourceType"], where, label))
                else:
                    stack.append((item, prop.target, where, label))
    return found


WRONG_TYPE = {
    v.BOOLEAN: st.one_of(st.text(max_size=8), st.integers(), st.floats(allow_nan=False)),
    v.INTEGER: st.one_of(st.text(max_size=8), st.floats(allow_nan=False), st.booleans()),
    v.DECIMAL: st.one_of(st.text(max_size=8), st.booleans()),
    v.STRING: st.one_of(
        st.booleans(), st.integers(), st.floats(allow_nan=False), st.just({"value": "x"})
    ),
}
WRONG_TYPE[v.XHTML] = WRONG_TYPE[v.BASE64] = WRONG_TYPE[v.STRING]


def _replace(doc: dict[str, Any], loc: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node: Any = doc
    for part in loc[:-1]:
        node = node[part]
    node[loc[-1]] = value
    return doc


def test_a_primitive_replaced_by_a_value_of_the_wrong_json_type_is_always_refused() -> None:
    reach = Reach("wrong JSON type refused")
    names: set[str] = set()

    @settings(
        max_examples=400,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(data=st.data())
    def refuse_the_wrong_type(data: st.DataObject) -> None:
        reach.example()
        doc = data.draw(st.sampled_from(VALID))
        loc, name, kind = data.draw(st.sampled_from(_primitives(doc)))
        wrong = data.draw(WRONG_TYPE[kind])
        issues = refused(_replace(doc, loc, wrong))
        event(f"kind {kind}")
        reach.hit()
        names.add(name)
        assert name in expressions(issues)

    refuse_the_wrong_type()
    reach.check(minimum=0.99, at_least=350)
    assert len(names) >= 40


MUTANTS = [None, "", " x", "x", 0, -1, 1.5, True, [], {}, ["x"], {"x": 1}, "2020-02-30", 2**40]


def _locations(node: Any, loc: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for key, val in node.items():
            if loc or key != "resourceType":
                yield (*loc, key)
                yield from _locations(val, (*loc, key))
    elif isinstance(node, list):
        for i, val in enumerate(node):
            yield (*loc, i)
            yield from _locations(val, (*loc, i))


def test_whatever_the_fhir_resources_model_refuses_the_r4_walk_refuses_too() -> None:
    """The walk replaces the fhir.resources R4B model (structure, cardinality, choice types):
    on mutated valid resources, every refusal of the model is a refusal of the walk."""
    from fhir.resources.R4B import get_fhir_model_class

    reach = Reach("model refusals the walk refuses too")

    @settings(
        max_examples=400,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(data=st.data())
    def the_walk_is_at_least_as_strict(data: st.DataObject) -> None:
        reach.example()
        doc = copy.deepcopy(data.draw(st.sampled_from(VALID)))
        loc = data.draw(st.sampled_from(list(_locations(doc))))
        parent: Any = doc
        for part in loc[:-1]:
            parent = parent[part]
        op = data.draw(st.sampled_from(["delete", "replace", "wrap", "add-sibling"]))
        if op == "delete":
            del parent[loc[-1]]
        elif op == "replace":
            parent[loc[-1]] = data.draw(st.sampled_from(MUTANTS))
        elif op == "wrap":
            parent[loc[-1]] = [parent[loc[-1]]]
        elif isinstance(parent, dict):
            suffix = data.draw(st.sampled_from(["X", "String", "Boolean"]))
            parent[f"{loc[-1]}{suffix}"] = parent[loc[-1]]
        try:
            get_fhir_model_class(doc["resourceType"]).model_validate(doc)
        except Exception:  # any refusal of the model counts
            reach.hit()
            refused(doc)

    the_walk_is_at_least_as_strict()
    # 267/400 of the derandomized mutants are refused by the model; the rest it accepts
    reach.check(minimum=0.6, at_least=100)


# -- over REST ----------------------------------------------------------------------------------


@pytest.fixture
def client(tmp_path: Path, sql_store: SqlStore, clock: FrozenClock) -> Iterator[TestClient]:
    keys = tmp_path / "keys"
    init_keys(keys, START)
    app_settings = Settings(
        database_url=f"sqlite:///{tmp_path}/unused.db",
        keys_dir=keys,
        base_url=BASE,
        log_level="WARNING",
        max_body_bytes=64 * 1024,
    )
    shelter = fixed_requester(
        Requester(partner_id="riverside-shelter", kind="shelter", scopes=("system/*.cruds",))
    )
    app = create_app(app_settings, store=sql_store, clock=clock, authenticate=shelter)
    with TestClient(app, base_url=BASE) as test_client:
        yield test_client


def test_posting_a_patient_with_gender_woman_answers_422_naming_patient_gender(
    client: TestClient,
) -> None:
    response = client.post(
        "/fhir/Patient", content=orjson.dumps(patient(gender="woman")), headers=FHIR
    )
    assert response.status_code == 422
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert [i.get("expression") for i in outcome["issue"]] == [["Patient.gender"]]
    assert "woman" not in response.text


def test_a_nul_character_and_an_overlong_reference_id_are_422_not_500(client: TestClient) -> None:
    nul = client.post("/fhir/Patient", content=orjson.dumps(patient(family="A\x00")), headers=FHIR)
    assert nul.status_code == 422
    long_ref = care_plan("a" * 65)
    response = client.post("/fhir/CarePlan", content=orjson.dumps(long_ref), headers=FHIR)
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["CarePlan.subject.reference"]


def test_a_name_with_a_no_break_or_ideographic_space_is_kept_as_written() -> None:
    # Names are copied from IDs and other systems: a U+00A0 or U+3000 is text, not a control
    # character, and refusing it would turn a survivor away at the door.
    doc = {
        "resourceType": "Patient",
        "name": [{"family": "Nguyễn\u00a0Thị", "given": ["\u3000Mai"]}],
    }
    assert check(doc) is doc
