"""The FHIR REST routes at ``/fhir``.

Each endpoint is a few lines: bind the request (authenticate, get the per-request store),
negotiate, hand the work to ``Interactions`` (or the Bundle processor), answer bytes. They are
plain Starlette routes mounted in the FastAPI app: FastAPI's dependency injection costs more per
request than a whole read (measured), and the binding is clearer written out once in ``bind``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Scope

from gateway.access.requester import Requester
from gateway.access.scopes import ScopeGrant
from gateway.audit.chain import AuditPage
from gateway.audit.events import REFUSED, Activity, Actor, audit_events
from gateway.audit.review import (
    REVIEWERS,
    accounting,
    accounting_query,
    parse_audit_query,
    require_reviewer,
    reviewed,
    searchset,
)
from gateway.consent.engine import Decision
from gateway.consent.store import ConsentedStore
from gateway.disclose.bundles import BundleProcessor
from gateway.disclose.capability import capability_statement
from gateway.disclose.deps import GatewayContext, request_store
from gateway.disclose.http import FHIR_JSON, read_body, read_json, response_type, to_response
from gateway.disclose.interactions import (
    Interactions,
    Prefer,
    Result,
    check_id,
    check_type,
    create_criteria,
    parse_if_match,
    parse_query_string,
)
from gateway.errors import (
    BadRequest,
    GatewayError,
    Unauthorized,
    UnsupportedMediaType,
)
from gateway.store.port import StoreSession
from gateway.vocabulary.references import parse_local

Endpoint = Callable[[Request], Awaitable[Response]]
MethodEndpoint = Callable[["FhirEndpoints", Request], Awaitable[Response]]


def explanation(decision: Decision) -> dict[str, Any]:
    """A Decision as FHIR Parameters: the answer and the rule, never the record."""
    parameters: list[dict[str, Any]] = [
        {"name": "permit", "valueBoolean": decision.permit},
        {"name": "rule", "valueString": decision.rule},
        {"name": "breakGlass", "valueBoolean": decision.break_glass},
    ]
    if decision.consent:
        parameters.append({"name": "consent", "valueReference": {"reference": decision.consent}})
    if decision.provision_path:
        parameters.append({"name": "provision", "valueString": decision.provision_path})
    parameters += [{"name": "obligation", "valueString": o.rule} for o in decision.obligations]
    return {"resourceType": "Parameters", "parameter": parameters}


class FhirRoute(Route):
    """A Starlette route that names itself in the scope, so that metrics and logs can use its
    path *template* (never the path, which carries ids), and the audit its FHIR
    restful-interaction code (``interaction``; None: the route discloses nothing)."""

    def __init__(
        self, path: str, endpoint: Endpoint, *, methods: list[str], interaction: str | None
    ) -> None:
        super().__init__(path, endpoint, methods=methods)
        self.interaction = interaction

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        if match is not Match.NONE:
            child["route"] = self
        return match, child


async def bind(request: Request) -> tuple[GatewayContext, ConsentedStore]:
    """Who is asking, and the one store they may use. Every data route starts here."""
    ctx: GatewayContext = request.app.state.gateway
    requester = await ctx.authenticate(request)
    store = request_store(ctx, requester)
    actor = _actor(ctx, requester, request)
    # Writes commit with their audit events (ConsentedStore.transaction); the rest is appended
    # by ``audited`` before the response.
    store.commit_audit = functools.partial(commit_within, ctx, actor)
    request.state.audited = (actor, store.trail)
    request.state.requester = requester
    return ctx, store


def _actor(ctx: GatewayContext, requester: Requester, request: Request) -> Actor:
    return Actor(
        requester.partner_id,
        requester.organization or None,
        requester.purpose_of_use,
        address=request.client.host if request.client else None,
        names=ctx.partner_names,
    )


def commit_within(
    ctx: GatewayContext, actor: Actor, session: StoreSession, activities: list[Activity]
) -> Callable[[], None] | None:
    """A unit of work's AuditEvents, appended inside its transaction (in its thread)."""
    return ctx.audit.append_within(session, _events(ctx, activities, actor))


