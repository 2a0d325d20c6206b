"""``gateway audit report``: the audit chain as a table compliance staff can read, in English or
Spanish. One line per record disclosed and per refusal: **when** (UTC, ending in Z), **who**
(the partner's name from the partners file, and its id), **what** in words ("read the care plan
CarePlan/abc (version 2)", "searched for Patient records (3 found)", "was refused a read of
Task/x"), **why** (the purpose of use and the decision rule, in words) and **under which
Consent**. A search is one line with its query (opened: the report runs on the operator's host,
with the keys) and then one line per record it released, each with its own rule and Consent.

What is left out: writes (a partner's own records coming in are not disclosures; the accounting
of disclosures leaves them out too), token issuance and operators' actions, which disclose
nothing. Compliance reviews of the log (``AuditEvent`` searches) and accountings of disclosures
are shown: they disclose a survivor's trail.

Pure but for rendering: events in, ``ReportLine``s out (``lines_of``), then ``print_report``
streams them to a console in tables of ``page`` events (the events come from a generator, so a
log of millions of events is read in constant memory).

Translations are a typed table of phrases (``Phrases``, one instance per language) rather than
Babel catalogs: Babel is not a dependency of the gateway, the report is its only translated
text, and a frozen dataclass makes a phrase missing from one language a type error (mypy) and
an unknown placeholder a test failure, with no catalog to build or ship.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

import orjson
from rich import box
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table
from rich.text import Text

from gateway.audit.review import REVIEW_RULE, _decision, _patient_of
from gateway.audit.sealing import SEALED_QUERY, EventSeal
from gateway.errors import BadRequest, ServiceUnavailable
from gateway.vocabulary.dates import parse_date_range

Lang = Literal["en", "es"]
LANGS: tuple[Lang, ...] = ("en", "es")
Kind = Literal["disclosed", "break-glass", "search", "refused", "review"]
WRITES = frozenset({"create", "update", "delete", "patch"})
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# A FHIR date or dateTime (a time without a zone is read as UTC).
FHIR_DATE = re.compile(
    r"\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)
PAGE = 500  # events per table printed (and in memory at once)


@dataclass(frozen=True, slots=True)
class Phrases:
    """Everything the report says, in one language. ``{placeholders}`` are filled with
    ``str.format``; the keys of the dicts are FHIR codes and rule names."""

    headers: tuple[str, str, str, str, str]  # when, who, what, why, Consent
    reading: str
    empty: str
    summary: str  # {lines} {events}
    read: str  # {thing} {ref} {version}
    history: str
    searched: str  # {type} {found}
    searched_included: str  # {type} {found} {included}
    with_query: str  # {query}
    sealed_query: str
    found: str  # {thing} {ref} {version}
    included: str
    accounting: str  # {ref}
    refused: str  # {action}
    refused_actions: dict[str, str]  # interaction -> "a read of {target}"
    refused_bare: dict[str, str]  # interaction -> "a read" (no record named)
    refused_grant: str  # an access token
    records_of: str  # {type}
    no_target: str  # what an accounting names when its Patient is missing
    thing: dict[str, str]  # resource type -> "the care plan"
    other_thing: str  # {type}
    purposes: dict[str, str]
    no_purpose: str
    rules: dict[str, str]  # rule (or its prefix before ":") -> words
    consent_release: str
    consent_deny: str
    emergency: str  # {rule}
    type_not_shared: str  # {kind}
    unknown_kind: str  # {kind}
    grant_reason: str  # {reason}
    unknown_rule: str  # {rule}
    refused_unknown: str
    redacted: str  # {rules}
    unauthenticated: str
    unknown_partner: str


EN = Phrases(
    headers=("When (UTC)", "Who", "What", "Why", "Consent"),
    reading="Reading the audit log",
    empty="No disclosures or refusals in the audit log match.",
    summary="{lines} line(s) from {events} event(s)",
    read="read {thing} {ref} (version {version})",
    history="read {thing} {ref} (version {version}, from its history)",
    searched="searched for {type} records ({found} found)",
    searched_included="searched for {type} records ({found} found, {included} included)",
    with_query="query: {query}",
    sealed_query="query sealed (the key to open it is not here)",
    found="  released {thing} {ref} (version {version})",
    included="  included {thing} {ref} (version {version})",
    accounting="was given the accounting of disclosures of {ref}",
    refused="was refused {action}",
    refused_actions={
        "read": "a read of {target}",
        "vread": "a read of {target}",
        "history-instance": "the history of {target}",
        "search-type": "a search for {target}",
        "create": "creating {target}",
        "update": "an update of {target}",
        "patch": "an update of {target}",
        "delete": "the deletion of {target}",
        "operation": "an operation on {target}",
    },
    refused_bare={
        "read": "a read",
        "vread": "a read",
        "history-instance": "a history read",
        "search-type": "a search",
        "create": "a create",
        "update": "an update",
        "patch": "an update",
        "delete": "a deletion",
        "operation": "an operation",
    },
    refused_grant="an access token",
    records_of="{type} records",
    no_target="the gateway",
    thing={
        "Patient": "the patient record",
        "CarePlan": "the care plan",
        "ServiceRequest": "the service request",
        "Task": "the task",
        "Consent": "the consent",
        "EpisodeOfCare": "the episode of care",
        "Organization": "the directory entry",
        "Provenance": "the provenance record",
        "AuditEvent": "the audit event",
    },
    other_thing="the {type} record",
    purposes={
        "TREAT": "treatment",
        "ETREAT": "emergency treatment (break-glass)",
        "BTG": "break the glass",
        "ERTREAT": "emergency room treatment",
        "COC": "coordination of care",
        "CAREMGT": "care management",
        "HOPERAT": "healthcare operations",
        "HLEGAL": "legal services",
        "HCOMPL": "compliance",
        "HSYSADMIN": "system administration",
        "RECORDMGT": "records management",
        "PATRQT": "the survivor's own request",
        "FAMRQT": "a family member's request",
        "PWATRNY": "power of attorney",
        "SUPNWK": "support network",
        "PUBHLTH": "public health",
        "THREAT": "a threat to safety",
        "DISASTER": "disaster response",
        "HPAYMT": "payment",
        "PATSFTY": "patient safety",
        "HQUALIMP": "quality improvement",
        "HRESCH": "research",
        "TRAIN": "training",
        "HTEST": "testing",
        "GOV": "government",
        "FRAUD": "fraud prevention",
    },
    no_purpose="no purpose given",
    rules={
        "contributor": "the contributor's own record",
        "policy:directory": "a directory entry",
        REVIEW_RULE: "a compliance review of the audit log",
        "token": "refused: no valid access token",
        "scope": "refused: the token's scopes do not allow it",
        "no-permit": "refused: no consent releases it",
        "not-visible": "refused: not shown to this partner (no consent)",
        "not-found": "refused: no such record",
        "no-such-version": "refused: no such version",
        "too-many-consents": "refused: too many Consents to decide",
        "explicit-label": "refused: the Consent does not cover its sensitivity labels",
        "shelter": "refused: shelter data needs a written, time-limited Consent",
        "policy:never-label": "refused: it carries a label this partner may never receive",
        "policy:no-patient": "refused: a record without a patient that is not a directory entry",
        "not-a-reviewer": "refused: the audit log is for the compliance office",
        "not-an-explainer": "refused: $explain is for compliance and administration",
        "only-the-contributor-changes-a-record": "refused: only its contributor changes a record",
        "consent-writing": "refused: this Consent may not be recorded by this partner",
    },
    consent_release="released by a Consent",
    consent_deny="refused: denied by a Consent",
    emergency="break-glass emergency access (rule {rule})",
    type_not_shared="refused: this type is not shared with {kind} partners",
    unknown_kind="refused: unknown partner kind {kind}",
    grant_reason="refused: no valid access token ({reason})",
    unknown_rule="rule {rule}",
    refused_unknown="refused",
    redacted="redacted: {rules}",
    unauthenticated="unauthenticated client",
    unknown_partner="unknown partner",
)

ES = Phrases(
    headers=("Cuándo (UTC)", "Quién", "Qué", "Por qué", "Consentimiento"),
    reading="Leyendo el registro de auditoría",
    empty="Ninguna divulgación ni rechazo del registro de auditoría coincide.",
    summary="{lines} línea(s) de {events} evento(s)",
    read="leyó {thing} {ref} (versión {version})",
    history="leyó {thing} {ref} (versión {version}, de su historial)",
    searched="buscó registros {type} (encontrados: {found})",
    searched_included="buscó registros {type} (encontrados: {found}, incluidos: {included})",
    with_query="consulta: {query}",
    sealed_query="consulta sellada (la clave para abrirla no está aquí)",
    found="  se divulgó {thing} {ref} (versión {version})",
    included="  se incluyó {thing} {ref} (versión {version})",
    accounting="recibió la relación de divulgaciones de {ref}",
    refused="se le denegó {action}",
    refused_actions={
        "read": "la lectura de {target}",
        "vread": "la lectura de {target}",
        "history-instance": "el historial de {target}",
        "search-type": "una búsqueda de {target}",
        "create": "la creación de {target}",
        "update": "la modificación de {target}",
        "patch": "la modificación de {target}",
        "delete": "el borrado de {target}",
        "operation": "una operación sobre {target}",
    },
    refused_bare={
        "read": "una lectura",
        "vread": "una lectura",
        "history-instance": "una lectura del historial",
        "search-type": "una búsqueda",
        "create": "una creación",
        "update": "una modificación",
        "patch": "una modificación",
        "delete": "un borrado",
        "operation": "una operación",
    },
    refused_grant="un token de acceso",
    records_of="registros {type}",
    no_target="la pasarela",
    thing={
        "Patient": "la ficha de la persona",
        "CarePlan": "el plan de atención",
        "ServiceRequest": "la solicitud de servicio",
        "Task": "la tarea",
        "Consent": "el consentimiento",
        "EpisodeOfCare": "el episodio de atención",
        "Organization": "la entrada del directorio",
        "Provenance": "el registro de procedencia",
        "AuditEvent": "el evento de auditoría",
    },
    other_thing="el registro {type}",
    purposes={
        "TREAT": "tratamiento",
        "ETREAT": "tratamiento de emergencia (acceso de emergencia)",
        "BTG": "acceso de emergencia",
        "ERTREAT": "tratamiento en urgencias",
        "COC": "coordinación de la atención",
        "CAREMGT": "gestión de la atención",
        "HOPERAT": "operaciones de atención de salud",
        "HLEGAL": "servicios legales",
        "HCOMPL": "cumplimiento normativo",
        "HSYSADMIN": "administración del sistema",
        "RECORDMGT": "gestión de registros",
        "PATRQT": "solicitud de la propia sobreviviente",
        "FAMRQT": "solicitud de un familiar",
        "PWATRNY": "poder notarial",
        "SUPNWK": "red de apoyo",
        "PUBHLTH": "salud pública",
        "THREAT": "una amenaza a la seguridad",
        "DISASTER": "respuesta ante desastres",
        "HPAYMT": "pago",
        "PATSFTY": "seguridad del paciente",
        "HQUALIMP": "mejora de la calidad",
        "HRESCH": "investigación",
        "TRAIN": "formación",
        "HTEST": "pruebas",
        "GOV": "gobierno",
        "FRAUD": "prevención del fraude",
    },
    no_purpose="sin finalidad indicada",
    rules={
        "contributor": "registro propio de quien lo aportó",
        "policy:directory": "una entrada del directorio",
        REVIEW_RULE: "una revisión de cumplimiento del registro de auditoría",
        "token": "rechazado: sin token de acceso válido",
        "scope": "rechazado: los permisos (scopes) del token no lo permiten",
        "no-permit": "rechazado: ningún consentimiento lo divulga",
        "not-visible": "rechazado: no se muestra a este socio (sin consentimiento)",
        "not-found": "rechazado: no existe ese registro",
        "no-such-version": "rechazado: no existe esa versión",
        "too-many-consents": "rechazado: demasiados consentimientos para decidir",
        "explicit-label": (
            "rechazado: el consentimiento no cubre sus etiquetas de confidencialidad"
        ),
        "shelter": "rechazado: los datos de un refugio requieren un consentimiento escrito y "
        "limitado en el tiempo",
        "policy:never-label": "rechazado: lleva una etiqueta que este socio nunca puede recibir",
        "policy:no-patient": (
            "rechazado: un registro sin persona que no es una entrada del directorio"
        ),
        "not-a-reviewer": "rechazado: el registro de auditoría es para la oficina de cumplimiento",
        "not-an-explainer": "rechazado: $explain es para cumplimiento y administración",
        "only-the-contributor-changes-a-record": (
            "rechazado: solo quien aportó un registro puede cambiarlo"
        ),
        "consent-writing": "rechazado: este socio no puede registrar este consentimiento",
    },
    consent_release="divulgado por un consentimiento",
    consent_deny="rechazado: denegado por un consentimiento",
    emergency="acceso de emergencia (regla {rule})",
    type_not_shared="rechazado: este tipo no se comparte con socios de tipo {kind}",
    unknown_kind="rechazado: tipo de socio desconocido {kind}",
    grant_reason="rechazado: sin token de acceso válido ({reason})",
    unknown_rule="regla {rule}",
    refused_unknown="rechazado",
    redacted="con supresiones: {rules}",
    unauthenticated="cliente no autenticado",
    unknown_partner="socio desconocido",
)

PHRASES: dict[Lang, Phrases] = {"en": EN, "es": ES}


# -- arguments -------------------------------------------------------------------------------------


def parse_lang(value: str) -> Phrases:
    """The phrases of ``en`` or ``es``; ``ValueError`` otherwise."""
    for lang in LANGS:
        if value == lang:
            return PHRASES[lang]
    raise ValueError(f"--lang must be one of {', '.join(LANGS)}, not {value!r}")


def parse_since(value: str) -> datetime:
    """The first instant of a FHIR date or dateTime (UTC); ``ValueError`` when it is not one."""
    if not FHIR_DATE.fullmatch(value):
        raise ValueError(f"--since must be a FHIR date or dateTime (2024-05-01), not {value!r}")
    try:
        low, _ = parse_date_range(value)
    except BadRequest as exc:
        raise ValueError(f"--since is not a valid date: {value!r}") from exc
    return datetime.fromisoformat(low).replace(tzinfo=UTC)


def parse_patient(value: str) -> str:
    """``Patient/<id>`` from an id or a reference; ``ValueError`` when it is not a FHIR id."""
    patient_id = value.removeprefix("Patient/")
    if not FHIR_ID.fullmatch(patient_id):
        raise ValueError(f"--patient must be a Patient id, not {value!r}")
    return f"Patient/{patient_id}"


# -- events in, lines out --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportLine:
    seq: int
    when: str
    who: str
    what: str
    why: str
    consent: str
    kind: Kind
    continued: bool = False  # a later line of the same event (when and who not repeated)


@dataclass(frozen=True, slots=True)
class ReportFilter:
    patient: str | None = None  # "Patient/<id>": events whose Patient entity is this one

    def may_admit(self, raw: str) -> bool:
        """A cheap test on the stored JSON before it is parsed (most events of a long log are
        about other survivors)."""
        return self.patient is None or f'"{self.patient}"' in raw

    def admits(self, event: dict[str, Any]) -> bool:
        if self.patient is None:
            return True
        return f"Patient/{_patient_of(event)}" == self.patient


def lines_of(
    seq: int, event: dict[str, Any], phrases: Phrases, names: Mapping[str, str]
) -> list[ReportLine]:
    """The report's lines for one (opened) AuditEvent: none for what is not a disclosure or a
    refusal (writes, token issuance, operators' actions)."""
    interaction = _interaction(event)
    entities = list(event.get("entity") or ())
    subtypes = {str(c.get("code")) for c in event.get("subtype") or ()}
    when = _when(event.get("recorded"))
    who = _who(event, phrases, names)
    purpose = _purpose(event, phrases)
    if str(event.get("outcome", "0")) != "0":
        rule = str(event.get("outcomeDesc") or "")
        what = phrases.refused.format(action=_refused_action(event, interaction, rule, phrases))
        words = _rule_words(rule, phrases) if rule else phrases.refused_unknown
        if rule.startswith("consent:"):
            words = phrases.consent_deny
        why = f"{purpose}; {words}"
        return [ReportLine(seq, when, who, what, why, _consent_of(rule), "refused")]
    if interaction in WRITES:
        return []
    disclosed = [e for e in entities if _role(e) == "4" and _decision(e)]
    if "accounting-of-disclosures" in subtypes:
        target = next((_ref(e) for e in entities if _role(e) == "4"), "")
        what = phrases.accounting.format(ref=target or phrases.no_target)
        return [ReportLine(seq, when, who, what, purpose, "", "review")]
    lines: list[ReportLine] = []
    if interaction == "search-type":
        query = next((e for e in entities if _role(e) == "24"), None)
        resource_type = str((query or {}).get("description") or _type_of(disclosed) or "")
        found = sum(1 for e in disclosed if not _detail(e, "search-mode"))
        included = len(disclosed) - found
        what = (phrases.searched_included if included else phrases.searched).format(
            type=resource_type or "?", found=found, included=included
        )
        shown = _query_line(query, phrases) if query is not None else None
        if shown:
            what = f"{what}\n{shown}"
        reviewing = resource_type == "AuditEvent"
        lines.append(
            ReportLine(seq, when, who, what, purpose, "", "review" if reviewing else "search")
        )
    elif not disclosed:  # an operation on a record, a token issued: nothing left
        return []
    for entity in disclosed:
        ref, _, version = _ref(entity).partition("/_history/")
        resource_type = ref.split("/", 1)[0]
        thing = phrases.thing.get(resource_type) or phrases.other_thing.format(type=resource_type)
        if interaction == "search-type":
            template = phrases.included if _detail(entity, "search-mode") else phrases.found
        else:
            template = phrases.history if interaction == "history-instance" else phrases.read
        rule = _decision(entity)
        why = f"{purpose}; {_rule_words(rule, phrases)}"
        redactions = _detail(entity, "redactions")
        if redactions:
            why += f"; {phrases.redacted.format(rules=redactions.replace(',', ', '))}"
        glass = _detail(entity, "break-glass") == "true" or rule.startswith("emergency:")
        kind: Kind = "break-glass" if glass else "disclosed"
        if rule == REVIEW_RULE:
            kind = "review"
        lines.append(
            ReportLine(
                seq,
                when,
                who,
                template.format(thing=thing, ref=ref, version=version or "?"),
                why,
                _consent_of(rule),
                kind,
                continued=bool(lines),
            )
        )
    return lines


def _role(entity: dict[str, Any]) -> str:
    return str((entity.get("role") or {}).get("code") or "")


def _ref(entity: dict[str, Any]) -> str:
    return str((entity.get("what") or {}).get("reference") or "")


def _detail(entity: dict[str, Any], kind: str) -> str:
    for detail in entity.get("detail") or ():
        if detail.get("type") == kind:
            return str(detail.get("valueString") or "")
    return ""


def _type_of(disclosed: list[dict[str, Any]]) -> str | None:
    return _ref(disclosed[0]).split("/", 1)[0] if disclosed else None


def _interaction(event: dict[str, Any]) -> str:
    for coding in event.get("subtype") or ():
        if coding.get("system") == "http://hl7.org/fhir/restful-interaction":
            return str(coding.get("code"))
    return ""


def _requestor(event: dict[str, Any]) -> dict[str, Any]:
    return next((a for a in event.get("agent") or () if a.get("requestor")), {})


def _when(recorded: Any) -> str:
    try:
        moment = datetime.fromisoformat(str(recorded).replace("Z", "+00:00"))
    except ValueError:
        return str(recorded)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _who(event: dict[str, Any], phrases: Phrases, names: Mapping[str, str]) -> str:
    agent = _requestor(event)
    partner = agent.get("altId")
    who = agent.get("who") or {}
    if isinstance(partner, str) and partner:
        name = names.get(partner) or who.get("display") or who.get("reference")
        return f"{name} ({partner})" if name else partner
    display = str(who.get("display") or "")
    if not display:
        return phrases.unknown_partner
    return phrases.unauthenticated if display == EN.unauthenticated else display


def _purpose(event: dict[str, Any], phrases: Phrases) -> str:
    codes = [
        str(coding.get("code"))
        for concept in _requestor(event).get("purposeOfUse") or event.get("purposeOfEvent") or ()
        for coding in concept.get("coding") or ()
    ]
    if not codes:
        return phrases.no_purpose
    return ", ".join(phrases.purposes.get(c, c) for c in dict.fromkeys(codes))


def _consent_of(rule: str) -> str:
    """``Consent/<id>`` of a ``consent:Consent/<id>#provision…`` rule, else empty."""
    if not rule.startswith("consent:"):
        return ""
    return rule.removeprefix("consent:").split("#", 1)[0]


def _rule_words(rule: str, phrases: Phrases) -> str:
    if rule in phrases.rules:
        return phrases.rules[rule]
    head, _, rest = rule.partition(":")
    if head == "consent":
        return phrases.consent_release  # a refusal under a Consent is worded by the caller
    if head == "emergency":
        return phrases.emergency.format(rule=rest)
    if rule.startswith("policy:type-not-shared:"):
        return phrases.type_not_shared.format(kind=rule.rsplit(":", 1)[1])
    if rule.startswith("policy:unknown-kind:"):
        return phrases.unknown_kind.format(kind=rule.rsplit(":", 1)[1])
    if head == "token":
        return phrases.grant_reason.format(reason=rest)
    if head in phrases.rules:
        return phrases.rules[head]
    return phrases.unknown_rule.format(rule=rule)


def _refused_action(event: dict[str, Any], interaction: str, rule: str, phrases: Phrases) -> str:
    entities = list(event.get("entity") or ())
    target = next((_ref(e) for e in entities if _role(e) == "4"), "")
    query = next((e for e in entities if _role(e) == "24"), None)
    resource_type = str((query or {}).get("description") or "")
    if not target and interaction == "operation" and rule.startswith("token"):
        return phrases.refused_grant
    if not target and resource_type:
        target = phrases.records_of.format(type=resource_type)
    if not target:
        return phrases.refused_bare.get(interaction, phrases.refused_bare["operation"])
    template = phrases.refused_actions.get(interaction, phrases.refused_actions["operation"])
    return template.format(target=target)


def _query_line(query: dict[str, Any], phrases: Phrases) -> str | None:
    """The search's query string as sent (decoded for reading), the sealed phrase when it
    could not be opened, None for an empty query."""
    raw = query.get("query")
    if not isinstance(raw, str):
        return phrases.sealed_query if _is_sealed(query) else None
    try:
        text = base64.b64decode(raw, validate=True).decode("utf-8", errors="replace")
    except (binascii.Error, ValueError):
        return phrases.with_query.format(query="?")
    return phrases.with_query.format(query=unquote_plus(text)) if text else None


def _is_sealed(entity: dict[str, Any]) -> bool:
    return any(x.get("url") == SEALED_QUERY for x in entity.get("extension") or ())


# -- reading the chain's rows ----------------------------------------------------------------------


@dataclass
class ReportCounts:
    events: int = 0  # events read
    shown: int = 0  # events with at least one line
    lines: int = 0


@dataclass
class EventLines:
    """``(seq, event JSON)`` rows in, each shown event's lines out, counting as it goes."""

    phrases: Phrases
    names: Mapping[str, str]
    report_filter: ReportFilter = field(default_factory=ReportFilter)
    open_event: Callable[[dict[str, Any]], dict[str, Any]] = lambda event: event
    counts: ReportCounts = field(default_factory=ReportCounts)

    def __call__(self, rows: Iterable[tuple[int, str]]) -> Iterator[list[ReportLine]]:
        for seq, raw in rows:
            self.counts.events += 1
            if not self.report_filter.may_admit(raw):
                continue
            event = orjson.loads(raw)
            if not self.report_filter.admits(event):
                continue
            lines = lines_of(seq, self.open_event(event), self.phrases, self.names)
            if lines:
                self.counts.shown += 1
                self.counts.lines += len(lines)
                yield lines


def opener(seal: EventSeal | None) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Opens an event's sealed query; an event that cannot be opened (the key is not in this
    ring, or it fails its integrity check) is shown with its query sealed."""

    def open_event(event: dict[str, Any]) -> dict[str, Any]:
        if seal is None:
            return event
        try:
            return seal.open(event)
        except ServiceUnavailable:
            return event

    return open_event


# -- rendering -------------------------------------------------------------------------------------


STYLES: dict[Kind, str] = {
    "disclosed": "",
    "search": "cyan",
    "review": "magenta",
    "break-glass": "bold yellow",
    "refused": "red",
}


def _printable(text: str) -> Text:
    """Event text as plain text (never rich markup), control characters replaced."""
    return Text("".join(c if c.isprintable() or c == "\n" else "\ufffd" for c in text))


def report_table(lines: list[ReportLine], phrases: Phrases, *, header: bool) -> Table:
    """One page of the report. Columns are sized by ratio, not content, so that consecutive
    pages line up as one table."""
    table = Table(
        box=box.SIMPLE_HEAD, expand=True, show_header=header, show_edge=False, pad_edge=False
    )
    when, who, what, why, consent = phrases.headers
    table.add_column(when, width=20, no_wrap=True)
    # "fold": a long word (an id, a query) is broken over lines, never cut short.
    table.add_column(who, ratio=2, overflow="fold")
    table.add_column(what, ratio=4, overflow="fold")
    table.add_column(why, ratio=3, overflow="fold")
    table.add_column(consent, width=max(len(consent), 14), overflow="fold")
    for n, line in enumerate(lines):
        last = n + 1 == len(lines) or not lines[n + 1].continued
        table.add_row(
            _printable("" if line.continued else line.when),
            _printable("" if line.continued else line.who),
            _printable(line.what),
            _printable(line.why),
            _printable(line.consent),
            style=STYLES[line.kind] or None,
            end_section=last,  # events apart, a search's lines together
        )
    return table


def print_report(
    events: Iterable[list[ReportLine]],
    out: Console,
    phrases: Phrases,
    *,
    page: int = PAGE,
    progress: Progress | None = None,
) -> int:
    """Print the lines, a table per ``page`` events (the progress display, if any, is stopped
    while a page prints); the number of lines printed. Prints ``phrases.empty`` when none."""
    batch: list[ReportLine] = []
    pending = printed = 0

    def flush() -> None:
        nonlocal batch, pending, printed
        if not batch:
            return
        if progress is not None:
            progress.stop()
        out.print(report_table(batch, phrases, header=printed == 0))
        if progress is not None:
            progress.start()
        printed += len(batch)
        batch, pending = [], 0

    for lines in events:
        batch += lines
        pending += 1
        if pending >= page:
            flush()
    flush()
    if printed == 0:
        if progress is not None:
            progress.stop()
        out.print(_printable(phrases.empty))
    return printed


def counted(
    rows: Iterable[tuple[int, str]], progress: Progress, task: TaskID
) -> Iterator[tuple[int, str]]:
    """The rows, advancing ``task`` as they are read (every hundred: the display need not
    be told of each one)."""
    n = 0
    for n, row in enumerate(rows, 1):
        yield row
        if n % 100 == 0:
            progress.advance(task, 100)
    progress.advance(task, n % 100)


__all__ = [
    "EN",
    "ES",
    "LANGS",
    "PAGE",
    "PHRASES",
    "EventLines",
    "Phrases",
    "ReportCounts",
    "ReportFilter",
    "ReportLine",
    "counted",
    "lines_of",
    "opener",
    "parse_lang",
    "parse_patient",
    "parse_since",
    "print_report",
    "report_table",
]
