"""REST throughput of the gateway over loopback, measured with wrk, against two baselines.

Three scenarios, each a wrk run per server, on a fresh database seeded through
``SqlStore.write_many`` (SQLite; PostgreSQL's ``bench_rest`` database with ``--postgres``):

- **read-by-id (own)**: ``GET /fhir/Patient/{id}`` rotating over 1,000 Patients, read by the
  partner that contributed them (``test-admin``): no consent decision beyond "own";
- **search(100) (own)**: ``GET /fhir/CarePlan?subject=Patient/{id}&_count=100``, a 100-entry
  searchset Bundle, same requester;
- **released read**: the path partners take. The shelter (``riverside-shelter``, kind shelter)
  contributed 1,000 Patients and 2 CarePlans each, labelled as the gateway labels them
  (``labels_for``: shelter data is confidentiality R), each survivor with a written,
  time-limited release (a Consent the shelter recorded) to ``Organization/harbor-clinic`` for
  TREAT; the clinic (kind clinic, purpose TREAT) reads ``GET /fhir/CarePlan/{id}`` rotating over
  the 2,000 of them: consent decision, redactions, audit event per read.

Servers, each a granian child process on a free 127.0.0.1 port with the same worker count:

- **gateway**: the real app (``benchmarks.partner_app:build``: ``create_app`` with a fixed
  requester named by the environment, because the benchmark has no tokens) with encryption at
  rest, the search index, metrics middleware and the audit chain in the same database; access
  log off (WARNING) unless ``--also-info`` adds a run with the INFO access log (to a file). One
  server as ``test-admin`` (the own scenarios), one as ``harbor-clinic`` (the released read).
- **bare**: Starlette answering the very bytes the gateway stores / the Bundle it builds, from a
  dict (``benchmarks.partner_app:bare``): the ceiling for Python + granian on this machine.
- **naive** (own scenarios): FastAPI doing ``model_validate_json(raw).model_dump_json()`` with
  fhir.resources R4B models on every resource it returns: what "serve stored bytes" avoids.

The app factories live in benchmarks/ so that these files, copied into an older checkout, measure
it the same way. Prints requests/s, p50/p99 latency, the gateway/baseline ratios beside their
targets (own read ≥ 0.6x bare and ≥ 3x naive) and the gateway's resident memory (granian main
process + workers) against the 300 MB target. Nothing here asserts on timings.

    .venv/bin/python benchmarks/bench_rest.py [--quick] [--workers N] [--also-info] [--postgres]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, benchmarks

import orjson
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import Engine, text

from benchmarks.baseline_apps import DATA_ENV
from benchmarks.databases import DEFAULT_POSTGRES
from benchmarks.fhir_data import care_plan, patient
from benchmarks.servers import Server, granian, http_get, tree_rss
from gateway.access.requester import Requester
from gateway.clock import SystemClock
from gateway.consent.labels import LabelTables, labels_for, load_label_tables
from gateway.consent.store import ConsentedStore
from gateway.disclose.interactions import Interactions, Prefer
from gateway.keys import FileKeyRing, init_keys
from gateway.store.database import downgrade, make_engine, upgrade
from gateway.store.sql import SqlStore
from tests.support.valid import valid_all

ROOT = Path(__file__).resolve().parents[1]
GATEWAY_FACTORY = "benchmarks.partner_app:build"
BARE_FACTORY = "benchmarks.partner_app:bare"
NAIVE_FACTORY = "benchmarks.baseline_apps:naive_app"
PUBLIC_BASE = "http://127.0.0.1:8080"  # only used for fullUrls; identical for every server
RSS_TARGET = 300 * 1024 * 1024
READ_VS_BARE_TARGET = 0.6
READ_VS_NAIVE_TARGET = 3.0
SEARCH_COUNT = 100
PG_DATABASE = "bench_rest"  # its own: bench_oracles & co. reset `bench` under whoever uses it

DONE_LUA = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%.0f duration_us=%.0f bytes=%.0f p50_us=%.1f p90_us=%.1f p99_us=%.1f "
    .. "max_us=%.1f connect=%.0f read=%.0f write=%.0f status=%.0f timeout=%.0f\\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""

# Who each gateway server authenticates every request as (benchmarks/partner_app.py).
# The own scenarios: the historical fixed requester, seeding in its name makes the data its own.
OWNER = "test-admin"
OWNER_ENV = {
    "BENCH_PARTNER": OWNER,
    "BENCH_PARTNER_KIND": "admin",
    "BENCH_PARTNER_ORGANIZATION": "-",
    "BENCH_PARTNER_PURPOSES": "",
}
# The released read: the clinic reading what the shelter released to it.
SHELTER, SHELTER_KIND = "riverside-shelter", "shelter"
CLINIC = "harbor-clinic"
CLINIC_ENV = {
    "BENCH_PARTNER": CLINIC,
    "BENCH_PARTNER_KIND": "clinic",
    "BENCH_PARTNER_ORGANIZATION": f"Organization/{CLINIC}",
    "BENCH_PARTNER_PURPOSES": "TREAT",
    "BENCH_PARTNER_KINDS": f"{SHELTER}:{SHELTER_KIND},{CLINIC}:clinic",
}


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    bytes: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # socket errors and timeouts
    non_2xx: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        return self.errors == 0 and self.non_2xx == 0


@dataclass
class ServerRun:
    label: str
    all: dict[str, list[WrkResult]] = field(default_factory=dict)
    rss_idle: int = 0
    rss_after: int = 0

    def add(self, scenario: str, result: WrkResult) -> None:
        self.all.setdefault(scenario, []).append(result)

    @property
    def best(self) -> dict[str, WrkResult]:
        return {s: max(rs, key=lambda r: r.rps) for s, rs in self.all.items()}


@dataclass(frozen=True, slots=True)
class Seeded:
    database: str  # SQLAlchemy URL
    patient_ids: list[str]
    subject: str
    baseline_data: Path
    read_check: tuple[str, bytes]  # one Patient id and its stored bytes
    search_path: str
    released_ids: list[str]  # the shelter's CarePlans released to the clinic
    released_check: tuple[str, bytes, str]  # one of them: id, stored bytes, subject
    hidden_id: str  # a shelter CarePlan of a survivor with no release: the clinic gets 404


# -- seeding -------------------------------------------------------------------------------------


def _labelled(doc: dict[str, Any], kind: str, tables: LabelTables) -> dict[str, Any]:
    """The resource with the ``meta.security`` the gateway sets when ``kind`` writes it."""
    security = labels_for(doc, contributor_kind=kind, tables=tables)
    if not security:
        return doc
    return {**doc, "meta": {**(doc.get("meta") or {}), "security": security}}


def seed_released(
    store: SqlStore, rng: random.Random, survivors: int, plans_each: int, console: Console
) -> tuple[dict[str, str], str, str]:
    """The shelter's survivors, each with ``plans_each`` CarePlans and a release of her records
    to the clinic for TREAT (a Consent the shelter recorded), plus one survivor with no release.
    Returns ({CarePlan id: stored JSON}, one released plan's subject, the unreleased plan's id)."""
    with warnings.catch_warnings():  # it imports the TestClient, which warns about httpx
        warnings.simplefilter("ignore")
        from tests.support.network import release_consent

    tables = load_label_tables(ROOT / "consent_policies")
    plans: dict[str, str] = {}
    subject = ""
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("seeding the shelter's released records", total=survivors)
        for start in range(0, survivors, 250):
            numbers = range(start, min(start + 250, survivors))
            people = [_labelled(patient(rng, 20_000 + n), SHELTER_KIND, tables) for n in numbers]
            stored = store.write_many(valid_all(people, SHELTER))
            docs: list[dict[str, Any]] = []
            for p in stored:
                ref = f"Patient/{p.id}"
                subject = subject or ref
                docs += [
                    _labelled(care_plan(rng, 20_000 + len(plans) + k, ref), SHELTER_KIND, tables)
                    for k in range(plans_each)
                ]
                docs.append(
                    _labelled(
                        release_consent(p.id, recipient=f"Organization/{CLINIC}", purpose="TREAT"),
                        SHELTER_KIND,
                        tables,
                    )
                )
            for written in store.write_many(valid_all(docs, SHELTER)):
                if written.resource_type == "CarePlan":
                    plans[written.id] = written.body.decode()
            progress.advance(task, len(numbers))
    # The control: a survivor of the shelter's who released nothing.
    alone = store.write_many(
        valid_all([_labelled(patient(rng, 29_999), SHELTER_KIND, tables)], SHELTER)
    )[0]
    hidden = store.write_many(
        valid_all(
            [_labelled(care_plan(rng, 29_999, f"Patient/{alone.id}"), SHELTER_KIND, tables)],
            SHELTER,
        )
    )[0]
    return plans, subject, hidden.id


def seed(
    tmp: Path, url: str, args: argparse.Namespace, console: Console
) -> tuple[dict[str, str], Seeded]:
    """Create keys and a seeded database; write the baselines' data file."""
    keys_dir = tmp / "keys"
    init_keys(keys_dir, datetime.now(UTC))
    engine = make_engine(url)
    if not url.startswith("sqlite"):
        downgrade(engine, "base")
    upgrade(engine)
    store = SqlStore(engine, FileKeyRing(keys_dir), SystemClock())
    rng = random.Random(412)
    patients, plans = args.patients, args.plans
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("seeding Patients", total=patients)
            stored_patients = []
            for start in range(0, patients, 500):
                batch = [patient(rng, n) for n in range(start, min(start + 500, patients))]
                stored_patients += store.write_many(valid_all(batch, OWNER))
                progress.advance(task, len(batch))
            ids = [p.id for p in stored_patients]
            subject = f"Patient/{ids[0]}"
            # The shared subject's plans, plus one plan for each of 300 other Patients as noise.
            docs = [care_plan(rng, n, subject) for n in range(plans)]
            docs += [care_plan(rng, 10_000 + n, f"Patient/{i}") for n, i in enumerate(ids[1:301])]
            task = progress.add_task("seeding CarePlans", total=len(docs))
            for start in range(0, len(docs), 500):
                store.write_many(valid_all(docs[start : start + 500], OWNER))
                progress.advance(task, len(docs[start : start + 500]))
        released, released_subject, hidden_id = seed_released(
            store, rng, args.released, args.released_plans, console
        )
        if not url.startswith("sqlite"):  # a live database has statistics; a fresh one not yet
            with engine.begin() as conn:
                conn.execute(text("ANALYZE"))
        bodies = {pid: store.read("Patient", pid).body.decode() for pid in ids}
        params = [("subject", subject), ("_count", str(SEARCH_COUNT))]
        interactions = Interactions(f"{PUBLIC_BASE}/fhir", default_count=50, max_count=500)
        query = interactions.parse_query("CarePlan", params, False)
        page = store.search(query)
        if len(page.matches) != SEARCH_COUNT:
            raise RuntimeError(f"the search matched {len(page.matches)}, not {SEARCH_COUNT}")
        bundle = interactions.search(
            ConsentedStore(store, Requester(SHELTER, "shelter", scopes=("system/*.cruds",))),
            "CarePlan",
            params,
            prefer=Prefer(),
            now=SystemClock().now(),
        ).body
        assert bundle is not None
        self_url = orjson.loads(bundle)["link"][0]["url"]
    finally:
        store.close()
        engine.dispose()
    data = {
        "patients": bodies,
        "subject": subject,
        "search_bundle": bundle.decode(),
        "careplans": [m.body.decode() for m in page.matches],
        "total": page.total,
        "self_url": self_url,
        "base": f"{PUBLIC_BASE}/fhir",
        "released_careplans": released,
    }
    data_path = tmp / "baseline-data.json"
    data_path.write_bytes(orjson.dumps(data))
    env = {
        "GATEWAY_DATABASE_URL": url,
        "GATEWAY_KEYS_DIR": str(keys_dir),
        "GATEWAY_BASE_URL": PUBLIC_BASE,
        "GATEWAY_LOG_LEVEL": "WARNING",
        DATA_ENV: str(data_path),
    }
    search_path = f"/fhir/CarePlan?subject={subject}&_count={SEARCH_COUNT}"
    released_ids = list(released)
    first = released_ids[0]
    if orjson.loads(released[first])["subject"]["reference"] != released_subject:
        raise RuntimeError("the first released CarePlan is not the first survivor's")
    return env, Seeded(
        database=url,
        patient_ids=ids,
        subject=subject,
        baseline_data=data_path,
        read_check=(ids[0], bodies[ids[0]].encode()),
        search_path=search_path,
        released_ids=released_ids,
        released_check=(first, released[first].encode(), released_subject),
        hidden_id=hidden_id,
    )


