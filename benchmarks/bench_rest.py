"""REST throughput of the gateway over loopback, measured with wrk, against two baselines.

Measures ``GET /fhir/Patient/{id}`` (read by id, rotating over 1,000 Patients) and
``GET /fhir/CarePlan?subject=Patient/{id}&_count=100`` (a 100-entry searchset Bundle) on three
servers, each a granian child process on a free 127.0.0.1 port with the same worker count:

- **gateway**: the real app (``tests.support.trusted_app:build``, a fixed test requester because
  auth is not built yet) on a fresh SQLite database seeded through ``SqlStore.write_many``, with
  encryption at rest, the search index, metrics middleware; access log off (WARNING) unless
  ``--also-info`` adds a run with the INFO access log (written to a file).
- **bare**: Starlette answering the very bytes the gateway stores / the Bundle it builds, from a
  dict: the ceiling for Python + granian on this machine.
- **naive**: FastAPI doing ``model_validate_json(raw).model_dump_json()`` with fhir.resources R4B
  models on every resource it returns: what the gateway's "serve stored bytes" design avoids.

Prints requests/s, p50/p99 latency, the gateway/baseline ratios beside their targets (read
≥ 0.6x bare and ≥ 3x naive) and the gateway's resident memory (granian main process + workers)
against the 300 MB target. Nothing here asserts on timings.

    .venv/bin/python benchmarks/bench_rest.py [--quick] [--workers N] [--also-info]
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
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, benchmarks

import orjson
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from benchmarks.baseline_apps import DATA_ENV
from benchmarks.fhir_data import care_plan, patient
from benchmarks.servers import Server, granian, http_get, tree_rss
from gateway.clock import SystemClock
from gateway.disclose.interactions import Interactions, Prefer
from gateway.keys import FileKeyRing, init_keys
from gateway.store.database import make_engine, upgrade
from gateway.store.sql import SqlStore

GATEWAY_FACTORY = "tests.support.trusted_app:build"
BARE_FACTORY = "benchmarks.baseline_apps:bare_app"
NAIVE_FACTORY = "benchmarks.baseline_apps:naive_app"
PUBLIC_BASE = "http://127.0.0.1:8080"  # only used for fullUrls; identical for every server
RSS_TARGET = 300 * 1024 * 1024
READ_VS_BARE_TARGET = 0.6
READ_VS_NAIVE_TARGET = 3.0
SEARCH_COUNT = 100

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
    patient_ids: list[str]
    subject: str
    baseline_data: Path
    read_check: tuple[str, bytes]  # one Patient id and its stored bytes
    search_path: str


# -- seeding -------------------------------------------------------------------------------------


# The partner the trusted test app authenticates every request as (tests/support/trusted_app.py);
# seeding in its name makes the data its own, visible to it like a partner's own records.
REQUESTER = "test-admin"


def seed(tmp: Path, patients: int, plans: int, console: Console) -> tuple[dict[str, str], Seeded]:
    """Create keys and a seeded SQLite database; write the baselines' data file."""
    keys_dir = tmp / "keys"
    init_keys(keys_dir, datetime.now(UTC))
    url = f"sqlite:///{tmp / 'bench.db'}"
    engine = make_engine(url)
    upgrade(engine)
    store = SqlStore(engine, FileKeyRing(keys_dir), SystemClock())
    rng = random.Random(412)
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("seeding Patients", total=patients)
            stored_patients = []
            for start in range(0, patients, 500):
                batch = [patient(rng, n) for n in range(start, min(start + 500, patients))]
                stored_patients += store.write_many(batch, contributor=REQUESTER)
                progress.advance(task, len(batch))
            ids = [p.id for p in stored_patients]
            subject = f"Patient/{ids[0]}"
            # The shared subject's plans, plus one plan for each of 300 other Patients as noise.
            docs = [care_plan(rng, n, subject) for n in range(plans)]
            docs += [care_plan(rng, 10_000 + n, f"Patient/{i}") for n, i in enumerate(ids[1:301])]
            task = progress.add_task("seeding CarePlans", total=len(docs))
            for start in range(0, len(docs), 500):
                store.write_many(docs[start : start + 500], contributor=REQUESTER)
                progress.advance(task, len(docs[start : start + 500]))
        bodies = {pid: store.read("Patient", pid).body.decode() for pid in ids}
        params = [("subject", subject), ("_count", str(SEARCH_COUNT))]
        interactions = Interactions(f"{PUBLIC_BASE}/fhir", default_count=50, max_count=500)
        query = interactions.parse_query("CarePlan", params, False)
        page = store.search(query)
        if len(page.matches) != SEARCH_COUNT:
            raise RuntimeError(f"the search matched {len(page.matches)}, not {SEARCH_COUNT}")
        bundle = interactions.search(
            store, "CarePlan", params, prefer=Prefer(), now=SystemClock().now()
        ).body
        assert bundle is not None
        self_url = orjson.loads(bundle)["link"][0]["url"]
    finally:
        store.close()
    data = {
        "patients": bodies,
        "subject": subject,
        "search_bundle": bundle.decode(),
        "careplans": [m.body.decode() for m in page.matches],
        "total": page.total,
        "self_url": self_url,
        "base": f"{PUBLIC_BASE}/fhir",
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
    return env, Seeded(ids, subject, data_path, (ids[0], bodies[ids[0]].encode()), search_path)


# -- wrk -----------------------------------------------------------------------------------------


def write_lua(tmp: Path, patient_ids: Sequence[str]) -> dict[str, Path]:
    ids = ",".join(f'"{i}"' for i in patient_ids)
    read = tmp / "read.lua"
    read.write_text(
        f"local ids = {{{ids}}}\n"
        "local n = 0\n"
        'local headers = {["Accept"] = "application/fhir+json"}\n'
        "request = function()\n"
        "  n = n + 1\n"
        '  return wrk.format("GET", "/fhir/Patient/" .. ids[(n % #ids) + 1], headers)\n'
        "end\n" + DONE_LUA
    )
    search = tmp / "search.lua"
    search.write_text('wrk.headers["Accept"] = "application/fhir+json"\n' + DONE_LUA)
    return {"read": read, "search": search}


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


@dataclass(frozen=True, slots=True)
class Contender:
    key: str
    label: str
    factory: str
    env: dict[str, str]
    exact: bool  # answers the stored bytes unchanged
    optional: bool = False  # skipped (with a warning) rather than failing the run


def contenders(env: dict[str, str], args: argparse.Namespace) -> list[Contender]:
    out = [
        Contender("gateway", "gateway", GATEWAY_FACTORY, env, exact=True),
        Contender("bare", "bare", BARE_FACTORY, env, exact=True),
        Contender("naive", "naive", NAIVE_FACTORY, env, exact=False),
    ]
    if args.also_info:
        out.append(
            Contender(
                "gateway-info",
                "gateway, INFO access log",
                GATEWAY_FACTORY,
                {**env, "GATEWAY_LOG_LEVEL": "INFO"},
                exact=True,
            )
        )
    return out


def check_server(server: Server, who: Contender, seeded: Seeded) -> None:
    """Before timing anything: both URLs answer 200 with the expected content."""
    rid, stored = seeded.read_check
    status, body = http_get(f"{server.base}/fhir/Patient/{rid}")
    if status != 200 or (who.exact and body != stored):
        raise RuntimeError(f"{who.label}: read answered {status} with unexpected content")
    status, body = http_get(server.base + seeded.search_path, timeout=30)
    entries = orjson.loads(body).get("entry", []) if status == 200 else []
    if status != 200 or len(entries) != SEARCH_COUNT:
        raise RuntimeError(f"{who.label}: search answered {status} with {len(entries)} entries")


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
) -> dict[str, tuple[Contender, Server]]:
    """Every server runs for the whole benchmark (idle ones cost no CPU), so that the runs can be
    interleaved and a noisy neighbour on the machine hurts all of them alike."""
    console = Console(stderr=True)
    started: dict[str, tuple[Contender, Server]] = {}
    for who in plan:
        log_path = tmp / f"{who.key}.log"
        try:
            server = stack.enter_context(
                granian(who.factory, who.env, workers=args.workers, log_path=log_path)
            )
            check_server(server, who, seeded)
        except RuntimeError as exc:
            if not who.optional:
                raise
            console.print(f"[yellow]skipping {who.label}: {exc}")
            continue
        started[who.key] = (who, server)
    return started


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
    paths = {
        "read": f"/fhir/Patient/{seeded.patient_ids[0]}",  # read.lua rotates over all ids
        "search": seeded.search_path,
    }
    wrk = {"connections": args.connections, "threads": args.threads}
    total = args.repeat * len(paths) * len(started)
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("wrk runs", total=total)
        for round_no in range(args.repeat):
            for scenario, path in paths.items():
                for key, (who, server) in started.items():
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


