"""Serve an ASGI factory with granian on a loopback port, in a child process, for the tests and
the benchmarks alike.

- The port: free, and reserved across processes. granian binds with ``SO_REUSEPORT``, so two
  servers given the same port both start and the kernel splits the connections between them
  (two pytest-xdist workers would then read each other's databases). ``free_port`` therefore
  holds an exclusive lock on ``<tmp>/gateway-test-ports/<port>.lock`` for the rest of the
  process, so no other test process on the machine is handed that port, and ``serve`` checks
  once it is up that every listener on the port belongs to its own process tree.
- The child runs with its own environment: ``GATEWAY_*`` / ``GRANIAN_*`` variables of the
  calling shell are dropped (unless asked for), ``TMPDIR`` is private and, when a ``work_dir`` is
  given, so is the working directory: nothing the server writes lands in the checkout's ``var/``.
- Readiness: ``ready_path`` (``/readyz``: database, audit log, keys) polled until a deadline.
- Output: stdout and stderr go to a log file; when start-up fails (or the server dies while it
  serves) the error shows the log's tail.
- The end: the child leads its own process group; the whole group (granian's workers included)
  is terminated, then killed, however the block ends.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
TRUSTED_APP = "tests.support.trusted_app:build"
STARTUP_SECONDS = 120.0  # generous: eight xdist workers starting servers on two cores
STOP_SECONDS = 15.0
LOG_TAIL_BYTES = 4000

# Loopback only: never let an environment proxy see a request.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PORT_LOCKS: dict[int, IO[bytes]] = {}  # held until this process exits
_PORT_LOCK_DIR = Path(tempfile.gettempdir()) / "gateway-test-ports"


@dataclass(frozen=True, slots=True)
class Server:
    base: str  # http://127.0.0.1:PORT
    pid: int  # granian's main process (the leader of its own process group)
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET on loopback without any proxy: (status, body); HTTP errors are answers, not raised."""
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise ValueError("only 127.0.0.1 is spoken to")
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# -- ports ------------------------------------------------------------------------------------


def _nobody_listens(port: int) -> bool:
    """A plain bind (no SO_REUSEADDR/SO_REUSEPORT) fails while anything listens on the port."""
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nobody listens on, handed out to no other process on this machine that
    uses this function until this process exits (an exclusive ``flock``, which the kernel drops
    when the process ends, however it ends)."""
    _PORT_LOCK_DIR.mkdir(parents=True, exist_ok=True)
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind((LOOPBACK, 0))
            port: int = sock.getsockname()[1]
        if port in _PORT_LOCKS:
            continue
        lock = (_PORT_LOCK_DIR / f"{port}.lock").open("ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another test process holds this port
            lock.close()
            continue
        if not _nobody_listens(port):
            lock.close()
            continue
        _PORT_LOCKS[port] = lock
        return port
    raise RuntimeError("no free loopback port after 200 tries")


# -- processes (from /proc: no psutil) ------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, process group, command name) of a live process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie holds no socket and needs no signal
        return None
    return int(fields[1]), int(fields[2]), name


def _live_pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (granian's workers)."""
    children: dict[int, list[int]] = {}
    for child in _live_pids():
        stat = _proc_stat(child)
        if stat is not None:
            children.setdefault(stat[0], []).append(child)
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def group_members(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid``."""
    return [pid for pid in _live_pids() if (stat := _proc_stat(pid)) and stat[1] == pgid]


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


def _listening_inodes(port: int) -> set[str]:
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                    inodes.add(inode)
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    with suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def foreign_listeners(port: int, pid: int) -> set[str]:
    """Sockets listening on ``port`` that no process of ``pid``'s tree holds (empty: the port
    is ours alone)."""
    ours: set[str] = set()
    for member in (pid, *descendants(pid)):
        ours |= _socket_inodes(member)
    return _listening_inodes(port) - ours


# -- the server -----------------------------------------------------------------------------------


def log_tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    tail = data[-limit:].decode("utf-8", "replace")
    return ("…" if len(data) > limit else "") + tail


def child_environment(
    env: Mapping[str, str], tmp_dir: Path, *, inherit_gateway_env: bool = False
) -> dict[str, str]:
    """The calling environment without its ``GATEWAY_*``/``GRANIAN_*`` settings (unless
    ``inherit_gateway_env``), with a private TMPDIR, the checkout on PYTHONPATH, and ``env``."""
    base = {
        key: value
        for key, value in os.environ.items()
        if inherit_gateway_env or not key.startswith(("GATEWAY_", "GRANIAN_"))
    }
    return {**base, "TMPDIR": str(tmp_dir), **env, "PYTHONPATH": str(ROOT)}


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate the child's process group, then kill what is left of it.

    ``killpg`` is sent only while the leader is not yet reaped (alive or a zombie), so the
    group id is still this child's; after that, stragglers are killed one by one, and only
    while they are still members of the group (which keeps the number from being reused)."""
    pgid = process.pid
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            process.wait()
    deadline = time.monotonic() + STOP_SECONDS
    while members := group_members(pgid):
        for pid in members:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if time.monotonic() < deadline - 5 else signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {members} of server group {pgid} would not stop")
        time.sleep(0.1)


