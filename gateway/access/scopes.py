"""SMART system scopes: parsing, the intersection a token is granted, and what a grant allows.

Accepted forms (SMART App Launch 2.x, and 1.x for compatibility):

- v2 ``system/<Type>.<perms>`` where ``<perms>`` is a non-empty subset of ``c r u d s`` written
  in that order (``system/CarePlan.rs``, ``system/*.cruds``);
- v1 ``system/<Type>.read`` (= ``rs``), ``.write`` (= ``cud``), ``.*`` (= ``cruds``).

``<Type>`` is ``*`` or a resource type the gateway serves. Anything else is not a scope this
gateway knows, and is ignored (never widened into something it might mean). Granted scopes are
always answered in normalised v2 form.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.access.interaction import PERMISSION
from gateway.vocabulary.registry import REGISTRY

PERMISSIONS = "cruds"
WILDCARD = "*"
SCOPE_TYPES: frozenset[str] = frozenset(REGISTRY)
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"system/(\*|[A-Z][A-Za-z]{0,63})\.(c?r?u?d?s?|read|write|\*)")
INTERACTION_PERMISSION: dict[str, str] = {str(i): p for i, p in PERMISSION.items()}
MAX_SCOPE_TOKENS = 64


@dataclass(frozen=True, slots=True)
class Scope:
    resource_type: str  # a resource type, or "*"
    permissions: frozenset[str]

    def __str__(self) -> str:
        return f"system/{self.resource_type}.{_perms(self.permissions)}"


def _perms(permissions: Iterable[str]) -> str:
    chosen = set(permissions)
    return "".join(p for p in PERMISSIONS if p in chosen)


def parse_scope(token: str) -> Scope | None:
    """One scope token, or None when it is not a system scope this gateway knows."""
    match = _SCOPE.fullmatch(token)
    if match is None:
        return None
    resource_type, perms = match.group(1), match.group(2)
    if resource_type != WILDCARD and resource_type not in SCOPE_TYPES:
        return None
    perms = _V1.get(perms, perms)
    if not perms:
        return None
    return Scope(resource_type, frozenset(perms))


def parse_scopes(text_or_tokens: str | Iterable[str]) -> list[Scope]:
    """Every known scope in a space-separated string (or a list of tokens); unknown or malformed
    tokens are skipped. At most ``MAX_SCOPE_TOKENS`` tokens are looked at."""
    tokens = text_or_tokens.split() if isinstance(text_or_tokens, str) else list(text_or_tokens)
    parsed = (parse_scope(t) for t in tokens[:MAX_SCOPE_TOKENS])
    return [s for s in parsed if s is not None]


@dataclass(frozen=True, slots=True)
class ScopeGrant:
    """What a set of scopes allows: permissions on every type (``*``) and per type."""

    everything: frozenset[str]
    by_type: Mapping[str, frozenset[str]]

    @classmethod
    def parse(cls, scopes: str | Iterable[str]) -> ScopeGrant:
        everything: set[str] = set()
        by_type: dict[str, set[str]] = {}
        for scope in parse_scopes(scopes):
            if scope.resource_type == WILDCARD:
                everything |= scope.permissions
            else:
                by_type.setdefault(scope.resource_type, set()).update(scope.permissions)
        return cls(frozenset(everything), {t: frozenset(p) for t, p in by_type.items()})

    def permissions(self, resource_type: str) -> frozenset[str]:
        return self.everything | self.by_type.get(resource_type, frozenset())

    def allows(self, resource_type: str, interaction: str) -> bool:
        """May this grant perform ``interaction`` (create, read, update, delete, search; vread
        and history count as read) on ``resource_type``?"""
        permission = INTERACTION_PERMISSION.get(interaction)
        if permission is None:
            raise ValueError(f"unknown interaction {interaction!r}")
        if resource_type != WILDCARD and resource_type not in SCOPE_TYPES:
            return False
        return permission in self.permissions(resource_type)

    def intersect(self, requested: Iterable[Scope]) -> ScopeGrant:
        """What of ``requested`` this grant (the partner's allowance) covers."""
        everything: set[str] = set()
        by_type: dict[str, set[str]] = {}
        for scope in requested:
            if scope.resource_type == WILDCARD:
                everything |= scope.permissions & self.everything
                for resource_type, allowed in self.by_type.items():
                    extra = scope.permissions & allowed
                    if extra:
                        by_type.setdefault(resource_type, set()).update(extra)
            else:
                granted = scope.permissions & self.permissions(scope.resource_type)
                if granted:
                    by_type.setdefault(scope.resource_type, set()).update(granted)
        return ScopeGrant(frozenset(everything), {t: frozenset(p) for t, p in by_type.items()})

    @property
    def empty(self) -> bool:
        return not self.everything and not any(self.by_type.values())

    def scopes(self) -> list[str]:
        """Normalised v2 form: ``system/*.<perms>`` first, then each type not already covered by
        it, alphabetically, with its full permission set."""
        out = [str(Scope(WILDCARD, self.everything))] if self.everything else []
        for resource_type in sorted(self.by_type):
            perms = self.by_type[resource_type] | self.everything
            if perms != self.everything:
                out.append(str(Scope(resource_type, perms)))
        return out

    def __str__(self) -> str:
        return " ".join(self.scopes())


def grant(requested: str, allowed: Iterable[str]) -> ScopeGrant:
    """requested ∩ allowed (the partner's most), both as scope strings."""
    return ScopeGrant.parse(allowed).intersect(parse_scopes(requested))


def supported_scopes() -> list[str]:
    """What the SMART configuration advertises."""
    types = sorted(SCOPE_TYPES)
    return [
        "system/*.cruds",
        "system/*.rs",
        *(f"system/{t}.cruds" for t in types),
        *(f"system/{t}.rs" for t in types),
    ]
