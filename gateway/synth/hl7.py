"""Synthetic HL7 v2.5.1 messages of made-up survivors: REF^I12 referrals and ADT^A04/A08
registrations, as a shelter's case-management system or a clinic would send them.

REF^I12: MSH, RF1 (status, priority, type, disposition, category, the referral id in RF1-6,
effective/expiration dates, reason), an AUT for some, PRD RP (the referring case manager) and PRD
RT (the clinician referred to), PID, one to three DG1 with ICD-10-CM codes (trafficking and
violence codes such as T74.51XA, T76.51XA, T74.61XA, Z91.42 for many, with PTSD, depression or
sheltered homelessness), up to two PR1 (CPT) and up to two NTE free-text notes. ADT^A04 (or A08):
MSH, EVN, PID, PV1 (outpatient visit, attending clinician, visit number) and DG1 for some.

People come from ``gateway.synth.names`` (accents included, so MSH-18 says UNICODE UTF-8);
addresses are post-office boxes (survivors' addresses are confidential), phone numbers 555-01xx.
Text is escaped (``&`` -> ``\\T\\``, line breaks -> ``\\.br\\``) as the standard asks, so that
readers meet escapes. The same seed gives the same bytes. Segments end with CR.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Final, Literal

from gateway.synth.names import Person, person

_START: Final = datetime(2026, 11, 2, 8, 0)
_OFFSET: Final = "-0500"

# (code, display, is it a trafficking or violence code)
DIAGNOSES: Final = (
    ("T74.51XA", "Adult forced sexual exploitation, confirmed, initial encounter", True),
    ("T76.51XA", "Adult forced sexual exploitation, suspected, initial encounter", True),
    ("T74.61XA", "Adult forced labor exploitation, confirmed, initial encounter", True),
    ("T74.11XA", "Adult physical abuse, confirmed, initial encounter", True),
    ("T74.31XA", "Adult psychological abuse, confirmed, initial encounter", True),
    ("Z91.42", "Personal history of forced labor or sexual exploitation", True),
    ("Z91.419", "Personal history of unspecified adult abuse", True),
    ("Z04.81", "Encounter for examination and observation of victim following forced sexual "
     "exploitation", True),
    ("F43.10", "Post-traumatic stress disorder, unspecified", False),
    ("F32.A", "Depression, unspecified", False),
    ("Z59.01", "Sheltered homelessness", False),
    ("Z63.0", "Problems in relationship with spouse or partner", False),
)  # fmt: skip
PROCEDURES: Final = (
    ("99204", "Office or other outpatient visit, new patient, 45 minutes"),
    ("90837", "Psychotherapy, 60 minutes"),
    ("96127", "Brief emotional/behavioral assessment"),
    ("99401", "Preventive medicine counseling, 15 minutes"),
    ("87491", "Chlamydia trachomatis, amplified probe technique"),
)
NOTES: Final = (
    "Client requests a female provider.",
    "Do not disclose her location to anyone who calls; contact through the advocate only.",
    "Interpreter needed for every visit.",
    "Prefers contact via case manager & advocate, never by mail.",
    "Safety plan on file.\nCode word agreed with the shelter.",
    "Bring to the side entrance; the waiting room is not safe for her.",
    "Client has no ID documents: the traffickers kept them.",
)
_LANGUAGES: Final = {"en": "English", "es": "Spanish", "vi": "Vietnamese"}
_CLINICS: Final = ("WOMENS^^^", "BEHAV^^^", "FAMMED^^^")


def _escape(text: str) -> str:
    """A value with HL7's delimiters escaped and line breaks as ``\\.br\\``."""
    out = text.replace("\\", "\\E\\")
    for char, code in (("|", "F"), ("^", "S"), ("&", "T"), ("~", "R")):
        out = out.replace(char, f"\\{code}\\")
    return out.replace("\r\n", "\\.br\\").replace("\n", "\\.br\\")


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S") + _OFFSET


