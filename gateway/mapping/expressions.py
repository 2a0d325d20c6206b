"""JSONata expressions (jsonata-python), compiled once when a spec loads.

``Expression(text)`` parses at load (``ExpressionError`` for a syntax error or a construct the
specs may not use); ``evaluate(input, context)`` runs it. Whatever goes wrong at run time comes
back as ``ExpressionFailed`` carrying only the JSONata error code (``D3030``) or the Python
exception's type name: the library's own messages quote the values they choked on (a
``$number()`` of a name says the name), so they are never passed on.

Not allowed in a spec (refused at load): ``$eval`` (a string run as an expression), ``$now``,
``$millis`` and ``$random`` (a mapping is a function of its input: golden tests and re-runs give
the same FHIR), and user-defined functions (``function``/``λ``): without them every expression
terminates on finite input, which matters because the library's time limit is measured from
compile time, not per call, and its depth limit leaks on errors.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import jsonata  # type: ignore[import-untyped]

_FORBIDDEN = re.compile(r"\$(eval|now|millis|random)\b|\bfunction\b|λ")


class ExpressionError(ValueError):
    """An expression that cannot be used (the message quotes the spec, never a record)."""


class ExpressionFailed(Exception):
    """A run-time failure; ``code`` is safe to show (no source value)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class Expression:
    __slots__ = ("_compiled", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        if _FORBIDDEN.search(text):
            raise ExpressionError(
                "uses $eval, $now, $millis, $random or a user-defined function, "
                "which mapping specs may not"
            )
        try:
            compiled = jsonata.Jsonata(text)
        except Exception as exc:  # the parser raises JException, sometimes others
            raise ExpressionError(f"is not valid JSONata ({_code(exc)})") from None
        if compiled.get_errors():
            raise ExpressionError("is not valid JSONata (S0500)")
        # The input is a SourceRecord's JSON-like fields: validating it on every call would
        # walk the whole record (children included) for nothing.
        compiled.set_validate_input(False)
        self._compiled = compiled

    def evaluate(self, data: Any, context: Mapping[str, Any]) -> Any:
        """The result as plain JSON values (lists, dicts, str, int, float, bool), or None when
        the expression yields nothing; raises ExpressionFailed."""
        try:
            result = self._compiled.evaluate(data, {"context": context})
        except RecursionError:
            raise ExpressionFailed("RecursionError") from None
        except Exception as exc:
            raise ExpressionFailed(_code(exc)) from None
        try:
            return _plain(result)
        except ValueError:
            raise ExpressionFailed("non-JSON result") from None


def _code(exc: BaseException) -> str:
    code = getattr(exc, "error", None)
    if isinstance(code, str) and re.fullmatch(r"[A-Z][0-9]{4}", code):
        return code
    return type(exc).__name__


def _plain(value: Any) -> Any:
    """JSONata sequences are list subclasses; functions and non-finite numbers are not JSON."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("non-finite number")
        return int(value) if value.is_integer() else value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    raise ValueError("not a JSON value")
