"""Validation on write: strict JSON parsing with size and depth limits, then the fhir.resources
R4B model of the resource type (wire-compatible with R4 for the types the gateway serves).

The validated *input* is what gets stored, not the model's re-serialisation, so that nothing a
partner sent is silently reshaped; the model is only the judge.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from gateway.errors import BadRequest, Issue, Unprocessable

MAX_ISSUES = 20


def parse_json(body: bytes, *, max_depth: int) -> Any:
    """Parse a request body; malformed or over-deep JSON is a 400, never a 500."""
    if not body.strip():
        raise BadRequest("the request body is empty")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("the request body is not valid JSON") from exc
    if _depth_exceeds(value, max_depth):
        raise BadRequest(f"the request body nests deeper than {max_depth} levels")
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return False


@cache
def _model(resource_type: str) -> Any:
    return get_fhir_model_class(resource_type)


def validate_resource(
    value: Any, *, allowed_types: frozenset[str] | tuple[str, ...], expected_type: str | None = None
) -> dict[str, Any]:
    """Return the resource (a dict) when it is a valid instance of a supported type."""
    if not isinstance(value, dict):
        raise BadRequest("the request body must be a JSON object (a FHIR resource)")
    resource_type = value.get("resourceType")
    if not isinstance(resource_type, str):
        raise Unprocessable(
            "resourceType is missing",
            issues=[Issue("required", "resourceType is missing", expression=("resourceType",))],
        )
    if expected_type is not None and resource_type != expected_type:
        raise BadRequest(
            f"resourceType {resource_type!r} does not match the URL ({expected_type})",
            issues=[
                Issue(
                    "invalid",
                    f"resourceType does not match the URL ({expected_type})",
                    expression=("resourceType",),
                )
            ],
        )
    if resource_type not in allowed_types:
        raise Unprocessable(
            f"resource type {resource_type!r} is not supported here",
            issues=[
                Issue("not-supported", "resource type not supported", expression=("resourceType",))
            ],
        )
    try:
        _model(resource_type).model_validate(value)
    except ValidationError as exc:
        raise Unprocessable(
            f"{resource_type} is not valid FHIR R4", issues=_issues(resource_type, exc)
        ) from exc
    except (ValueError, TypeError) as exc:  # fhir_core raises these for some shape errors
        raise Unprocessable(
            f"{resource_type} is not valid FHIR R4",
            issues=[Issue("structure", f"{resource_type} is not valid FHIR R4")],
        ) from exc
    return value


def _issues(resource_type: str, exc: ValidationError) -> list[Issue]:
    """Name the offending element (FHIRPath-like), never echo the offending value (PHI)."""
    issues = []
    for error in exc.errors(include_input=False, include_url=False)[:MAX_ISSUES]:
        path = resource_type
        for part in error["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif part not in ("__root__",):
                path += f".{part}"
        code = "structure" if error["type"] == "extra_forbidden" else "value"
        message = "unknown element" if error["type"] == "extra_forbidden" else error["msg"]
        issues.append(Issue(code, f"{path}: {message}", expression=(path,)))
    return issues or [Issue("invalid", f"{resource_type} is not valid FHIR R4")]
