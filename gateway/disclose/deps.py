"""What a request is bound to: the gateway context, the requester, and the one store it may use.

Who is asking is decided by the context's ``authenticate`` callable (see ``rest.bind``). Until
SMART Backend Services tokens land it is an *auth placeholder* that refuses every request with
401; tests and the in-process demo build the app with an authenticator of their own
(``fixed_requester``). Secure by default from the first commit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, ParamSpec, TypeVar

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from gateway.access.requester import Requester
from gateway.audit.sealing import EventSeal
from gateway.audit.trail import AuditLog, MemoryAuditLog
from gateway.clock import Clock
from gateway.consent.store import ConsentedStore, StoreAccess
from gateway.errors import Unauthorized
from gateway.settings import Settings

P = ParamSpec("P")
T = TypeVar("T")


Authenticator = Callable[[Request], Awaitable[Requester]]


async def refuse_everyone(_request: Request) -> Requester:
    """The auth placeholder: no request is authenticated until partner tokens exist."""
    raise Unauthorized(
        "authentication required",
        headers={"WWW-Authenticate": 'Bearer realm="fhir", error="invalid_token"'},
    )


def fixed_requester(requester: Requester) -> Authenticator:
    """An authenticator that answers one requester: for tests and the in-process demo only."""

    async def authenticate(_request: Request) -> Requester:
        return requester

    return authenticate


@dataclass
class GatewayContext:
    """Everything a request needs, built once by the app factory (no module-level state)."""

    settings: Settings
    # What a request's store is made from: ``stores.for_requester`` (never the raw store).
    stores: StoreAccess
    clock: Clock
    # True when a store call waits on the network (PostgreSQL): such calls run in the thread
    # pool so that one slow query does not stall every request of the worker. Embedded SQLite
    # answers in microseconds and runs inline, where a thread hop would cost more than the call.
    offload_store_calls: bool = False
    authenticate: Authenticator = refuse_everyone
    # Where audit events go (gateway/audit); one that always fails until the factory sets it.
    audit: AuditLog = field(default_factory=lambda: MemoryAuditLog(failing=True))
    partner_names: dict[str, str] = field(default_factory=dict)  # for audit events
    # Seals what a partner typed (a search's query) inside its AuditEvents (gateway/audit/sealing).
    audit_seal: EventSeal = field(default_factory=EventSeal.ephemeral)
    extras: dict[str, object] = field(default_factory=dict)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self.offload_store_calls:
            return await run_in_threadpool(fn, *args, **kwargs)
        return fn(*args, **kwargs)


def request_store(ctx: GatewayContext, requester: Requester) -> ConsentedStore:
    """The one store a route may use: the raw store bound to the requester by consent."""
    return ctx.stores.for_requester(requester)


# FastAPI dependencies, for the operational routes. ``async def`` on purpose: FastAPI runs a plain
# ``def`` dependency in a thread pool, a thread hop per request for a dictionary lookup.
async def gateway_context(request: Request) -> GatewayContext:
    ctx: GatewayContext = request.app.state.gateway
    return ctx


Context = Annotated[GatewayContext, Depends(gateway_context)]
