"""The ASGI app factory. Everything the app needs is built here from ``Settings`` (or handed in
by a test); nothing lives at module level."""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import Engine, insert
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.access.requester import Requester
from gateway.audit.chain import AuditChain, CheckpointSigner
from gateway.audit.events import Actor
from gateway.audit.sealing import EventSeal
from gateway.audit.trail import AuditLog, MemoryAuditLog
from gateway.clock import Clock, SystemClock
from gateway.consent.labels import load_label_tables
from gateway.consent.policy import load_policy
from gateway.consent.store import ConsentedStore, ConsentRules, StoreAccess
from gateway.disclose.auth import (
    MemoryReplayGuard,
    ReplayGuard,
    SqlReplayGuard,
    TokenService,
    auth_routes,
)
from gateway.disclose.bundles import BundleProcessor
from gateway.disclose.deps import Authenticator, Context, GatewayContext, refuse_everyone
from gateway.disclose.interactions import Interactions
from gateway.disclose.rest import commit_within, fhir_routes
from gateway.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    Issue,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from gateway.ingest.ledger import Ledger
from gateway.ingest.pipeline import DEFAULT_BATCH, IngestPipeline
from gateway.ingest.quarantine import Quarantine
from gateway.keys import FileKeyRing, KeyMaterialError
from gateway.mapping import MappingContext, MappingSet, load_mappings, organization_lookup_key
from gateway.observability import Metrics, ObservabilityMiddleware, Readiness, configure_logging
from gateway.outcomes import error_outcome
from gateway.partners import Partner, PartnerDirectory, ensure_organizations, partners_for
from gateway.settings import Settings
from gateway.store.database import DatabaseTimeouts, ensure_schema, make_engine
from gateway.store.paging import CursorSeal
from gateway.store.port import ResourceStore
from gateway.store.schema import audit_log
from gateway.store.sql import SqlStore

FHIR_JSON = "application/fhir+json; charset=utf-8"


def build_store(settings: Settings, clock: Clock, metrics: Metrics) -> SqlStore:
    engine = make_engine(settings.database_url, timeouts=DatabaseTimeouts.from_settings(settings))
    ensure_schema(engine)
    return SqlStore(engine, FileKeyRing(settings.keys_dir), clock, on_timing=metrics.observe_store)


