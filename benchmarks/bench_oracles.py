"""Existence oracles: can a hostile partner tell a record hidden from it from an absent one?

A partner with valid credentials and every scope (``harbor-clinic``, kind clinic, purpose TREAT,
``system/*.cruds``) asks about records another partner contributed (``riverside-shelter``, kind
shelter) that no Consent releases to it, and about ids, codes and identifiers nobody holds. The
answers must be indistinguishable: same status, same body (but for the ids and timestamps in
it), same header names, and the same time.

The real app (``tests.support.trusted_app:build``, authenticated as the clinic; audit chain on)
runs under granian on a free 127.0.0.1 port, on SQLite and on PostgreSQL (the dedicated ``bench``
database, see ``benchmarks/databases.py``). The data is seeded through the raw ``SqlStore`` as
the shelter before the server starts: Patients (HMIS PersonalID + the shelter's MRN), CarePlans,
ServiceRequests with distinct SNOMED / ICD-10-CM codes, Tasks; and a few Patients of the
clinic's own.

Scenarios, each a warm-up then N pairs (hidden, absent) in random order within each pair, with
fresh targets for every pair (no cache helps either side), timed with ``perf_counter_ns``
around each request on one keep-alive connection:

1. read      ``GET /fhir/CarePlan/{id}``
2. vread     ``GET /fhir/CarePlan/{id}/_history/1``
3. history   ``GET /fhir/CarePlan/{id}/_history``
4. update    ``PUT /fhir/CarePlan/{id}`` with ``If-Match: W/"1"`` and a valid CarePlan with that id
5. search    ``GET /fhir/ServiceRequest?code=system|code``: a code a shelter referral carries
             vs a code of the same shape nobody carries
6. identifier  the clinic POSTs its own new Patient carrying an HMIS PersonalID a shelter Patient
             holds (present) vs one nobody holds (missing), then GETs it back (timed together)

Prints per database and scenario: median of (hidden - absent) in ms, the share of pairs in which
the hidden side was slower, p10/p90 of each side, the statuses seen on each side, whether bodies
and header names differed, and the targets (share within 40 to 60 % where 50 % is chance; median
|difference| < 0.3 ms). Nothing here asserts on timings.

    .venv/bin/python benchmarks/bench_oracles.py [--pairs N] [--quick] [--no-postgres]
"""

from __future__ import annotations

import argparse
import gc
import http.client
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, benchmarks

import orjson
from rich.console import Console
from rich.table import Table

from benchmarks.databases import add_postgres_options, bench_postgres_url
from benchmarks.servers import LOOPBACK, Server, granian
from gateway.clock import SystemClock
from gateway.keys import FileKeyRing, init_keys
from gateway.store.database import downgrade, make_engine, upgrade
from gateway.store.sql import SqlStore
from tests.support.records import SNOMED, care_plan, patient, referral, task
from tests.support.valid import valid_all

FACTORY = "tests.support.trusted_app:build"
SHELTER = "riverside-shelter"
CLINIC, CLINIC_KIND = "harbor-clinic", "clinic"
CLINIC_MRN = "urn:oid:2.16.840.1.113883.3.9999.2"  # the clinic's own record numbers
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
PUBLIC_BASE = "http://127.0.0.1:8080"
FHIR_JSON = "application/fhir+json"
SHARE_BAND = (0.40, 0.60)  # share of pairs in which the hidden side was slower; 0.5 is chance
MEDIAN_TARGET_MS = 0.3
SCENARIOS = ("read", "vread", "history", "update", "search", "identifier")
TITLES = {
    "read": "read  GET CarePlan/{id}",
    "vread": "vread  GET CarePlan/{id}/_history/1",
    "history": "history  GET CarePlan/{id}/_history",
    "update": 'update  PUT CarePlan/{id} If-Match W/"1"',
    "search": "search  GET ServiceRequest?code=s|c",
    "identifier": "identifier  POST own Patient(HMIS) + GET",
}


# -- data ----------------------------------------------------------------------------------------


def code_of(index: int, absent: bool) -> tuple[str, str]:
    """The code of the shelter's referral number ``index`` (even numbers), or a code of the same
    system and length that no record carries (odd numbers)."""
    n = 2 * index + (1 if absent else 0)
    if index % 2 == 0:
        return SNOMED, str(409_060_000 + n)  # nine digits, like 409063005 (counseling)
    return ICD10CM, f"T{74 + n // 1000}.{n % 1000:03d}"  # the shape of T74.51XA and its kin


