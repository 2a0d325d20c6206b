"""Reading a whole HMIS CSV export: the checks that refuse it, then its records in order.

``read_export`` first decides about the export as a whole, before it yields anything: the source
must open (a directory, or a zip within its limits), Export.csv must hold exactly one row of a
known CSVVersion, the export must not be a victim service provider's unless the partner is a
shelter, and Client.csv must be there. A refusal is one fatal ``SourceProblem`` and nothing else.
Then it yields notices (encodings, ignored columns and files), the problems of the export's own
files, and the records: every Client, every Enrollment with its joined rows, every release of
information. Every row of every file read ends up exactly once: in a record or as a problem.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from adapters.hmis.archive import ExportError, Source
from adapters.hmis.checks import Finding
from adapters.hmis.encoding import detect, transcode
from adapters.hmis.index import Index, IndexRow, decode_findings, encode_findings
from adapters.hmis.limits import Limits
from adapters.hmis.reader import HeaderError, Scanned, Table
from adapters.hmis.spec import (
    CHILD_FILES,
    CLIENT_FILE,
    ENROLLMENT_FILE,
    EXPORT_FILE,
    HMIS_PARTICIPATION_FILE,
    ORGANIZATION_FILE,
    PROJECT_FIELDS,
    PROJECT_FILE,
    RELEASE_OF_INFORMATION_FILE,
    FileSpec,
    Year,
    year_of,
)
from gateway.vocabulary.source import (
    Origin,
    Place,
    SourceItem,
    SourceNotice,
    SourceProblem,
    SourceRecord,
)

SYSTEM: Final = "hmis-csv"
SHELTER: Final = "shelter"

_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "Organization": ("OrganizationID",),
    "Project": ("ProjectID",),
    "HMISParticipation": ("HMISParticipationID", "ProjectID"),
    "Client": ("PersonalID",),
    "Enrollment": ("EnrollmentID", "PersonalID", "ProjectID"),
    "Exit": ("ExitID", "EnrollmentID", "PersonalID"),
    "Services": ("ServicesID", "EnrollmentID", "PersonalID"),
    "HealthAndDV": ("HealthAndDVID", "EnrollmentID", "PersonalID"),
    "CurrentLivingSituation": ("CurrentLivingSitID", "EnrollmentID", "PersonalID"),
    "ReleaseOfInformation": ("ROIID", "PersonalID"),
}
_ROW = 'line, "offset", length, k1, k2, k3, findings'
_SHOWN_LINES: Final = 5
_PROJECT_CACHE: Final = 256


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What Export.csv and Organization.csv (with any participation type) say of an export."""

    version: Year | None  # FY2024 | FY2026, None when Export.csv does not tell
    export_id: str | None
    victim_service_provider: bool | None  # None: cannot tell (``basis`` says why)
    basis: str
    problems: tuple[SourceProblem, ...] = ()


def _fatal(reason: str, source: str = "export", record_type: str = "Export") -> SourceProblem:
    return SourceProblem(SYSTEM, record_type, reason, Origin(source, "export"), fatal=True)


@dataclass
class _Export:
    """Export.csv's one row."""

    year: Year
    export_id: str
    problem: SourceProblem | None  # a non-fatal finding in the row (a bad ExportDate)


@dataclass
class _Verdict:
    vsp: bool = False
    basis: str = ""
    uncertain: str = ""  # why the export's status cannot be told, when it cannot


