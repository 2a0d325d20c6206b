"""A synthetic HMIS CSV export (HUD's FY2024 or FY2026 CSV specification) of made-up survivors.

``write_hmis_export`` writes Export, Organization, Project, Client, Enrollment, Exit (for most
enrollments), Services (1 to 5 per enrollment), HealthAndDV (DomesticViolenceSurvivor,
WhenOccurred, CurrentlyFleeing at entry and exit), CurrentLivingSituation and, when partners are
named, our ReleaseOfInformation.csv (``docs/hmis-csv.md``) with 90- to 365-day releases, some of
them revoked. Each year gets its own columns (FY2026: Sex instead of the nine gender columns,
HispanicLatinao, MentalHealthConsultation, no SexualOrientation or PreferredLanguage).

Rows are streamed to disk one client at a time, so 100,000 clients take no more memory than 10;
the same seed writes the same bytes. UTF-8 without a byte-order mark, CRLF line endings, as HUD
specifies. Every person is made up (``gateway.synth.names``); SSNs start with 000, which is never
issued, and phone numbers are 555-01xx.
"""

from __future__ import annotations

import csv
import random
import shutil
import tempfile
import uuid
import zipfile
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, TextIO

from gateway.synth.names import Person, person

Year = Literal["FY2024", "FY2026"]

