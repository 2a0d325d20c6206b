"""Baseline ASGI apps for ``bench_rest.py``, served by granian exactly like the gateway.

``bare_app``   Starlette, no middleware: answers the very bytes the gateway stores (read) and the
               very searchset Bundle the gateway built (search), from a dict. The ceiling.
``naive_app``  FastAPI doing the naive thing: ``Model.model_validate_json(raw).model_dump_json()``
               with fhir.resources R4B models on every read, and on each of the 100 CarePlans of a
               search (the Bundle is then assembled around the dumps with ``orjson.Fragment``, the
               cheapest possible way, so the naive numbers flatter the naive approach).

Both read their data from the JSON file named by ``BENCH_BASELINE_DATA`` (written by
``bench_rest.py``): ``{"patients": {id: json}, "subject": "Patient/…", "search_bundle": json,
"careplans": [json, …], "total": n, "self_url": url, "base": fhir_base}``.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI
from fhir.resources.R4B import get_fhir_model_class
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

FHIR_JSON = "application/fhir+json; charset=utf-8"
DATA_ENV = "BENCH_BASELINE_DATA"


def _load() -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(Path(os.environ[DATA_ENV]).read_bytes())
    return data


def _healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


def _not_found() -> Response:
    return Response(
        b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found"}]}',
        status_code=404,
        media_type=FHIR_JSON,
    )


def bare_app() -> Starlette:
    data = _load()
    patients = {pid: body.encode() for pid, body in data["patients"].items()}
    searches = {data["subject"]: data["search_bundle"].encode()}

    async def healthz(_request: Request) -> Response:
        return _healthz()

    async def read_patient(request: Request) -> Response:
        body = patients.get(request.path_params["resource_id"])
        if body is None:
            return _not_found()
        return Response(body, media_type=FHIR_JSON)

    async def search_care_plans(request: Request) -> Response:
        body = searches.get(request.query_params.get("subject", ""))
        if body is None:
            return _not_found()
        return Response(body, media_type=FHIR_JSON)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/fhir/Patient/{resource_id}", read_patient),
            Route("/fhir/CarePlan", search_care_plans),
        ]
    )


def naive_app() -> FastAPI:
    data = _load()
    patients = {pid: body.encode() for pid, body in data["patients"].items()}
    careplans = {
        data["subject"]: [(orjson.loads(body)["id"], body.encode()) for body in data["careplans"]]
    }
    base: str = data["base"]
    total: int = data["total"]
    self_url: str = data["self_url"]
    patient_model = get_fhir_model_class("Patient")
    care_plan_model = get_fhir_model_class("CarePlan")
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> Response:
        return _healthz()

    @app.get("/fhir/Patient/{resource_id}")
    async def read_patient(resource_id: str) -> Response:
        raw = patients.get(resource_id)
        if raw is None:
            return _not_found()
        body = patient_model.model_validate_json(raw).model_dump_json()
        return Response(body, media_type=FHIR_JSON)

    @app.get("/fhir/CarePlan")
    async def search_care_plans(subject: str) -> Response:
        raws = careplans.get(subject)
        if raws is None:
            return _not_found()
        entries = []
        for resource_id, raw in raws:
            model = care_plan_model.model_validate_json(raw)
            entries.append(
                {
                    "fullUrl": f"{base}/CarePlan/{resource_id}",
                    "resource": orjson.Fragment(model.model_dump_json()),
                    "search": {"mode": "match"},
                }
            )
        bundle = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": datetime.now(UTC).isoformat(timespec="milliseconds")},
            "type": "searchset",
            "total": total,
            "link": [{"relation": "self", "url": self_url}],
            "entry": entries,
        }
        return Response(orjson.dumps(bundle), media_type=FHIR_JSON)

    return app
