"""What the HMIS CSV adapter knows of HUD's files: their names, their columns in each fiscal year's
CSV specification, which columns are keys, dates and datetimes, and HUD's spelling of each name.

Column lists follow HUD's machine-readable HMIS CSV Format Specifications FY2024 (as published by
the HUD Data Lab) and the FY2026 changes: Client.csv drops the nine gender columns (Woman, Man,
NonBinary, CulturallySpecific, Transgender, Questioning, DifferentIdentity, GenderNone,
DifferentIdentityText), gains Sex after DOBDataQuality and spells HispanicLatinao; Enrollment.csv
drops SexualOrientation, SexualOrientationOther, TranslationNeeded, PreferredLanguage and
PreferredLanguageDifferent and gains MentalHealthConsultation. ReleaseOfInformation.csv is ours
(``docs/hmis-csv.md``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

Year = Literal["FY2024", "FY2026"]
YEARS: Final[tuple[Year, ...]] = ("FY2024", "FY2026")

AUDIT: Final = ("DateCreated", "DateUpdated", "UserID", "DateDeleted", "ExportID")

EXPORT: Final = (
    "ExportID", "SourceType", "SourceID", "SourceName", "SourceContactFirst", "SourceContactLast",
    "SourceContactPhone", "SourceContactExtension", "SourceContactEmail", "ExportDate",
    "ExportStartDate", "ExportEndDate", "SoftwareName", "SoftwareVersion", "CSVVersion",
    "ExportPeriodType", "ExportDirective", "HashStatus", "ImplementationID",
)  # fmt: skip
ORGANIZATION: Final = (
    "OrganizationID", "OrganizationName", "VictimServiceProvider", "OrganizationCommonName", *AUDIT,
)  # fmt: skip
PROJECT: Final = (
    "ProjectID", "OrganizationID", "ProjectName", "ProjectCommonName", "OperatingStartDate",
    "OperatingEndDate", "ContinuumProject", "ProjectType", "HousingType", "RRHSubType",
    "ResidentialAffiliation", "TargetPopulation", "HOPWAMedAssistedLivingFac", "PITCount", *AUDIT,
)  # fmt: skip
HMIS_PARTICIPATION: Final = (
    "HMISParticipationID", "ProjectID", "HMISParticipationType", "HMISParticipationStatusStartDate",
    "HMISParticipationStatusEndDate", *AUDIT,
)  # fmt: skip
GENDER_FY2024: Final = (
    "Woman", "Man", "NonBinary", "CulturallySpecific", "Transgender", "Questioning",
    "DifferentIdentity", "GenderNone", "DifferentIdentityText",
)  # fmt: skip
RACE: Final = (
    "AmIndAKNative", "Asian", "BlackAfAmerican", "HispanicLatinao", "MidEastNAfrican",
    "NativeHIPacific", "White", "RaceNone", "AdditionalRaceEthnicity",
)  # fmt: skip
_CLIENT_HEAD: Final = (
    "PersonalID", "FirstName", "MiddleName", "LastName", "NameSuffix", "NameDataQuality", "SSN",
    "SSNDataQuality", "DOB", "DOBDataQuality",
)  # fmt: skip
_CLIENT_TAIL: Final = (
    "VeteranStatus", "YearEnteredService", "YearSeparated", "WorldWarII", "KoreanWar",
    "VietnamWar", "DesertStorm", "AfghanistanOEF", "IraqOIF", "IraqOND", "OtherTheater",
    "MilitaryBranch", "DischargeStatus", *AUDIT,
)  # fmt: skip
CLIENT_FY2024: Final = (*_CLIENT_HEAD, *RACE, *GENDER_FY2024, *_CLIENT_TAIL)
CLIENT_FY2026: Final = (*_CLIENT_HEAD, "Sex", *RACE, *_CLIENT_TAIL)

_ENROLLMENT_HEAD: Final = (
    "EnrollmentID", "PersonalID", "ProjectID", "EntryDate", "HouseholdID", "RelationshipToHoH",
    "EnrollmentCoC", "LivingSituation", "RentalSubsidyType", "LengthOfStay", "LOSUnderThreshold",
    "PreviousStreetESSH", "DateToStreetESSH", "TimesHomelessPastThreeYears",
    "MonthsHomelessPastThreeYears", "DisablingCondition", "DateOfEngagement", "MoveInDate",
    "DateOfPATHStatus", "ClientEnrolledInPATH", "ReasonNotEnrolled", "PercentAMI",
    "ReferralSource", "CountOutreachReferralApproaches", "DateOfBCPStatus", "EligibleForRHY",
    "ReasonNoServices", "RunawayYouth",
)  # fmt: skip
_ENROLLMENT_RHY_SSVF: Final = (
    "FormerWardChildWelfare", "ChildWelfareYears", "ChildWelfareMonths",
    "FormerWardJuvenileJustice", "JuvenileJusticeYears", "JuvenileJusticeMonths",
    "UnemploymentFam", "MentalHealthDisorderFam", "PhysicalDisabilityFam",
    "AlcoholDrugUseDisorderFam", "InsufficientIncome", "IncarceratedParent", "VAMCStation",
    "TargetScreenReqd", "TimeToHousingLoss", "AnnualPercentAMI", "LiteralHomelessHistory",
    "ClientLeaseholder", "HOHLeaseholder", "SubsidyAtRisk", "EvictionHistory", "CriminalRecord",
    "IncarceratedAdult", "PrisonDischarge", "SexOffender", "DisabledHoH", "CurrentPregnant",
    "SingleParent", "DependentUnder6", "HH5Plus", "CoCPrioritized", "HPScreeningScore",
    "ThresholdScore",
)  # fmt: skip
ENROLLMENT_FY2024: Final = (
    *_ENROLLMENT_HEAD, "SexualOrientation", "SexualOrientationOther", *_ENROLLMENT_RHY_SSVF,
    "TranslationNeeded", "PreferredLanguage", "PreferredLanguageDifferent", *AUDIT,
)  # fmt: skip
ENROLLMENT_FY2026: Final = (
    *_ENROLLMENT_HEAD, *_ENROLLMENT_RHY_SSVF, "MentalHealthConsultation", *AUDIT,
)  # fmt: skip
EXIT: Final = (
    "ExitID", "EnrollmentID", "PersonalID", "ExitDate", "Destination", "DestinationSubsidyType",
    "OtherDestination", "HousingAssessment", "SubsidyInformation", "ProjectCompletionStatus",
    "EarlyExitReason", "ExchangeForSex", "ExchangeForSexPastThreeMonths", "CountOfExchangeForSex",
    "AskedOrForcedToExchangeForSex", "AskedOrForcedToExchangeForSexPastThreeMonths",
    "WorkplaceViolenceThreats", "WorkplacePromiseDifference", "CoercedToContinueWork",
    "LaborExploitPastThreeMonths", "CounselingReceived", "IndividualCounseling",
    "FamilyCounseling", "GroupCounseling", "SessionCountAtExit", "PostExitCounselingPlan",
    "SessionsInPlan", "DestinationSafeClient", "DestinationSafeWorker", "PosAdultConnections",
    "PosPeerConnections", "PosCommunityConnections", "AftercareDate", "AftercareProvided",
    "EmailSocialMedia", "Telephone", "InPersonIndividual", "InPersonGroup", "CMExitReason", *AUDIT,
)  # fmt: skip
SERVICES: Final = (
    "ServicesID", "EnrollmentID", "PersonalID", "DateProvided", "RecordType", "TypeProvided",
    "OtherTypeProvided", "MovingOnOtherType", "SubTypeProvided", "FAAmount", "FAStartDate",
    "FAEndDate", "ReferralOutcome", *AUDIT,
)  # fmt: skip
HEALTH_AND_DV: Final = (
    "HealthAndDVID", "EnrollmentID", "PersonalID", "InformationDate", "DomesticViolenceSurvivor",
    "WhenOccurred", "CurrentlyFleeing", "GeneralHealthStatus", "DentalHealthStatus",
    "MentalHealthStatus", "PregnancyStatus", "DueDate", "DataCollectionStage", *AUDIT,
)  # fmt: skip
CURRENT_LIVING_SITUATION: Final = (
    "CurrentLivingSitID", "EnrollmentID", "PersonalID", "InformationDate",
    "CurrentLivingSituation", "CLSSubsidyType", "VerifiedBy", "LeaveSituation14Days",
    "SubsequentResidence", "ResourcesToObtain", "LeaseOwn60Day", "MovedTwoOrMore",
    "LocationDetails", *AUDIT,
)  # fmt: skip
RELEASE_OF_INFORMATION: Final = (
    "ROIID", "PersonalID", "RecipientOrganization", "Scope", "Purposes", "StartDate", "EndDate",
    "SignedFormReference", "RevokedDate", *AUDIT,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One CSV file of the export: its HUD name, its columns in each year, which of them must be
    present in every row (its keys), and which are dates (``yyyy-mm-dd``) or datetimes
    (``yyyy-mm-dd hh:mm:ss``)."""

    name: str  # "Client" (the file is Client.csv)
    columns: Mapping[str, tuple[str, ...]]  # year -> columns in HUD's order
    required: tuple[str, ...]  # columns no row may leave empty (keys first)
    dates: frozenset[str] = frozenset()
    datetimes: frozenset[str] = frozenset({"DateCreated", "DateUpdated", "DateDeleted"})
    aliases: Mapping[str, str] | None = None  # lower-case alias -> HUD name

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv"

    def canonical(self, year: Year) -> dict[str, str]:
        """Lower-case header name -> HUD's spelling, for this year's columns."""
        names = {column.lower(): column for column in self.columns[year]}
        names.update(self.aliases or {})
        return names


