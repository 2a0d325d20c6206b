"""Resources for tests through the write path's gate (``gateway.write.admit``): the store takes
only a ``ValidResource`` and a requester's store only a ``Checked`` one, and tests make them
the way the gateway does, never around it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.write.admit import Checked, ValidResource, admit, check


def valid(doc: dict[str, Any], contributor: str | None = None) -> ValidResource:
    """``doc`` checked (strict R4) and admitted for ``contributor``, without label tables."""
    return admit(check(doc), contributor=contributor)


def valid_all(
    docs: Iterable[dict[str, Any]], contributor: str | None = None
) -> list[ValidResource]:
    return [valid(d, contributor) for d in docs]


def checked(doc: dict[str, Any]) -> Checked:
    """``doc`` as a requester's store takes it (strict R4)."""
    return check(doc)


def checked_all(docs: Iterable[dict[str, Any]]) -> list[Checked]:
    return [check(d) for d in docs]