_AUDIT: Final = "DateCreated DateUpdated UserID DateDeleted ExportID"
_COLUMNS_BOTH: Final = {
    "Export": "ExportID SourceType SourceID SourceName SourceContactFirst SourceContactLast "
    "SourceContactPhone SourceContactExtension SourceContactEmail ExportDate ExportStartDate "
    "ExportEndDate SoftwareName SoftwareVersion CSVVersion ExportPeriodType ExportDirective "
    "HashStatus ImplementationID",
    "Organization": f"OrganizationID OrganizationName VictimServiceProvider "
    f"OrganizationCommonName {_AUDIT}",
    "Project": f"ProjectID OrganizationID ProjectName ProjectCommonName OperatingStartDate "
    f"OperatingEndDate ContinuumProject ProjectType HousingType RRHSubType ResidentialAffiliation "
    f"TargetPopulation HOPWAMedAssistedLivingFac PITCount {_AUDIT}",
    "Exit": f"ExitID EnrollmentID PersonalID ExitDate Destination DestinationSubsidyType "
    f"OtherDestination HousingAssessment SubsidyInformation ProjectCompletionStatus "
    f"EarlyExitReason ExchangeForSex ExchangeForSexPastThreeMonths CountOfExchangeForSex "
    f"AskedOrForcedToExchangeForSex AskedOrForcedToExchangeForSexPastThreeMonths "
    f"WorkplaceViolenceThreats WorkplacePromiseDifference CoercedToContinueWork "
    f"LaborExploitPastThreeMonths CounselingReceived IndividualCounseling FamilyCounseling "
    f"GroupCounseling SessionCountAtExit PostExitCounselingPlan SessionsInPlan "
    f"DestinationSafeClient DestinationSafeWorker PosAdultConnections PosPeerConnections "
    f"PosCommunityConnections AftercareDate AftercareProvided EmailSocialMedia Telephone "
    f"InPersonIndividual InPersonGroup CMExitReason {_AUDIT}",
    "Services": f"ServicesID EnrollmentID PersonalID DateProvided RecordType TypeProvided "
    f"OtherTypeProvided MovingOnOtherType SubTypeProvided FAAmount FAStartDate FAEndDate "
    f"ReferralOutcome {_AUDIT}",
    "HealthAndDV": f"HealthAndDVID EnrollmentID PersonalID InformationDate "
    f"DomesticViolenceSurvivor WhenOccurred CurrentlyFleeing GeneralHealthStatus "
    f"DentalHealthStatus MentalHealthStatus PregnancyStatus DueDate DataCollectionStage {_AUDIT}",
    "CurrentLivingSituation": f"CurrentLivingSitID EnrollmentID PersonalID InformationDate "
    f"CurrentLivingSituation CLSSubsidyType VerifiedBy LeaveSituation14Days SubsequentResidence "
    f"ResourcesToObtain LeaseOwn60Day MovedTwoOrMore LocationDetails {_AUDIT}",
    "ReleaseOfInformation": f"ROIID PersonalID RecipientOrganization Scope Purposes StartDate "
    f"EndDate SignedFormReference RevokedDate {_AUDIT}",
}
_CLIENT_HEAD: Final = (
    "PersonalID FirstName MiddleName LastName NameSuffix NameDataQuality SSN SSNDataQuality DOB "
    "DOBDataQuality"
)
_RACE_2024: Final = (
    "AmIndAKNative Asian BlackAfAmerican HispanicLatinaeo MidEastNAfrican NativeHIPacific White "
    "RaceNone AdditionalRaceEthnicity"
)
_GENDER_2024: Final = (
    "Woman Man NonBinary CulturallySpecific Transgender Questioning DifferentIdentity GenderNone "
    "DifferentIdentityText"
)
_BINARY_GENDER_2024: Final = (
    "Woman", "Man", "NonBinary", "CulturallySpecific", "Transgender", "Questioning",
    "DifferentIdentity",
)  # fmt: skip
_CLIENT_TAIL: Final = (
    f"VeteranStatus YearEnteredService YearSeparated WorldWarII KoreanWar VietnamWar DesertStorm "
    f"AfghanistanOEF IraqOIF IraqOND OtherTheater MilitaryBranch DischargeStatus {_AUDIT}"
)
_ENROLLMENT_HEAD: Final = (
    "EnrollmentID PersonalID ProjectID EntryDate HouseholdID RelationshipToHoH EnrollmentCoC "
    "LivingSituation RentalSubsidyType LengthOfStay LOSUnderThreshold PreviousStreetESSH "
    "DateToStreetESSH TimesHomelessPastThreeYears MonthsHomelessPastThreeYears DisablingCondition "
    "DateOfEngagement MoveInDate DateOfPATHStatus ClientEnrolledInPATH ReasonNotEnrolled "
    "PercentAMI ReferralSource CountOutreachReferralApproaches DateOfBCPStatus EligibleForRHY "
    "ReasonNoServices RunawayYouth"
)
_ENROLLMENT_MIDDLE: Final = (
    "FormerWardChildWelfare ChildWelfareYears ChildWelfareMonths FormerWardJuvenileJustice "
    "JuvenileJusticeYears JuvenileJusticeMonths UnemploymentFam MentalHealthDisorderFam "
    "PhysicalDisabilityFam AlcoholDrugUseDisorderFam InsufficientIncome IncarceratedParent "
    "VAMCStation TargetScreenReqd TimeToHousingLoss AnnualPercentAMI LiteralHomelessHistory "
    "ClientLeaseholder HOHLeaseholder SubsidyAtRisk EvictionHistory CriminalRecord "
    "IncarceratedAdult PrisonDischarge SexOffender DisabledHoH CurrentPregnant SingleParent "
    "DependentUnder6 HH5Plus CoCPrioritized HPScreeningScore ThresholdScore"
)
_COLUMNS_BY_YEAR: Final = {
    "FY2024": {
        "Client": f"{_CLIENT_HEAD} {_RACE_2024} {_GENDER_2024} {_CLIENT_TAIL}",
        "Enrollment": f"{_ENROLLMENT_HEAD} SexualOrientation SexualOrientationOther "
        f"{_ENROLLMENT_MIDDLE} TranslationNeeded PreferredLanguage PreferredLanguageDifferent "
        f"{_AUDIT}",
    },
    "FY2026": {
        "Client": f"{_CLIENT_HEAD} Sex {_RACE_2024.replace('Latinaeo', 'Latinao')} {_CLIENT_TAIL}",
        "Enrollment": f"{_ENROLLMENT_HEAD} {_ENROLLMENT_MIDDLE} MentalHealthConsultation {_AUDIT}",
    },
}
FILES: Final = (
    "Export", "Organization", "Project", "Client", "Enrollment", "Exit", "Services",
    "HealthAndDV", "CurrentLivingSituation", "ReleaseOfInformation",
)  # fmt: skip

