"""A granian factory for tests and benchmarks that serve the *real* app over loopback while the
auth placeholder is in place: it authenticates every request as the fixed requester named by
``GATEWAY_TEST_REQUESTER`` (``partner_id:kind``). Never importable from the gateway package, so a
production server cannot load it.

    granian --interface asgi --factory tests.support.trusted_app:build
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from gateway.app import create_app
from gateway.disclose.deps import Requester, fixed_requester
from gateway.settings import Settings


def build() -> FastAPI:
    partner_id, _, kind = os.environ.get("GATEWAY_TEST_REQUESTER", "test-admin:admin").partition(
        ":"
    )
    requester = Requester(partner_id=partner_id, kind=kind or "admin", scopes=("system/*.cruds",))
    return create_app(Settings(), authenticate=fixed_requester(requester))
