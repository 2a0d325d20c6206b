"""Start a granian child process on a free 127.0.0.1 port and stop it (and every worker it
forked) however the block ends. Like ``tests.support.server.running_gateway``, but it also hands
back the process id (for RSS), sends the server's output to a log file (an INFO access log would
flood the terminal) and checks readiness without any proxy.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import ROOT, free_port

LOOPBACK = "127.0.0.1"
# Loopback only: never let an environment proxy see a request.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True)
class Server:
    base: str  # http://127.0.0.1:PORT
    pid: int
    log_path: Path


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise ValueError("benchmarks only talk to 127.0.0.1")
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, command name) of a live process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), name


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (granian's workers), from /proc (no psutil)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _proc_stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def tree_rss(pid: int) -> int:
    """Resident memory of a server: the granian main process plus all its workers."""
    return sum(rss_bytes(p) for p in [pid, *descendants(pid)])


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@contextmanager
def granian(
    factory: str,
    env: dict[str, str],
    *,
    workers: int,
    log_path: Path,
    ready_path: str = "/healthz",
) -> Iterator[Server]:
    """Serve ``factory`` (``module:function``) with granian until the block ends."""
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
        "--host", LOOPBACK, "--port", str(port), "--workers", str(workers),
        "--no-ws", "--log-level", "warning", factory,
    ]  # fmt: skip
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=child_env, stdout=log, stderr=subprocess.STDOUT
        )
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{factory} exited with {process.returncode} before it was ready; "
                    f"see {log_path}"
                )
            try:
                if http_get(base + ready_path, timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{factory} did not become ready in 60 s; see {log_path}")
            time.sleep(0.1)
        seen.update(descendants(process.pid))
        yield Server(base, process.pid, log_path)
    finally:
        seen.update(descendants(process.pid))
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # A worker that outlived its parent: stop it by pid, and only if it is still granian.
        for pid in seen:
            if b"granian" in _cmdline(pid):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
