"""The on-disk index the joins go through: a private SQLite file holding, for every row of every
file, its line, byte offset and length in the transcoded copy, up to three keys, and what was
found wrong with it (reasons and column names, never values). Rows themselves stay on disk."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

from adapters.hmis.checks import Finding

_SCHEMA: Final = """
CREATE TABLE rows (
    file TEXT NOT NULL, line INTEGER NOT NULL, "offset" INTEGER NOT NULL,
    length INTEGER NOT NULL, k1 TEXT, k2 TEXT, k3 TEXT, findings TEXT
);
CREATE INDEX rows_k1 ON rows (file, k1, line);
CREATE INDEX rows_k2 ON rows (file, k2, line);
CREATE INDEX rows_line ON rows (file, line);
"""
BATCH: Final = 500

IndexRow = tuple[str, int, int, int, str | None, str | None, str | None, str | None]


def encode_findings(findings: list[Finding]) -> str | None:
    return json.dumps(findings) if findings else None


def decode_findings(text: str | None) -> list[Finding]:
    return [(column, reason) for column, reason in json.loads(text)] if text else []


class Index:
    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.executescript(
            "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA cache_size = -8192;"
            "PRAGMA temp_store = FILE;" + _SCHEMA
        )

    def add(self, rows: Iterable[IndexRow]) -> None:
        batch: list[IndexRow] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= BATCH:
                self._insert(batch)
                batch = []
        if batch:
            self._insert(batch)

    def _insert(self, batch: list[IndexRow]) -> None:
        self._db.execute("BEGIN")
        self._db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)", batch)
        self._db.execute("COMMIT")

    def query(self, sql: str, *parameters: Any) -> Iterator[tuple[Any, ...]]:
        """Rows of a query, fetched lazily (a cursor of its own)."""
        cursor = self._db.execute(sql, parameters)
        try:
            yield from cursor
        finally:
            cursor.close()

    def one(self, sql: str, *parameters: Any) -> Any:
        row = self._db.execute(sql, parameters).fetchone()
        return None if row is None else row[0]

    def count(self, file: str, column: str, value: str | None) -> int:
        if value is None:
            return 0
        assert column in ("k1", "k2", "k3")
        sql = f"SELECT count(*) FROM rows WHERE file = ? AND {column} = ?"  # noqa: S608
        return int(self.one(sql, file, value))

    def lines(self, file: str, column: str, value: str, limit: int) -> list[int]:
        assert column in ("k1", "k2", "k3")
        sql = f"SELECT line FROM rows WHERE file = ? AND {column} = ? ORDER BY line LIMIT ?"  # noqa: S608
        return [int(line) for (line,) in self.query(sql, file, value, limit)]

    def close(self) -> None:
        self._db.close()
