"""The ingest pipeline, on SQLite and PostgreSQL: a partner's source records through the
mappings and the one write path, idempotent, with a Provenance per batch, and nothing lost.

Each test ingests a real synthetic HMIS export (``gateway.synth.hmis``) with the real adapter,
the real mappings in ``mappings/``, the real ledger and quarantine tables and the real store and
audit chain."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from adapters.hmis import read_export
from gateway.app import create_app, ingest_pipeline
from gateway.clock import FrozenClock
from gateway.ingest.pipeline import IngestPipeline, IngestSummary
from gateway.ingest.quarantine import Quarantine
from gateway.ingest.retry import retry_item
from gateway.mapping import load_mappings
from gateway.partners import Partner, PartnerDirectory
from gateway.store.schema import audit_log, resource_versions, resources
from gateway.store.sql import SqlStore
from gateway.synth.hmis import write_hmis_export
from gateway.vocabulary.source import Origin, SourceProblem, SourceRecord
from tests.support.network import KINDS, gateway_settings

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = load_mappings(ROOT / "mappings")


def _partner(partner_id: str, kind: str, **extra: Any) -> Partner:
    return Partner.model_validate(
        {
            "id": partner_id,
            "name": partner_id.replace("-", " ").title(),
            "kind": kind,
            "organization": f"Organization/{partner_id}",
            "jwks": "demo-generated-keys",
            "scopes": ["system/*.rs"],
            "purposes": ["TREAT", "COC"],
            "default_purpose": "COC",
            **extra,
        }
    )


DIRECTORY = PartnerDirectory(_partner(p, k) for p, k in KINDS.items())


@pytest.fixture
def network(
    sql_store: SqlStore, tmp_path: Path, clock: FrozenClock
) -> Iterator[tuple[Any, SqlStore]]:
    settings = gateway_settings(tmp_path)
    app = create_app(settings, store=sql_store, clock=clock, partner_kinds=KINDS)
    yield app, sql_store
    app.state.gateway.audit.close()


def pipeline_for(network: tuple[Any, SqlStore], partner_id: str, **kw: Any) -> IngestPipeline:
    app, _ = network
    partner = DIRECTORY.by_client_id(partner_id)
    assert partner is not None
    return ingest_pipeline(
        app, app.state.gateway.settings, partner, DIRECTORY, mappings=MAPPINGS, **kw
    )


def ingest_export(
    network: tuple[Any, SqlStore], export: Path, partner_id: str = "riverside-shelter", **kw: Any
) -> IngestSummary:
    partner = DIRECTORY.by_client_id(partner_id)
    assert partner is not None
    items = read_export(export, partner_kind=partner.kind)
    return pipeline_for(network, partner_id, **kw).run(items)


def _versions(store: SqlStore) -> int:
    with store.engine.connect() as conn:
        return len(conn.execute(select(resource_versions.c.version_id)).all())


def _heads(store: SqlStore) -> list[tuple[str, str, int, str | None]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(
                resources.c.resource_type,
                resources.c.id,
                resources.c.version_id,
                resources.c.contributor,
            )
        ).all()
    return sorted((r[0], r[1], r[2], r[3]) for r in rows)


def _docs(store: SqlStore, resource_type: str) -> list[dict[str, Any]]:
    found = []
    for kind, rid, _, _ in _heads(store):
        if kind == resource_type:
            located = store.locate(kind, rid)
            assert located is not None
            found.append(orjson.loads(located.live.body))
    return found


def test_an_export_lands_as_the_partners_own_labelled_records_with_provenance(
    network: tuple[Any, SqlStore], tmp_path: Path
) -> None:
    export = write_hmis_export(tmp_path / "export", clients=12, year="FY2026", seed=3)
    summary = ingest_export(network, export)
    _, store = network
    assert summary.exit_code == 0, summary.quarantined
    assert summary.counts("hmis-csv", "Client").read == 12
    assert summary.counts("hmis-csv", "Client").landed == 12
    assert summary.resource("Patient").created == 12
    heads = _heads(store)
    partner_records = [h for h in heads if h[0] != "Organization"]
    # Every record is the shelter's, in its first version.
    assert {h[3] for h in partner_records} == {"riverside-shelter"}
    assert {h[2] for h in partner_records} == {1}
    for patient in _docs(store, "Patient"):
        codes = {s.get("code") for s in patient.get("meta", {}).get("security", [])}
        assert "R" in codes  # shelter data is restricted (labels of the write path)
    # One Provenance per batch names every record written, the partner and the mapping.
    provenance = _docs(store, "Provenance")
    assert len(provenance) == len(summary.provenance) >= 1
    targets = {t["reference"] for p in provenance for t in p["target"]}
    written = {f"{h[0]}/{h[1]}" for h in partner_records if h[0] != "Provenance"}
    assert targets == written
    assert all(
        p["agent"][0]["who"]["reference"] == "Organization/riverside-shelter" for p in provenance
    )
    assert all(
        any(x.startswith("urn:care-gateway:mapping:hmis-csv:Client:") for x in p["policy"])
        for p in provenance
    )
    # Every write is audited (one event per record written, in the same transaction).
    with store.engine.connect() as conn:
        events = conn.execute(select(audit_log.c.seq)).all()
    assert len(events) >= len(partner_records)


def test_the_same_export_again_creates_nothing_and_no_new_versions(
    network: tuple[Any, SqlStore], tmp_path: Path
) -> None:
    export = write_hmis_export(tmp_path / "export", clients=10, year="FY2026", seed=4)
    first = ingest_export(network, export)
    _, store = network
    before_heads, before_versions = _heads(store), _versions(store)
    second = ingest_export(network, export)
    assert second.exit_code == 0
    assert _heads(store) == before_heads
    assert _versions(store) == before_versions
    assert sum(r.created + r.updated for r in second.resources.values()) == 0
    assert sum(r.unchanged for r in second.resources.values()) == sum(
        r.created for r in first.resources.values()
    )
    assert second.provenance == []  # nothing written, nothing to attribute


def _rewrite_csv(path: Path, change: Any) -> None:
    text = path.read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows
    fields = list(rows[0].keys())
    change(rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")


def test_a_changed_record_makes_one_new_version_of_what_it_changed(
    network: tuple[Any, SqlStore], tmp_path: Path
) -> None:
    export = write_hmis_export(tmp_path / "export", clients=8, year="FY2026", seed=5)
    ingest_export(network, export)
    _, store = network
    before = {(h[0], h[1]): h[2] for h in _heads(store)}

    def rename(rows: list[dict[str, str]]) -> None:
        rows[2]["FirstName"] = rows[2]["FirstName"] + "a"

    _rewrite_csv(export / "Client.csv", rename)
    summary = ingest_export(network, export)
    assert summary.exit_code == 0
    assert summary.resource("Patient").updated == 1
    assert summary.resource("Patient").created == 0
    after = {(h[0], h[1]): h[2] for h in _heads(store)}
    moved = {k for k in after if after[k] != before.get(k)}
    # The Patient's second version, and the Provenance that says so; nothing else moved.
    assert {k[0] for k in moved} == {"Patient", "Provenance"}
    assert sorted(after[k] for k in moved if k[0] == "Patient") == [2]


def test_an_excel_date_is_quarantined_with_its_row_and_column_and_the_rest_lands(
    network: tuple[Any, SqlStore], tmp_path: Path
) -> None:
    export = write_hmis_export(tmp_path / "export", clients=6, year="FY2026", seed=6)

    def excel(rows: list[dict[str, str]]) -> None:
        rows[1]["DOB"] = "4/30/1990"

    _rewrite_csv(export / "Client.csv", excel)
    summary = ingest_export(network, export)
    assert summary.exit_code == 3
    assert summary.counts("hmis-csv", "Client").landed == 5
    _, store = network
    held = Quarantine(store.engine, store.key_ring).list(partner_id="riverside-shelter")
    assert held, "the bad row is held"
    client_rows = [h for h in held if h.source.lower() == "client.csv"]
    assert client_rows
    place = client_rows[0].places[0]
    assert place.row == 3
    assert place.column.lower() == "dob"
    # The reason names the column, never the value; the held bytes are encrypted.
    assert "4/30/1990" not in client_rows[0].reason
    detail = Quarantine(store.engine, store.key_ring).get(client_rows[0].id)
    assert detail is not None
    assert b"4/30/1990" in detail.raw


def test_a_victim_service_providers_export_from_a_clinic_is_refused_whole(
    network: tuple[Any, SqlStore], tmp_path: Path
) -> None:
    export = write_hmis_export(
        tmp_path / "export", clients=5, year="FY2026", seed=7, victim_service_provider=True
    )
    summary = ingest_export(network, export, partner_id="harbor-clinic")
    _, store = network
    assert summary.exit_code == 1
    assert summary.fatal is not None
    assert [h for h in _heads(store) if h[0] != "Organization"] == []


def test_two_partners_ingesting_the_same_ids_get_two_people_and_touch_nothing_of_each_other(
    network: tuple[Any, SqlStore], tmp_path: Path
) -> None:
    """The same PersonalIDs at two partners are two people: the second ingest cannot reach,
    change or relabel the first partner's records."""
    export = write_hmis_export(tmp_path / "export", clients=5, year="FY2026", seed=8)
    ingest_export(network, export, partner_id="riverside-shelter")
    _, store = network
    shelter = [h for h in _heads(store) if h[3] == "riverside-shelter"]
    summary = ingest_export(network, export, partner_id="harbor-clinic")
    assert summary.exit_code == 0
    assert [h for h in _heads(store) if h[3] == "riverside-shelter"] == shelter
    clinic = [h for h in _heads(store) if h[3] == "harbor-clinic"]
    assert len(clinic) == len(shelter)
    assert not {h[1] for h in clinic} & {h[1] for h in shelter}