def audited(endpoint: MethodEndpoint) -> MethodEndpoint:
    """Every data route is wrapped: what it disclosed or refused (its store's ``AuditTrail``)
    becomes AuditEvents that are committed **before** the response leaves. When they cannot be
    written the request fails with 503 and its answer is dropped (fail closed); a refusal is
    written before the refusal is answered. A request refused before authentication (no or a
    bad token) is audited as a token refusal."""

    @functools.wraps(endpoint)
    async def run(self: FhirEndpoints, request: Request) -> Response:
        try:
            response = await endpoint(self, request)
        except Unauthorized:
            await write_audit(request, token_refused=True)
            raise
        except GatewayError:
            await write_audit(request)
            raise
        await write_audit(request)
        return response

    return run


async def write_audit(request: Request, *, token_refused: bool = False) -> None:
    ctx: GatewayContext = request.app.state.gateway
    route = request.scope.get("route")
    interaction = getattr(route, "interaction", None) or "operation"
    address = request.client.host if request.client else None
    bound = getattr(request.state, "audited", None)
    if bound is None:
        if token_refused:  # no valid token: counted, folded into one event a minute
            reason = f"token:{interaction}"  # a handful of interaction codes: a bounded key
            await run_in_threadpool(ctx.audit.note_unauthenticated, address, reason)
        return
    actor, trail = bound
    activities = trail.pending()  # writes' events are committed already, with the writes
    if not activities:
        return
    await append_audit(ctx, activities, actor)


async def append_audit(ctx: GatewayContext, activities: list[Activity], actor: Actor) -> None:
    """The activities' AuditEvents, committed (or ``ServiceUnavailable``)."""
    events = _events(ctx, activities, actor)
    # Always off the event loop: concurrent requests then share one commit (group commit).
    await run_in_threadpool(ctx.audit.append, events)


def _events(ctx: GatewayContext, activities: list[Activity], actor: Actor) -> list[dict[str, Any]]:
    now = ctx.clock.now()
    source = ctx.settings.fhir_base
    seal = ctx.audit_seal.seal
    return [seal(e) for a in activities for e in audit_events(a, actor, now, source=source)]


