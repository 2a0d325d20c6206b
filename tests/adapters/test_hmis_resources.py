"""The adapter's footprint: a private working directory (mode 0700) that is gone when reading
ends, however it ends, and memory that does not grow with the export."""

from __future__ import annotations

import gc
import stat
import tracemalloc
from pathlib import Path

import pytest

from adapters.hmis import read_export
from gateway.synth.hmis import write_hmis_export
from gateway.vocabulary.source import SourceProblem, SourceRecord
from tests.adapters.hmis_fixtures import base_export, write_export


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return write_hmis_export(tmp_path / "export", clients=40, year="FY2024", releases_to=("c",))


@pytest.fixture
def parent(tmp_path: Path) -> Path:
    directory = tmp_path / "work"
    directory.mkdir()
    return directory


def test_nothing_is_created_before_the_first_item_is_asked_for(export: Path, parent: Path) -> None:
    items = read_export(export, partner_kind="clinic", temp_parent=parent)

    assert list(parent.iterdir()) == []
    items.close()  # type: ignore[attr-defined]


def test_the_working_directory_is_private_while_reading(export: Path, parent: Path) -> None:
    items = read_export(export, partner_kind="clinic", temp_parent=parent)
    next(items)

    (workdir,) = parent.iterdir()
    assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
    assert (workdir / "index.sqlite").exists()
    items.close()  # type: ignore[attr-defined]


def test_the_working_directory_is_removed_when_the_export_is_read_to_the_end(
    export: Path, parent: Path
) -> None:
    items = list(read_export(export, partner_kind="clinic", temp_parent=parent))

    assert any(isinstance(item, SourceRecord) for item in items)
    assert list(parent.iterdir()) == []


def test_the_working_directory_is_removed_when_reading_is_closed_early(
    export: Path, parent: Path
) -> None:
    items = read_export(export, partner_kind="clinic", temp_parent=parent)
    next(item for item in items if isinstance(item, SourceRecord))
    assert len(list(parent.iterdir())) == 1

    items.close()  # type: ignore[attr-defined]

    assert list(parent.iterdir()) == []


def test_the_working_directory_is_removed_when_the_reader_is_dropped(
    export: Path, parent: Path
) -> None:
    items = read_export(export, partner_kind="clinic", temp_parent=parent)
    next(items)
    del items
    gc.collect()

    assert list(parent.iterdir()) == []


def test_the_working_directory_is_removed_after_a_refusal(tmp_path: Path, parent: Path) -> None:
    source = write_export(tmp_path / "vsp", base_export(victim_service_provider="1"))

    (item,) = read_export(source, partner_kind="clinic", temp_parent=parent)

    assert isinstance(item, SourceProblem)
    assert list(parent.iterdir()) == []


def test_the_working_directory_is_removed_when_the_consumer_fails(
    export: Path, parent: Path
) -> None:
    def consume() -> None:
        for item in read_export(export, partner_kind="clinic", temp_parent=parent):
            if isinstance(item, SourceRecord):
                raise RuntimeError("the pipeline failed")

    with pytest.raises(RuntimeError, match="pipeline"):
        consume()
    gc.collect()

    assert list(parent.iterdir()) == []


def peak_reading(source: Path) -> int:
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_export(source, partner_kind="clinic"))
        assert count > 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def peak_writing(target: Path, clients: int) -> int:
    tracemalloc.start()
    try:
        write_hmis_export(target, clients=clients, year="FY2026", releases_to=("c", "l"))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_reading_ten_times_the_clients_takes_no_more_memory(tmp_path: Path) -> None:
    small = write_hmis_export(tmp_path / "small", clients=500, year="FY2026", releases_to=("c",))
    large = write_hmis_export(tmp_path / "large", clients=5_000, year="FY2026", releases_to=("c",))
    peak_reading(small)  # imports and caches settle first

    small_peak, large_peak = peak_reading(small), peak_reading(large)

    assert large_peak < small_peak * 1.5 + 64 * 1024, (small_peak, large_peak)


def test_generating_ten_times_the_clients_takes_no_more_memory(tmp_path: Path) -> None:
    peak_writing(tmp_path / "warm", 10)

    small_peak = peak_writing(tmp_path / "small", 500)
    large_peak = peak_writing(tmp_path / "large", 5_000)

    assert large_peak < small_peak * 1.5 + 64 * 1024, (small_peak, large_peak)