def test_fy2024_then_fy2026_of_the_same_clients_updates_rather_than_duplicates(
    network: tuple[Any, SqlStore], tmp_path: Path
) -> None:
    old = write_hmis_export(tmp_path / "fy24", clients=6, year="FY2024", seed=9)
    new = write_hmis_export(tmp_path / "fy26", clients=6, year="FY2026", seed=9)
    ingest_export(network, old)
    _, store = network
    patients = len(_docs(store, "Patient"))
    ingest_export(network, new)
    assert len(_docs(store, "Patient")) == patients


def _record(fields: dict[str, Any], source_id: str = "X1") -> SourceRecord:
    return SourceRecord(
        "hmis-csv",
        "Client",
        source_id,
        fields,
        Origin("Client.csv", "row 2", b"raw,bytes"),
        "FY2026",
    )


def test_a_record_no_mapping_accepts_is_held_and_a_retry_after_the_fix_lands(
    network: tuple[Any, SqlStore], tmp_path: Path
) -> None:
    export = write_hmis_export(tmp_path / "export", clients=1, year="FY2026", seed=10)
    items = list(read_export(export, partner_kind="shelter"))
    client = next(i for i in items if isinstance(i, SourceRecord) and i.record_type == "Client")
    # Without its PersonalID (a required element) the Client maps to nothing.
    broken = SourceRecord(
        client.system, client.record_type, client.source_id,
        {k: v for k, v in client.fields.items() if k != "PersonalID"}, client.origin,
        client.version,
    )  # fmt: skip
    pipeline = pipeline_for(network, "riverside-shelter")
    outcome = pipeline.ingest_record(broken)
    assert outcome.status == "quarantined"
    assert "PersonalID" in outcome.reason
    _, store = network
    assert _docs(store, "Patient") == []
    quarantine = Quarantine(store.engine, store.key_ring)
    detail = quarantine.get(outcome.quarantine_id)
    assert detail is not None
    assert detail.fields is not None
    assert detail.source_id == client.source_id
    # Still broken: the retry says why, stores nothing, and holds no second copy.
    again = retry_item(pipeline, detail)
    assert not again.landed
    assert again.reason == outcome.reason
    assert len(quarantine.list(partner_id="riverside-shelter")) == 1
    # The fixed record (as after the source was corrected) lands.
    assert pipeline.ingest_record(client).status == "stored"
    assert len(_docs(store, "Patient")) == 1