class _Session:
    """One reading of one export: its private directory, copies, tables and index."""

    def __init__(self, path: Path, limits: Limits, workdir: Path) -> None:
        self.path, self.limits, self.workdir = path, limits, workdir
        self.source: Source | None = None
        self.index: Index | None = None
        self.tables: dict[str, Table] = {}
        self.notices: list[SourceNotice] = []
        self.header_problems: list[SourceProblem] = []

    def open(self) -> None:
        self.source = Source(self.path, self.limits)
        self.index = Index(self.workdir / "index.sqlite")

    @property
    def found(self) -> dict[str, str]:
        assert self.source is not None
        return self.source.contents.found

    def table(self, spec: FileSpec, year: Year) -> Table | None:
        """The file transcoded with its header read; None when absent or its header unusable.
        Raises ExportError when the zip will not give it up."""
        if spec.name in self.tables:
            return self.tables[spec.name]
        if spec.name not in self.found:
            return None
        assert self.source is not None
        found = self.found[spec.name]
        raw = self.source.materialize(spec.name, self.workdir / f"{spec.name}.raw")
        encoding = detect(raw)
        copy = self.workdir / f"{spec.name}.utf8"
        transcode(raw, copy, encoding)
        if raw.parent == self.workdir:
            raw.unlink()
        self.notices.append(
            SourceNotice(
                SYSTEM,
                f"{found} read as {encoding.label}",
                {"file": found, "encoding": encoding.label},
            )
        )
        table = Table(spec, found, copy, encoding, year, self.limits)
        try:
            table.read_header()
        except HeaderError as error:
            origin = Origin(found, f"row {error.line}", error.raw)
            place = Place(file=found, row=error.line)
            self.header_problems.append(
                SourceProblem(SYSTEM, spec.name, error.reason, origin, (place,))
            )
            return None
        if not table.trusted:  # quarantine the row: it may be a client's, not a header
            reason = (
                f"the header row has no {spec.required[0]} column (is the header missing?); "
                "its unknown columns are shown by position only"
            )
            line = table.header_line
            self.header_problems.append(
                SourceProblem(
                    SYSTEM,
                    spec.name,
                    reason,
                    Origin(found, f"row {line}", table.header_raw),
                    (Place(file=found, row=line),),
                )
            )
        if table.unknown:
            self.notices.append(
                SourceNotice(
                    SYSTEM,
                    f"{found}: {len(table.unknown)} unknown column(s) ignored",
                    {"file": found, "columns": list(table.unknown)},
                )
            )
        self.tables[spec.name] = table
        return table

    def scan(
        self,
        table: Table,
        export_id: str,
        observe: Callable[[Scanned], None] | None = None,
    ) -> None:
        """Checks every row of the file and indexes it."""
        assert self.index is not None
        keys = _KEYS[table.spec.name]

        def entries() -> Iterator[IndexRow]:
            for row in table.rows(export_id=export_id):
                if observe is not None:
                    observe(row)
                flagged = {column for column, _ in row.findings}
                values: list[str | None] = [
                    row.fields.get(key) or None
                    if row.fields is not None and key not in flagged
                    else None
                    for key in keys
                ]
                values += [None] * (3 - len(values))
                yield (
                    table.spec.name,
                    row.line,
                    row.offset,
                    row.length,
                    values[0],
                    values[1],
                    values[2],
                    encode_findings(row.findings),
                )

        self.index.add(entries())

    def close(self) -> None:
        for table in self.tables.values():
            table.close()
        if self.index is not None:
            self.index.close()
        if self.source is not None:
            self.source.close()


def _read_export_csv(session: _Session) -> _Export:
    """Export.csv's one row, or ExportError."""
    name = EXPORT_FILE.file_name
    if "Export" not in session.found:
        raise ExportError(f"{name} is missing", name)
    table = session.table(EXPORT_FILE, "FY2024")  # Export.csv is the same in every year
    if table is None:
        raise ExportError(f"the header row of {name} cannot be read", name)
    first: Scanned | None = None
    count = 0
    for row in table.rows(export_id=None):
        count += 1
        first = first or row
    if first is None or count != 1:
        raise ExportError(f"{table.found} has {count} rows; it must have exactly one", name)
    if first.fields is None:
        reason = first.findings[0][1]
        raise ExportError(f"{table.found} row {first.line} cannot be read ({reason})", name)
    flagged = {column for column, _ in first.findings}
    export_id = first.fields.get("ExportID", "")
    if "ExportID" in flagged or not export_id:
        raise ExportError(f"{table.found} has no usable ExportID", name)
    year = year_of(first.fields.get("CSVVersion", ""))
    if year is None:
        raise ExportError(
            f"the CSVVersion of {table.found} is not one this adapter reads (2024 or 2026)",
            name,
        )
    problem = None
    if first.findings:
        problem = _problem(table, first.line, first.offset, first.length, first.findings)
    return _Export(year, export_id, problem)