def _day(moment: date) -> str:
    return moment.strftime("%Y%m%d")


def _xtn(phone: str, use: str = "PRN") -> str:
    # "+1-202-555-0123" -> ^PRN^PH^^1^202^5550123
    country, area, exchange, line = phone.lstrip("+").split("-")
    return f"^{use}^PH^^{country}^{area}^{exchange}{line}"


def _xpn(someone: Person, prefix: str = "") -> str:
    return f"{_escape(someone.family)}^{_escape(someone.given)}^^^{prefix}^^L"


def _po_box(rng: random.Random) -> str:
    return f"PO Box {rng.randint(1000, 9999)}^^Washington^DC^{rng.choice(('20013', '20044'))}^USA^M"


def _msh(
    sending: str,
    receiving: str,
    application: str,
    moment: datetime,
    message_type: str,
    control_id: str,
    enhanced_ack: bool,
) -> str:
    fields = [
        "MSH",
        "^~\\&",
        application,
        _escape(sending),
        "CARE_GATEWAY",
        _escape(receiving),
        _ts(moment),
        "",
        message_type,
        control_id,
        "P",
        "2.5.1",
        "",
        "",
        "AL" if enhanced_ack else "",
        "NE" if enhanced_ack else "",
        "",
        "UNICODE UTF-8",
    ]
    return "|".join(fields)


def _pid(rng: random.Random, client: Person, facility: str) -> str:
    mrn = f"{rng.randint(10**7, 10**8 - 1)}"
    address = _po_box(rng) if rng.random() < 0.7 else ""
    language = f"{client.language}^{_LANGUAGES[client.language]}^ISO639"
    fields = [
        "PID",
        "1",
        "",
        f"{mrn}^^^{_escape(facility)}^MR",
        "",
        _xpn(client),
        "",
        _day(client.birth_date),
        client.sex,
        "",
        "",
        address,
        "",
        _xtn(client.phone),
        "",
        language,
    ]
    return "|".join(fields)


def _dg1s(rng: random.Random, moment: datetime) -> list[str]:
    violence = [d for d in DIAGNOSES if d[2]]
    other = [d for d in DIAGNOSES if not d[2]]
    chosen: list[tuple[str, str, bool]] = []
    if rng.random() < 0.7:
        chosen.append(rng.choice(violence))
    chosen += rng.sample(other, rng.randint(0 if chosen else 1, 2))
    return [
        f"DG1|{n}||{code}^{_escape(text)}^I10C||{_ts(moment)}|W"
        for n, (code, text, _violence) in enumerate(chosen, start=1)
    ]


def _notes(rng: random.Random) -> list[str]:
    return [
        f"NTE|{n}|P|{_escape(text)}|RE^Remark^HL70364"
        for n, text in enumerate(rng.sample(NOTES, rng.randint(0, 2)), start=1)
    ]


def _control_id(rng: random.Random, index: int) -> str:
    return f"{rng.getrandbits(24):06X}{index:08d}"


