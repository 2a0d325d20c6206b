"""The adapter's limits on hostile input: field, row and record sizes, and zip-bomb guards."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_field_bytes: int = 32 * 1024
    """A longer field quarantines its row (HUD's longest string field is 500 characters)."""
    max_row_bytes: int = 1024 * 1024
    """A longer row is quarantined (its raw bytes cut to this length)."""
    max_record_lines: int = 64
    """A quoted field may span line breaks, over at most this many lines."""
    max_children: int = 10_000
    """Exit, Services, HealthAndDV or CurrentLivingSituation rows of one enrollment."""
    max_record_bytes: int = 16 * 1024 * 1024
    """An Enrollment with all its joined rows."""
    max_zip_members: int = 1_000
    max_total_bytes: int = 16 * 1024**3
    """Uncompressed bytes of the CSV files read from a zip, declared and actual."""
    max_compression_ratio: int = 200
    """Uncompressed to compressed size of any CSV file read from a zip."""
