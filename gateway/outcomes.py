"""OperationOutcome: the one error model. Built from the exception tree in ``gateway.errors``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from gateway.errors import GatewayError, Issue


def outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for issue in issues:
        item: dict[str, Any] = {
            "severity": issue.severity,
            "code": issue.code,
            "diagnostics": issue.diagnostics,
        }
        if issue.expression:
            item["expression"] = list(issue.expression)
        out.append(item)
    return {"resourceType": "OperationOutcome", "issue": out}


def outcome_bytes(issues: Iterable[Issue]) -> bytes:
    return orjson.dumps(outcome(issues))


def error_outcome(error: GatewayError) -> bytes:
    return outcome_bytes(error.issues)


def information(message: str) -> dict[str, Any]:
    return outcome([Issue(code="informational", diagnostics=message, severity="information")])