SCENARIOS = {"read": "read-by-id", "search": f"search({SEARCH_COUNT})"}


def report(runs: dict[str, ServerRun], args: argparse.Namespace, console: Console) -> None:
    bare, naive = runs["bare"], runs["naive"]
    setup = (
        f"best of {args.repeat} interleaved run(s) of wrk -t{args.threads} -c{args.connections} "
        f"-d{args.duration}s after a {args.warmup}s warm-up; granian --workers {args.workers}; "
        f"127.0.0.1; {os.cpu_count()} CPUs shared by wrk and the servers.\n"
        "Gateway access log OFF (GATEWAY_LOG_LEVEL=WARNING) unless the row says otherwise."
    )
    table = Table(title="REST throughput: gateway vs baselines", caption=setup)
    for name in ("scenario", "gateway", "gateway req/s", "p50", "p99", "bare req/s", "naive req/s"):
        table.add_column(name, justify="left" if name in ("scenario", "gateway") else "right")
    table.add_column("gateway / bare", justify="right")
    table.add_column("gateway / naive", justify="right")
    variants = {
        "gateway": "trusted_app",
        "gateway-info": "trusted_app, INFO log",
    }
    for scenario, title in SCENARIOS.items():
        for key, variant in variants.items():
            if key not in runs:
                continue
            g = runs[key].best[scenario]
            b, n = bare.best[scenario], naive.best[scenario]
            is_read = scenario == "read"
            table.add_row(
                title,
                variant,
                f"{g.rps:,.0f}",
                f"{g.p50_ms:.2f} ms",
                f"{g.p99_ms:.2f} ms",
                f"{b.rps:,.0f}",
                f"{n.rps:,.0f}",
                _ratio(g.rps, b.rps, READ_VS_BARE_TARGET if is_read else None),
                _ratio(g.rps, n.rps, READ_VS_NAIVE_TARGET if is_read else None),
            )
    console.print(table)

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
        if key.startswith("gateway"):
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
    parser.add_argument("--also-info", action="store_true", help="add the gateway with INFO logs")
    parser.add_argument("--quick", action="store_true", help="3 s runs, 1 s warm-up (smoke test)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database)")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.repeat = 3, 1, 1
    if args.plans < SEARCH_COUNT or args.patients < 301:
        parser.error(f"need ≥ {SEARCH_COUNT} plans and ≥ 301 patients")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 140)
    if shutil.which("wrk") is None:
        console.print("[red]wrk is not installed[/red] (apt-get install -y wrk)")
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    tmp = Path(tempfile.mkdtemp(prefix="bench-rest-"))
    try:
        env, seeded = seed(tmp, args.patients, args.plans, console)
        scripts = write_lua(tmp, seeded.patient_ids)
        with ExitStack() as stack:
            with console.status("starting the servers"):
                started = start_all(stack, contenders(env, args), seeded, args, tmp)
            runs = measure_all(started, seeded, scripts, args, console)
        report(runs, args, console)
        if args.keep:
            console.print(f"logs and database kept in {tmp}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
