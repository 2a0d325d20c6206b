"""HTTP details of FHIR: content negotiation, body limits, and turning a ``Result`` into a
response. Bodies are read here, with the size limit enforced before anything is parsed."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.responses import Response

from gateway.disclose.interactions import Result
from gateway.errors import NotAcceptable, PayloadTooLarge, UnsupportedMediaType
from gateway.write.validate import parse_json

FHIR_JSON = "application/fhir+json"
JSON_TYPES = frozenset({FHIR_JSON, "application/json", "application/json+fhir"})
FORMAT_ALIASES = {"json": FHIR_JSON, FHIR_JSON: FHIR_JSON, "application/json": "application/json"}


def response_type(request: Request) -> str:
    """``_format`` wins over ``Accept``; JSON is all this server speaks."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        chosen = FORMAT_ALIASES.get(fmt.split(";")[0].strip())
        if chosen is None:
            raise NotAcceptable("only FHIR JSON is supported (_format=json)")
        return chosen
    accept = request.headers.get("accept")
    if not accept:
        return FHIR_JSON
    offered = [part.split(";")[0].strip() for part in accept.split(",")]
    for media in offered:
        if media in (FHIR_JSON, "application/json+fhir", "*/*", "application/*"):
            return FHIR_JSON
        if media == "application/json":
            return "application/json"
    raise NotAcceptable("only FHIR JSON is supported (Accept: application/fhir+json)")


def to_response(result: Result, media_type: str) -> Response:
    return Response(
        content=result.body if result.body is not None else b"",
        status_code=result.status,
        headers=result.headers,
        media_type=f"{media_type}; charset=utf-8" if result.body is not None else None,
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it is known to exceed ``limit``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def require_json(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in JSON_TYPES:
        raise UnsupportedMediaType(
            "send FHIR JSON (Content-Type: application/fhir+json)",
        )


async def read_json(request: Request, *, limit: int, max_depth: int) -> Any:
    require_json(request)
    return parse_json(await read_body(request, limit), max_depth=max_depth)
