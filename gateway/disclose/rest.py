"""The FHIR REST routes at ``/fhir``. Each route is a few lines: negotiate, hand the request to
``Interactions`` (or the Bundle processor) with the per-request store, answer bytes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from starlette.responses import Response

from gateway.disclose.bundles import BundleProcessor
from gateway.disclose.capability import capability_statement
from gateway.disclose.deps import Context, RequestStore
from gateway.disclose.http import (
    FHIR_JSON,
    read_body,
    read_json,
    response_type,
    to_response,
)
from gateway.disclose.interactions import (
    Interactions,
    Prefer,
    Result,
    check_id,
    check_type,
    parse_if_match,
    parse_query_string,
)
from gateway.errors import BadRequest, UnsupportedMediaType
from gateway.ingest.validate import validate_resource
from gateway.store.searchparams import RESOURCE_TYPES

Preference = Annotated[str | None, Header(alias="Prefer")]


def fhir_router(interactions: Interactions, bundles: BundleProcessor) -> APIRouter:
    router = APIRouter(prefix="/fhir")
    ix = interactions

    @router.get("/metadata")
    async def metadata(request: Request, ctx: Context) -> Response:
        body = ctx.extras.get("capability")
        if not isinstance(body, bytes):
            routes = ctx.extras.get("fhir_routes")
            assert isinstance(routes, list)
            body = capability_statement(ctx.settings, ctx.clock.now(), routes)
            ctx.extras["capability"] = body
        return to_response(Result(200, body), response_type(request))

    @router.post("")
    @router.post("/", include_in_schema=False)  # FHIR bases are often written with a slash
    async def batch_or_transaction(request: Request, ctx: Context, store: RequestStore) -> Response:
        media = response_type(request)
        doc = await read_json(
            request, limit=ctx.settings.max_body_bytes, max_depth=ctx.settings.max_json_depth
        )
        body = await ctx.call(bundles.process, store, doc, ctx.clock.now())
        return to_response(Result(200, body), media)

    @router.get("/{resource_type}")
    async def search(
        resource_type: str,
        request: Request,
        ctx: Context,
        store: RequestStore,
        prefer: Preference = None,
    ) -> Response:
        media = response_type(request)
        params = list(request.query_params.multi_items())
        result = await ctx.call(
            ix.search,
            store,
            resource_type,
            params,
            prefer=Prefer.parse(prefer),
            now=ctx.clock.now(),
        )
        return to_response(result, media)

    @router.post("/{resource_type}/_search")
    async def search_by_post(
        resource_type: str,
        request: Request,
        ctx: Context,
        store: RequestStore,
        prefer: Preference = None,
    ) -> Response:
        media = response_type(request)
        check_type(resource_type)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded")
        raw = await read_body(request, ctx.settings.max_body_bytes)
        params = list(request.query_params.multi_items())
        try:
            params += parse_query_string(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise BadRequest("the form body is not UTF-8") from exc
        result = await ctx.call(
            ix.search,
            store,
            resource_type,
            params,
            prefer=Prefer.parse(prefer),
            now=ctx.clock.now(),
        )
        return to_response(result, media)

    @router.post("/{resource_type}")
    async def create(
        resource_type: str,
        request: Request,
        ctx: Context,
        store: RequestStore,
        prefer: Preference = None,
        if_none_exist: Annotated[str | None, Header(alias="If-None-Exist")] = None,
    ) -> Response:
        media = response_type(request)
        check_type(resource_type)
        doc = await read_json(
            request, limit=ctx.settings.max_body_bytes, max_depth=ctx.settings.max_json_depth
        )
        resource = validate_resource(doc, allowed_types=RESOURCE_TYPES, expected_type=resource_type)
        preference = Prefer.parse(prefer)
        if if_none_exist:

            def conditional_create() -> Result:
                with store.transaction() as session:
                    return ix.create(
                        session, resource, prefer=preference, if_none_exist=if_none_exist
                    )

            result = await ctx.call(conditional_create)
        else:
            result = await ctx.call(ix.create, store, resource, prefer=preference)
        return to_response(result, media)

    @router.get("/{resource_type}/{resource_id}")
    async def read(
        resource_type: str, resource_id: str, request: Request, ctx: Context, store: RequestStore
    ) -> Response:
        media = response_type(request)
        return to_response(await ctx.call(ix.read, store, resource_type, resource_id), media)

    @router.put("/{resource_type}/{resource_id}")
    async def update(
        resource_type: str,
        resource_id: str,
        request: Request,
        ctx: Context,
        store: RequestStore,
        prefer: Preference = None,
        if_match: Annotated[str | None, Header(alias="If-Match")] = None,
    ) -> Response:
        media = response_type(request)
        check_type(resource_type)
        check_id(resource_id)
        doc = await read_json(
            request, limit=ctx.settings.max_body_bytes, max_depth=ctx.settings.max_json_depth
        )
        resource = validate_resource(doc, allowed_types=RESOURCE_TYPES, expected_type=resource_type)
        result = await ctx.call(
            ix.update,
            store,
            resource_type,
            resource_id,
            resource,
            prefer=Prefer.parse(prefer),
            if_match=parse_if_match(if_match),
        )
        return to_response(result, media)

    @router.delete("/{resource_type}/{resource_id}")
    async def delete(
        resource_type: str, resource_id: str, ctx: Context, store: RequestStore
    ) -> Response:
        return to_response(await ctx.call(ix.delete, store, resource_type, resource_id), FHIR_JSON)

    @router.get("/{resource_type}/{resource_id}/_history")
    async def history(
        resource_type: str, resource_id: str, request: Request, ctx: Context, store: RequestStore
    ) -> Response:
        media = response_type(request)
        params = list(request.query_params.multi_items())
        result = await ctx.call(
            ix.history, store, resource_type, resource_id, params, ctx.clock.now()
        )
        return to_response(result, media)

    @router.get("/{resource_type}/{resource_id}/_history/{version_id}")
    async def vread(
        resource_type: str,
        resource_id: str,
        version_id: str,
        request: Request,
        ctx: Context,
        store: RequestStore,
    ) -> Response:
        media = response_type(request)
        result = await ctx.call(ix.vread, store, resource_type, resource_id, version_id)
        return to_response(result, media)

    return router