@contextmanager
def serve(
    factory: str,
    env: Mapping[str, str],
    *,
    log_path: Path,
    workers: int = 1,
    work_dir: Path | None = None,
    ready_path: str = "/readyz",
    startup_seconds: float = STARTUP_SECONDS,
    inherit_gateway_env: bool = False,
) -> Iterator[Server]:
    """Serve ``factory`` (``module:function``) with granian until the block ends.

    ``work_dir`` (created if missing) is the child's working directory and holds its TMPDIR;
    without it the child runs in the checkout (the benchmarks' factories expect that) with a
    private TMPDIR beside ``log_path``."""
    port = free_port()
    base = f"http://{LOOPBACK}:{port}"
    cwd = work_dir if work_dir is not None else ROOT
    tmp_dir = (work_dir or log_path.parent) / f"tmp-{port}"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    child_env = child_environment(env, tmp_dir, inherit_gateway_env=inherit_gateway_env)
    child_env.setdefault("GATEWAY_BASE_URL", base)  # the links it writes name where it listens
    command = [
        sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
        "--host", LOOPBACK, "--port", str(port), "--workers", str(workers),
        "--no-ws", "--log-level", "warning", factory,
    ]  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as a whole
        )

    def failed(why: str) -> RuntimeError:
        return RuntimeError(f"{factory} on {base} {why}; log {log_path}:\n{log_tail(log_path)}")

    try:
        deadline = time.monotonic() + startup_seconds
        last = "no answer"
        while True:
            if process.poll() is not None:
                raise failed(f"exited with {process.returncode} before it was ready")
            try:
                status, body = http_get(base + ready_path, timeout=2)
                if status == 200:
                    break
                last = f"{status} {body[:200]!r}"
            except OSError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise failed(f"was not ready in {startup_seconds:.0f} s (last: {last})")
            time.sleep(0.1)
        if foreign := foreign_listeners(port, process.pid):
            raise failed(f"shares its port with sockets {sorted(foreign)} of other processes")
        yield Server(base, process.pid, log_path)
        if process.poll() is not None:
            raise failed(f"died while serving (exit {process.returncode})")
    finally:
        _stop(process)


@contextmanager
def running_gateway(
    env: Mapping[str, str],
    work_dir: Path,
    *,
    workers: int = 1,
    factory: str = TRUSTED_APP,
    ready_path: str = "/readyz",
) -> Iterator[Server]:
    """The real gateway (by default ``tests.support.trusted_app``) serving until the block ends.

    Everything it may write is under ``work_dir``: the working directory, TMPDIR, the log and
    the audit checkpoint file (unless ``env`` names them). The checkout's configuration is
    given by absolute path, so nothing depends on the working directory. ``env`` must name
    the database and the keys directory: a default would be ``./var`` of the working directory.
    """
    missing = {"GATEWAY_DATABASE_URL", "GATEWAY_KEYS_DIR"} - set(env)
    if missing:
        raise ValueError(f"running_gateway needs {sorted(missing)} in env")
    work_dir.mkdir(parents=True, exist_ok=True)
    defaults = {
        "GATEWAY_PARTNERS_FILE": str(ROOT / "examples" / "partners.yaml"),
        "GATEWAY_POLICIES_DIR": str(ROOT / "consent_policies"),
        "GATEWAY_MAPPINGS_DIR": str(ROOT / "mappings"),
        "GATEWAY_AUDIT_CHECKPOINT_FILE": str(work_dir / "audit-checkpoints"),
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    log_path = work_dir / "server.log"
    with serve(
        factory,
        {**defaults, **env},
        log_path=log_path,
        workers=workers,
        work_dir=work_dir,
        ready_path=ready_path,
    ) as server:
        yield server
