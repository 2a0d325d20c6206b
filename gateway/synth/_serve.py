"""A fake partner server on loopback: a threading HTTP server on its own daemon thread, for
the synthetic LegalServer and hospital FHIR servers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _V6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


@contextmanager
def serving(
    handler: type[BaseHTTPRequestHandler], *, host: str, port: int, name: str
) -> Iterator[str]:
    """Serve ``handler`` on ``host``:``port`` (port 0: a free one) until the block ends; yields
    the base URL (``http://host:port``, an IPv6 host in brackets)."""
    server_class = _V6 if ":" in host else ThreadingHTTPServer
    server = server_class((host, port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=name, daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    try:
        yield f"http://{shown}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
