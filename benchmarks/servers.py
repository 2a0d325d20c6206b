"""The benchmarks' servers: granian on a free 127.0.0.1 port, stopped (with every worker it
forked) however the block ends. The runner itself is ``tests.support.servers``, shared with the
tests; this keeps the benchmarks' names and habits: the server's output goes to ``log_path`` (an
INFO access log would flood the terminal), readiness is ``/healthz`` (the baseline apps have no
``/readyz``), the child runs in the checkout and inherits the caller's ``GATEWAY_*`` settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.servers import (
    LOOPBACK,
    Server,
    descendants,
    http_get,
    rss_bytes,
    serve,
    tree_rss,
)

__all__ = ["LOOPBACK", "Server", "descendants", "granian", "http_get", "rss_bytes", "tree_rss"]


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
    with serve(
        factory,
        env,
        log_path=log_path,
        workers=workers,
        ready_path=ready_path,
        startup_seconds=60,
        inherit_gateway_env=True,
    ) as server:
        yield server