@dataclass(frozen=True, slots=True)
class Seeded:
    plans: dict[str, list[str]]  # scenario -> hidden CarePlan ids, one per pair (warm-up first)
    codes: list[int]  # referral indexes, one per pair
    hmis: list[str]  # PersonalIDs the shelter's Patients hold, one per pair
    own_patients: list[str]  # the requester's own Patients (CarePlan subjects for PUT)


def seed(store: SqlStore, needed: int, rng: random.Random, requester: str) -> Seeded:
    """The shelter's records (enough for ``needed`` fresh targets per scenario, at least 300
    survivors) and a few of the requester's own, written through the raw store."""
    survivors = max(300, needed)
    plans_each = -(-4 * needed // survivors)  # read, vread, history, update
    plan_ids: list[str] = []
    hmis: list[str] = []
    referral_no = 0
    for start in range(0, survivors, 100):
        batch: list[dict[str, Any]] = []
        for n in range(start, min(start + 100, survivors)):
            pid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            personal_id = uuid.UUID(int=rng.getrandbits(128), version=4).hex
            hmis.append(personal_id)
            batch.append({**patient(mrn=f"RSH-{n:06d}", hmis=personal_id), "id": pid})
            for k in range(plans_each):
                plan = {**care_plan(pid, title=f"Safety plan {k + 1}"), "id": str(uuid.uuid4())}
                plan_ids.append(plan["id"])
                batch.append(plan)
            for _ in range(2):
                system, code = code_of(referral_no, absent=False)
                sr = referral(pid)
                sr["id"] = str(uuid.uuid4())
                sr["code"] = {"coding": [{"system": system, "code": code}]}
                batch.append(sr)
                batch.append({**task(sr["id"], pid), "id": str(uuid.uuid4())})
                referral_no += 1
        store.write_many(valid_all(batch, SHELTER))
    own = [
        {
            **patient("Okafor", "Adaeze", mrn=f"HC-{n:06d}", birth_date="1989-06-02"),
            "id": str(uuid.uuid4()),
        }
        for n in range(5)
    ]
    for doc in own:
        doc["identifier"][0]["system"] = CLINIC_MRN
    store.write_many(valid_all(own, requester))
    rng.shuffle(plan_ids)
    rng.shuffle(hmis)
    plans = {s: plan_ids[i * needed : (i + 1) * needed] for i, s in enumerate(SCENARIOS[:4])}
    codes = rng.sample(range(referral_no), needed)
    return Seeded(plans, codes, hmis[:needed], [d["id"] for d in own])


# -- HTTP ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: tuple[str, ...]  # names, lower-case, sorted
    body: bytes
    location: str


class Client:
    """One keep-alive connection to 127.0.0.1; reconnects (outside any timing) when the server
    closes it."""

    def __init__(self, base: str) -> None:
        parsed = urllib.parse.urlsplit(base)
        if parsed.hostname != LOOPBACK or parsed.port is None:
            raise ValueError("benchmarks only talk to 127.0.0.1")
        self._port = parsed.port
        self._conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(LOOPBACK, self._port, timeout=30)
        conn.connect()
        return conn

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Answer]:
        """(nanoseconds from sending to the last byte of the body, the answer)."""
        all_headers = {"Accept": FHIR_JSON, **(headers or {})}
        if body is not None:
            all_headers["Content-Type"] = FHIR_JSON
        started = time.perf_counter_ns()
        self._conn.request(method, path, body=body, headers=all_headers)
        response = self._conn.getresponse()
        data = response.read()
        elapsed = time.perf_counter_ns() - started
        answer = Answer(
            response.status,
            tuple(sorted({k.lower() for k in response.headers})),
            data,
            response.headers.get("location", ""),
        )
        if response.will_close:
            self._conn.close()
            self._conn = self._connect()
        return elapsed, answer

    def close(self) -> None:
        self._conn.close()


_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX = re.compile(rb"\b[0-9a-f]{32}\b")
_INSTANT = re.compile(rb"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?")


def normalised(body: bytes, tokens: Sequence[str]) -> bytes:
    """A body with what legitimately differs between the two sides blanked: the pair's own
    targets (ids, codes, identifier values), other ids and timestamps."""
    for token in sorted(tokens, key=len, reverse=True):
        body = body.replace(token.encode(), b"<target>")
        quoted = urllib.parse.quote(token, safe="").encode()
        if quoted != token.encode():
            body = body.replace(quoted, b"<target>")
    body = _UUID.sub(b"<id>", body)
    body = _HEX.sub(b"<id>", body)
    return _INSTANT.sub(b"<instant>", body)