def _judge(session: _Session, export: _Export, registered_vsp: bool) -> _Verdict:
    """Is this a victim service provider's export? Indexes Organization, Project and
    HMISParticipation on the way (their rows are read for nothing else)."""
    verdict = _Verdict()
    if registered_vsp:
        verdict.vsp, verdict.basis = True, "the partner is registered as a victim service provider"

    def found_vsp(basis: str) -> None:
        if not verdict.vsp:
            verdict.vsp, verdict.basis = True, basis

    def unsure(why: str) -> None:
        verdict.uncertain = verdict.uncertain or why

    organizations = session.table(ORGANIZATION_FILE, export.year)
    if "Organization" not in session.found:
        unsure("Organization.csv is missing")
    elif organizations is None:
        unsure("the header row of Organization.csv cannot be read")
    else:
        found = organizations.found
        if "VictimServiceProvider" not in organizations.names:
            unsure(f"{found} has no VictimServiceProvider column")

        def organization(row: Scanned) -> None:
            if row.fields is None:
                unsure(f"{found} row {row.line} cannot be read")
                return
            flag = row.fields.get("VictimServiceProvider", "").strip()
            if flag == "1":
                found_vsp(f"{found} VictimServiceProvider = 1")
            elif flag != "0" and "VictimServiceProvider" in row.fields:
                unsure(f"{found} row {row.line} has a VictimServiceProvider that is not 0 or 1")
            if row.fields.get("HMISParticipationType", "").strip() == "2":
                found_vsp(f"{found} HMISParticipationType = 2")

        session.scan(organizations, export.export_id, organization)
    for spec in (PROJECT_FILE, HMIS_PARTICIPATION_FILE):
        table = session.table(spec, export.year)
        if table is None:
            continue

        def participation(row: Scanned, found: str = table.found) -> None:
            if row.fields is not None and row.fields.get("HMISParticipationType") == "2":
                found_vsp(f"{found} HMISParticipationType = 2 (a comparable database)")

        session.scan(table, export.export_id, participation)
    return verdict


def inspect_export(
    source: Path, *, limits: Limits | None = None, temp_parent: Path | None = None
) -> ExportSummary:
    """Version, ExportID and victim-service-provider status of an export, from Export.csv,
    Organization.csv and any participation type (Project.csv, HMISParticipation.csv) alone:
    no client file is opened."""
    workdir = Path(tempfile.mkdtemp(prefix="hmis-csv-", dir=temp_parent))
    session = _Session(Path(source), limits or Limits(), workdir)
    try:
        session.open()
        export = _read_export_csv(session)
        verdict = _judge(session, export, registered_vsp=False)
    except ExportError as error:
        return ExportSummary(None, None, None, "", (_fatal(error.reason, error.source),))
    finally:
        session.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if verdict.vsp:
        return ExportSummary(export.year, export.export_id, True, verdict.basis)
    if verdict.uncertain:
        return ExportSummary(export.year, export.export_id, None, verdict.uncertain)
    return ExportSummary(export.year, export.export_id, False, "no organization is one")


def read_export(
    source: Path,
    *,
    partner_kind: str,
    victim_service_provider: bool = False,
    limits: Limits | None = None,
    temp_parent: Path | None = None,
) -> Iterator[SourceItem]:
    """The records of an HMIS CSV export (a directory, or a zip with the CSV files at its root).

    ``partner_kind`` is the sending partner's kind: a victim service provider's export
    (``victim_service_provider=True`` says the partner is one, whatever its files say) is
    refused whole unless it is ``shelter``. Nothing is read before the first ``next()``; the
    private working directory (mode 0700, under ``temp_parent`` or the system's temporary
    directory) is removed when the iterator is exhausted, fails or is closed."""
    settings = limits or Limits()
    workdir = Path(tempfile.mkdtemp(prefix="hmis-csv-", dir=temp_parent))
    session = _Session(Path(source), settings, workdir)
    try:
        yield from _items(session, partner_kind == SHELTER, victim_service_provider)
    finally:
        session.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _items(session: _Session, shelter: bool, registered_vsp: bool) -> Iterator[SourceItem]:
    try:
        session.open()
        export = _read_export_csv(session)
        verdict = _judge(session, export, registered_vsp)
    except ExportError as error:
        yield _fatal(error.reason, error.source)
        return
    if not shelter and (verdict.vsp or verdict.uncertain):
        if verdict.vsp:
            reason = (
                f"this export is a victim service provider's ({verdict.basis}); "
                "it is accepted only from a partner of kind shelter"
            )
        else:
            reason = (
                "cannot tell whether this export is a victim service provider's "
                f"({verdict.uncertain}); it is accepted only from a partner of kind shelter"
            )
        yield _fatal(reason, ORGANIZATION_FILE.file_name, "Organization")
        return
    try:
        if "Client" not in session.found:
            raise ExportError("Client.csv is missing", CLIENT_FILE.file_name)
        if session.table(CLIENT_FILE, export.year) is None:
            raise ExportError("the header row of Client.csv cannot be read", "Client.csv")
        for spec in (ENROLLMENT_FILE, *CHILD_FILES, RELEASE_OF_INFORMATION_FILE):
            session.table(spec, export.year)
    except ExportError as error:
        yield _fatal(error.reason, error.source)
        return
    yield from _Emitter(session, export, verdict).items()