_CSV_VERSION: Final = {"FY2024": "2024 v1.3", "FY2026": "2026 v1.0"}
_PERIOD: Final = {
    "FY2024": (date(2023, 10, 1), date(2024, 9, 30)),
    "FY2026": (date(2025, 10, 1), date(2026, 9, 30)),
}
_PROJECTS: Final = (  # ProjectID, name, ProjectType, HousingType, weight
    ("P-ES", "Harbor Light Emergency Shelter", "0", "1", 5),
    ("P-TH", "Bridgeway Transitional Housing", "2", "1", 2),
    ("P-RRH", "Open Door Rapid Re-Housing", "13", "3", 2),
    ("P-SSO", "Safe Passage Advocacy Services", "6", "", 1),
)
_LANGUAGE_CODES: Final = {"en": "171", "es": "367", "vi": "407"}  # HUD list C4.A
_RACES: Final = ("AmIndAKNative", "BlackAfAmerican", "MidEastNAfrican", "NativeHIPacific", "White")
_LIVING_SITUATIONS: Final = ("101", "116", "118", "215", "302", "410", "435")
_DESTINATIONS: Final = ("410", "435", "302", "101", "422", "423", "17", "30", "99")
_SCOPES: Final = (
    "Patient;CarePlan;ServiceRequest",
    "Patient;ServiceRequest",
    "Patient;CarePlan;ServiceRequest;EpisodeOfCare",
    "Patient",
)
_PURPOSES: Final = ("TREAT;COC", "COC", "TREAT")
_ZIP_TIME: Final = (2026, 10, 1, 0, 0, 0)


def columns(file: str, year: Year) -> tuple[str, ...]:
    """The columns the generator writes to ``file`` (``Client``) for ``year``."""
    spelled = _COLUMNS_BY_YEAR[year].get(file) or _COLUMNS_BOTH[file]
    return tuple(spelled.split())