def test_a_record_that_maps_in_part_lands_and_is_held_for_the_part_left_out(
    network: tuple[Any, SqlStore], tmp_path: Path
) -> None:
    export = write_hmis_export(tmp_path / "export", clients=1, year="FY2026", seed=12)
    items = list(read_export(export, partner_kind="shelter"))
    client = next(i for i in items if isinstance(i, SourceRecord) and i.record_type == "Client")
    bad_date = SourceRecord(
        client.system, client.record_type, client.source_id,
        {**client.fields, "DOB": "1990-02-30"}, client.origin, client.version,
    )  # fmt: skip
    outcome = pipeline_for(network, "riverside-shelter").ingest_record(bad_date)
    assert outcome.status == "stored"
    assert outcome.quarantine_id
    assert outcome.reason == ""
    _, store = network
    (patient,) = _docs(store, "Patient")
    assert "birthDate" not in patient
    detail = Quarantine(store.engine, store.key_ring).get(outcome.quarantine_id)
    assert detail is not None
    assert detail.reason.startswith("landed in part: ")
    assert "1990-02-30" not in detail.reason


def test_an_adapter_problem_is_held_with_its_bytes_and_counted(
    network: tuple[Any, SqlStore],
) -> None:
    problem = SourceProblem(
        "hmis-csv", "Enrollment", "PersonalID is not in Client.csv",
        Origin("Enrollment.csv", "row 9", b"E9,P404,..."),
    )  # fmt: skip
    summary = pipeline_for(network, "riverside-shelter").run([problem])
    assert summary.exit_code == 3
    assert summary.counts("hmis-csv", "Enrollment").quarantined == 1
    _, store = network
    detail = Quarantine(store.engine, store.key_ring).get(summary.quarantined[0])
    assert detail is not None
    assert detail.raw == b"E9,P404,..."
    assert detail.reason == "PersonalID is not in Client.csv"


def test_nothing_is_written_when_the_audit_cannot_be_and_the_ledger_does_not_lie(
    network: tuple[Any, SqlStore], tmp_path: Path
) -> None:
    """Fail closed: a batch whose audit events cannot be written is not stored; the next run
    (audit back) writes it, not 'unchanged'."""
    export = write_hmis_export(tmp_path / "export", clients=3, year="FY2026", seed=11)
    app, store = network
    ctx = app.state.gateway
    real = ctx.audit

    class Broken:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def append_within(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("audit down")

    ctx.audit = Broken()
    with pytest.raises(RuntimeError):
        ingest_export(network, export)
    ctx.audit = real
    assert [h for h in _heads(store) if h[0] not in ("Organization",)] == []
    summary = ingest_export(network, export)
    assert summary.resource("Patient").created == 3