@dataclass
class _Child:
    spec: FileSpec
    line: int
    offset: int
    length: int
    own_id: str | None
    person: str | None
    stored: list[Finding]
    reasons: list[Finding] = field(default_factory=list)


class _Emitter:
    def __init__(self, session: _Session, export: _Export, verdict: _Verdict) -> None:
        assert session.index is not None
        self.session, self.export, self.verdict = session, export, verdict
        self.index = session.index
        self.tables = session.tables
        self._projects: dict[str, dict[str, str] | str] = {}

    def items(self) -> Iterator[SourceItem]:
        session = self.session
        if self.verdict.vsp:
            yield SourceNotice(
                SYSTEM,
                f"this export is a victim service provider's ({self.verdict.basis}); "
                "accepted because the partner is a shelter",
                {"victim_service_provider": True, "basis": self.verdict.basis},
            )
        elif self.verdict.uncertain:
            yield SourceNotice(
                SYSTEM,
                "cannot tell whether this export is a victim service provider's "
                f"({self.verdict.uncertain}); accepted because the partner is a shelter",
                {"victim_service_provider": None, "basis": self.verdict.uncertain},
            )
        yield from session.notices
        yield from self._ignored_files()
        for spec in (ENROLLMENT_FILE, PROJECT_FILE, RELEASE_OF_INFORMATION_FILE, *CHILD_FILES):
            if spec.name not in session.found:
                yield SourceNotice(
                    SYSTEM, f"{spec.file_name} is not in the export", {"file": spec.file_name}
                )
        yield from session.header_problems
        if self.export.problem is not None:
            yield self.export.problem
        for name in ("Organization", "Project", "HMISParticipation"):
            yield from self._stored_problems(name)
        yield from self._clients()
        yield from self._enrollments()
        yield from self._releases()

    def _ignored_files(self) -> Iterator[SourceNotice]:
        assert self.session.source is not None
        contents = self.session.source.contents
        if contents.ignored_hud or contents.ignored_other or contents.ignored_nested:
            yield SourceNotice(
                SYSTEM,
                "files of the export that are not read: "
                f"{len(contents.ignored_hud)} other HUD file(s), {contents.ignored_other} "
                f"file(s) of other names, {contents.ignored_nested} in folders or not files",
                {
                    "hud_files": sorted(contents.ignored_hud),
                    "other_files": contents.ignored_other,
                    "nested_or_not_files": contents.ignored_nested,
                },
            )

    # --- helpers -------------------------------------------------------------------------

    def _rows(
        self, name: str, where: str = "", *parameters: Any, limit: int | None = None
    ) -> Iterator[tuple[Any, ...]]:
        sql = f"SELECT {_ROW} FROM rows WHERE file = ? {where} ORDER BY line"  # noqa: S608
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self.index.query(sql, name, *parameters)

    def _stored_problems(self, name: str) -> Iterator[SourceProblem]:
        table = self.tables.get(name)
        if table is None:
            return
        for line, offset, length, *_, findings in self._rows(name, "AND findings IS NOT NULL"):
            yield _problem(table, line, offset, length, decode_findings(findings))

    def _duplicate(self, spec: FileSpec, column: str, value: str | None) -> Finding | None:
        count = self.index.count(spec.name, "k1", value)
        if value is None or count < 2:
            return None
        lines = self.index.lines(spec.name, "k1", value, _SHOWN_LINES)
        shown = ", ".join(str(line) for line in lines) + (", ..." if count > len(lines) else "")
        found = self.tables[spec.name].found
        return column, f"{column} appears {count} times in {found} (rows {shown})"

    def _no_client(self) -> str:
        return f"PersonalID is in no readable row of {self.tables['Client'].found}"

    def _client_exists(self, person: str | None) -> bool:
        return person is not None and self.index.count("Client", "k1", person) > 0

    def _record(
        self, table: Table, source_id: str, fields: dict[str, Any], line: int, raw: bytes
    ) -> SourceRecord:
        origin = Origin(table.found, f"row {line}", raw)
        return SourceRecord(
            SYSTEM, table.spec.name, source_id, fields, origin, version=self.export.year
        )

    # --- Client.csv ----------------------------------------------------------------------

    def _clients(self) -> Iterator[SourceItem]:
        table = self.tables["Client"]
        self.session.scan(table, self.export.export_id)
        for line, offset, length, person, _, _, stored in self._rows("Client"):
            findings = decode_findings(stored)
            if not findings and (duplicate := self._duplicate(CLIENT_FILE, "PersonalID", person)):
                findings.append(duplicate)
            if findings:
                yield _problem(table, line, offset, length, findings)
                continue
            fields = table.fields_at(offset, length)
            yield self._record(table, person, fields, line, table.raw(offset, length))

    # --- Enrollment.csv and its rows -----------------------------------------------------

    def _enrollments(self) -> Iterator[SourceItem]:
        enrollments = self.tables.get("Enrollment")
        if enrollments is not None:
            self.session.scan(enrollments, self.export.export_id)
        for spec in CHILD_FILES:
            if spec.name in self.tables:
                self.session.scan(self.tables[spec.name], self.export.export_id)
        if enrollments is not None:
            for row in self._rows("Enrollment"):
                yield from self._enrollment(enrollments, *row)
        yield from self._orphans()

    def _project(self, project: str) -> dict[str, str] | str:
        """The Project an enrollment joins, or why it cannot join one."""
        if project in self._projects:
            return self._projects[project]
        table = self.tables["Project"]
        rows = list(self._rows("Project", "AND k1 = ?", project, limit=2))
        result: dict[str, str] | str
        if not rows:
            result = f"ProjectID is not in {table.found}"
        elif len(rows) > 1:
            result = f"ProjectID appears more than once in {table.found}"
        elif rows[0][6] is not None:
            result = f"its Project ({table.found} row {rows[0][0]}) is quarantined"
        else:
            fields = table.fields_at(rows[0][1], rows[0][2])
            result = {name: fields[name] for name in PROJECT_FIELDS if name in fields}
        if len(self._projects) >= _PROJECT_CACHE:
            self._projects.pop(next(iter(self._projects)))
        self._projects[project] = result
        return result

    def _children(self, spec: FileSpec, enrollment: str, limit: int | None) -> Iterator[_Child]:
        if spec.name not in self.tables:
            return
        rows = self._rows(spec.name, "AND k2 = ?", enrollment, limit=limit)
        for line, offset, length, own_id, _, person, stored in rows:
            yield _Child(spec, line, offset, length, own_id, person, decode_findings(stored))

    def _judge_child(self, child: _Child, person: str | None, enrollment_line: int) -> None:
        if child.stored:
            return
        id_column = _KEYS[child.spec.name][0]
        duplicate = self._duplicate(child.spec, id_column, child.own_id)
        if duplicate:
            child.reasons.append(duplicate)
        if child.person != person:
            found = self.tables["Enrollment"].found
            child.reasons.append(
                (
                    "PersonalID",
                    "PersonalID differs from the PersonalID of its Enrollment "
                    f"({found} row {enrollment_line})",
                )
            )

    def _enrollment(
        self,
        table: Table,
        line: int,
        offset: int,
        length: int,
        enrollment: str | None,
        person: str | None,
        project: str | None,
        stored: str | None,
    ) -> Iterator[SourceItem]:
        limits = self.session.limits
        findings = decode_findings(stored)
        duplicate = self._duplicate(ENROLLMENT_FILE, "EnrollmentID", enrollment)
        if duplicate:
            findings.append(duplicate)
        if person is not None and not self._client_exists(person):
            findings.append(("PersonalID", self._no_client()))
        joined_project: dict[str, str] | None = None
        if project is not None and "Project" in self.tables:
            outcome = self._project(project)
            if isinstance(outcome, str):
                findings.append(("ProjectID", outcome))
            else:
                joined_project = outcome
        first = enrollment is not None and (
            duplicate is None or self.index.lines("Enrollment", "k1", enrollment, 1) == [line]
        )
        children: dict[str, list[_Child]] = {}
        if enrollment is not None and first:
            size = length
            for spec in CHILD_FILES:
                rows = list(self._children(spec, enrollment, limits.max_children + 1))
                children[spec.name] = rows
                if len(rows) > limits.max_children:
                    findings.append(
                        ("", f"Enrollment has more than {limits.max_children} {spec.name} rows")
                    )
                for child in rows:
                    self._judge_child(child, person, line)
                    size += child.length if not (child.stored or child.reasons) else 0
            if size > limits.max_record_bytes:
                findings.append(
                    ("", f"Enrollment with its rows is larger than {limits.max_record_bytes} bytes")
                )
            exits = children.get("Exit", [])
            if len(exits) > 1:
                findings.append(("", f"Enrollment has {len(exits)} Exit rows; HUD allows one"))
            elif exits and (exits[0].stored or exits[0].reasons):
                found = self.tables["Exit"].found
                findings.append(("", f"its Exit ({found} row {exits[0].line}) is quarantined"))
        if findings:
            yield _problem(table, line, offset, length, findings)
            if enrollment is not None and first:
                yield from self._children_of_quarantined(enrollment, person, table.found, line)
            return
        assert enrollment is not None
        fields: dict[str, Any] = table.fields_at(offset, length)
        joined: dict[str, list[dict[str, str]]] = {}
        for spec in CHILD_FILES:
            child_table = self.tables.get(spec.name)
            joined[spec.name] = []
            for child in children.get(spec.name, []):
                if child.stored:
                    continue  # quarantined with the rows no enrollment takes
                assert child_table is not None
                if child.reasons:
                    yield _problem(
                        child_table, child.line, child.offset, child.length, child.reasons
                    )
                else:
                    joined[spec.name].append(child_table.fields_at(child.offset, child.length))
        fields["Project"] = joined_project
        fields["Exit"] = joined["Exit"][0] if joined["Exit"] else None
        fields["Services"] = joined["Services"]
        fields["HealthAndDV"] = joined["HealthAndDV"]
        fields["CurrentLivingSituation"] = joined["CurrentLivingSituation"]
        yield self._record(table, enrollment, fields, line, table.raw(offset, length))

    def _children_of_quarantined(
        self, enrollment: str, person: str | None, found: str, line: int
    ) -> Iterator[SourceProblem]:
        because = ("", f"its Enrollment ({found} row {line}) is quarantined")
        for spec in CHILD_FILES:
            for child in self._children(spec, enrollment, None):
                if child.stored:
                    continue
                self._judge_child(child, person, line)
                table = self.tables[spec.name]
                yield _problem(
                    table, child.line, child.offset, child.length, [*child.reasons, because]
                )

    def _orphans(self) -> Iterator[SourceProblem]:
        """Rows no enrollment took: quarantined for their own findings, or pointing at an
        EnrollmentID no Enrollment row has."""
        for spec in CHILD_FILES:
            table = self.tables.get(spec.name)
            if table is None:
                continue
            where = (
                "AND (findings IS NOT NULL OR NOT EXISTS (SELECT 1 FROM rows AS e "
                "WHERE e.file = 'Enrollment' AND e.k1 = rows.k2))"
            )
            enrollment_file = ENROLLMENT_FILE.file_name
            for line, offset, length, *_, stored in self._rows(spec.name, where):
                findings = decode_findings(stored) or [
                    ("EnrollmentID", f"EnrollmentID is not in {enrollment_file}")
                ]
                yield _problem(table, line, offset, length, findings)

    # --- ReleaseOfInformation.csv --------------------------------------------------------

    def _releases(self) -> Iterator[SourceItem]:
        table = self.tables.get("ReleaseOfInformation")
        if table is None:
            return
        self.session.scan(table, self.export.export_id)
        spec = RELEASE_OF_INFORMATION_FILE
        for line, offset, length, release, person, _, stored in self._rows(spec.name):
            findings = decode_findings(stored)
            duplicate = self._duplicate(spec, "ROIID", release)
            if duplicate:
                findings.append(duplicate)
            if person is not None and not self._client_exists(person):
                findings.append(("PersonalID", self._no_client()))
            if findings:
                yield _problem(table, line, offset, length, findings)
                continue
            fields = table.fields_at(offset, length)
            yield self._record(table, release, fields, line, table.raw(offset, length))


def _problem(
    table: Table, line: int, offset: int, length: int, findings: list[Finding]
) -> SourceProblem:
    """A row quarantined: its reasons and columns, never its values; its bytes kept as read."""
    reason = "; ".join(dict.fromkeys(reason for _, reason in findings))
    places = tuple(
        dict.fromkeys(Place(file=table.found, row=line, column=column) for column, _ in findings)
    )
    origin = Origin(table.found, f"row {line}", table.raw(offset, length))
    return SourceProblem(SYSTEM, table.spec.name, reason, origin, places)
