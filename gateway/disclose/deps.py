"""Request-scoped dependencies, as ``Annotated`` aliases so that routes read like prose.

The requester is an *auth placeholder* until SMART Backend Services tokens land: over HTTP every
request is refused with 401 unless a test (or the in-process demo) overrides
``current_requester``. Secure by default from the first commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from gateway.clock import Clock
from gateway.errors import Unauthorized
from gateway.settings import Settings
from gateway.store.port import ResourceStore


@dataclass(frozen=True, slots=True)
class Requester:
    """Who is asking: a partner (its client id and kind), what it was granted, and why."""

    partner_id: str
    kind: str
    scopes: tuple[str, ...] = ()
    purpose_of_use: str | None = None


@dataclass
class GatewayContext:
    """Everything a request needs, built once by the app factory (no module-level state)."""

    settings: Settings
    store: ResourceStore
    clock: Clock
    extras: dict[str, object] = field(default_factory=dict)


def gateway_context(request: Request) -> GatewayContext:
    ctx: GatewayContext = request.app.state.gateway
    return ctx


async def current_requester() -> Requester:
    raise Unauthorized(
        "authentication required",
        headers={"WWW-Authenticate": 'Bearer realm="fhir", error="invalid_token"'},
    )


def request_store(
    ctx: Annotated[GatewayContext, Depends(gateway_context)],
    requester: Annotated[Requester, Depends(current_requester)],
) -> ResourceStore:
    """The one store a route may use, bound to the requester. The consent issue replaces the
    body with ``ConsentedStore(ctx.store, requester)``; routes do not change."""
    del requester
    return ctx.store


Context = Annotated[GatewayContext, Depends(gateway_context)]
CurrentRequester = Annotated[Requester, Depends(current_requester)]
RequestStore = Annotated[ResourceStore, Depends(request_store)]
