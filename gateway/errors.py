"""The gateway's one exception tree. Every error a client can see is one of these; one handler
(``gateway.outcomes``) turns it into an OperationOutcome with the status named here.

GatewayError
├── BadRequest            400  malformed request, bad parameter, bad JSON
│   └── UnknownParameter  400  search parameter the server does not support
├── Unauthorized          401  no or bad credentials
├── Forbidden             403  the token's scopes do not cover the interaction (never about data)
├── NotFound              404  absent, or not visible to the requester (same answer)
├── MethodNotAllowed      405
├── NotAcceptable         406  asked for a format other than FHIR JSON
├── Conflict              409  concurrent write, id clash
├── Gone                  410  deleted
├── PreconditionFailed    412  If-Match mismatch, ambiguous conditional create
├── PayloadTooLarge       413
├── UnsupportedMediaType  415
├── Unprocessable         422  resource fails FHIR validation
└── ServiceUnavailable    503  database or keys unreachable

Messages must never carry PHI: name the element or the parameter, never its value.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue: ``code`` from the FHIR issue-type value set."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = ()


@dataclass(eq=False)
class GatewayError(Exception):
    diagnostics: str = "error"
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    status = 500
    issue_code = "exception"

    def __post_init__(self) -> None:
        super().__init__(self.diagnostics)
        if not self.issues:
            self.issues = [Issue(code=self.issue_code, diagnostics=self.diagnostics)]


class BadRequest(GatewayError):
    status = 400
    issue_code = "invalid"


class UnknownParameter(BadRequest):
    issue_code = "not-supported"


class Unauthorized(GatewayError):
    status = 401
    issue_code = "login"


class Forbidden(GatewayError):
    status = 403
    issue_code = "forbidden"


class NotFound(GatewayError):
    status = 404
    issue_code = "not-found"


class MethodNotAllowed(GatewayError):
    status = 405
    issue_code = "not-supported"


class NotAcceptable(GatewayError):
    status = 406
    issue_code = "not-supported"


class Conflict(GatewayError):
    status = 409
    issue_code = "conflict"


class Gone(GatewayError):
    status = 410
    issue_code = "deleted"


class PreconditionFailed(GatewayError):
    status = 412
    issue_code = "conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    issue_code = "too-long"


class UnsupportedMediaType(GatewayError):
    status = 415
    issue_code = "not-supported"


class Unprocessable(GatewayError):
    status = 422
    issue_code = "invalid"


class ServiceUnavailable(GatewayError):
    status = 503
    issue_code = "transient"


def not_found(resource_type: str, resource_id: str) -> NotFound:
    """The one body for "absent" and "not visible": callers must not vary it."""
    return NotFound(f"Resource {resource_type}/{resource_id} is not known")