def write_hmis_export(
    target: Path,
    *,
    clients: int,
    year: Year,
    seed: int = 0,
    victim_service_provider: bool = False,
    as_zip: bool = False,
    releases_to: Sequence[str] = (),
    first_id: int = 1,
) -> Path:
    """Writes an export of ``clients`` made-up clients into the directory ``target`` (created if
    need be) or, with ``as_zip``, into the zip file ``target``; returns ``target``. Without
    ``releases_to`` no ReleaseOfInformation.csv is written. Ids (PersonalID, EnrollmentID, ...)
    count from ``first_id``: two exports with the same ids name the same clients."""
    if first_id < 1:
        raise ValueError("first_id must be positive")
    if year not in _CSV_VERSION:
        raise ValueError("year must be FY2024 or FY2026")
    if clients < 0:
        raise ValueError("clients must not be negative")
    files = FILES if releases_to else FILES[:-1]
    if not as_zip:
        target.mkdir(parents=True, exist_ok=True)
        _Writer(target, year, seed, victim_service_provider, tuple(releases_to), first_id).write(
            clients, files
        )
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="hmis-synth-", dir=target.parent))
    try:
        _Writer(staging, year, seed, victim_service_provider, tuple(releases_to), first_id).write(
            clients, files
        )
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for name in files:
                info = zipfile.ZipInfo(f"{name}.csv", date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o600 << 16
                with (
                    (staging / f"{name}.csv").open("rb") as source,
                    archive.open(info, "w") as member,
                ):
                    shutil.copyfileobj(source, member, 1 << 16)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _stamp(day: date, rng: random.Random) -> str:
    moment = datetime(day.year, day.month, day.day) + timedelta(
        seconds=rng.randint(8 * 3600, 64_799)
    )
    return moment.strftime("%Y-%m-%d %H:%M:%S")


class _Writer:
    def __init__(
        self,
        directory: Path,
        year: Year,
        seed: int,
        vsp: bool,
        releases_to: tuple[str, ...],
        first_id: int = 1,
    ) -> None:
        self.directory, self.year, self.vsp, self.releases_to = directory, year, vsp, releases_to
        self.rng = random.Random(f"hmis-{year}-{seed}")
        self.export_id = f"SYN-{year}-{seed}"[:32]
        self.start, self.end = _PERIOD[year]
        self._writers: dict[str, tuple[Any, tuple[str, ...]]] = {}
        self._first = first_id - 1
        self._counters: dict[str, int] = {}

    def _next(self, prefix: str) -> str:
        self._counters[prefix] = self._counters.get(prefix, self._first) + 1
        return f"{prefix}{self._counters[prefix]:07d}"

    def _row(self, file: str, values: dict[str, str]) -> None:
        writer, names = self._writers[file]
        values.setdefault("ExportID", self.export_id)
        writer.writerow([values.get(name, "") for name in names])

    def write(self, clients: int, files: Sequence[str]) -> None:
        with ExitStack() as stack:
            for file in files:
                stream: TextIO = stack.enter_context(
                    (self.directory / f"{file}.csv").open("w", encoding="utf-8", newline="")
                )
                writer = csv.writer(stream, lineterminator="\r\n")
                names = columns(file, self.year)
                writer.writerow(names)
                self._writers[file] = (writer, names)
            self._export()
            self._organization()
            for _ in range(clients):
                self._client()

    def _audit(self, day: date, *, user: str | None = None) -> dict[str, str]:
        rng = self.rng
        created = _stamp(day, rng)
        updated = _stamp(min(day + timedelta(days=rng.randint(0, 30)), self.end), rng)
        return {
            "DateCreated": created,
            "DateUpdated": max(created, updated),
            "UserID": user or f"USR-{rng.randint(1, 6):02d}",
        }

    def _export(self) -> None:
        contact = person(self.rng)
        self._row(
            "Export",
            {
                "ExportID": self.export_id,
                "SourceType": "2" if self.vsp else "1",
                "SourceID": "" if self.vsp else "XX-501",
                "SourceName": "Synthetic Survivor Services" if self.vsp else "",
                "SourceContactFirst": contact.given,
                "SourceContactLast": contact.family,
                "SourceContactPhone": "2025550100",
                "SourceContactEmail": "hmis-admin@example.org",
                "ExportDate": f"{self.end + timedelta(days=1)} 02:00:00",
                "ExportStartDate": self.start.isoformat(),
                "ExportEndDate": self.end.isoformat(),
                "SoftwareName": "care-gateway synth",
                "SoftwareVersion": "1",
                "CSVVersion": _CSV_VERSION[self.year],
                "ExportPeriodType": "3",
                "ExportDirective": "2",
                "HashStatus": "1",
                "ImplementationID": "synthetic-implementation-0001",
            },
        )

    def _organization(self) -> None:
        opened = date(2015, 1, 5)
        self._row(
            "Organization",
            {
                "OrganizationID": "ORG-1",
                "OrganizationName": "Synthetic Survivor Services",
                "VictimServiceProvider": "1" if self.vsp else "0",
                "OrganizationCommonName": "SSS",
                **self._audit(opened, user="USR-01"),
            },
        )
        for project, name, kind, housing, _ in _PROJECTS:
            self._row(
                "Project",
                {
                    "ProjectID": project,
                    "OrganizationID": "ORG-1",
                    "ProjectName": name,
                    "OperatingStartDate": opened.isoformat(),
                    "ContinuumProject": "1",
                    "ProjectType": kind,
                    "HousingType": housing,
                    "RRHSubType": "2" if kind == "13" else "",
                    "TargetPopulation": "1",  # households with survivors of domestic violence
                    "PITCount": "",
                    **self._audit(opened, user="USR-01"),
                },
            )

    def _client(self) -> None:
        rng = self.rng
        someone = person(rng)
        personal_id = self._next("C")
        days = (self.end - self.start).days
        first_entry = self.start + timedelta(days=rng.randint(0, days - 10))
        self._row("Client", self._client_row(personal_id, someone, first_entry))
        entries = [first_entry]
        if rng.random() < 0.15:
            entries.append(first_entry + timedelta(days=rng.randint(1, max(1, days // 3))))
        for entry in entries:
            if entry <= self.end:
                self._enrollment(personal_id, someone, entry)
        if self.releases_to and rng.random() < 0.4:
            count = rng.randint(1, len(self.releases_to))
            for partner in rng.sample(list(self.releases_to), count):
                self._release(personal_id, partner, first_entry)

    def _client_row(self, personal_id: str, someone: Person, entry: date) -> dict[str, str]:
        rng = self.rng
        ssn_known = rng.random() < 0.35
        row = {
            "PersonalID": personal_id,
            "FirstName": someone.given,
            "LastName": someone.family,
            "NameDataQuality": "1",
            "SSN": f"000{rng.randint(0, 999_999):06d}" if ssn_known else "",
            "SSNDataQuality": "1" if ssn_known else rng.choice(("8", "9", "99")),
            "DOB": someone.birth_date.isoformat(),
            "DOBDataQuality": "1",
            "VeteranStatus": rng.choices(("0", "1", "99"), weights=(90, 2, 8))[0],
            "AdditionalRaceEthnicity": "",
            **self._audit(entry),
        }
        race = "Asian" if someone.language == "vi" else rng.choice(_RACES)
        for name in ("Asian", *_RACES):
            row[name] = "1" if name == race else "0"
        hispanic = "1" if someone.language == "es" else "0"
        if self.year == "FY2024":
            row["HispanicLatinaeo"] = hispanic
            for name in _BINARY_GENDER_2024:
                row[name] = "0"
            if someone.sex == "F":
                row["Woman"] = "1"
            elif someone.sex == "M":
                row["Man"] = "1"
            else:
                row["GenderNone"] = rng.choice(("8", "9", "99"))
        else:
            row["HispanicLatinao"] = hispanic
            row["Sex"] = {"F": "0", "M": "1"}.get(someone.sex) or rng.choice(("8", "9", "99"))
        return row

    def _enrollment(self, personal_id: str, someone: Person, entry: date) -> None:
        rng = self.rng
        project, _, kind, _, _ = rng.choices(_PROJECTS, weights=[p[4] for p in _PROJECTS])[0]
        enrollment_id = self._next("E")
        exit_day: date | None = None
        if rng.random() < 0.75:
            exit_day = entry + timedelta(days=rng.randint(1, 120))
            if exit_day > self.end:
                exit_day = None
        last_day = exit_day or self.end
        row = {
            "EnrollmentID": enrollment_id,
            "PersonalID": personal_id,
            "ProjectID": project,
            "EntryDate": entry.isoformat(),
            "HouseholdID": f"HH-{enrollment_id}",
            "RelationshipToHoH": "1",
            "EnrollmentCoC": "XX-501",
            "LivingSituation": rng.choice(_LIVING_SITUATIONS),
            "LengthOfStay": rng.choice(("2", "3", "4", "5", "10", "11")),
            "LOSUnderThreshold": rng.choice(("0", "1")),
            "PreviousStreetESSH": rng.choice(("0", "1")),
            "TimesHomelessPastThreeYears": rng.choice(("1", "2", "3", "4")),
            "MonthsHomelessPastThreeYears": str(rng.randint(101, 113)),
            "DisablingCondition": rng.choices(("0", "1", "99"), weights=(70, 20, 10))[0],
            "MoveInDate": (
                (entry + timedelta(days=rng.randint(0, 20))).isoformat()
                if kind == "13" and rng.random() < 0.6 and entry + timedelta(days=20) <= last_day
                else ""
            ),
            **self._audit(entry),
        }
        if self.year == "FY2024":
            needs = someone.language != "en"
            row["TranslationNeeded"] = "1" if needs else "0"
            row["PreferredLanguage"] = _LANGUAGE_CODES[someone.language] if needs else ""
        elif kind == "13" and rng.random() < 0.3:
            row["MentalHealthConsultation"] = rng.choice(("1", "2", "3", "4"))
        self._row("Enrollment", row)
        base = {"EnrollmentID": enrollment_id, "PersonalID": personal_id}
        self._health_and_dv(base, entry, "1")
        span = (last_day - entry).days
        for _ in range(rng.randint(1, 5)):
            provided = entry + timedelta(days=rng.randint(0, span))
            self._row(
                "Services",
                {
                    "ServicesID": self._next("S"),
                    **base,
                    "DateProvided": provided.isoformat(),
                    "RecordType": "200",
                    "TypeProvided": "200",
                    **self._audit(provided),
                    "DateDeleted": _stamp(last_day, rng) if rng.random() < 0.02 else "",
                },
            )
        for _ in range(rng.randint(0, 2)):
            seen = entry + timedelta(days=rng.randint(0, span))
            self._row(
                "CurrentLivingSituation",
                {
                    "CurrentLivingSitID": self._next("L"),
                    **base,
                    "InformationDate": seen.isoformat(),
                    "CurrentLivingSituation": rng.choice(_LIVING_SITUATIONS),
                    **self._audit(seen),
                },
            )
        if exit_day is not None:
            destination = rng.choice(_DESTINATIONS)
            self._row(
                "Exit",
                {
                    "ExitID": self._next("X"),
                    **base,
                    "ExitDate": exit_day.isoformat(),
                    "Destination": destination,
                    "DestinationSubsidyType": rng.choice(("419", "428", "431"))
                    if destination == "435"
                    else "",
                    "OtherDestination": "moved in with relatives" if destination == "17" else "",
                    **self._audit(exit_day),
                },
            )
            self._health_and_dv(base, exit_day, "3")

    def _health_and_dv(self, base: dict[str, str], day: date, stage: str) -> None:
        rng = self.rng
        survivor = rng.choices(("1", "0", "8", "9", "99"), weights=(85, 8, 2, 3, 2))[0]
        self._row(
            "HealthAndDV",
            {
                "HealthAndDVID": self._next("H"),
                **base,
                "InformationDate": day.isoformat(),
                "DomesticViolenceSurvivor": survivor,
                "WhenOccurred": rng.choice(("1", "2", "3", "4")) if survivor == "1" else "",
                "CurrentlyFleeing": rng.choice(("0", "1", "1")) if survivor == "1" else "",
                "DataCollectionStage": stage,
                **self._audit(day),
            },
        )

    def _release(self, personal_id: str, partner: str, entry: date) -> None:
        rng = self.rng
        start = entry + timedelta(days=rng.randint(0, 14))
        end = start + timedelta(days=rng.randint(90, 365))
        revoked = ""
        if rng.random() < 0.1:
            revoked = (start + timedelta(days=rng.randint(1, (end - start).days))).isoformat()
        form = rng.getrandbits(128)
        self._row(
            "ReleaseOfInformation",
            {
                "ROIID": self._next("R"),
                "PersonalID": personal_id,
                "RecipientOrganization": partner,
                "Scope": rng.choice(_SCOPES),
                "Purposes": rng.choice(_PURPOSES),
                "StartDate": start.isoformat(),
                "EndDate": end.isoformat(),
                "SignedFormReference": f"urn:uuid:{uuid.UUID(int=form)}",
                "RevokedDate": revoked,
                **self._audit(start),
            },
        )