# -- scenarios -----------------------------------------------------------------------------------

# One side of a pair: the request(s) to time, and the tokens that may differ in the answer.
Probe = Callable[[Client], tuple[int, list[Answer]]]


@dataclass
class Side:
    ns: list[int] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)


@dataclass
class Outcome:
    hidden: Side = field(default_factory=Side)
    absent: Side = field(default_factory=Side)
    diffs_ns: list[int] = field(default_factory=list)
    status_mismatches: int = 0
    body_mismatches: int = 0
    header_mismatches: int = 0
    examples: dict[str, str] = field(default_factory=dict)  # the first of each kind of mismatch


def one_get(path: str) -> Probe:
    def probe(client: Client) -> tuple[int, list[Answer]]:
        ns, answer = client.request("GET", path)
        return ns, [answer]

    return probe


def put_plan(plan_id: str, subject: str) -> Probe:
    doc = {**care_plan(subject, title="Safety plan 1"), "id": plan_id}
    body = orjson.dumps(doc)

    def probe(client: Client) -> tuple[int, list[Answer]]:
        ns, answer = client.request("PUT", f"/fhir/CarePlan/{plan_id}", body, {"If-Match": 'W/"1"'})
        return ns, [answer]

    return probe


def own_patient(personal_id: str, mrn: str) -> Probe:
    doc = patient("Okafor", "Adaeze", mrn=mrn, birth_date="1989-06-02", hmis=personal_id)
    doc["identifier"][0]["system"] = CLINIC_MRN
    body = orjson.dumps(doc)

    def probe(client: Client) -> tuple[int, list[Answer]]:
        ns_post, created = client.request("POST", "/fhir/Patient", body)
        match = re.search(r"/Patient/([A-Za-z0-9\-.]{1,64})", created.location)
        new_id = match.group(1) if match else orjson.loads(created.body or b"{}").get("id", "")
        ns_get, read = client.request("GET", f"/fhir/Patient/{new_id}")
        return ns_post + ns_get, [created, read]

    return probe


def pair_probes(
    scenario: str, i: int, seeded: Seeded, rng: random.Random
) -> tuple[tuple[Probe, list[str]], tuple[Probe, list[str]]]:
    """((hidden probe, its tokens), (absent probe, its tokens)) for pair ``i``."""
    if scenario in ("read", "vread", "history", "update"):
        hidden, absent = (
            seeded.plans[scenario][i],
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        )
        if scenario == "update":
            subject = seeded.own_patients[i % len(seeded.own_patients)]
            return (put_plan(hidden, subject), [hidden]), (put_plan(absent, subject), [absent])
        suffix = {"read": "", "vread": "/_history/1", "history": "/_history"}[scenario]
        return (
            (one_get(f"/fhir/CarePlan/{hidden}{suffix}"), [hidden]),
            (one_get(f"/fhir/CarePlan/{absent}{suffix}"), [absent]),
        )
    if scenario == "search":
        sides = []
        for absent_side in (False, True):
            system, code = code_of(seeded.codes[i], absent=absent_side)
            param = urllib.parse.quote(f"{system}|{code}", safe="")
            sides.append((one_get(f"/fhir/ServiceRequest?code={param}"), [code]))
        return sides[0], sides[1]
    present, missing = seeded.hmis[i], uuid.UUID(int=rng.getrandbits(128), version=4).hex
    mrns = f"HC-{2 * i:06d}", f"HC-{2 * i + 1:06d}"
    return (
        (own_patient(present, mrns[0]), [present, mrns[0]]),
        (own_patient(missing, mrns[1]), [missing, mrns[1]]),
    )


def _first_difference(hidden: list[bytes], absent: list[bytes], context: int = 120) -> str:
    """Where the two (normalised) answers first part: a window of each around it."""
    h, a = b" | ".join(hidden), b" | ".join(absent)
    at = next(
        (n for n, (x, y) in enumerate(zip(h, a, strict=False)) if x != y), min(len(h), len(a))
    )
    start = max(0, at - context)

    def window(body: bytes) -> str:
        return body[start : at + context].decode(errors="replace")

    return f"from byte {at}:\n    hidden …{window(h)}…\n    absent …{window(a)}…"


