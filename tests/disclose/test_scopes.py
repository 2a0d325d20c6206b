"""SMART system scopes: what parses, what a partner is granted (requested ∩ allowed, normalised
to v2), and what a grant allows."""

from __future__ import annotations

import pytest

from gateway.access.scopes import ScopeGrant, grant, parse_scope, parse_scopes


@pytest.mark.parametrize(
    ("token", "normalised"),
    [
        ("system/CarePlan.rs", "system/CarePlan.rs"),
        ("system/*.cruds", "system/*.cruds"),
        ("system/Task.cu", "system/Task.cu"),
        ("system/Patient.read", "system/Patient.rs"),
        ("system/Patient.write", "system/Patient.cud"),
        ("system/Patient.*", "system/Patient.cruds"),
        ("system/*.read", "system/*.rs"),
        ("system/AuditEvent.rs", "system/AuditEvent.rs"),
    ],
)
def test_v2_and_v1_scopes_parse_to_v2_form(token: str, normalised: str) -> None:
    scope = parse_scope(token)
    assert scope is not None
    assert str(scope) == normalised


@pytest.mark.parametrize(
    "token",
    [
        "system/CarePlan.sr",  # permissions out of order
        "system/CarePlan.",  # no permission
        "system/CarePlan.rx",
        "patient/CarePlan.rs",  # not a system scope
        "user/*.cruds",
        "system/Observation.rs",  # a type this gateway does not serve
        "system/careplan.rs",
        "openid",
        "launch/patient",
        "system/CarePlan.rs?category=x",  # SMART v2 granular scopes are not supported
        "",
    ],
)
def test_unknown_or_malformed_scope_tokens_are_ignored(token: str) -> None:
    assert parse_scope(token) is None
    assert parse_scopes(f"{token} system/Task.r") == [parse_scope("system/Task.r")]


def test_grant_is_requested_intersected_with_allowed() -> None:
    allowed = ["system/CarePlan.cruds", "system/Task.rs"]
    assert grant("system/CarePlan.rs system/Task.cruds", allowed).scopes() == [
        "system/CarePlan.rs",
        "system/Task.rs",
    ]


def test_allowed_wildcard_covers_a_requested_type() -> None:
    assert grant("system/CarePlan.rs", ["system/*.cruds"]).scopes() == ["system/CarePlan.rs"]


def test_requested_wildcard_against_allowed_types_grants_exactly_those() -> None:
    granted = grant("system/*.rs", ["system/CarePlan.rs", "system/Task.r"])
    assert granted.scopes() == ["system/CarePlan.rs", "system/Task.r"]


def test_requested_wildcard_keeps_the_allowed_wildcard_and_adds_only_what_it_lacks() -> None:
    granted = grant("system/*.rs", ["system/*.r", "system/CarePlan.rs", "system/Task.r"])
    assert granted.scopes() == ["system/*.r", "system/CarePlan.rs"]


def test_v1_request_is_answered_in_v2_form() -> None:
    assert str(grant("system/Patient.read system/Task.write", ["system/*.cruds"])) == (
        "system/Patient.rs system/Task.cud"
    )


def test_nothing_in_common_is_an_empty_grant() -> None:
    assert grant("system/Consent.cud", ["system/Consent.rs"]).empty
    assert grant("", ["system/*.cruds"]).empty
    assert grant("openid fhirUser", ["system/*.cruds"]).empty


@pytest.mark.parametrize(
    ("scopes", "resource_type", "interaction", "allowed"),
    [
        ("system/CarePlan.rs", "CarePlan", "read", True),
        ("system/CarePlan.rs", "CarePlan", "vread", True),
        ("system/CarePlan.rs", "CarePlan", "history", True),
        ("system/CarePlan.rs", "CarePlan", "search", True),
        ("system/CarePlan.rs", "CarePlan", "update", False),
        ("system/CarePlan.rs", "Task", "read", False),
        ("system/*.rs", "Task", "search", True),
        ("system/*.rs", "Task", "delete", False),
        ("system/*.r system/Task.u", "Task", "update", True),
        ("system/*.r system/Task.u", "CarePlan", "update", False),
        ("system/ServiceRequest.c", "ServiceRequest", "create", True),
        ("system/Consent.d", "Consent", "delete", True),
        ("system/*.cruds", "Observation", "read", False),
        ("", "Patient", "read", False),
    ],
)
def test_grant_allows_exactly_its_interactions(
    scopes: str, resource_type: str, interaction: str, allowed: bool
) -> None:
    assert ScopeGrant.parse(scopes).allows(resource_type, interaction) is allowed


def test_an_unknown_interaction_is_a_programming_error_not_a_permission() -> None:
    with pytest.raises(ValueError, match="unknown interaction"):
        ScopeGrant.parse("system/*.cruds").allows("Patient", "patch")


def test_grant_parses_from_the_tuple_a_requester_carries() -> None:
    assert ScopeGrant.parse(("system/CarePlan.rs", "system/Task.cruds")).allows("Task", "delete")
