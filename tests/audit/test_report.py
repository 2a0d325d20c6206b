"""``gateway audit report``: the chain read back as a table compliance staff can read, in
English and Spanish, on SQLite and PostgreSQL, from events made the way the gateway makes them
(``audit_events``, queries sealed)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import Engine
from typer.testing import CliRunner, Result

from gateway import cli
from gateway.audit.chain import AuditChain, CheckpointSigner
from gateway.audit.events import REFUSED, Activity, Actor, Disclosed, audit_events
from gateway.audit.report import (
    EN,
    ES,
    PHRASES,
    EventLines,
    ReportFilter,
    ReportLine,
    lines_of,
    opener,
    parse_since,
    print_report,
)
from gateway.audit.sealing import SEALED_QUERY, EventSeal
from gateway.cli import app
from gateway.clock import FrozenClock
from gateway.keys import FileKeyRing
from gateway.store import database
from tests.conftest import START

runner = CliRunner()
SOURCE = "https://gateway.example/fhir"
PARTNERS = """\
partners:
  - id: harbor-clinic
    name: Harbor Community Clinic
    kind: clinic
    organization: Organization/harbor-clinic
    jwks_url: https://harbor.example/jwks
    scopes: ["system/*.cruds"]
    purposes: [TREAT, COC]
    default_purpose: TREAT
  - id: northside-legal-aid
    name: Northside Legal Aid
    kind: legal-aid
    organization: Organization/northside-legal-aid
    jwks_url: https://northside.example/jwks
    scopes: ["system/*.rs"]
    purposes: [HLEGAL]
    default_purpose: HLEGAL
  - id: st-marys-hospital
    name: St Mary's Hospital
    kind: hospital
    organization: Organization/st-marys-hospital
    jwks_url: https://stmarys.example/jwks
    scopes: ["system/*.rs"]
    purposes: [TREAT, ETREAT]
    default_purpose: TREAT
"""
CLINIC = Actor("harbor-clinic", "Organization/harbor-clinic", ("TREAT",))
LEGAL = Actor("northside-legal-aid", "Organization/northside-legal-aid", ("HLEGAL",))
HOSPITAL = Actor("st-marys-hospital", "Organization/st-marys-hospital", ("ETREAT",))
CONSENT_RULE = "consent:Consent/c1#provision.provision[0]"


def _activities() -> list[tuple[Activity, Actor]]:
    """One day apart each, from START: a contributor's read, a read released under a Consent
    (redacted), a search over two survivors, a refusal, a break-glass read, a write (not a
    disclosure), a refusal under a Consent's deny and a scope refusal of no record."""
    return [
        (
            Activity(
                "read",
                "CarePlan",
                disclosed=(Disclosed("CarePlan", "abc", 2, "p1", "contributor"),),
            ),
            CLINIC,
        ),
        (
            Activity(
                "read",
                "Task",
                disclosed=(
                    Disclosed(
                        "Task", "t1", 1, "p1", CONSENT_RULE, "Consent/c1", ("shelter-locations",)
                    ),
                ),
            ),
            LEGAL,
        ),
        (
            Activity(
                "search-type",
                "CarePlan",
                disclosed=(
                    Disclosed("CarePlan", "abc", 2, "p1", "contributor"),
                    Disclosed("CarePlan", "def", 1, "p1", CONSENT_RULE, "Consent/c1"),
                    Disclosed("CarePlan", "ghi", 4, "p2", "contributor"),
                ),
                query="status=active&_count=10",
            ),
            CLINIC,
        ),
        (
            Activity(
                "read",
                "Task",
                outcome=REFUSED,
                refusal="no-permit",
                target="Task/x",
                target_patient="p2",
            ),
            LEGAL,
        ),
        (
            Activity(
                "read",
                "Patient",
                disclosed=(
                    Disclosed(
                        "Patient", "p1", 3, "p1", "emergency:emergency-treatment", break_glass=True
                    ),
                ),
            ),
            HOSPITAL,
        ),
        (
            Activity(
                "create", "Task", disclosed=(Disclosed("Task", "new", 1, "p1", "contributor"),)
            ),
            CLINIC,
        ),
        (
            Activity(
                "read",
                "CarePlan",
                outcome=REFUSED,
                refusal="consent:Consent/c9#provision",
                target="CarePlan/z",
                target_patient="p1",
            ),
            LEGAL,
        ),
        (Activity("search-type", "Task", outcome=REFUSED, refusal="scope"), LEGAL),
    ]


