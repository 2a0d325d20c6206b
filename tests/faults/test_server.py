"""``gateway serve`` as an operator runs it: two granian workers on loopback. A worker that
dies is replaced while the other keeps answering, a connection that never sends a byte is
closed, metrics add up across workers, and the advertised URLs are what serve listens on."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.clock import SystemClock
from gateway.keys import init_keys
from tests.support.server import ROOT, free_port

pytestmark = pytest.mark.server

HEADER_TIMEOUT = 1  # seconds, GATEWAY_HTTP_HEADER_TIMEOUT_SECONDS
SHUTDOWN_TIMEOUT = 5  # seconds, GATEWAY_SHUTDOWN_TIMEOUT_SECONDS
METADATA_COUNT = (
    r'gateway_http_requests_total\{method="GET",route="/fhir/metadata",status="200"\} (\S+)'
)


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    base: str
    port: int
    tmp: Path  # serve's TMPDIR, where it makes its private metrics directory
    metrics_port: int  # serve --metrics-port

    def workers(self) -> set[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return {int(pid) for pid in path.read_text().split()}

    def metrics_dirs(self) -> list[Path]:
        return sorted(self.tmp.glob("gateway-metrics-*"))

    def counting_pids(self, route: str = "") -> set[int]:
        """The workers that have counted a request (to ``route``): each worker writes its own
        counter file, which names the label values it counted."""
        (directory,) = self.metrics_dirs()
        return {
            int(p.stem.rsplit("_", 1)[1])
            for p in directory.glob("counter_*.db")
            if route.encode() in p.read_bytes()
        }


def _wait(condition: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} within {seconds} s")


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@contextmanager
def _serving(work: Path) -> Iterator[Served]:
    """``gateway serve --workers 2`` in the demo, on a free loopback port, until the block ends."""
    (work / "tmp").mkdir()
    init_keys(work / "keys", SystemClock().now())
    port, metrics_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")} | {
        "GATEWAY_DEMO": "true",
        "GATEWAY_KEYS_DIR": str(work / "keys"),
        "GATEWAY_DATABASE_URL": f"sqlite:///{work}/served.db",
        "GATEWAY_HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_SHUTDOWN_TIMEOUT_SECONDS": str(SHUTDOWN_TIMEOUT),
        "TMPDIR": str(work / "tmp"),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [
        sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", "2",
        "--metrics-port", str(metrics_port),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _healthy(base) or process.poll() is not None, 30, "serve answers")
        assert process.poll() is None, f"serve exited with {process.returncode}"
        running = Served(process, base, port, work / "tmp", metrics_port)
        _wait(lambda: len(running.workers()) == 2, 10, "two workers run")
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with _serving(tmp_path_factory.mktemp("served")) as running:
        yield running


def test_without_gateway_base_url_serve_advertises_the_port_it_listens_on(
    served: Served,
) -> None:
    smart = httpx.get(f"{served.base}/fhir/.well-known/smart-configuration", timeout=5).json()
    assert smart["token_endpoint"].startswith(f"http://127.0.0.1:{served.port}/")


def test_a_connection_that_sends_nothing_is_closed_within_the_header_bound(
    served: Served,
) -> None:
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as idle:
        started = time.monotonic()
        try:
            received = idle.recv(1024)
        except ConnectionResetError:
            received = b""
        waited = time.monotonic() - started
    assert not received.startswith(b"HTTP/1.1 200")
    assert HEADER_TIMEOUT * 0.5 < waited < HEADER_TIMEOUT + 3
    assert _healthy(served.base)  # and the server goes on serving others


def test_metrics_add_up_across_workers(served: Served) -> None:
    """Each worker counts in its own file; any worker's /metrics reports the sum."""
    sent = 0
    with httpx.Client(timeout=5) as client:
        # New connections are spread over the workers by the kernel; go on until both counted.
        while len(served.counting_pids("/fhir/metadata")) < 2 and sent < 400:
            assert client.get(f"{served.base}/fhir/metadata", headers={"Connection": "close"})
            sent += 1
        assert len(served.counting_pids("/fhir/metadata")) == 2, "one worker took every request"
        scrapes = [
            client.get(f"{served.base}/metrics").text,
            client.get(f"http://127.0.0.1:{served.metrics_port}/metrics").text,  # its own port
        ]
    for scraped in scrapes:
        total = re.search(METADATA_COUNT, scraped)
        assert total is not None
        assert float(total.group(1)) == sent


def test_a_killed_worker_is_respawned_while_the_other_keeps_answering(served: Served) -> None:
    before = served.workers()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    answered = 0
    deadline = time.monotonic() + 20
    # Until a replacement has served requests itself (it writes its own counter file).
    while not served.counting_pids() & (served.workers() - before):
        assert time.monotonic() < deadline, "no replacement worker served within 20 s"
        response = httpx.get(f"{served.base}/healthz", headers={"Connection": "close"}, timeout=5)
        assert response.status_code == 200
        answered += 1
    after = served.workers()
    assert victim not in after
    assert len(after) == 2
    assert answered > 0
    # The dead worker's readiness no longer counts; its request counts still do.
    (directory,) = served.metrics_dirs()
    assert not list(directory.glob(f"gauge_livemin_{victim}.db"))
    assert victim in served.counting_pids()
    assert served.process.poll() is None


def test_sigterm_stops_serve_within_the_shutdown_bound_and_removes_its_metrics(
    tmp_path: Path,
) -> None:
    with _serving(tmp_path) as own:  # a server of its own: this test stops it
        assert own.metrics_dirs()
        with socket.create_connection(("127.0.0.1", own.port), timeout=10):
            started = time.monotonic()  # a client still connected does not hold the stop up
            own.process.send_signal(signal.SIGTERM)
            own.process.wait(timeout=SHUTDOWN_TIMEOUT + 10)
        assert time.monotonic() - started < SHUTDOWN_TIMEOUT + 5
        assert own.metrics_dirs() == []
