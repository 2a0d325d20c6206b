"""Start the real gateway under granian on a free loopback port, in a child process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running_gateway(
    env: dict[str, str], *, workers: int = 1, factory: str = "tests.support.trusted_app:build"
) -> Iterator[str]:
    """Yield the base URL (``http://127.0.0.1:PORT``) of a gateway serving until the block ends."""
    port = free_port()
    child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    child_env.setdefault("GATEWAY_BASE_URL", f"http://127.0.0.1:{port}")
    command = [
        sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--no-ws", "--log-level", "warning", factory,
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=child_env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gateway exited with {process.returncode} before it was ready")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gateway did not become ready in 30 s")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