def run_scenario(
    client: Client, scenario: str, seeded: Seeded, warmup: int, pairs: int, rng: random.Random
) -> Outcome:
    out = Outcome()
    gc.collect()
    gc.disable()  # no collector pause inside a timed request on the client side
    try:
        for i in range(warmup + pairs):
            (hidden, hidden_tokens), (absent, absent_tokens) = pair_probes(scenario, i, seeded, rng)
            if rng.random() < 0.5:
                ns_h, ans_h = hidden(client)
                ns_a, ans_a = absent(client)
            else:
                ns_a, ans_a = absent(client)
                ns_h, ans_h = hidden(client)
            if i < warmup:
                continue
            status_h = "+".join(str(a.status) for a in ans_h)
            status_a = "+".join(str(a.status) for a in ans_a)
            out.hidden.ns.append(ns_h)
            out.absent.ns.append(ns_a)
            out.hidden.statuses[status_h] += 1
            out.absent.statuses[status_a] += 1
            out.diffs_ns.append(ns_h - ns_a)
            out.status_mismatches += status_h != status_a
            bodies_h = [normalised(a.body, hidden_tokens) for a in ans_h]
            bodies_a = [normalised(a.body, absent_tokens) for a in ans_a]
            if bodies_h != bodies_a:
                out.body_mismatches += 1
                out.examples.setdefault("body", _first_difference(bodies_h, bodies_a))
            names_h = [a.headers for a in ans_h]
            names_a = [a.headers for a in ans_a]
            if names_h != names_a:
                out.header_mismatches += 1
                flat_h = {h for hs in names_h for h in hs}
                flat_a = {h for hs in names_a for h in hs}
                out.examples.setdefault(
                    "headers",
                    f"names only on the hidden side: {sorted(flat_h - flat_a) or '-'}, "
                    f"only on the absent side: {sorted(flat_a - flat_h) or '-'}",
                )
    finally:
        gc.enable()
    return out


# -- report --------------------------------------------------------------------------------------


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f}"