def _same(columns: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return dict.fromkeys(YEARS, columns)


EXPORT_FILE: Final = FileSpec(
    "Export",
    _same(EXPORT),
    required=("ExportID",),
    dates=frozenset({"ExportStartDate", "ExportEndDate"}),
    datetimes=frozenset({"ExportDate"}),
)
ORGANIZATION_FILE: Final = FileSpec(
    "Organization",
    # As on Project.csv: not HUD's, but some exports carry a participation type here too.
    _same((*ORGANIZATION, "HMISParticipationType")),
    required=("OrganizationID",),
)
PROJECT_FILE: Final = FileSpec(
    "Project",
    # HMISParticipationType lives in HMISParticipation.csv; some exports also carry it here.
    _same((*PROJECT, "HMISParticipationType")),
    required=("ProjectID",),
    dates=frozenset({"OperatingStartDate", "OperatingEndDate"}),
)
HMIS_PARTICIPATION_FILE: Final = FileSpec(
    "HMISParticipation",
    _same(HMIS_PARTICIPATION),
    required=("HMISParticipationID", "ProjectID"),
    dates=frozenset({"HMISParticipationStatusStartDate", "HMISParticipationStatusEndDate"}),
)
CLIENT_FILE: Final = FileSpec(
    "Client",
    {"FY2024": CLIENT_FY2024, "FY2026": CLIENT_FY2026},
    required=("PersonalID",),
    dates=frozenset({"DOB"}),
    # FY2024 spells HispanicLatinaeo, FY2026 HispanicLatinao: both are read as HispanicLatinao.
    aliases={"hispaniclatinaeo": "HispanicLatinao", "hispaniclatinao": "HispanicLatinao"},
)
_ENROLLMENT_DATES: Final = (
    "EntryDate", "DateToStreetESSH", "DateOfEngagement", "MoveInDate", "DateOfPATHStatus",
    "DateOfBCPStatus",
)  # fmt: skip
ENROLLMENT_FILE: Final = FileSpec(
    "Enrollment",
    {"FY2024": ENROLLMENT_FY2024, "FY2026": ENROLLMENT_FY2026},
    required=("EnrollmentID", "PersonalID", "ProjectID"),
    dates=frozenset(_ENROLLMENT_DATES),
)
EXIT_FILE: Final = FileSpec(
    "Exit",
    _same(EXIT),
    required=("ExitID", "EnrollmentID", "PersonalID"),
    dates=frozenset({"ExitDate", "AftercareDate"}),
)
SERVICES_FILE: Final = FileSpec(
    "Services",
    _same(SERVICES),
    required=("ServicesID", "EnrollmentID", "PersonalID"),
    dates=frozenset({"DateProvided", "FAStartDate", "FAEndDate"}),
)
HEALTH_AND_DV_FILE: Final = FileSpec(
    "HealthAndDV",
    _same(HEALTH_AND_DV),
    required=("HealthAndDVID", "EnrollmentID", "PersonalID"),
    dates=frozenset({"InformationDate", "DueDate"}),
)
CURRENT_LIVING_SITUATION_FILE: Final = FileSpec(
    "CurrentLivingSituation",
    _same(CURRENT_LIVING_SITUATION),
    required=("CurrentLivingSitID", "EnrollmentID", "PersonalID"),
    dates=frozenset({"InformationDate"}),
)
RELEASE_OF_INFORMATION_FILE: Final = FileSpec(
    "ReleaseOfInformation",
    _same(RELEASE_OF_INFORMATION),
    required=("ROIID", "PersonalID", "RecipientOrganization", "Scope", "Purposes", "StartDate"),
    dates=frozenset({"StartDate", "EndDate", "RevokedDate"}),
)

CHILD_FILES: Final = (EXIT_FILE, SERVICES_FILE, HEALTH_AND_DV_FILE, CURRENT_LIVING_SITUATION_FILE)
"""Rows of an enrollment, joined into the Enrollment record (in this order of reading)."""

FILES: Final = (
    EXPORT_FILE, ORGANIZATION_FILE, PROJECT_FILE, HMIS_PARTICIPATION_FILE, CLIENT_FILE,
    ENROLLMENT_FILE, *CHILD_FILES, RELEASE_OF_INFORMATION_FILE,
)  # fmt: skip
BY_LOWER_NAME: Final = {spec.file_name.lower(): spec for spec in FILES}

OTHER_HUD_FILES: Final = frozenset(
    name.lower()
    for name in (
        "Affiliation.csv", "Assessment.csv", "AssessmentQuestions.csv", "AssessmentResults.csv",
        "CEParticipation.csv", "Disabilities.csv", "EmploymentEducation.csv", "Event.csv",
        "Funder.csv", "IncomeBenefits.csv", "Inventory.csv", "ProjectCoC.csv", "User.csv",
        "YouthEducationStatus.csv",
    )
)  # fmt: skip
"""HUD files this adapter does not read: named in a notice (other names are only counted)."""

PROJECT_FIELDS: Final = (
    "ProjectID", "OrganizationID", "ProjectType", "ContinuumProject", "HousingType", "RRHSubType",
    "ResidentialAffiliation", "TargetPopulation", "HOPWAMedAssistedLivingFac",
    "OperatingStartDate", "OperatingEndDate", "HMISParticipationType", "DateDeleted",
)  # fmt: skip
"""The Project columns joined into an Enrollment: never ProjectName or ProjectCommonName (a
victim service provider's project name can reveal where a shelter is)."""

ID_MAX_LENGTH: Final = 32  # HUD's S32 identifiers

_VERSION = re.compile(r"(?:FY\s?)?(2024|2026)(?:\s*v\s?\d+(?:\.(?:\d+|x))*)?", re.IGNORECASE)


def year_of(csv_version: str) -> Year | None:
    """``2024 v1.3`` -> FY2024, ``2026 v1.0`` -> FY2026; anything else -> None."""
    match = _VERSION.fullmatch(csv_version.strip())
    if match is None:
        return None
    return "FY2024" if match.group(1) == "2024" else "FY2026"