def ref_i12_messages(
    n: int,
    *,
    seed: int,
    sending_facility: str = "HOPE_SHELTER",
    receiving_facility: str = "STMARYS",
    enhanced_ack: bool = False,
) -> Iterator[bytes]:
    """``n`` REF^I12 referrals from a shelter's case-management system to a clinic."""
    rng = random.Random(seed)
    moment = _START
    for index in range(1, n + 1):
        moment += timedelta(minutes=rng.randint(3, 240), seconds=rng.randint(0, 59))
        client = person(rng)
        manager = person(rng)
        clinician = person(rng)
        referral = f"R{seed % 10_000:04d}{index:07d}"
        effective = moment.date()
        segments = [
            _msh(
                sending_facility,
                receiving_facility,
                "CASEMGR",
                moment,
                "REF^I12^REF_I12",
                _control_id(rng, index),
                enhanced_ack,
            ),
            "|".join(
                [
                    "RF1",
                    rng.choice(("A^Accepted^HL70283", "P^Pending^HL70283")),
                    rng.choice(("R^Routine^HL70280", "A^ASAP^HL70280", "S^STAT^HL70280")),
                    rng.choice(("Med^Medical^HL70281", "Psy^Psychiatric^HL70281")),
                    rng.choice(("AM^Assume management^HL70282", "WR^Send written report^HL70282")),
                    rng.choice(("O^Outpatient^HL70284", "A^Ambulatory^HL70284")),
                    f"{referral}^{_escape(sending_facility)}",
                    _day(effective),
                    _day(effective + timedelta(days=90)),
                    _ts(moment),
                    rng.choice(("P^Patient preference^HL70336", "O^Provider ordered^HL70336")),
                ]
            ),
        ]
        if rng.random() < 0.5:
            segments.append(
                f"AUT|MCD^Medicaid^L|DCMED^DC Medicaid^L|DC Medicaid|{_day(effective)}|"
                f"{_day(effective + timedelta(days=90))}|A{rng.randint(10**6, 10**7 - 1)}^DCMED"
            )
        segments += [
            f"PRD|RP^Referring provider^HL70286|{_xpn(manager)}|{_po_box(rng)}||"
            f"{_xtn(manager.phone, 'WPN')}",
            f"PRD|RT^Referred to provider^HL70286|{_xpn(clinician, 'Dr')}|"
            f"1 Clinic Way^^Washington^DC^20010^USA^B|{rng.choice(_CLINICS)}"
            f"{_escape(receiving_facility)}|{_xtn(clinician.phone, 'WPN')}||"
            f"1{rng.randint(10**8, 10**9 - 1)}^NPI",
            _pid(rng, client, sending_facility),
            *_dg1s(rng, moment),
        ]
        for number, (code, text) in enumerate(rng.sample(PROCEDURES, rng.randint(0, 2)), start=1):
            segments.append(f"PR1|{number}||{code}^{_escape(text)}^C4||{_ts(moment)}")
        segments += _notes(rng)
        yield ("\r".join(segments) + "\r").encode("utf-8")


def adt_a04_messages(
    n: int,
    *,
    seed: int,
    sending_facility: str = "STMARYS",
    receiving_facility: str = "CARE_NETWORK",
    trigger: Literal["A04", "A08"] = "A04",
    enhanced_ack: bool = False,
) -> Iterator[bytes]:
    """``n`` ADT^A04 registrations (or A08 updates) of outpatients at a clinic."""
    rng = random.Random(seed)
    moment = _START
    for index in range(1, n + 1):
        moment += timedelta(minutes=rng.randint(3, 240), seconds=rng.randint(0, 59))
        client = person(rng)
        clinician = person(rng)
        segments = [
            _msh(
                sending_facility,
                receiving_facility,
                "REGISTRATION",
                moment,
                f"ADT^{trigger}^ADT_A01",
                _control_id(rng, index),
                enhanced_ack,
            ),
            f"EVN|{trigger}|{_ts(moment)}||||{_ts(moment)}",
            _pid(rng, client, sending_facility),
            f"PV1|1|O|{rng.choice(_CLINICS)}{_escape(sending_facility)}||||"
            f"{rng.randint(1000, 9999)}^{_escape(clinician.family)}^{_escape(clinician.given)}"
            "^^^Dr^^^^L|||"
            f"|||||||||V{seed % 10_000:04d}{index:07d}^^^{_escape(sending_facility)}^VN",
        ]
        if rng.random() < 0.6:
            segments += _dg1s(rng, moment)
        yield ("\r".join(segments) + "\r").encode("utf-8")


def write_mllp_file(path: Path, messages: Iterable[bytes]) -> int:
    """Write ``messages`` MLLP-framed (``0x0B ... 0x1C 0x0D``) to ``path``; how many."""
    count = 0
    with path.open("wb") as out:
        for message in messages:
            out.write(b"\x0b" + message + b"\x1c\r")
            count += 1
    return count
