"""Kept for the tests that import ``ROOT`` and ``free_port`` from here: the server runner lives
in ``tests.support.servers``."""

from __future__ import annotations

from tests.support.servers import ROOT, free_port, running_gateway

__all__ = ["ROOT", "free_port", "running_gateway"]
