"""Rows of a transcoded CSV file, one at a time, each with its line number, byte offset and length
in the copy (so that the index can find it again), and never more than one row in memory.

Quoting follows RFC 4180: a field may be quoted, a quote inside a quoted field is doubled, and a
quoted field may hold line breaks. A record that opens a quote it does not close within
``max_lines`` lines or ``max_row_bytes`` bytes, or whose lines, joined, do not make a row of the
header's width, is broken quoting: its first line alone is quarantined and reading resumes on the
next line, so that one stray quote costs one row and not the rest of the file.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Final

from adapters.hmis.encoding import CHUNK, decode_copy

BROKEN_QUOTING: Final = "broken CSV quoting: a quote is not closed or a field has a stray quote"

_QUOTED: Final = re.compile(r'"([^"]*(?:""[^"]*)*)"')
_PLAIN: Final = re.compile(r'[^,"]*')


def split(text: str) -> list[str] | None:
    """The fields of one record, or None when its quoting is broken."""
    if '"' not in text:
        return text.split(",")
    values: list[str] = []
    position, end = 0, len(text)
    while True:
        if position < end and text[position] == '"':
            match = _QUOTED.match(text, position)
            if match is None:
                return None
            values.append(match.group(1).replace('""', '"'))
        else:
            match = _PLAIN.match(text, position)
            assert match is not None  # matches the empty string at worst
            values.append(match.group(0))
        position = match.end()
        if position == end:
            return values
        if text[position] != ",":
            return None
        position += 1


@dataclass(frozen=True, slots=True)
class Row:
    """One record of the file: ``values`` is None when it could not be read, and ``problem``
    says why (never quoting the bytes)."""

    line: int
    offset: int
    length: int
    values: tuple[str, ...] | None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class _Line:
    number: int
    offset: int
    data: bytes  # with its line break, or truncated to the limit when overlong
    overlong: bool

    @property
    def quotes_odd(self) -> bool:
        return self.data.count(b'"') % 2 == 1


def _strip_break(data: bytes) -> bytes:
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    return data


class RowReader:
    """Iterates a file's records; set ``expected`` to the header's width once it is read."""

    def __init__(self, stream: BinaryIO, *, max_row_bytes: int, max_lines: int) -> None:
        self._stream = stream
        self._max_row_bytes = max_row_bytes
        self._max_lines = max_lines
        self._offset = 0
        self._number = 0
        self._pushed: deque[_Line] = deque()
        self.expected: int | None = None

    def _read_line(self) -> _Line | None:
        if self._pushed:
            return self._pushed.popleft()
        limit = self._max_row_bytes + 2
        data = self._stream.readline(limit)
        if not data:
            return None
        size, overlong = len(data), False
        if len(data) == limit and not data.endswith(b"\n"):
            overlong = True
            while more := self._stream.readline(CHUNK):
                size += len(more)
                if more.endswith(b"\n"):
                    break
        if len(_strip_break(data)) > self._max_row_bytes:
            overlong = True
            data = data[: self._max_row_bytes]
        self._number += 1
        line = _Line(self._number, self._offset, data, overlong)
        self._offset += size
        return line

    def _too_long(self, line: _Line) -> Row:
        return Row(
            line.number,
            line.offset,
            len(_strip_break(line.data)),
            None,
            f"row is longer than {self._max_row_bytes} bytes",
        )

    def _row(self, lines: list[_Line]) -> Row | None:
        """The record these lines make, or None when they make none of the expected width."""
        data = _strip_break(b"".join(line.data for line in lines))
        values = split(decode_copy(data))
        if values is None:
            return None
        if len(lines) > 1 and self.expected is not None and len(values) != self.expected:
            return None
        return Row(lines[0].number, lines[0].offset, len(data), tuple(values))

    def __iter__(self) -> Iterator[Row]:
        while (first := self._read_line()) is not None:
            if first.overlong:
                yield self._too_long(first)
                continue
            if not _strip_break(first.data).strip(b" \t"):
                continue  # a blank line is no row
            lines = [first]
            if first.quotes_odd:
                closed, size = False, len(first.data)
                while len(lines) < self._max_lines:
                    following = self._read_line()
                    if following is None:
                        break
                    lines.append(following)
                    size += len(following.data)
                    if following.overlong or size > self._max_row_bytes:
                        break
                    if following.quotes_odd:
                        closed = True
                        break
                if not closed:
                    self._pushed.extendleft(reversed(lines[1:]))
                    yield self._broken(first)
                    continue
            row = self._row(lines)
            if row is None:
                self._pushed.extendleft(reversed(lines[1:]))
                yield self._broken(first)
                continue
            yield row

    @staticmethod
    def _broken(line: _Line) -> Row:
        return Row(line.number, line.offset, len(_strip_break(line.data)), None, BROKEN_QUOTING)
