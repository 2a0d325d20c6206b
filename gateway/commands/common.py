"""What every command shares: the console on stderr, one-line failures, settings."""

from __future__ import annotations

import typer
from rich.console import Console

from gateway.settings import Settings

console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def settings_or_fail(**overrides: str) -> Settings:
    from pydantic import ValidationError

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        # One line, naming the variables; never the values (a URL may carry a password).
        problems = "; ".join(
            f"GATEWAY_{'_'.join(str(p) for p in err['loc']).upper()}: "
            f"{str(err['msg']).removeprefix('Value error, ')}"
            for err in exc.errors()
        )
        raise fail(f"bad settings: {problems}") from exc
    except ValueError as exc:
        raise fail(f"bad settings: {one_line(exc)}") from exc


def one_line(exc: BaseException) -> str:
    """An error as one line for an operator: a database error by its driver's first line (the
    lines after it may quote values), anything else by its first line."""
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    lines = str(exc).strip().splitlines()
    return lines[0].strip() if lines else type(exc).__name__


def database_failure(exc: BaseException) -> typer.Exit:
    return fail(f"cannot use the database at GATEWAY_DATABASE_URL: {one_line(exc)}")
