"""The ``gateway`` command line, run in-process with settings from the environment."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import ClassVar

import pytest
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from gateway.cli import app
from gateway.keys import ENCRYPTION_FILE
from tests.support.server import ROOT

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("GATEWAY_KEYS_DIR", str(tmp_path / "keys"))
    return tmp_path


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "demo", "keys", "db"):
        assert command in result.output


def test_keys_init_refuses_to_run_twice(env: Path) -> None:
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    before = (env / "keys" / ENCRYPTION_FILE).read_bytes()
    second = runner.invoke(app, ["keys", "init"])
    assert second.exit_code == 1
    assert "refusing to overwrite" in second.output
    assert (env / "keys" / ENCRYPTION_FILE).read_bytes() == before


def test_serve_refuses_to_start_without_keys(env: Path) -> None:
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 1
    assert "keys init" in result.output


def test_serve_refuses_to_start_with_a_broken_consent_policy(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    policies = env / "policies"
    policies.mkdir()
    for name in ("network.yaml", "labels.yaml", "schema.json"):
        (policies / name).write_bytes((ROOT / "consent_policies" / name).read_bytes())
    network = policies / "network.yaml"
    network.write_text(
        network.read_text().replace("max_consent_days: 365", "max_consent_days: forever")
    )
    monkeypatch.setenv("GATEWAY_POLICIES_DIR", str(policies))
    monkeypatch.setenv("GATEWAY_DEMO", "true")
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 1
    assert "network.yaml" in result.output
    assert "max_consent_days" in result.output


def test_bad_settings_are_a_clear_start_up_error(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "mysql://somewhere/db")
    result = runner.invoke(app, ["keys", "init"])
    assert result.exit_code == 1
    assert "bad settings" in result.output


def test_rotate_then_reencrypt_then_status(env: Path) -> None:
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    rotated = runner.invoke(app, ["keys", "rotate"])
    assert rotated.exit_code == 0
    assert "2 keys" in rotated.output
    assert runner.invoke(app, ["keys", "reencrypt"]).exit_code == 0
    status = runner.invoke(app, ["keys", "status"])
    assert status.exit_code == 0
    assert status.output.count("yes") == 1


def test_demo_runs_end_to_end_and_can_run_again(env: Path) -> None:
    first = runner.invoke(app, ["demo"])
    assert first.exit_code == 0, first.output
    assert "every step answered as expected" in first.output
    again = runner.invoke(app, ["demo"])
    assert again.exit_code == 0, again.output


def test_db_reindex_rebuilds_every_resources_index(env: Path) -> None:
    assert runner.invoke(app, ["demo"]).exit_code == 0
    result = runner.invoke(app, ["db", "reindex", "--batch", "3"])
    assert result.exit_code == 0, result.output
    assert "reindexed" in result.output
    assert runner.invoke(app, ["demo"]).exit_code == 0  # and the data still answers the same


def test_audit_verify_passes_after_the_demo_and_names_the_seq_after_tampering(env: Path) -> None:
    assert runner.invoke(app, ["demo"]).exit_code == 0
    verified = runner.invoke(app, ["audit", "verify"])
    assert verified.exit_code == 0, verified.output
    assert verified.output.startswith("verified ")
    engine = create_engine(f"sqlite:///{env}/cli.db")
    with engine.begin() as conn:
        conn.execute(
            text(
                """UPDATE audit_log SET event = replace(event, '"rest"', '"REST"') WHERE seq = 3"""
            )
        )
    engine.dispose()
    tampered = runner.invoke(app, ["audit", "verify"])
    assert tampered.exit_code == 1
    assert tampered.output.startswith("seq 3: event edited")


def test_an_audit_export_verifies_offline_with_the_public_key_alone(env: Path) -> None:
    assert runner.invoke(app, ["demo"]).exit_code == 0
    assert runner.invoke(app, ["audit", "checkpoint"]).exit_code == 0
    out = env / "audit.ndjson"
    exported = runner.invoke(app, ["audit", "export", "--format", "ndjson", "--output", str(out)])
    assert exported.exit_code == 0, exported.output
    lines = out.read_bytes().splitlines()
    assert any(b'"checkpoint"' in line for line in lines)
    offline = runner.invoke(
        app,
        ["audit", "verify", "--export", str(out),
         "--public-key", str(env / "keys" / "audit-signing-key.pub.pem")],
    )  # fmt: skip
    assert offline.exit_code == 0, offline.output
    cut = env / "cut.ndjson"
    cut.write_bytes(b"\n".join(lines[:2] + [line for line in lines if b'"checkpoint"' in line]))
    truncated = runner.invoke(app, ["audit", "verify", "--export", str(cut)])
    assert truncated.exit_code == 1
    assert "truncated" in truncated.output
    assert runner.invoke(app, ["audit", "export", "--format", "csv"]).exit_code == 1


def test_key_rotation_and_audit_exports_are_themselves_audited(env: Path) -> None:
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    assert runner.invoke(app, ["keys", "rotate"]).exit_code == 0
    assert (
        runner.invoke(app, ["audit", "export", "--output", str(env / "out.ndjson")]).exit_code == 0
    )
    engine = create_engine(f"sqlite:///{env}/cli.db")
    with engine.connect() as conn:
        events = [row[0] for row in conn.execute(text("SELECT event FROM audit_log ORDER BY seq"))]
    engine.dispose()
    assert len(events) == 2
    assert '"key-rotation"' in events[0]
    assert '"audit-export"' in events[1]
    assert "operator: gateway key rotation" in events[0]


# -- start-up errors are one line ---------------------------------------------------------------


def _one_line_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    assert lines[0].startswith("error: ")
    return lines[0]


UNREACHABLE = "postgresql+psycopg://gateway:s3cret-pw@127.0.0.1:1/gateway"


def test_serve_with_an_unreachable_database_is_one_line_and_exit_1(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    monkeypatch.setenv("GATEWAY_DEMO", "true")
    monkeypatch.setenv("GATEWAY_DATABASE_URL", UNREACHABLE)
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 1
    line = _one_line_error(result.output)
    assert "cannot use the database" in line
    assert "s3cret-pw" not in result.output


def test_db_upgrade_with_an_unreachable_or_missing_database_is_one_line(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", UNREACHABLE)
    unreachable = runner.invoke(app, ["db", "upgrade"])
    assert unreachable.exit_code == 1
    assert "Connection refused" in _one_line_error(unreachable.output)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "sqlite:////proc/no-such-dir/gateway.db")
    missing = runner.invoke(app, ["db", "upgrade"])
    assert missing.exit_code == 1
    assert "cannot use the database" in _one_line_error(missing.output)


def test_db_upgrade_to_an_unknown_revision_is_one_line(env: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade", "9999"])
    assert result.exit_code == 1
    assert "9999" in _one_line_error(result.output)


def test_a_bad_log_level_is_refused_at_start_up_in_one_line(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "LOUD")
    result = runner.invoke(app, ["serve", "--port", "1"])
    assert result.exit_code == 1
    line = _one_line_error(result.output)
    assert "GATEWAY_LOG_LEVEL" in line
    assert "INFO" in line


def test_bad_settings_name_the_variable_never_its_value(
    env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "mysql://gateway:s3cret-pw@db/gateway")
    monkeypatch.setenv("GATEWAY_METRICS_TOKEN", "short-s3cret")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 1
    line = _one_line_error(result.output)
    assert "GATEWAY_DATABASE_URL" in line
    assert "GATEWAY_METRICS_TOKEN" in line
    assert "s3cret" not in result.output


def test_an_error_no_command_caught_is_one_line_from_the_console_script(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    monkeypatch.setenv("GATEWAY_DATABASE_URL", UNREACHABLE)
    monkeypatch.setattr("sys.argv", ["gateway", "keys", "status"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "Connection refused" in _one_line_error(err)
    assert "s3cret-pw" not in err


# -- serve's server settings --------------------------------------------------------------------


class FakeGranian:
    """Stands in for granian: records how serve configured it and what the workers would see."""

    seen: ClassVar[dict[str, object]] = {}

    def __init__(self, target: str, **options: object) -> None:
        FakeGranian.seen = {"target": target, **options}

    def serve(self) -> None:
        FakeGranian.seen["GATEWAY_BASE_URL"] = os.environ.get("GATEWAY_BASE_URL")
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        FakeGranian.seen["metrics_dir"] = metrics_dir
        FakeGranian.seen["metrics_dir_mode"] = stat.S_IMODE(Path(metrics_dir).stat().st_mode)


@pytest.fixture
def serve_env(env: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    assert runner.invoke(app, ["keys", "init"]).exit_code == 0
    monkeypatch.setenv("GATEWAY_DEMO", "true")
    # Recorded by monkeypatch (then dropped), so that what serve sets is undone after the test.
    for name in ("GATEWAY_BASE_URL", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    monkeypatch.setattr("granian.Granian", FakeGranian)
    return env


def test_serve_advertises_the_host_and_port_it_listens_on_without_gateway_base_url(
    serve_env: Path,
) -> None:
    result = runner.invoke(app, ["serve", "--host", "127.0.0.1", "--port", "9123"])
    assert result.exit_code == 0, result.output
    assert FakeGranian.seen["GATEWAY_BASE_URL"] == "http://127.0.0.1:9123"
    assert "serving http://127.0.0.1:9123/fhir" in result.output
    # Given to the workers only: once serve returns, the environment is as it was.
    assert "GATEWAY_BASE_URL" not in os.environ
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_serve_keeps_an_explicit_gateway_base_url(
    serve_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_BASE_URL", "https://gateway.example.org")
    assert runner.invoke(app, ["serve", "--port", "9123"]).exit_code == 0
    assert FakeGranian.seen["GATEWAY_BASE_URL"] == "https://gateway.example.org"


def test_serve_respawns_workers_bounds_shutdown_and_header_reads_and_cleans_its_metrics(
    serve_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_SHUTDOWN_TIMEOUT_SECONDS", "7")
    monkeypatch.setenv("GATEWAY_HTTP_HEADER_TIMEOUT_SECONDS", "3")
    result = runner.invoke(app, ["serve", "--port", "9123", "--workers", "2"])
    assert result.exit_code == 0, result.output
    seen = FakeGranian.seen
    assert seen["respawn_failed_workers"] is True
    assert seen["workers_kill_timeout"] == 7
    assert seen["workers"] == 2
    assert seen["http1_settings"].header_read_timeout == 3000  # type: ignore[attr-defined]
    assert seen["metrics_dir_mode"] == 0o700  # private to the gateway's user
    assert not Path(str(seen["metrics_dir"])).exists()  # removed when the server stopped


def test_db_upgrade_says_when_records_predate_the_blind_index_and_reindex_settles_it(
    env: Path,
) -> None:
    import sqlite3

    assert runner.invoke(app, ["demo"]).exit_code == 0
    with sqlite3.connect(env / "cli.db") as conn:  # what migration 0005 leaves of older rows
        conn.execute("UPDATE resources SET facts = NULL, facts_key = NULL")
    upgraded = runner.invoke(app, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert "predate the blind search index" in upgraded.output
    assert runner.invoke(app, ["db", "reindex"]).exit_code == 0
    again = runner.invoke(app, ["db", "upgrade"])
    assert "predate" not in again.output
