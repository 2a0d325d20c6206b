"""``gateway ingest``, ``gateway quarantine`` and ``gateway synth``, run in-process with settings
from the environment, on a real SQLite database and a partners file with real public keys."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from typer.testing import CliRunner

from gateway.cli import app
from tests.support.server import ROOT

runner = CliRunner()


def _partners_file(path: Path) -> Path:
    """The demo network with a fresh public key per partner (no demo placeholder)."""
    doc: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "partners.yaml").read_text())
    for partner in doc["partners"]:
        jwk = orjson.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key()))
        partner["jwks"] = {"keys": [{**jwk, "kid": partner["id"], "alg": "ES384", "use": "sig"}]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("GATEWAY_KEYS_DIR", str(tmp_path / "keys"))
    monkeypatch.setenv("GATEWAY_PARTNERS_FILE", str(_partners_file(tmp_path / "partners.yaml")))
    monkeypatch.setenv("COLUMNS", "200")
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    return tmp_path


def _synth(env: Path, *args: str) -> Path:
    target = env / "export"
    result = runner.invoke(app, ["synth", "hmis", str(target), *args])
    assert result.exit_code == 0, result.output
    return target


def test_an_export_that_lands_whole_exits_0_and_says_what_was_stored(env: Path) -> None:
    export = _synth(env, "--clients", "8", "--release-to", "harbor-clinic")
    result = runner.invoke(
        app, ["ingest", "hmis-csv", str(export), "--partner", "riverside-shelter"]
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"Client\s*│\s*8\s*│\s*8\s*│\s*0", result.output)
    assert "Patient" in result.output
    assert "every record landed" in result.output
    again = runner.invoke(
        app, ["ingest", "hmis-csv", str(export), "--partner", "riverside-shelter"]
    )
    assert again.exit_code == 0
    assert re.search(r"Patient\s*│\s*0\s*│\s*0\s*│\s*8", again.output)


def _break_a_date(export: Path) -> None:
    path = export / "Client.csv"
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    rows[0]["DOB"] = "4/30/1990"
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(out.getvalue(), encoding="utf-8")


def test_some_input_quarantined_exits_3_and_quarantine_says_where_never_what(env: Path) -> None:
    export = _synth(env, "--clients", "4")
    _break_a_date(export)
    result = runner.invoke(
        app, ["ingest", "hmis-csv", str(export), "--partner", "riverside-shelter"]
    )
    assert result.exit_code == 3, result.output
    assert "quarantine list" in result.output
    listed = runner.invoke(app, ["quarantine", "list"])
    assert listed.exit_code == 0
    assert "Client.csv" in listed.output
    assert "4/30/1990" not in listed.output
    # The bad row, and the enrollment of that client, which waits for it (no dangling reference).
    client_row = next(line for line in listed.output.splitlines() if "Client.csv" in line)
    assert any("Enrollment.csv" in line for line in listed.output.splitlines())
    held = re.search(r"q-[A-Za-z0-9_-]{12}", client_row)
    assert held is not None
    shown = runner.invoke(app, ["quarantine", "show", held.group(0)])
    assert shown.exit_code == 0
    assert "row 2" in shown.output
    assert "DOB" in shown.output
    assert "4/30/1990" not in shown.output
    assert "encrypted" in shown.output
    # The source row itself is unreadable as it was sent: a retry says why, and it stays held.
    retried = runner.invoke(app, ["quarantine", "retry", held.group(0)])
    assert retried.exit_code == 3
    assert "still held" in retried.output
    assert "4/30/1990" not in retried.output


def test_a_victim_service_providers_export_from_a_clinic_exits_1_and_stores_nothing(
    env: Path,
) -> None:
    export = _synth(env, "--clients", "3", "--vsp")
    result = runner.invoke(app, ["ingest", "hmis-csv", str(export), "--partner", "harbor-clinic"])
    assert result.exit_code == 1
    assert "refused" in result.output
    assert re.search(r"Patient\s*│", result.output) is None


def test_an_unknown_partner_and_a_missing_source_are_one_line_errors(env: Path) -> None:
    export = _synth(env, "--clients", "1")
    result = runner.invoke(app, ["ingest", "hmis-csv", str(export), "--partner", "nobody"])
    assert result.exit_code == 1
    assert "no partner with that id" in result.output
    missing = runner.invoke(
        app, ["ingest", "hmis-csv", str(env / "nope"), "--partner", "riverside-shelter"]
    )
    assert missing.exit_code == 2  # typer: the argument must exist


def test_quarantine_show_of_an_unknown_id_is_a_clear_error(env: Path) -> None:
    result = runner.invoke(app, ["quarantine", "show", "q-000000000000"])
    assert result.exit_code == 1
    assert "no quarantined item" in result.output


def test_an_hl7_file_from_another_facility_is_held_not_stored_as_the_partners(env: Path) -> None:
    target = env / "referrals.hl7"
    made = runner.invoke(
        app,
        ["synth", "hl7", str(target), "--messages", "2", "--sending-facility", "ELSEWHERE"],
    )
    assert made.exit_code == 0, made.output
    result = runner.invoke(app, ["ingest", "hl7v2", str(target), "--partner", "st-marys-hospital"])
    assert result.exit_code == 3, result.output
    listed = runner.invoke(app, ["quarantine", "list", "--partner", "st-marys-hospital"])
    assert "MSH-4" in listed.output
    assert listed.output.count("is not this") == 2


def test_synth_writes_each_kind_of_source(env: Path) -> None:
    for args in (
        ["synth", "hmis", str(env / "x.zip"), "--zip", "--clients", "2", "--year", "FY2024"],
        ["synth", "legalserver", str(env / "m.json"), "--matters", "3"],
        ["synth", "hl7", str(env / "a.hl7"), "--messages", "2", "--kind", "adt-a08"],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert len(orjson.loads((env / "m.json").read_bytes())["data"]) == 3
    assert (env / "a.hl7").read_bytes().count(b"\x0bMSH|") == 2
    assert (env / "x.zip").stat().st_size > 0


def test_reencrypt_after_a_rotation_moves_the_quarantine_to_the_new_key_too(env: Path) -> None:
    export = _synth(env, "--clients", "3")
    _break_a_date(export)
    held = runner.invoke(app, ["ingest", "hmis-csv", str(export), "--partner", "riverside-shelter"])
    assert held.exit_code == 3
    assert runner.invoke(app, ["keys", "rotate", "--encryption"]).exit_code == 0
    moved = runner.invoke(app, ["keys", "reencrypt"])
    assert moved.exit_code == 0, moved.output
    assert "quarantined items under" in moved.output
    status = runner.invoke(app, ["keys", "status"])
    active = next(line for line in status.output.splitlines() if "yes" in line)
    others = [line for line in status.output.splitlines() if "│" in line and "yes" not in line]
    assert re.search(r"│\s*[1-9]\d*\s*│\s*$", active.rstrip()), status.output
    assert others
    for line in others:
        assert re.search(r"│\s*0\s*│\s*0\s*│\s*$", line.rstrip()), status.output


def test_ingest_fhir_pulls_as_the_gateways_own_smart_client_and_a_second_run_reads_only_news(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over real HTTP on loopback: the fake hospital verifies the gateway's signed assertion;
    the pulled Patients, referrals and care plans land as the hospital's; the mark is kept, so
    the next run pulls nothing new and stores nothing."""
    from cryptography.hazmat.primitives import serialization

    from adapters.smart import public_jwk
    from gateway.synth.fhir import hospital_resources, serve_fake_fhir

    key = ec.generate_private_key(ec.SECP384R1())
    (env / "keys" / "smart-client.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    resources = hospital_resources(30, seed=3)
    with serve_fake_fhir(
        resources, client_id="care-gateway", public_jwks={"keys": [public_jwk(key)]}
    ) as base:
        args = ["ingest", "fhir", base, "--partner", "st-marys-hospital"]
        first = runner.invoke(app, [*args, "--client-id", "care-gateway"])
        assert first.exit_code == 0, first.output
        assert re.search(r"Patient\s*│\s*10\s*│\s*0\s*│\s*0", first.output), first.output
        again = runner.invoke(app, [*args, "--client-id", "care-gateway"])
        assert again.exit_code == 0, again.output
        assert "Patient" not in again.output.split("Resources")[-1]
        refused = runner.invoke(app, [*args, "--client-id", "someone-else"])
        assert refused.exit_code == 1
        assert "invalid_client" in refused.output


def test_ingest_legalserver_needs_its_token_from_the_environment_and_pulls_from_the_site(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.synth.legalserver import matters, serve_fake_legalserver

    with serve_fake_legalserver(matters(6, seed=4), token="s3cret-token") as base:
        args = ["ingest", "legalserver", base, "--partner", "northside-legal-aid"]
        missing = runner.invoke(app, args)
        assert missing.exit_code == 1
        assert "GATEWAY_LEGALSERVER_TOKEN" in missing.output
        monkeypatch.setenv("GATEWAY_LEGALSERVER_TOKEN", "s3cret-token")
        pulled = runner.invoke(app, [*args, "--page-size", "4"])
        assert pulled.exit_code in (0, 3), pulled.output
        assert re.search(r"legalserver\s*│\s*matter\s*│\s*6\s*│", pulled.output), pulled.output
        assert "s3cret-token" not in pulled.output
        monkeypatch.setenv("GATEWAY_LEGALSERVER_TOKEN", "wrong")
        refused = runner.invoke(app, args)
        assert refused.exit_code == 1
        assert "wrong" not in refused.output
