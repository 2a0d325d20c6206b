"""Request-scoped dependencies, as ``Annotated`` aliases so that routes read like prose.

The requester is an *auth placeholder* until SMART Backend Services tokens land: over HTTP every
request is refused with 401 unless a test (or the in-process demo) overrides
``current_requester``. Secure by default from the first commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, ParamSpec, TypeVar

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from gateway.clock import Clock
from gateway.errors import Unauthorized
from gateway.settings import Settings
from gateway.store.port import ResourceStore

P = ParamSpec("P")
T = TypeVar("T")


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
    # True when a store call waits on the network (PostgreSQL): such calls run in the thread
    # pool so that one slow query does not stall every request of the worker. Embedded SQLite
    # answers in microseconds and runs inline, where a thread hop would cost more than the call.
    offload_store_calls: bool = False
    extras: dict[str, object] = field(default_factory=dict)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self.offload_store_calls:
            return await run_in_threadpool(fn, *args, **kwargs)
        return fn(*args, **kwargs)


# Dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in a thread
# pool, which would cost a thread hop on every request for a dictionary lookup.
async def gateway_context(request: Request) -> GatewayContext:
    ctx: GatewayContext = request.app.state.gateway
    return ctx


async def current_requester() -> Requester:
    raise Unauthorized(
        "authentication required",
        headers={"WWW-Authenticate": 'Bearer realm="fhir", error="invalid_token"'},
    )


async def request_store(
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
