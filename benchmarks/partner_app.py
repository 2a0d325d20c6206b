"""Granian factories for ``bench_rest.py``, kept in benchmarks/ (not tests/) so that the very same
benchmark files can be copied into an older checkout of the gateway and serve it unchanged.

``build``  the real app, ``create_app(Settings(), authenticate=fixed_requester(Requester(...)),
           partner_kinds={...})``: every request is authenticated as one partner, named by the
           environment (below). The same seam the token layer plugs into; never importable from
           the gateway package, so a production server cannot load it.
``bare``   ``baseline_apps.bare_app`` plus ``GET /fhir/CarePlan/{id}`` answering the stored bytes
           of the released CarePlans (``released_careplans`` in ``BENCH_BASELINE_DATA``), from a
           dict: the ceiling for a read by id, next to the gateway reading them as a partner.

Environment of ``build`` (defaults in brackets):

- ``BENCH_PARTNER`` [``harbor-clinic``]: the requester's partner (client) id;
- ``BENCH_PARTNER_KIND`` [``clinic``]: its kind (shelter, clinic, legal-aid, hospital, admin…);
- ``BENCH_PARTNER_ORGANIZATION`` [``Organization/<partner>``]: the Organization a Consent's actor
  must name; ``-`` for none (a requester that is no Organization, like the historical
  ``test-admin``);
- ``BENCH_PARTNER_PURPOSES`` [``TREAT``]: v3 PurposeOfUse codes, comma-separated (may be empty);
- ``BENCH_PARTNER_SCOPES`` [``system/*.cruds``]: SMART scopes, comma-separated;
- ``BENCH_PARTNER_KINDS`` [``riverside-shelter:shelter,harbor-clinic:clinic``]: the partner kinds
  consent tells contributors apart by (``id:kind``, comma-separated); the requester's own joins.

    granian --interface asgi --factory benchmarks.partner_app:build
"""

from __future__ import annotations

import os

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.baseline_apps import FHIR_JSON, _load, _not_found, bare_app
from gateway.access.requester import Requester
from gateway.app import create_app
from gateway.disclose.deps import fixed_requester
from gateway.settings import Settings

DEFAULT_KINDS = "riverside-shelter:shelter,harbor-clinic:clinic"


def _list(name: str, default: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in os.environ.get(name, default).split(",") if p.strip())


def requester_from_env() -> Requester:
    partner = os.environ.get("BENCH_PARTNER", "harbor-clinic")
    organization = os.environ.get("BENCH_PARTNER_ORGANIZATION", f"Organization/{partner}")
    return Requester(
        partner_id=partner,
        kind=os.environ.get("BENCH_PARTNER_KIND", "clinic"),
        organization="" if organization == "-" else organization,
        scopes=_list("BENCH_PARTNER_SCOPES", "system/*.cruds"),
        purpose_of_use=_list("BENCH_PARTNER_PURPOSES", "TREAT"),
    )


def build() -> FastAPI:
    requester = requester_from_env()
    kinds = dict(k.partition(":")[::2] for k in _list("BENCH_PARTNER_KINDS", DEFAULT_KINDS))
    kinds[requester.partner_id] = requester.kind
    return create_app(Settings(), authenticate=fixed_requester(requester), partner_kinds=kinds)


def bare() -> Starlette:
    app = bare_app()
    plans = {rid: body.encode() for rid, body in _load().get("released_careplans", {}).items()}

    async def read_care_plan(request: Request) -> Response:
        body = plans.get(request.path_params["resource_id"])
        if body is None:
            return _not_found()
        return Response(body, media_type=FHIR_JSON)

    app.router.routes.append(Route("/fhir/CarePlan/{resource_id}", read_care_plan))
    return app