def postgres_url(args: argparse.Namespace) -> str:
    """PostgreSQL's ``bench_rest`` database (created if missing) on the server named."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    base = make_url(
        args.postgres_url or os.environ.get("GATEWAY_TEST_POSTGRES_URL") or DEFAULT_POSTGRES
    )
    admin = base.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,))
        if found.fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(PG_DATABASE)))
    return base.set(database=PG_DATABASE).render_as_string(hide_password=False)


# -- wrk -----------------------------------------------------------------------------------------


def rotating_lua(path: Path, resource_type: str, ids: Sequence[str]) -> Path:
    """A wrk script reading ``resource_type`` by id, rotating over ``ids``."""
    listed = ",".join(f'"{i}"' for i in ids)
    path.write_text(
        f"local ids = {{{listed}}}\n"
        "local n = 0\n"
        'local headers = {["Accept"] = "application/fhir+json"}\n'
        "request = function()\n"
        "  n = n + 1\n"
        f'  return wrk.format("GET", "/fhir/{resource_type}/" .. ids[(n % #ids) + 1], headers)\n'
        "end\n" + DONE_LUA
    )
    return path


def write_lua(tmp: Path, seeded: Seeded) -> dict[str, Path]:
    search = tmp / "search.lua"
    search.write_text('wrk.headers["Accept"] = "application/fhir+json"\n' + DONE_LUA)
    return {
        "read": rotating_lua(tmp / "read.lua", "Patient", seeded.patient_ids),
        "search": search,
        "released": rotating_lua(tmp / "released.lua", "CarePlan", seeded.released_ids),
    }


def run_wrk(url: str, script: Path, *, seconds: int, connections: int, threads: int) -> WrkResult:
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError("benchmarks only talk to 127.0.0.1")
    command = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
        "-s", str(script), url,
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    v = {k: float(x) for k, x in re.findall(r"(\w+)=([0-9.]+)", line)}
    return WrkResult(
        requests=int(v["requests"]),
        seconds=v["duration_us"] / 1e6,
        bytes=int(v["bytes"]),
        p50_ms=v["p50_us"] / 1000,
        p90_ms=v["p90_us"] / 1000,
        p99_ms=v["p99_us"] / 1000,
        max_ms=v["max_us"] / 1000,
        errors=int(v["connect"] + v["read"] + v["write"] + v["timeout"]),
        non_2xx=int(v["status"]),
    )


# -- servers -----------------------------------------------------------------------------------

OWN = ("read", "search")
SCENARIOS = {
    "read": "read-by-id (own)",
    "search": f"search({SEARCH_COUNT}) (own)",
    "released": "released read (consent, audited)",
}


@dataclass(frozen=True, slots=True)
class Contender:
    key: str
    label: str
    factory: str
    env: dict[str, str]
    exact: bool  # answers the stored bytes unchanged
    serves: tuple[str, ...]  # scenario keys
    gateway: bool = False
    optional: bool = False  # skipped (with a warning) rather than failing the run


def contenders(env: dict[str, str], args: argparse.Namespace) -> list[Contender]:
    owner, clinic = {**env, **OWNER_ENV}, {**env, **CLINIC_ENV}
    out = [
        Contender("gateway", "gateway", GATEWAY_FACTORY, owner, True, OWN, gateway=True),
        Contender("partner", "gateway, as the clinic", GATEWAY_FACTORY, clinic, False,
                  ("released",), gateway=True),
        Contender("bare", "bare", BARE_FACTORY, env, exact=True, serves=(*OWN, "released")),
        Contender("naive", "naive", NAIVE_FACTORY, env, exact=False, serves=OWN),
    ]  # fmt: skip
    if args.also_info:
        out.append(
            Contender(
                "gateway-info",
                "gateway, INFO access log",
                GATEWAY_FACTORY,
                {**owner, "GATEWAY_LOG_LEVEL": "INFO"},
                exact=True,
                serves=OWN,
                gateway=True,
            )
        )
    return out


def audit_rows(database: str) -> int:
    engine = make_engine(database)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one())
    finally:
        engine.dispose()


def _audited(database: str, request: Callable[[], None]) -> int:
    """Audit events written by ``request`` (waiting up to 2 s for them to land)."""
    before = audit_rows(database)
    request()
    deadline = time.monotonic() + 2
    while (after := audit_rows(database)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    return after - before


def check_server(server: Server, who: Contender, seeded: Seeded) -> list[str]:
    """Before timing anything: every URL the server is timed on answers 200 with the expected
    content. Returns notes for the report."""
    notes: list[str] = []
    if "read" in who.serves:
        rid, stored = seeded.read_check
        status, body = http_get(f"{server.base}/fhir/Patient/{rid}")
        if status != 200 or (who.exact and body != stored):
            raise RuntimeError(f"{who.label}: read answered {status} with unexpected content")
    if "search" in who.serves:
        status, body = http_get(server.base + seeded.search_path, timeout=30)
        entries = orjson.loads(body).get("entry", []) if status == 200 else []
        if status != 200 or len(entries) != SEARCH_COUNT:
            raise RuntimeError(f"{who.label}: search answered {status} with {len(entries)} entries")
    if "released" in who.serves:
        rid, stored, subject = seeded.released_check
        answer: list[tuple[int, bytes]] = []
        url = f"{server.base}/fhir/CarePlan/{rid}"
        events = _audited(seeded.database, lambda: answer.append(http_get(url)))
        status, body = answer[0]
        doc = orjson.loads(body) if status == 200 else {}
        if (
            status != 200
            or doc.get("id") != rid
            or doc.get("subject", {}).get("reference") != subject
            or (who.exact and body != stored)
        ):
            raise RuntimeError(f"{who.label}: released read answered {status}: {body[:300]!r}")
        hidden, _ = http_get(f"{server.base}/fhir/CarePlan/{seeded.hidden_id}")
        if who.gateway:
            if hidden != 404:
                raise RuntimeError(f"{who.label}: an unreleased CarePlan answered {hidden}")
            if events < 1:
                raise RuntimeError(f"{who.label}: the released read wrote no audit event")
            changed = "redacted, not the stored bytes" if body != stored else "the stored bytes"
            notes.append(
                f"{who.label}: released CarePlan → 200 ({len(body):,} bytes; stored "
                f"{len(stored):,}; {changed}), {events} audit event(s) per read; the "
                f"unreleased survivor's CarePlan → {hidden}"
            )
    return notes


def settle(server: Server, limit: float = 60.0) -> None:
    """Wait until requests wrk left queued are done: /healthz answers promptly twice running."""
    deadline = time.monotonic() + limit
    quick = 0
    while quick < 2 and time.monotonic() < deadline:
        started = time.monotonic()
        http_get(server.base + "/healthz", timeout=limit)
        quick = quick + 1 if time.monotonic() - started < 0.02 else 0


def start_all(
    stack: ExitStack, plan: list[Contender], seeded: Seeded, args: argparse.Namespace, tmp: Path
) -> tuple[dict[str, tuple[Contender, Server]], list[str]]:
    """Every server runs for the whole benchmark (idle ones cost no CPU), so that the runs can be
    interleaved and a noisy neighbour on the machine hurts all of them alike."""
    console = Console(stderr=True)
    started: dict[str, tuple[Contender, Server]] = {}
    notes: list[str] = []
    for who in plan:
        log_path = tmp / f"{who.key}.log"
        try:
            server = stack.enter_context(
                granian(who.factory, who.env, workers=args.workers, log_path=log_path)
            )
            notes += check_server(server, who, seeded)
        except RuntimeError as exc:
            if not who.optional:
                raise
            console.print(f"[yellow]skipping {who.label}: {exc}")
            continue
        started[who.key] = (who, server)
    return started, notes


def measure_all(
    started: dict[str, tuple[Contender, Server]],
    seeded: Seeded,
    scripts: dict[str, Path],
    args: argparse.Namespace,
    console: Console,
) -> dict[str, ServerRun]:
    runs = {key: ServerRun(who.label) for key, (who, _) in started.items()}
    for key, (_, server) in started.items():
        runs[key].rss_idle = tree_rss(server.pid)
    paths = {  # the Lua scripts rotate over every id
        "read": f"/fhir/Patient/{seeded.patient_ids[0]}",
        "search": seeded.search_path,
        "released": f"/fhir/CarePlan/{seeded.released_ids[0]}",
    }
    wrk = {"connections": args.connections, "threads": args.threads}
    total = args.repeat * sum(len(who.serves) for who, _ in started.values())
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("wrk runs", total=total)
        for round_no in range(args.repeat):
            for scenario, path in paths.items():
                for key, (who, server) in started.items():
                    if scenario not in who.serves:
                        continue
                    progress.update(bar, description=f"{who.label}: {scenario}")
                    if round_no == 0:
                        run_wrk(server.base + path, scripts[scenario], seconds=args.warmup, **wrk)
                        settle(server)
                    result = run_wrk(
                        server.base + path, scripts[scenario], seconds=args.duration, **wrk
                    )
                    settle(server)
                    runs[key].add(scenario, result)
                    progress.advance(bar)
    for key, (_, server) in started.items():
        runs[key].rss_after = tree_rss(server.pid)
    return runs


# -- report --------------------------------------------------------------------------------------


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:,.0f} MB"


def _ratio(num: float, den: float, target: float | None) -> str:
    if not den:
        return "n/a"
    value = num / den
    if target is None:
        return f"{value:.2f}x"
    mark = "[green]✓[/green]" if value >= target else "[red]✗[/red]"
    return f"{value:.2f}x {mark} (≥ {target:g}x)"


VARIANTS = {
    "gateway": "test-admin (own)",
    "gateway-info": "test-admin (own), INFO log",
    "partner": "harbor-clinic ← shelter",
}


def report(
    runs: dict[str, ServerRun], notes: list[str], args: argparse.Namespace, console: Console
) -> None:
    database = "PostgreSQL" if args.postgres else "SQLite"
    setup = (
        f"best of {args.repeat} interleaved run(s) of wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration}s after a {args.warmup}s warm-up; granian --workers {args.workers}; "
        f"{database}; 127.0.0.1; {os.cpu_count()} CPUs shared by wrk and the servers.\n"
        "Gateway access log OFF (GATEWAY_LOG_LEVEL=WARNING) unless the row says otherwise."
    )
    table = Table(title="REST throughput: gateway vs baselines", caption=setup)
    for name in ("scenario", "gateway", "gateway req/s", "p50", "p99", "bare req/s", "naive req/s"):
        table.add_column(name, justify="left" if name in ("scenario", "gateway") else "right")
    table.add_column("gateway / bare", justify="right")
    table.add_column("gateway / naive", justify="right")
    for scenario, title in SCENARIOS.items():
        for key, variant in VARIANTS.items():
            if key not in runs or scenario not in runs[key].all:
                continue
            g = runs[key].best[scenario]
            b = runs["bare"].best.get(scenario) if "bare" in runs else None
            n = runs["naive"].best.get(scenario) if "naive" in runs else None
            is_read = scenario == "read"
            table.add_row(
                title,
                variant,
                f"{g.rps:,.0f}",
                f"{g.p50_ms:.2f} ms",
                f"{g.p99_ms:.2f} ms",
                f"{b.rps:,.0f}" if b else "—",
                f"{n.rps:,.0f}" if n else "—",
                _ratio(g.rps, b.rps, READ_VS_BARE_TARGET if is_read else None) if b else "—",
                _ratio(g.rps, n.rps, READ_VS_NAIVE_TARGET if is_read else None) if n else "—",
            )
    console.print(table)
    for note in notes:
        console.print(f"  {note}")

    detail = Table(title="Every server (best run; spread = req/s of every run)")
    for name in ("server", "scenario", "req/s", "spread", "p50", "p90", "p99", "max", "errors"):
        detail.add_column(name, justify="left" if name in ("server", "scenario") else "right")
    for run in runs.values():
        for scenario, r in run.best.items():
            detail.add_row(
                run.label,
                SCENARIOS[scenario],
                f"{r.rps:,.0f}",
                " / ".join(f"{x.rps:,.0f}" for x in run.all[scenario]),
                f"{r.p50_ms:.2f} ms",
                f"{r.p90_ms:.2f} ms",
                f"{r.p99_ms:.2f} ms",
                f"{r.max_ms:.1f} ms",
                "0" if r.ok else f"[red]{r.errors} socket, {r.non_2xx} non-2xx[/red]",
            )
    console.print(detail)

    memory = Table(title="Resident memory (granian main process + workers, /proc VmRSS)")
    for name in ("server", "idle", "after the runs", "target"):
        memory.add_column(name, justify="left" if name == "server" else "right")
    for key, run in runs.items():
        target = ""
        if key in VARIANTS:
            mark = "[green]✓" if run.rss_after < RSS_TARGET else "[red]✗"
            target = f"{mark} < {_mb(RSS_TARGET)}"
        memory.add_row(run.label, _mb(run.rss_idle), _mb(run.rss_after), target)
    console.print(memory)
    bad = [
        f"{r.label}/{s}"
        for r in runs.values()
        for s, xs in r.all.items()
        if any(not x.ok for x in xs)
    ]
    if bad:
        console.print(f"[red]runs with errors or non-2xx answers (not comparable): {bad}")


# -- main ----------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up (first round)")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved rounds; best is kept")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--workers", type=int, default=1, help="granian workers, every server")
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--plans", type=int, default=120, help="CarePlans of the one subject")
    parser.add_argument("--released", type=int, default=1000, help="the shelter's survivors")
    parser.add_argument("--released-plans", type=int, default=2, help="CarePlans per survivor")
    parser.add_argument("--also-info", action="store_true", help="add the gateway with INFO logs")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help=f"the gateway on PostgreSQL's {PG_DATABASE} database (reset) instead of SQLite",
    )
    parser.add_argument(
        "--postgres-url", help="server to use (default: $GATEWAY_TEST_POSTGRES_URL, else local)"
    )
    parser.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-up (smoke test)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.repeat = 3, 1, 1
    if args.plans < SEARCH_COUNT or args.patients < 301:
        parser.error(f"need ≥ {SEARCH_COUNT} plans and ≥ 301 patients")
    if args.released < 1 or args.released_plans < 1:
        parser.error("need ≥ 1 released survivor with ≥ 1 CarePlan")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 140)
    if shutil.which("wrk") is None:
        console.print("[red]wrk is not installed[/red] (apt-get install -y wrk)")
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    tmp = Path(tempfile.mkdtemp(prefix="bench-rest-"))
    url = postgres_url(args) if args.postgres else f"sqlite:///{tmp / 'bench.db'}"
    try:
        env, seeded = seed(tmp, url, args, console)
        scripts = write_lua(tmp, seeded)
        with ExitStack() as stack:
            with console.status("starting the servers"):
                started, notes = start_all(stack, contenders(env, args), seeded, args, tmp)
            runs = measure_all(started, seeded, scripts, args, console)
        report(runs, notes, args, console)
        if args.keep:
            console.print(f"logs and database kept in {tmp}")
    finally:
        if args.postgres:
            engine: Engine = make_engine(url)
            downgrade(engine, "base")
            engine.dispose()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