def create_app(
    settings: Settings,
    *,
    store: ResourceStore | None = None,
    clock: Clock | None = None,
    authenticate: Authenticator | None = None,
    partners: PartnerDirectory | None = None,
    tokens: TokenService | None = None,
    partner_kinds: Mapping[str, str] | None = None,
    audit: AuditLog | None = None,
) -> FastAPI:
    """``authenticate`` given (tests, the in-process demo): it decides who asks. Otherwise, with
    a partner directory (or a ready ``tokens`` service), SMART Backend Services bearer tokens do;
    with neither, every ``/fhir`` request is refused (deny by default).

    ``audit``: where audit events go; by default the hash chain in the store's own database
    (signed with ``KEYS_DIR``'s audit key). A store that is not SQL needs one given (tests give
    ``MemoryAuditLog``); without one every data request fails with 503 (fail closed)."""
    clock = clock or SystemClock()
    metrics = Metrics()
    logger = configure_logging(settings.log_level)
    the_store: ResourceStore = store if store is not None else build_store(settings, clock, metrics)
    if tokens is None and partners is not None:
        replay: ReplayGuard = (
            SqlReplayGuard(the_store.engine)
            if isinstance(the_store, SqlStore)
            else MemoryReplayGuard()
        )
        tokens = TokenService.from_settings(settings, partners, clock, replay)
    if authenticate is None:
        authenticate = tokens.authenticate if tokens is not None else refuse_everyone
    if audit is None:
        audit = (
            AuditChain(
                the_store.engine,
                CheckpointSigner.from_keys_dir(settings.keys_dir),
                clock,
                checkpoint_every=settings.audit_checkpoint_every,
                checkpoint_file=settings.checkpoint_file,
                site=settings.fhir_base,
            )
            if isinstance(the_store, SqlStore)
            else MemoryAuditLog(failing=True)
        )
    rules = ConsentRules(
        policy=load_policy(settings.policies_dir),
        clock=clock,
        partner_kinds=dict(partner_kinds or {})
        | ({p.id: p.kind for p in tokens.directory} if tokens is not None else {}),
        labels=load_label_tables(settings.policies_dir),
        partner_organizations=(
            {p.id: p.organization for p in tokens.directory} if tokens is not None else {}
        ),
        paging=(
            CursorSeal.from_ring(the_store.key_ring())
            if isinstance(the_store, SqlStore)
            else CursorSeal.ephemeral()
        ),
    )
    ctx = GatewayContext(
        settings=settings,
        stores=StoreAccess(the_store, rules),
        clock=clock,
        offload_store_calls=bool(getattr(the_store, "waits_on_network", False)),
        authenticate=authenticate,
        audit=audit,
        partner_names={p.id: p.name for p in tokens.directory} if tokens is not None else {},
        audit_seal=(
            EventSeal(the_store.key_ring)
            if isinstance(the_store, SqlStore)
            else EventSeal.ephemeral()
        ),
    )
    ctx.extras["metrics"] = metrics
    ctx.extras["tokens"] = tokens
    readiness = Readiness(
        _readiness_probe(settings, the_store, audit),
        settings.ready_timeout_seconds,
        metrics,
        logger,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if tokens is not None:
            await ctx.call(ensure_organizations, the_store, tokens.directory)
        yield
        ctx.audit.close()
        the_store.close()

    app = FastAPI(
        title="Care-coordination FHIR gateway",
        openapi_url=None,  # the CapabilityStatement is the API description
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.gateway = ctx
    interactions = Interactions(
        settings.fhir_base,
        default_count=settings.default_page_size,
        max_count=settings.max_page_size,
    )
    routes = fhir_routes(
        interactions, BundleProcessor(interactions, max_depth=settings.max_json_depth)
    )
    # Auth first: its discovery document lives under /fhir, where SMART clients look.
    app.router.routes.extend(auth_routes(tokens, settings))
    app.router.routes.extend(routes)
    ctx.extras["fhir_routes"] = routes
    _operations_routes(app, settings, readiness)
    _error_handlers(app, logger)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, logger=logger)
    return app


def _readiness_probe(
    settings: Settings, store: ResourceStore, audit: AuditLog
) -> Callable[[], None]:
    """What /readyz checks, in a thread: the database answers, the audit log accepts a write
    (a data request that cannot be audited is refused, so a gateway whose audit log cannot be
    appended to is not ready), and the encryption keys are readable."""

    def probe() -> None:
        store.ping()
        if isinstance(audit, AuditChain) and isinstance(store, SqlStore):
            audit_accepts_writes(store.engine)
        elif getattr(audit, "failing", False):  # the in-memory twin, told to fail
            raise ServiceUnavailable("the audit log cannot be written")
        if isinstance(store, SqlStore):
            try:
                ring = FileKeyRing(settings.keys_dir).current()
                key_id, blob = ring.encrypt(b"ready", b"readyz")
                ring.decrypt(key_id, blob, b"readyz")
            except KeyMaterialError as exc:
                raise ServiceUnavailable("encryption keys are not readable") from exc

    return probe


def audit_accepts_writes(engine: Engine) -> None:
    """The audit table takes a row: one INSERT, rolled back, so no event enters the chain and
    no seq is used (seq 0 is never a chain's). It fails as an append would: the database is
    read-only, full, locked past the lock timeout, or the role lacks INSERT."""
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(gateway_write=True)  # SQLite: the writer's lock
            transaction = conn.begin()
            try:
                conn.execute(
                    insert(audit_log).values(seq=0, recorded="", event="", prev_hash="", hash="")
                )
            finally:
                transaction.rollback()
    except SQLAlchemyError as exc:
        raise ServiceUnavailable("the audit log cannot be written") from exc


def _operations_routes(app: FastAPI, settings: Settings, readiness: Readiness) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        # Liveness only: never the database (a frozen database must not get workers killed).
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        reason = await readiness.check()
        if reason is not None:
            raise ServiceUnavailable(reason)
        return Response(b'{"status":"ready"}', media_type="application/json")

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request, ctx: Context) -> Response:
        _may_scrape(request, settings)
        registry = ctx.extras["metrics"]
        assert isinstance(registry, Metrics)
        return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)


def _may_scrape(request: Request, settings: Settings) -> None:
    """Metrics are open in the demo; otherwise only with ``GATEWAY_METRICS_TOKEN`` as a bearer
    token (``serve --metrics-port`` serves them on a listener of their own instead)."""
    if settings.demo:
        return
    if settings.metrics_token is None:
        raise Forbidden(
            "metrics are served only with GATEWAY_METRICS_TOKEN or on serve --metrics-port"
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = settings.metrics_token.get_secret_value().encode()
    if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected)):
        raise Unauthorized(
            "a metrics bearer token is required",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )


