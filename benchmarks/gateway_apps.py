"""A second granian factory for the gateway, for ``bench_rest.py`` only.

``tests.support.trusted_app:build`` installs its fixed requester with ``app.dependency_overrides``.
FastAPI then re-analyses *every* dependency of *every* request (``get_dependant`` and
``inspect.signature`` per sub-dependency, per request) as soon as that dict is non-empty, a cost
production will not pay. This factory installs the same fixed requester *before* the app is
built instead, by rebinding ``gateway.disclose.deps.current_requester`` (its annotations are
strings resolved in that module when the routes are analysed), so the app runs with no overrides.

If ``gateway.disclose.deps`` changes shape and the rebinding stops taking effect, requests answer
401 and ``bench_rest.py`` reports the variant as unavailable; it never measures a wrong app.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

import gateway.disclose.deps as deps
from gateway.app import create_app
from gateway.disclose.deps import Requester
from gateway.settings import Settings


def without_overrides() -> FastAPI:
    partner_id, _, kind = os.environ.get("GATEWAY_TEST_REQUESTER", "test-admin:admin").partition(
        ":"
    )
    requester = Requester(partner_id=partner_id, kind=kind or "admin")

    async def fixed_requester() -> Requester:
        return requester

    deps.current_requester = fixed_requester
    app = create_app(Settings())
    if app.dependency_overrides:
        raise RuntimeError("this factory must not use dependency_overrides")
    return app
