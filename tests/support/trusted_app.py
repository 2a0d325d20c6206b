"""A granian factory for tests and benchmarks that serve the *real* app over loopback while the
auth placeholder is in place: it authenticates every request as one fixed requester. Never
importable from the gateway package, so a production server cannot load it.

    granian --interface asgi --factory tests.support.trusted_app:build

Environment (all optional):

- ``GATEWAY_TEST_REQUESTER``: ``partner_id:kind`` (default ``test-admin:admin``). When it is set,
  the requester is also that partner's Organization (``Organization/<partner_id>``), which
  consent matches a Consent's actors against, and its kind joins the partner kinds.
- ``GATEWAY_TEST_PURPOSES``: the requester's purposes of use, comma-separated v3 PurposeOfUse
  codes (``TREAT,COC``); default none.

Every app knows the demo network's partner kinds (``tests.support.network.KINDS``), so that
consent can tell a shelter's records from a clinic's. With neither variable set the requester is
exactly the historical one: ``test-admin``, kind admin, no Organization, no purposes.
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from gateway.access.requester import Requester
from gateway.app import create_app
from gateway.disclose.deps import fixed_requester
from gateway.settings import Settings
from tests.support.network import KINDS

DEFAULT_REQUESTER = "test-admin:admin"


def build() -> FastAPI:
    named = os.environ.get("GATEWAY_TEST_REQUESTER")
    partner_id, _, kind = (named or DEFAULT_REQUESTER).partition(":")
    kind = kind or "admin"
    purposes = tuple(
        p.strip() for p in os.environ.get("GATEWAY_TEST_PURPOSES", "").split(",") if p.strip()
    )
    requester = Requester(
        partner_id=partner_id,
        kind=kind,
        organization=f"Organization/{partner_id}" if named else "",
        scopes=("system/*.cruds",),
        purpose_of_use=purposes,
    )
    kinds = dict(KINDS) | ({partner_id: kind} if named else {})
    return create_app(Settings(), authenticate=fixed_requester(requester), partner_kinds=kinds)
