"""A copy of the database tells its reader nothing about who is in it.

The demo's whole story runs (a survivor recorded with her names, record numbers, HMIS id, birth
date and phone; a referral coded in SNOMED; searches by her name; a release, its revocation, the
accounting), then the database is dumped as an operator's backup would dump it (SQL text of
every table and every column: ``sqlite3 .dump``, ``pg_dump``) and read row by row, blobs and
any base64 inside them included. None of her values may appear: only ciphertext, keyed blind
values, server ids, and the year of her birth (what HIPAA's Safe Harbor keeps of a date).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import sqlite3
import subprocess
import unicodedata
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import MetaData, create_engine, select
from sqlalchemy.engine import make_url

from gateway.demo import run_demo
from gateway.settings import Settings
from tests.conftest import POSTGRES_URL
from tests.support.databases import create_database, drop_database

# Everything that identifies the demo's survivor, as written and as the index would fold it.
SURVIVOR = (
    "Álvarez", "María", "José",  # names
    "RSH-000412", "CoC-88412", "HCC-20931",  # shelter record, HMIS PersonalID, clinic MRN
    "EOC-000412", "CP-000412", "REF-000412-1", "TASK-000412-1",  # her records' identifiers
    "1994-03-17", "1994-03", "555-0142",  # birth date (and month), phone
    "409063005", "308440001",  # SNOMED: counselling, referral to service
)  # fmt: skip
NEEDLES = sorted(
    {n.casefold() for n in SURVIVOR}
    | {
        "".join(
            c for c in unicodedata.normalize("NFKD", n) if not unicodedata.combining(c)
        ).casefold()
        for n in SURVIVOR
    }
)
B64 = re.compile(r"[A-Za-z0-9+/_-]{12,}={0,2}")


def _readings(text: str) -> list[str]:
    """The text, and what any base64 inside it decodes to (BALP keeps queries in base64), read
    at each of the four alignments, since a run of base64 characters may start mid-group."""
    out = [text]
    for token in B64.findall(text):
        token = token.rstrip("=")
        for start in range(4):
            chunk = token[start:]
            rest = len(chunk) % 4  # a last group of 2 or 3 characters is a padded one
            chunk = chunk[: len(chunk) - 1] if rest == 1 else chunk + "=" * (-len(chunk) % 4)
            for decode in (base64.b64decode, base64.urlsafe_b64decode):
                with contextlib.suppress(binascii.Error, ValueError):
                    out.append(decode(chunk).decode("utf-8", "replace"))
    return out


def _leaks(texts: list[str]) -> list[str]:
    found = set()
    for text in texts:
        for reading in _readings(text):
            folded = reading.casefold()
            found |= {n for n in NEEDLES if n in folded}
    return sorted(found)


def _cells(url: str) -> list[str]:
    """Every value of every column of every table, as text (bytes also as hex and UTF-8)."""
    engine = create_engine(url)
    meta = MetaData()
    meta.reflect(engine)
    cells: list[str] = []
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(select(table)):
                for value in row:
                    if isinstance(value, bytes | memoryview):
                        raw = bytes(value)
                        cells += [raw.decode("utf-8", "replace"), raw.hex()]
                    elif value is not None:
                        cells.append(str(value))
    engine.dispose()
    return cells


def _story(tmp_path: Path, database_url: str) -> Settings:
    settings = Settings(
        database_url=database_url,
        keys_dir=tmp_path / "keys",
        audit_checkpoint_file=tmp_path / "audit-checkpoints",
        demo=True,
    )
    with (tmp_path / "demo.log").open("w") as log:
        assert run_demo(settings, Console(file=log)) == 0
    return settings


def _assert_no_survivor_in(dump: str, cells: list[str]) -> None:
    assert len(cells) > 500, "the story wrote too little to prove anything"
    assert _leaks([dump]) == []
    assert _leaks(cells) == []


def test_the_needles_are_found_where_they_are_in_clear() -> None:
    # The search must be able to fail: the same reading finds them in clear and in base64.
    query = base64.b64encode(b"family=alvarez&birthdate=1994-03-17").decode()
    assert _leaks([f"x{query}y"]) == ["1994-03", "1994-03-17", "alvarez"]
    assert "maría" in _leaks(["MARÍA"])


def test_a_sqlite_dump_after_the_demo_holds_none_of_the_survivors_values(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    _story(tmp_path, f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:
        dump = "\n".join(conn.iterdump())
    _assert_no_survivor_in(dump, _cells(f"sqlite:///{path}"))


@pytest.mark.postgres
def test_a_postgres_dump_after_the_demo_holds_none_of_the_survivors_values(
    tmp_path: Path,
) -> None:
    if not POSTGRES_URL:
        pytest.skip("GATEWAY_TEST_POSTGRES_URL is not set")
    url = create_database(POSTGRES_URL, "dump")
    try:
        _story(tmp_path, url)
        u = make_url(url)
        dump = subprocess.run(
            [
                "pg_dump", "--no-owner", "-h", u.host or "127.0.0.1", "-p", str(u.port or 5432),
                "-U", u.username or "postgres", u.database or "",
            ],
            check=True, capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
        _assert_no_survivor_in(dump, _cells(url))
    finally:
        drop_database(POSTGRES_URL, "dump")
