"""Unauthenticated noise does not grow the audit without bound, and no refusal is dropped.

Requests without a valid token (a scanner, a misconfigured client) are counted per source,
reason and minute, committed before each 401 is answered, and folded into the chain as one
event per source, reason and minute once that minute has closed (or at shutdown)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
from fastapi.testclient import TestClient
from sqlalchemy import text

from gateway.app import create_app
from gateway.clock import FrozenClock
from gateway.settings import Settings
from gateway.store.sql import SqlStore
from tests.support.network import BASE, gateway_settings


def _events(client: TestClient) -> list[dict[str, Any]]:
    chain = client.app.state.gateway.audit  # type: ignore[attr-defined]
    return [orjson.loads(row[2]) for row in chain.rows()]


def _aggregates(client: TestClient) -> list[tuple[str, str, int]]:
    out = []
    for event in _events(client):
        for ext in event.get("extension", []):
            if ext["url"].endswith("aggregated-refusals"):
                count = next(e["valueInteger"] for e in ext["extension"] if e["url"] == "count")
                out.append(
                    (
                        event["outcomeDesc"],
                        event["agent"][1].get("network", {}).get("address", ""),
                        count,
                    )
                )
    return out


def _counted(store: SqlStore) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(text("SELECT COALESCE(SUM(count), 0) FROM audit_noise")).scalar_one()
        )


def test_a_minute_of_noise_is_one_event_per_reason_and_every_refusal_is_counted(
    sql_store: SqlStore, tmp_path: Any, clock: FrozenClock
) -> None:
    settings: Settings = gateway_settings(tmp_path)
    app = create_app(settings, store=sql_store, clock=clock)
    with TestClient(app, base_url=BASE) as anon:
        for _ in range(40):
            assert anon.get("/fhir/Patient/p1").status_code == 401
        for _ in range(15):
            assert anon.get("/fhir/CarePlan?status=active").status_code == 401
        assert _events(anon) == [], "nothing is folded while the minute is open"
        assert _counted(sql_store) == 55, "yet every refusal is already durable"
        clock.advance(timedelta(minutes=1))
        assert anon.get("/fhir/Patient/p2").status_code == 401  # the next minute's first
        folded = sorted(_aggregates(anon))
        assert folded == [("token:read", "testclient", 40), ("token:search-type", "testclient", 15)]
        assert _counted(sql_store) == 1
    # Shutdown folds what is still counted: the last refusal is not lost either.
    after = _events_after_close(sql_store, settings, clock)
    assert sum(c for _, _, c in after) == 56


def _events_after_close(
    store: SqlStore, settings: Settings, clock: FrozenClock
) -> list[tuple[str, str, int]]:
    with TestClient(create_app(settings, store=store, clock=clock), base_url=BASE) as client:
        return _aggregates(client)


def test_counting_while_another_worker_folds_loses_no_refusal(
    sql_store: SqlStore, tmp_path: Any
) -> None:
    """Workers on both sides of a minute boundary (one already folding minute M, others still
    counting into it) on their own connections: every count ends up in exactly one event."""
    import threading
    from datetime import UTC, datetime

    from gateway.audit.chain import AuditChain
    from gateway.audit.checkpoints import CheckpointSigner
    from gateway.keys import init_keys
    from gateway.store.database import make_engine

    keys = tmp_path / "keys"
    init_keys(keys, datetime.now(UTC))
    url = sql_store.engine.url.render_as_string(hide_password=False)
    late = datetime(2026, 12, 2, 10, 0, 59, tzinfo=UTC)
    engines = [make_engine(url, pool_size=2) for _ in range(4)]
    chains = [
        AuditChain(
            engines[n],
            CheckpointSigner.from_keys_dir(keys),
            FrozenClock(late + timedelta(seconds=2 * (n % 2))),  # 10:00:59 or 10:01:01
        )
        for n in range(4)
    ]

    def knock(chain: AuditChain) -> None:
        for _ in range(150):
            chain.note_unauthenticated("203.0.113.9", "token:missing")

    threads = [threading.Thread(target=knock, args=(c,)) for c in chains]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    chains[0].fold_noise()
    events = [orjson.loads(row[2]) for row in chains[0].rows()]
    counts = [
        e["valueInteger"]
        for event in events
        for ext in event.get("extension", [])
        for e in ext["extension"]
        if e["url"] == "count"
    ]
    for chain, engine in zip(chains, engines, strict=True):
        chain.close()
        engine.dispose()
    assert sum(counts) == 600
    assert _counted(sql_store) == 0
