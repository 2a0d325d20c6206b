"""One CSV file of an export, transcoded: its header mapped to HUD's names, its rows checked one
at a time, and any row read again later by the byte offset the index keeps."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from adapters.hmis.checks import Finding, check_row
from adapters.hmis.encoding import Encoding, decode_copy, source_bytes
from adapters.hmis.limits import Limits
from adapters.hmis.rows import RowReader, split
from adapters.hmis.spec import FileSpec, Year

_COLUMN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


class HeaderError(Exception):
    """The file's header row cannot be used; ``reason`` quotes no value."""

    def __init__(self, reason: str, line: int, raw: bytes) -> None:
        super().__init__(reason)
        self.reason, self.line, self.raw = reason, line, raw


@dataclass(frozen=True, slots=True)
class Scanned:
    line: int
    offset: int
    length: int
    fields: dict[str, str] | None  # None when the row could not be read at all
    findings: list[Finding]


def shown_name(header: str, position: int) -> str:
    """An unknown column's name as a notice may show it: only a name that looks like a column
    name (letters, digits, underscores) is shown, anything else by its position."""
    name = header.strip()
    return name if _COLUMN_NAME.fullmatch(name) else f"(column {position})"


class Table:
    """A transcoded file: ``found`` is its name in the export (``client.csv``)."""

    def __init__(
        self,
        spec: FileSpec,
        found: str,
        copy: Path,
        encoding: Encoding,
        year: Year,
        limits: Limits,
    ) -> None:
        self.spec, self.found, self.copy, self.encoding = spec, found, copy, encoding
        self.limits = limits
        self._canonical = spec.canonical(year)
        self.names: tuple[str | None, ...] = ()
        self.unknown: tuple[str, ...] = ()
        self.trusted = False  # the header names the file's key column: it is a header
        self.header_line = 0
        self.header_raw = b""
        self._random: BinaryIO | None = None

    def _reader(self, stream: BinaryIO) -> RowReader:
        return RowReader(
            stream,
            max_row_bytes=self.limits.max_row_bytes,
            max_lines=self.limits.max_record_lines,
        )

    def read_header(self) -> None:
        """Maps the header to HUD's names; raises HeaderError when it cannot be used."""
        with self.copy.open("rb") as stream:
            reader = self._reader(stream)
            header = next(iter(reader), None)
            if header is None:
                self.trusted = True  # an empty file: no columns, no rows, nothing to distrust
                return
            self.header_line = header.line
            raw = self._raw_from(stream, header.offset, header.length)
        if header.values is None:
            reason = f"the header row cannot be read ({header.problem}); the file is not read"
            raise HeaderError(reason, header.line, raw)
        names: list[str | None] = []
        unknown: list[str] = []
        for position, value in enumerate(header.values, start=1):
            name = self._canonical.get(value.strip().lstrip("\ufeff").lower())
            if name is not None and name in names:
                reason = f"the header names the column {name} twice; the file is not read"
                raise HeaderError(reason, header.line, raw)
            if name is None:
                unknown.append(shown_name(value, position))
            names.append(name)
        self.names, self.unknown = tuple(names), tuple(unknown)
        self.header_raw = raw
        self.trusted = self.spec.required[0] in names
        if not self.trusted:  # perhaps a first row of values: show no cell of it
            self.unknown = tuple(
                f"(column {position})"
                for position, name in enumerate(names, start=1)
                if name is None
            )

    def rows(self, *, export_id: str | None) -> Iterator[Scanned]:
        """Every row after the header, checked."""
        width = len(self.names)
        with self.copy.open("rb") as stream:
            reader = self._reader(stream)
            rows = iter(reader)
            if next(rows, None) is None:
                return
            reader.expected = width
            for row in rows:
                if row.values is None:
                    assert row.problem is not None
                    yield Scanned(row.line, row.offset, row.length, None, [("", row.problem)])
                elif len(row.values) != width:
                    reason = f"row has {len(row.values)} values; the header has {width}"
                    yield Scanned(row.line, row.offset, row.length, None, [("", reason)])
                else:
                    fields = self._fields(row.values)
                    findings = check_row(
                        self.spec,
                        fields,
                        export_id=export_id,
                        encoding_label=self.encoding.label,
                        max_field_bytes=self.limits.max_field_bytes,
                    )
                    yield Scanned(row.line, row.offset, row.length, fields, findings)

    def _fields(self, values: tuple[str, ...] | list[str]) -> dict[str, str]:
        return {name: value for name, value in zip(self.names, values, strict=True) if name}

    def _stream(self) -> BinaryIO:
        if self._random is None:
            self._random = self.copy.open("rb")
        return self._random

    @staticmethod
    def _read(stream: BinaryIO, offset: int, length: int) -> bytes:
        stream.seek(offset)
        return stream.read(length)

    def _raw_from(self, stream: BinaryIO, offset: int, length: int) -> bytes:
        return source_bytes(self._read(stream, offset, length), self.encoding)

    def raw(self, offset: int, length: int) -> bytes:
        """A row's bytes as the partner's file has them (in its own encoding)."""
        return self._raw_from(self._stream(), offset, length)

    def fields_at(self, offset: int, length: int) -> dict[str, str]:
        """A row read again that was read and checked before."""
        values = split(decode_copy(self._read(self._stream(), offset, length)))
        assert values is not None
        assert len(values) == len(self.names)
        return self._fields(values)

    def close(self) -> None:
        if self._random is not None:
            self._random.close()
            self._random = None
