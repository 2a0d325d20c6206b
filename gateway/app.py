"""The ASGI app factory. Everything the app needs is built here from ``Settings`` (or handed in
by a test); nothing lives at module level."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from gateway.audit.chain import AuditChain, CheckpointSigner
from gateway.audit.trail import AuditLog, MemoryAuditLog
from gateway.clock import Clock, SystemClock
from gateway.consent.labels import load_label_tables
from gateway.consent.policy import load_policy
from gateway.consent.store import ConsentRules
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
from gateway.disclose.rest import fhir_routes
from gateway.errors import (
    BadRequest,
    GatewayError,
    Issue,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from gateway.keys import FileKeyRing, KeyMaterialError
from gateway.observability import Metrics, ObservabilityMiddleware, configure_logging
from gateway.outcomes import error_outcome
from gateway.partners import PartnerDirectory, ensure_organizations, partners_for
from gateway.settings import Settings
from gateway.store.database import ensure_schema, make_engine
from gateway.store.paging import CursorSeal
from gateway.store.port import ResourceStore
from gateway.store.sql import SqlStore

FHIR_JSON = "application/fhir+json; charset=utf-8"


def build_store(settings: Settings, clock: Clock, metrics: Metrics) -> SqlStore:
    engine = make_engine(settings.database_url)
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
                checkpoint_file=settings.audit_checkpoint_file,
            )
            if isinstance(the_store, SqlStore)
            else MemoryAuditLog(failing=True)
        )
    ctx = GatewayContext(
        settings=settings,
        store=the_store,
        clock=clock,
        offload_store_calls=bool(getattr(the_store, "waits_on_network", False)),
        authenticate=authenticate,
        consent=ConsentRules(
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
        ),
        audit=audit,
        partner_names={p.id: p.name for p in tokens.directory} if tokens is not None else {},
    )
    ctx.extras["metrics"] = metrics
    ctx.extras["tokens"] = tokens

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
    _operations_routes(app, settings)
    _error_handlers(app, logger)
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, logger=logger)
    return app


def _operations_routes(app: FastAPI, settings: Settings) -> None:
    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/readyz", include_in_schema=False)
    async def readyz(ctx: Context) -> Response:
        ctx.store.ping()
        if isinstance(ctx.store, SqlStore):
            try:
                ring = FileKeyRing(settings.keys_dir).current()
                key_id, blob = ring.encrypt(b"ready", b"readyz")
                ring.decrypt(key_id, blob, b"readyz")
            except KeyMaterialError as exc:
                raise ServiceUnavailable("encryption keys are not readable") from exc
        return Response(b'{"status":"ready"}', media_type="application/json")

    @app.get("/metrics", include_in_schema=False)
    async def metrics(ctx: Context) -> Response:
        registry = ctx.extras["metrics"]
        assert isinstance(registry, Metrics)
        return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)


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