@pytest.fixture
def env(
    engine: Engine,
    keys: Path,
    checkpoint_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Path]:
    partners = tmp_path / "partners.yaml"
    partners.write_text(PARTNERS)
    monkeypatch.setenv("GATEWAY_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("GATEWAY_KEYS_DIR", str(keys))
    monkeypatch.setenv("GATEWAY_PARTNERS_FILE", str(partners))
    monkeypatch.setenv("GATEWAY_AUDIT_CHECKPOINT_FILE", str(checkpoint_file))
    monkeypatch.setenv("COLUMNS", "400")  # one line per row, for the assertions
    # A CLI run leaves its engine to the end of the process; a test disposes of it.
    made: list[Engine] = []

    def make_engine(*args: Any, **kwargs: Any) -> Engine:
        made.append(database.make_engine(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(cli, "make_engine", make_engine)
    yield tmp_path
    for one in made:
        one.dispose()


@pytest.fixture
def log(engine: Engine, keys: Path, checkpoint_file: Path) -> Iterator[AuditChain]:
    """The chain, filled as the gateway fills it: events sealed, one activity a day."""
    clock = FrozenClock(START)
    chain = AuditChain(
        engine, CheckpointSigner.from_keys_dir(keys), clock, checkpoint_file=checkpoint_file
    )
    seal = EventSeal(FileKeyRing(keys).current)
    for activity, actor in _activities():
        chain.append(
            [seal.seal(e) for e in audit_events(activity, actor, clock.now(), source=SOURCE)]
        )
        clock.advance(timedelta(days=1))
    yield chain
    chain.close()


def report(*args: str) -> Result:
    return runner.invoke(app, ["audit", "report", *args])


def lines(result: Result) -> list[str]:
    """The table's rows, spaces squeezed."""
    return [" ".join(line.split()) for line in result.stdout.splitlines() if line.strip()]


def test_the_report_says_when_who_what_why_and_under_which_consent(
    env: Path, log: AuditChain
) -> None:
    result = report()
    assert result.exit_code == 0, result.output
    out = lines(result)
    assert out[0] == "When (UTC) Who What Why Consent"
    text = "\n".join(out)
    assert (
        "2026-11-23 09:00:00Z Harbor Community Clinic (harbor-clinic) read the care plan "
        "CarePlan/abc (version 2) treatment; the contributor's own record"
    ) in text
    assert (
        "2026-11-24 09:00:00Z Northside Legal Aid (northside-legal-aid) read the task Task/t1 "
        "(version 1) legal services; released by a Consent; redacted: shelter-locations "
        "Consent/c1"
    ) in text
    # A search: one line per survivor's event with the query opened, then a line per record.
    assert text.count("searched for CarePlan records") == 2
    assert "searched for CarePlan records (2 found) treatment" in text
    assert "query: status=active&_count=10" in text
    assert "released the care plan CarePlan/def (version 1) treatment; released by a Consent" in (
        text
    )
    assert "Consent/c1" in next(line for line in out if "CarePlan/def" in line)
    assert (
        "Northside Legal Aid (northside-legal-aid) was refused a read of Task/x legal services; "
        "refused: no consent releases it"
    ) in text
    assert (
        "St Mary's Hospital (st-marys-hospital) read the patient record Patient/p1 (version 3) "
        "emergency treatment (break-glass); break-glass emergency access "
        "(rule emergency-treatment)"
    ) in text
    assert (
        "was refused a read of CarePlan/z legal services; refused: denied by a Consent Consent/c9"
    ) in text
    assert "was refused a search legal services; refused: the token's scopes do not allow it" in (
        text
    )
    # Writes and the report's own operator event are not disclosures.
    assert "Task/new" not in text
    assert "operator" not in text
    assert result.stderr == "11 line(s) from 8 event(s)\n"


def test_the_report_in_spanish(env: Path, log: AuditChain) -> None:
    result = report("--lang", "es")
    assert result.exit_code == 0, result.output
    out = lines(result)
    assert out[0] == "Cuándo (UTC) Quién Qué Por qué Consentimiento"
    text = "\n".join(out)
    assert "leyó el plan de atención CarePlan/abc (versión 2) tratamiento; registro propio" in text
    assert "servicios legales; divulgado por un consentimiento; con supresiones" in text
    assert "buscó registros CarePlan (encontrados: 2)" in text
    assert "consulta: status=active&_count=10" in text
    assert "se le denegó la lectura de Task/x servicios legales; rechazado: ningún" in text
    assert "tratamiento de emergencia (acceso de emergencia); acceso de emergencia (regla" in text
    assert "rechazado: denegado por un consentimiento Consent/c9" in text
    assert "line(s)" not in result.stderr
    assert "línea(s)" in result.stderr


def test_patient_filters_to_one_survivor(env: Path, log: AuditChain) -> None:
    result = report("--patient", "p2")
    assert result.exit_code == 0, result.output
    text = "\n".join(lines(result))
    assert "CarePlan/ghi" in text
    assert "was refused a read of Task/x" in text
    for other in ("CarePlan/abc", "Task/t1", "Patient/p1", "CarePlan/z"):
        assert other not in text
    # the scope refusal names no survivor
    assert "was refused a search" not in text
    assert report("--patient", "Patient/p2").stdout == result.stdout


def test_since_filters_by_the_recorded_date(env: Path, log: AuditChain) -> None:
    result = report("--since", "2026-11-27")  # the break-glass read's day onwards
    assert result.exit_code == 0, result.output
    text = "\n".join(lines(result))
    assert "Patient/p1 (version 3)" in text
    assert "CarePlan/z" in text
    for earlier in ("CarePlan/abc", "Task/t1", "Task/x"):
        assert earlier not in text
    instant = report("--since", "2026-11-27T10:00:00+01:00")  # 09:00Z: the same day
    assert instant.stdout == result.stdout


def test_an_empty_result_is_one_line(env: Path, log: AuditChain) -> None:
    result = report("--since", "2030")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == EN.empty
    assert report("--patient", "nobody", "--lang", "es").stdout.strip() == ES.empty


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "--since must be a FHIR date"),
        (["--since", "2026-13-01"], "--since is not a valid date"),
        (["--since", "[/bold]"], "--since must be a FHIR date"),
        (["--lang", "fr"], "--lang must be one of en, es"),
        (["--patient", "a b"], "--patient must be a Patient id"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    env: Path, log: AuditChain, args: list[str], message: str
) -> None:
    result = report(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert message in result.stderr


def test_the_report_is_itself_audited(env: Path, log: AuditChain) -> None:
    before = sum(1 for _ in log.rows())
    assert report().exit_code == 0
    after = [row[2] for row in log.rows()]
    assert len(after) == before + 1
    assert "operator: gateway audit report" in after[-1]


def test_a_query_that_cannot_be_opened_stays_sealed(env: Path, log: AuditChain) -> None:
    """Under a key ring that lacks its key (or when it fails its integrity check)."""
    sealed = next((row[0], row[2]) for row in log.rows() if SEALED_QUERY in row[2])
    lines = EventLines(EN, {}, ReportFilter(), opener(EventSeal.ephemeral()))
    what = next(lines([sealed]))[0].what
    assert "query sealed" in what
    assert "status=active" not in what


def test_event_text_is_printed_as_text_not_markup() -> None:
    """A partner's query is shown as typed: rich markup or terminal control characters in it
    are not interpreted."""
    event = audit_events(
        Activity("search-type", "Task", query="name=[bold red]x[/]\x1b[2J"),
        CLINIC,
        START,
        source=SOURCE,
    )[0]
    out = Console(record=True, width=300, color_system=None)
    print_report([lines_of(1, event, EN, {})], out, EN)
    text = out.export_text()
    assert "name=[bold red]x[/]\ufffd[2J" in text
    assert "\x1b" not in text


def test_every_language_has_every_phrase() -> None:
    """The two tables name the same codes and rules (a phrase missing in one language would
    show the other's code)."""
    for phrases in PHRASES.values():
        assert phrases.purposes.keys() == EN.purposes.keys()
        assert phrases.rules.keys() == EN.rules.keys()
        assert phrases.thing.keys() == EN.thing.keys()
        assert phrases.refused_actions.keys() == EN.refused_actions.keys()
        assert phrases.refused_bare.keys() == EN.refused_bare.keys()


def test_parse_since_reads_fhir_dates_as_utc() -> None:
    assert parse_since("2026-11").isoformat() == "2026-11-01T00:00:00+00:00"
    assert parse_since("2026-11-27T10:00:00+01:00").isoformat() == "2026-11-27T09:00:00+00:00"
    with pytest.raises(ValueError, match="FHIR date"):
        parse_since("20261127")


def test_a_long_log_is_printed_a_page_at_a_time_with_one_header() -> None:
    """Each page is printed before the next one is read (a log of millions of events is never
    held in memory), and the pages read as one table."""
    out = Console(record=True, width=300, color_system=None)
    events = [
        audit_events(
            Activity(
                "read",
                "CarePlan",
                disclosed=(Disclosed("CarePlan", f"cp{n}", 1, "p1", "contributor"),),
            ),
            CLINIC,
            START,
            source=SOURCE,
        )[0]
        for n in range(7)
    ]

    def produced() -> Iterator[list[ReportLine]]:
        for n, event in enumerate(events):
            if n == 4:  # two pages of two are out before the fifth event is read
                assert "CarePlan/cp3 " in out.export_text(clear=False)
                assert "CarePlan/cp4 " not in out.export_text(clear=False)
            yield lines_of(n, event, EN, {"harbor-clinic": "Harbor Community Clinic"})

    assert print_report(produced(), out, EN, page=2) == 7
    text = out.export_text()
    assert text.count("When (UTC)") == 1
    assert all(f"CarePlan/cp{n} (version 1)" in text for n in range(7))


def test_names_come_from_the_events_when_the_partners_file_cannot_be_read(
    env: Path, log: AuditChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_PARTNERS_FILE", str(env / "missing.yaml"))
    result = report()
    assert result.exit_code == 0, result.output
    assert "Organization/harbor-clinic (harbor-clinic) read the care plan" in " ".join(
        result.stdout.split()
    )
    assert result.stderr.startswith("warning: partner names as recorded in the events (")