def _pct(values: list[int], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _statuses(side: Side) -> str:
    return ",".join(f"{s} x{n}" if len(side.statuses) > 1 else s for s, n in side.statuses.items())


def _check(ok: bool, text: str) -> str:
    return f"[green]{text} ✓ met[/]" if ok else f"[red]{text} ✗ missed[/]"


def report(label: str, outcomes: dict[str, Outcome], pairs: int, console: Console) -> None:
    table = Table(
        title=f"{label}: hidden (shelter's, not released) vs absent (never existed), {pairs} pairs",
        caption="Δ = hidden - absent per pair; slower = share of pairs where hidden took longer. "
        "Body: differs beyond ids/timestamps (pairs); headers: header names differ (pairs).",
    )
    columns = (
        "scenario", "status hidden/absent", "median Δ ms", "hidden slower",
        "hidden p10/p90 ms", "absent p10/p90 ms", "body", "headers",
        f"share {SHARE_BAND[0]:.0%}..{SHARE_BAND[1]:.0%}", f"|median Δ| < {MEDIAN_TARGET_MS} ms",
    )  # fmt: skip
    for name in columns:
        table.add_column(
            name, justify="left" if name.startswith(("scenario", "status")) else "right"
        )
    for scenario, o in outcomes.items():
        median = statistics.median(o.diffs_ns)
        share = sum(d > 0 for d in o.diffs_ns) / len(o.diffs_ns)
        status = f"{_statuses(o.hidden)} / {_statuses(o.absent)}"
        if o.status_mismatches:
            status = f"[red]{status} ✗ ({o.status_mismatches} pairs differ)[/]"
        table.add_row(
            TITLES[scenario],
            status,
            f"{median / 1e6:+.3f}",
            f"{share:.0%}",
            f"{_ms(_pct(o.hidden.ns, 10))} / {_ms(_pct(o.hidden.ns, 90))}",
            f"{_ms(_pct(o.absent.ns, 10))} / {_ms(_pct(o.absent.ns, 90))}",
            f"[red]✗ {o.body_mismatches}[/]" if o.body_mismatches else "[green]same[/]",
            f"[red]✗ {o.header_mismatches}[/]" if o.header_mismatches else "[green]same[/]",
            _check(SHARE_BAND[0] <= share <= SHARE_BAND[1], f"{share:.0%}"),
            _check(abs(median) < MEDIAN_TARGET_MS * 1e6, f"{abs(median) / 1e6:.3f}"),
        )
    console.print(table)
    for scenario, o in outcomes.items():
        for kind, example in o.examples.items():
            console.print(
                f"  [yellow]{scenario}[/], {kind} differ {example}", highlight=False, soft_wrap=True
            )


# -- one database --------------------------------------------------------------------------------


def bench_database(
    label: str, url: str | None, args: argparse.Namespace, tmp: Path, console: Console
) -> None:
    keys_dir = tmp / "keys"
    if not keys_dir.exists():
        init_keys(keys_dir, datetime.now(UTC))
    database_url = url or f"sqlite:///{tmp / 'oracles.db'}"
    engine = make_engine(database_url)
    needed = args.warmup + args.pairs
    rng = random.Random(args.seed)
    try:
        if url:
            downgrade(engine, "base")
        upgrade(engine)
        store = SqlStore(engine, FileKeyRing(keys_dir), SystemClock())
        try:
            started = time.monotonic()
            with console.status(f"{label}: seeding the shelter's records"):
                seeded = seed(store, needed, rng, args.requester.partition(":")[0])
            console.print(f"{label}: seeded in {time.monotonic() - started:.1f} s")
        finally:
            store.close()
        if url:  # a live database has statistics; a freshly loaded one not yet
            from sqlalchemy import text

            with engine.begin() as conn:
                conn.execute(text("ANALYZE"))
        env = {
            "GATEWAY_DATABASE_URL": database_url,
            "GATEWAY_KEYS_DIR": str(keys_dir),
            "GATEWAY_BASE_URL": PUBLIC_BASE,
            "GATEWAY_LOG_LEVEL": "WARNING",
            "GATEWAY_TEST_REQUESTER": args.requester,
            "GATEWAY_TEST_PURPOSES": "TREAT",
        }
        log_path = tmp / f"gateway-{label.lower()}.log"
        with granian(FACTORY, env, workers=1, log_path=log_path) as server:
            outcomes = measure(server, seeded, args, rng, label, console)
        report(label, outcomes, args.pairs, console)
    finally:
        if url:
            downgrade(engine, "base")
        engine.dispose()


def measure(
    server: Server,
    seeded: Seeded,
    args: argparse.Namespace,
    rng: random.Random,
    label: str,
    console: Console,
) -> dict[str, Outcome]:
    client = Client(server.base)
    try:
        # The server really authenticates the requester: its own Patient is there for it.
        _, own = client.request("GET", f"/fhir/Patient/{seeded.own_patients[0]}")
        if own.status != 200:
            raise RuntimeError(
                f"{args.requester} cannot read its own Patient ({own.status}): is "
                f"GATEWAY_TEST_REQUESTER honoured by {FACTORY}? see {server.log_path}"
            )
        outcomes: dict[str, Outcome] = {}
        for scenario in SCENARIOS:
            started = time.monotonic()
            with console.status(f"{label}: {scenario}"):
                outcomes[scenario] = run_scenario(
                    client, scenario, seeded, args.warmup, args.pairs, rng
                )
            console.print(f"{label}: {scenario} in {time.monotonic() - started:.1f} s")
        return outcomes
    finally:
        client.close()


# -- main ----------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--pairs", type=int, default=200, help="measured pairs per scenario")
    parser.add_argument("--warmup", type=int, default=None, help="pairs before measuring")
    parser.add_argument("--quick", action="store_true", help="40 pairs (smoke test)")
    parser.add_argument("--seed", type=int, default=20261123, help="random seed (data, order)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, database)")
    parser.add_argument(
        "--requester",
        default=f"{CLINIC}:{CLINIC_KIND}",
        help="who asks, partner:kind (riverside-shelter:shelter is a control: its own records "
        "are not hidden from it, so every scenario must show the difference)",
    )
    add_postgres_options(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs = 40
    if args.pairs < 10:
        parser.error("need at least 10 pairs")
    if args.warmup is None:
        args.warmup = max(10, args.pairs // 10)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    signal.signal(signal.SIGTERM, _terminate)
    tmp = Path(tempfile.mkdtemp(prefix="bench-oracles-"))
    started = time.monotonic()
    try:
        backends: list[tuple[str, str | None]] = [("SQLite", None)]
        postgres = bench_postgres_url(args)
        if postgres:
            backends.append(("PostgreSQL", postgres))
        for label, url in backends:
            bench_database(label, url, args, tmp, console)
        console.print(
            f"{args.pairs} pairs per scenario after {args.warmup} warm-up pairs; granian "
            f"--workers 1 on 127.0.0.1, one keep-alive connection; {os.cpu_count()} CPUs; "
            f"{time.monotonic() - started:.0f} s in all"
        )
        if args.keep:
            console.print(f"logs and database kept in {tmp}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