class FhirEndpoints:
    def __init__(self, interactions: Interactions, bundles: BundleProcessor) -> None:
        self.ix = interactions
        self.bundles = bundles

    async def metadata(self, request: Request) -> Response:
        ctx: GatewayContext = request.app.state.gateway
        body = ctx.extras.get("capability")
        if not isinstance(body, bytes):
            routes = ctx.extras.get("fhir_routes")
            assert isinstance(routes, list)
            body = capability_statement(ctx.settings, ctx.clock.now(), routes)
            ctx.extras["capability"] = body
        return to_response(Result(200, body), response_type(request))

    @audited
    async def read(self, request: Request) -> Response:
        ctx, store = await bind(request)
        media = response_type(request)
        p = request.path_params
        result = await ctx.call(self.ix.read, store, p["resource_type"], p["resource_id"])
        return to_response(result, media)

    @audited
    async def vread(self, request: Request) -> Response:
        ctx, store = await bind(request)
        media = response_type(request)
        p = request.path_params
        result = await ctx.call(
            self.ix.vread, store, p["resource_type"], p["resource_id"], p["version_id"]
        )
        return to_response(result, media)

    @audited
    async def search(self, request: Request) -> Response:
        ctx, store = await bind(request)
        return await self._search(request, ctx, store, list(request.query_params.multi_items()))

    @audited
    async def search_by_post(self, request: Request) -> Response:
        ctx, store = await bind(request)
        check_type(request.path_params["resource_type"])
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded")
        raw = await read_body(request, ctx.settings.max_body_bytes)
        params = list(request.query_params.multi_items())
        try:
            params += parse_query_string(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise BadRequest("the form body is not UTF-8") from exc
        return await self._search(request, ctx, store, params)

    async def _search(
        self,
        request: Request,
        ctx: GatewayContext,
        store: ConsentedStore,
        params: list[tuple[str, str]],
    ) -> Response:
        media = response_type(request)
        result = await ctx.call(
            self.ix.search,
            store,
            request.path_params["resource_type"],
            params,
            prefer=Prefer.parse(request.headers.get("prefer")),
            now=ctx.clock.now(),
        )
        return to_response(result, media)

    @audited
    async def create(self, request: Request) -> Response:
        ctx, store = await bind(request)
        media = response_type(request)
        resource_type = request.path_params["resource_type"]
        check_type(resource_type)
        doc = await read_json(
            request, limit=ctx.settings.max_body_bytes, max_depth=ctx.settings.max_json_depth
        )
        resource = self.ix.check(doc, expected_type=resource_type)
        preference = Prefer.parse(request.headers.get("prefer"))
        if_none_exist = create_criteria(
            list(request.query_params.multi_items()), request.headers.get("if-none-exist")
        )
        if if_none_exist:

            def conditional_create() -> Result:
                with store.transaction() as session:
                    return self.ix.create(
                        session, resource, prefer=preference, if_none_exist=if_none_exist
                    )

            result = await ctx.call(conditional_create)
        else:
            result = await ctx.call(self.ix.create, store, resource, prefer=preference)
        return to_response(result, media)

    @audited
    async def update(self, request: Request) -> Response:
        ctx, store = await bind(request)
        media = response_type(request)
        p = request.path_params
        check_type(p["resource_type"])
        check_id(p["resource_id"])
        if_match = parse_if_match(request.headers.get("if-match"))
        doc = await read_json(
            request, limit=ctx.settings.max_body_bytes, max_depth=ctx.settings.max_json_depth
        )
        resource = self.ix.check(doc, expected_type=p["resource_type"])
        result = await ctx.call(
            self.ix.update,
            store,
            p["resource_type"],
            p["resource_id"],
            resource,
            prefer=Prefer.parse(request.headers.get("prefer")),
            if_match=if_match,
        )
        return to_response(result, media)

    @audited
    async def delete(self, request: Request) -> Response:
        ctx, store = await bind(request)
        p = request.path_params
        result = await ctx.call(self.ix.delete, store, p["resource_type"], p["resource_id"])
        return to_response(result, FHIR_JSON)

    @audited
    async def history(self, request: Request) -> Response:
        ctx, store = await bind(request)
        media = response_type(request)
        p = request.path_params
        params = list(request.query_params.multi_items())
        result = await ctx.call(
            self.ix.history, store, p["resource_type"], p["resource_id"], params, ctx.clock.now()
        )
        return to_response(result, media)

    @audited
    async def explain(self, request: Request) -> Response:
        """``GET /fhir/Consent/$explain?partner=…&resource=Type/id[&purpose=…][&patient=…]``:
        the consent decision for another partner and the rule behind it (compliance, admin)."""
        ctx, store = await bind(request)
        media = response_type(request)
        params = request.query_params
        partner = params.get("partner")
        target = params.get("resource", "")
        ref = parse_local(target)
        if not partner or ref is None or ref.version is not None:
            raise BadRequest("$explain needs partner and resource (Type/id)")
        resource_type, resource_id = ref.resource_type, ref.id
        check_type(resource_type)
        purposes = tuple(p for p in params.get("purpose", "TREAT").split(",") if p)
        decision = await ctx.call(store.explain, partner, resource_type, resource_id, purposes)
        return to_response(Result(200, orjson.dumps(explanation(decision))), media)

    @audited
    async def audit_search(self, request: Request) -> Response:
        """``GET /fhir/AuditEvent``: the audit log, for the compliance office (gateway/audit)."""
        ctx, store = await bind(request)
        _review_allowed(request, store)
        media = response_type(request)
        params = list(request.query_params.multi_items())
        query = parse_audit_query(
            params,
            default_count=ctx.settings.default_page_size,
            max_count=ctx.settings.max_page_size,
        )
        page = await run_in_threadpool(ctx.audit.search, query)
        # The reviewer is compliance (checked above): what partners typed is opened for it.
        page.events[:] = [(seq, ctx.audit_seal.open(event)) for seq, event in page.events]
        store.trail.add(
            Activity("search-type", "AuditEvent", disclosed=reviewed(page), query=urlencode(params))
        )
        bundle = searchset(page, base=ctx.settings.fhir_base, echo=params, now=ctx.clock.now())
        return to_response(Result(200, orjson.dumps(bundle)), media)

    @audited
    async def accounting_of_disclosures(self, request: Request) -> Response:
        """``GET /fhir/Patient/{id}/$accounting-of-disclosures[?_since&_until]``: who received
        this survivor's data, when, what and why (45 CFR 164.528), for the compliance office
        to give her."""
        ctx, store = await bind(request)
        _review_allowed(request, store)
        media = response_type(request)
        patient_id = request.path_params["resource_id"]
        check_id(patient_id)
        query = accounting_query(patient_id, list(request.query_params.multi_items()))
        page = await run_in_threadpool(ctx.audit.search, query)
        store.trail.add(
            Activity(
                "operation",
                "Patient",
                target=f"Patient/{patient_id}",
                target_patient=patient_id,
                subtypes=("accounting-of-disclosures",),
            )
        )
        recipients = await ctx.call(_directory_entries, store, page)
        bundle = accounting(
            page,
            patient_id=patient_id,
            base=ctx.settings.fhir_base,
            now=ctx.clock.now(),
            recipients=recipients,
        )
        return to_response(Result(200, orjson.dumps(bundle)), media)

    @audited
    async def batch_or_transaction(self, request: Request) -> Response:
        ctx, store = await bind(request)
        media = response_type(request)
        doc = await read_json(
            request, limit=ctx.settings.max_body_bytes, max_depth=ctx.settings.max_json_depth
        )
        body = await ctx.call(self.bundles.process, store, doc, ctx.clock.now())
        return to_response(Result(200, body), media)


def _review_allowed(request: Request, store: ConsentedStore) -> None:
    requester: Requester = request.state.requester
    allowed = ScopeGrant.parse(requester.scopes).allows("AuditEvent", "search")
    if requester.kind not in REVIEWERS or not allowed:
        store.trail.add(
            Activity("search-type", "AuditEvent", outcome=REFUSED, refusal="not-a-reviewer")
        )
    require_reviewer(requester.kind, allowed)


def _directory_entries(store: ConsentedStore, page: AuditPage) -> dict[str, dict[str, Any]]:
    """The recipients' directory Organizations (name, address), as the reviewer may read them."""
    out: dict[str, dict[str, Any]] = {}
    for _, event in page.events:
        for agent in event.get("agent") or ():
            ref = (agent.get("who") or {}).get("reference", "")
            if agent.get("requestor") and ref.startswith("Organization/") and ref not in out:
                # Looked up as the reviewer may see it; a directory lookup, not a read she asked
                # for, so not an audited interaction of its own.
                found = store.locate("Organization", ref.split("/", 1)[1])
                if found is not None and not found.deleted:
                    out[ref] = orjson.loads(found.live.body)
    return out


def fhir_routes(interactions: Interactions, bundles: BundleProcessor) -> list[BaseRoute]:
    """The routes, most frequent first (Starlette matches in order)."""
    e = FhirEndpoints(interactions, bundles)
    instance = "/fhir/{resource_type}/{resource_id}"
    return [
        FhirRoute("/fhir/Consent/$explain", e.explain, methods=["GET"], interaction="operation"),
        FhirRoute("/fhir/AuditEvent", e.audit_search, methods=["GET"], interaction="search-type"),
        FhirRoute(
            "/fhir/Patient/{resource_id}/$accounting-of-disclosures",
            e.accounting_of_disclosures,
            methods=["GET"],
            interaction="operation",
        ),
        FhirRoute(instance, e.read, methods=["GET"], interaction="read"),
        FhirRoute("/fhir/metadata", e.metadata, methods=["GET"], interaction=None),
        FhirRoute("/fhir/{resource_type}", e.search, methods=["GET"], interaction="search-type"),
        FhirRoute("/fhir/{resource_type}", e.create, methods=["POST"], interaction="create"),
        FhirRoute(instance, e.update, methods=["PUT"], interaction="update"),
        FhirRoute(instance, e.delete, methods=["DELETE"], interaction="delete"),
        FhirRoute(
            f"{instance}/_history", e.history, methods=["GET"], interaction="history-instance"
        ),
        FhirRoute(
            f"{instance}/_history/{{version_id}}", e.vread, methods=["GET"], interaction="vread"
        ),
        FhirRoute(
            "/fhir/{resource_type}/_search",
            e.search_by_post,
            methods=["POST"],
            interaction="search-type",
        ),
        FhirRoute("/fhir", e.batch_or_transaction, methods=["POST"], interaction="batch"),
        # bases often end in "/"
        FhirRoute("/fhir/", e.batch_or_transaction, methods=["POST"], interaction="batch"),
    ]
