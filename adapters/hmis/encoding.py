"""Which encoding a CSV file is in, and its one transcoding into a private UTF-8 copy.

Detection scans the file's bytes in chunks (constant memory) before anything is parsed: a UTF-16
byte-order mark (LE or BE) or a UTF-8 one decides; without one, the file is UTF-8 if every byte
decodes as UTF-8, else Windows-1252. Bytes the chosen codec cannot decode (a corrupt UTF-16 pair,
the five bytes Windows-1252 leaves undefined) are not replaced: each becomes a lone surrogate
U+DC00 + byte, which the row checks quarantine, and which turns back into the same byte when a
row's source bytes are rebuilt for the quarantine (``source_bytes``).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

CHUNK: Final = 1 << 16
_ESCAPE: Final = "hmis-csv-escape"
ESCAPED: Final = re.compile("[\udc00-\udcff]")
_RUNS: Final = re.compile("([\udc00-\udcff]+)")


def _escape(error: UnicodeError) -> tuple[str, int]:
    if not isinstance(error, UnicodeDecodeError):
        raise error
    bad = error.object[error.start : error.end]
    return "".join(chr(0xDC00 + byte) for byte in bad), error.end


codecs.register_error(_ESCAPE, _escape)


@dataclass(frozen=True, slots=True)
class Encoding:
    codec: str  # Python codec of the bytes after the byte-order mark
    bom: bytes
    label: str  # as an operator reads it: "UTF-8", "UTF-16 LE with BOM", "Windows-1252"


UTF8: Final = Encoding("utf-8", b"", "UTF-8")
UTF8_BOM: Final = Encoding("utf-8", codecs.BOM_UTF8, "UTF-8 with BOM")
UTF16_LE: Final = Encoding("utf-16-le", codecs.BOM_UTF16_LE, "UTF-16 LE with BOM")
UTF16_BE: Final = Encoding("utf-16-be", codecs.BOM_UTF16_BE, "UTF-16 BE with BOM")
CP1252: Final = Encoding("cp1252", b"", "Windows-1252")


def detect(path: Path) -> Encoding:
    """The file's encoding, from its bytes read in chunks (the whole file, in constant memory)."""
    with path.open("rb") as stream:
        first = stream.read(CHUNK)
        for encoding in (UTF8_BOM, UTF16_LE, UTF16_BE):
            if first.startswith(encoding.bom):
                return encoding
        decoder = codecs.getincrementaldecoder("utf-8")()
        chunk = first
        try:
            while chunk:
                decoder.decode(chunk)
                chunk = stream.read(CHUNK)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return CP1252
    return UTF8


def transcode(source: Path, target: Path, encoding: Encoding) -> None:
    """Writes ``source`` decoded with ``encoding`` into ``target`` as UTF-8, chunk by chunk;
    undecodable bytes are kept as escapes (see the module's docstring)."""
    decoder = codecs.getincrementaldecoder(encoding.codec)(errors=_ESCAPE)
    with source.open("rb") as reader, target.open("wb") as writer:
        skip = len(encoding.bom)
        while chunk := reader.read(CHUNK):
            if skip:
                cut = min(skip, len(chunk))
                chunk, skip = chunk[cut:], skip - cut
            writer.write(decoder.decode(chunk).encode("utf-8", "surrogatepass"))
        writer.write(decoder.decode(b"", final=True).encode("utf-8", "surrogatepass"))


def decode_copy(data: bytes) -> str:
    """Text of bytes read back from a transcoded copy."""
    return data.decode("utf-8", "surrogatepass")


def source_bytes(copy_bytes: bytes, encoding: Encoding) -> bytes:
    """The bytes a row had in the partner's file, rebuilt from the transcoded copy: text in the
    file's encoding, escapes back into the bytes they stand for."""
    parts = _RUNS.split(decode_copy(copy_bytes))
    return b"".join(
        bytes(ord(char) - 0xDC00 for char in part) if odd else part.encode(encoding.codec)
        for odd, part in ((index % 2 == 1, part) for index, part in enumerate(parts))
    )