def _error_handlers(app: FastAPI, logger: logging.Logger) -> None:
    def outcome_response(error: GatewayError) -> Response:
        return Response(
            error_outcome(error),
            status_code=error.status,
            headers=error.headers,
            media_type=FHIR_JSON,
        )

    @app.exception_handler(GatewayError)
    async def gateway_error(_request: Request, exc: GatewayError) -> Response:
        return outcome_response(exc)

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def database_unavailable(_request: Request, exc: Exception) -> Response:
        # Past the database bounds (docs/operations.md): no connection in time, a statement
        # or lock timeout. The driver's message is not echoed (it may quote the statement).
        logger.warning("database unavailable", extra={"fields": {"error": type(exc).__name__}})
        return outcome_response(ServiceUnavailable("the database is unavailable; retry later"))

    @app.exception_handler(RequestValidationError)
    async def request_invalid(_request: Request, exc: RequestValidationError) -> Response:
        issues = [
            Issue(
                "invalid",
                f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}",
            )
            for err in exc.errors()[:10]
        ]
        return outcome_response(BadRequest("the request is malformed", issues=issues))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return outcome_response(NotFound("no such endpoint"))
        if exc.status_code == 405:
            return outcome_response(MethodNotAllowed("method not allowed on this endpoint"))
        error = GatewayError("request failed")
        error.status = exc.status_code
        return outcome_response(error)


def app_from_environment() -> FastAPI:
    """Factory for granian workers: settings from the environment, keys checked, partners from
    the partners file (a bad file stops start-up)."""
    settings = Settings()
    return create_app(settings, partners=partners_for(settings))


def raw_store(app: FastAPI) -> ResourceStore:
    """The raw store behind an app, for its composition root's own work (the demo's start-up,
    tests of faults): never handed to a route."""
    ctx: GatewayContext = app.state.gateway
    store: ResourceStore = ctx.stores._raw
    return store


def partner_store(app: FastAPI, partner: Partner, *, scopes: Sequence[str]) -> ConsentedStore:
    """A partner's own store for work done outside a request (ingest, the MLLP listener):
    bound to the partner as a token of ``scopes`` would bind it, with its default purpose, and
    audited as its writes (each unit of work commits with its AuditEvents, as a REST write's
    does, so a record that lands without its audit event cannot happen)."""
    ctx: GatewayContext = app.state.gateway
    requester = Requester(
        partner.id, partner.kind, partner.organization, tuple(scopes), (partner.default_purpose,)
    )
    store = ctx.stores.for_requester(requester)
    actor = Actor(
        partner.id,
        partner.organization,
        requester.purpose_of_use,
        address=None,
        names=ctx.partner_names,
    )
    store.commit_audit = functools.partial(commit_within, ctx, actor)
    return store


def ingest_pipeline(
    app: FastAPI,
    settings: Settings,
    partner: Partner,
    directory: PartnerDirectory,
    *,
    mappings: MappingSet | None = None,
    batch_size: int = DEFAULT_BATCH,
    source_label: str = "",
) -> IngestPipeline:
    """The ingest pipeline for ``partner``'s records, on the app's store (SQL only: the ledger
    and the quarantine are tables of the store's database, encrypted under its keys)."""
    store = raw_store(app)
    if not isinstance(store, SqlStore):
        raise TypeError("ingest needs the SQL store")
    mappings = mappings if mappings is not None else load_mappings(settings.mappings_dir)
    ctx: GatewayContext = app.state.gateway
    return IngestPipeline(
        # What the mappings make, and the batch's Provenance: the partner's own records only
        # (ConsentedSession refuses to change another's), so the wildcard widens nothing.
        writers=functools.partial(partner_store, app, partner, scopes=("system/*.cru",)),
        mappings=mappings,
        ledger=Ledger(store.engine, store.key_ring),
        quarantine=Quarantine(store.engine, store.key_ring, clock=ctx.clock),
        context=mapping_context(partner, directory),
        batch_size=batch_size,
        clock=ctx.clock,
        source_label=source_label,
    )


def mapping_context(partner: Partner, directory: PartnerDirectory) -> MappingContext:
    """The mapping's view of a partner: its id and kind, and the network's organizations by
    HL7 facility, name and id (a referral's or a release's recipient, as the source names
    it, becomes that partner's Organization; a name the network does not know, nothing)."""
    organizations: dict[str, str] = {}
    for other in directory:
        organizations[organization_lookup_key("id", other.id)] = other.organization
        organizations[organization_lookup_key("name", other.name)] = other.organization
        if other.hl7_sending_facility:
            facility = organization_lookup_key("facility", other.hl7_sending_facility)
            organizations[facility] = other.organization
    return MappingContext(
        partner_id=partner.id, partner_kind=partner.kind, organizations=organizations
    )
