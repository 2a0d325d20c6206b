"""The export as a directory or a zip: which of HUD's files it holds (in any case of their names),
and a private copy of each, checked against zip-bomb limits before a byte is decompressed.

Only regular files at the root are read: a zip member whose name holds a path separator or
``..``, a directory, a symlink, or a name the adapter does not know is ignored (and counted).
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from adapters.hmis.encoding import CHUNK
from adapters.hmis.limits import Limits
from adapters.hmis.spec import BY_LOWER_NAME, OTHER_HUD_FILES

_EOCD: Final = b"PK\x05\x06"
_EOCD64_LOCATOR: Final = b"PK\x06\x07"
_EOCD64: Final = b"PK\x06\x06"
_TAIL: Final = 22 + 0xFFFF + 20


class ExportError(Exception):
    """The whole export cannot be read; ``reason`` quotes nothing of its content."""

    def __init__(self, reason: str, source: str = "export") -> None:
        super().__init__(reason)
        self.reason, self.source = reason, source


@dataclass
class Contents:
    """HUD's file name (``Client``) -> the file's name in the export (``client.csv``)."""

    found: dict[str, str] = field(default_factory=dict)
    ignored_hud: list[str] = field(default_factory=list)
    ignored_other: int = 0
    ignored_nested: int = 0

    def add(self, name: str) -> bool:
        """Records a root-level name; True when it is one of the files read."""
        spec = BY_LOWER_NAME.get(name.lower())
        if spec is None:
            if name.lower() in OTHER_HUD_FILES:
                self.ignored_hud.append(name)
            else:
                self.ignored_other += 1
            return False
        if spec.name in self.found:
            raise ExportError(f"the export holds {spec.file_name} twice (in different cases)")
        self.found[spec.name] = name
        return True


def zip_entry_count(path: Path) -> int | None:
    """The entry count the zip's end record declares, read before the central directory is."""
    with path.open("rb") as stream:
        stream.seek(0, 2)
        size = stream.tell()
        stream.seek(max(0, size - _TAIL))
        tail = stream.read()
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) < at + 22:
        return None
    count = int(struct.unpack_from("<H", tail, at + 10)[0])
    if count != 0xFFFF:
        return count
    locator = at - 20
    if locator < 0 or tail[locator : locator + 4] != _EOCD64_LOCATOR:
        return None
    (record_offset,) = struct.unpack_from("<Q", tail, locator + 8)
    with path.open("rb") as stream:
        stream.seek(record_offset)
        record = stream.read(56)
    if len(record) < 56 or record[:4] != _EOCD64:
        return None
    return int(struct.unpack_from("<Q", record, 32)[0])


class Source:
    """An opened export: ``contents`` says what it holds; ``materialize`` copies one file."""

    def __init__(self, path: Path, limits: Limits) -> None:
        self.path, self.limits = path, limits
        self.contents = Contents()
        self._zip: zipfile.ZipFile | None = None
        self._members: dict[str, zipfile.ZipInfo] = {}
        self._extracted = 0
        if path.is_dir():
            self._scan_directory()
        elif path.is_file():
            self._open_zip()
        else:
            raise ExportError("the export is neither a directory nor a zip file")

    def _scan_directory(self) -> None:
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    if entry.is_file(follow_symlinks=False):
                        self.contents.add(entry.name)
                    else:
                        self.contents.ignored_nested += 1
        except OSError as error:
            raise ExportError("the export directory cannot be read") from error

    def _open_zip(self) -> None:
        limits = self.limits
        try:
            count = zip_entry_count(self.path)
            if count is None:
                raise ExportError("the export is not a readable zip file")
            if count > limits.max_zip_members:
                raise ExportError(
                    f"the zip holds {count} members; at most {limits.max_zip_members} are read"
                )
            self._zip = zipfile.ZipFile(self.path)
            infos = self._zip.infolist()
        except ExportError:
            raise
        except Exception as error:  # hostile bytes raise more than BadZipFile from zipfile
            raise ExportError("the export is not a readable zip file") from error
        if len(infos) > limits.max_zip_members:
            raise ExportError(f"the zip holds more than {limits.max_zip_members} members")
        declared = 0
        for info in infos:
            name = info.filename
            if info.is_dir() or "/" in name or "\\" in name or ".." in name or "\x00" in name:
                self.contents.ignored_nested += 1
                continue
            if not self.contents.add(name):
                continue
            spec_name = BY_LOWER_NAME[name.lower()].file_name
            if info.file_size > 0 and (
                info.compress_size == 0
                or info.file_size > limits.max_compression_ratio * info.compress_size
            ):
                raise ExportError(
                    f"{spec_name} is compressed more than {limits.max_compression_ratio} to 1 "
                    "(a zip bomb?)"
                )
            declared += info.file_size
            self._members[BY_LOWER_NAME[name.lower()].name] = info
        if declared > limits.max_total_bytes:
            raise ExportError(
                f"the CSV files of the zip declare more than {limits.max_total_bytes} bytes"
            )

    def materialize(self, name: str, target: Path) -> Path:
        """The path of the file's bytes: the file itself (directory) or a copy in ``target``."""
        found = self.contents.found[name]
        if self._zip is None:
            return self.path / found
        info = self._members[name]
        limit = self.limits.max_total_bytes
        written = 0
        try:
            with self._zip.open(info) as member, target.open("wb") as copy:
                while chunk := member.read(CHUNK):
                    written += len(chunk)
                    self._extracted += len(chunk)
                    if written > info.file_size or self._extracted > limit:
                        raise ExportError(
                            f"{found} holds more bytes than the zip declares (a zip bomb?)"
                        )
                    copy.write(chunk)
        except ExportError:
            raise
        except Exception as error:  # CRC, encryption, unknown compression, truncation, ...
            raise ExportError(f"{found} cannot be read from the zip") from error
        return target

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None
