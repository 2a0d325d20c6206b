"""``ConsentedStore``: the only store a request is handed (``deps.request_store``). It binds the
raw store to one requester, so that no route can read around it (DESIGN section 4, "One read
path"), and it is where "every partner may be hostile" is kept for data.

What it enforces:
- **Scopes**: the token's SMART scopes must cover the type and interaction (403 otherwise; a
  statement about the token, never about data): ``c`` every create (POST, and the entries of
  transactions and batches), ``u`` every update, ``r`` reads and ``$explain``, ``s`` searches.
- **The rules that need no Consent**: a partner sees, changes and deletes the records it
  contributed, and every partner sees the gateway's own directory entries (Organizations).
- **Consent** (``consent.engine.decide``): another partner's record is released when the
  survivor's Consents *recorded by that record's contributor*, as they are now (read afresh for
  every request: a revocation takes effect on the very next one), and the network policy permit
  it; then only as ``consent.redact`` leaves it. Older versions follow the newest: a version is
  released only when the newest version of its record is (a correction retracts what it
  corrects).
- **One absent answer**: every door that names a record by id (read, vread, history, update,
  ``If-Match``, delete, Bundle entries) first ``_find``s it, and a record the requester may not
  see takes the very path of an id that never existed: the same lookups (the record's head, then
  one Consent probe keyed by the patient, or by the requested id when there is none), the same
  ``not_found`` answer, the same audited refusal. Nothing is created under a client's id
  (``updateCreate`` is off: a PUT to an absent id is a 404, like a hidden one).
- **Consent authority** on write: a partner records a Consent only for a Patient it contributed
  itself; anything else is refused alike, whether the Patient is another partner's, absent, or
  not a local reference at all.
- **Attribution and labels**: every write records the requester as contributor of what it
  creates, and ``consent.labels.labels_for`` adds the sensitivity labels the code tables call
  for (keeping the writer's own).
- **Search** (matches, ``_include``, ``_revinclude``, Bundles): the store hands the records of
  other partners that consent might release (``ConsentReach``) to ``decide`` from their index
  facts, *before* it counts and pages; a released record whose redaction removes an element a
  search parameter reads is matched against what the recipient would be shown, never against
  what was removed. Paging tokens are sealed (``store.paging``): bound to the requester and the
  query, and telling nothing of other partners' writes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NoReturn
from urllib.parse import urlencode

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.access.requester import Requester
from gateway.access.scopes import ScopeGrant
from gateway.audit.events import REFUSED, Activity, Disclosed
from gateway.audit.trail import AuditTrail
from gateway.clock import Clock
from gateway.consent.engine import (
    AccessRequest,
    Decision,
    decide,
    decision_key,
    facets_examined,
    facts_from_index,
    facts_from_resource,
    patient_from_index,
    patient_of,
    policy_facts,
)
from gateway.consent.labels import LabelTables
from gateway.consent.model import ParsedConsent, parse_consent
from gateway.consent.policy import Obligation, Policy
from gateway.consent.redact import may_change, redact
from gateway.errors import Forbidden, Gone, Issue, NotFound, Unprocessable, not_found
from gateway.store.paging import CursorSeal
from gateway.store.port import (
    Candidate,
    Clause,
    ConsentReach,
    Cursor,
    HistoryPage,
    Located,
    ReferenceCriterion,
    Release,
    ResourceStore,
    SearchPage,
    SearchQuery,
    StoredResource,
    StoreSession,
    TokenCriterion,
    UnitOfWorkStore,
    Visibility,
)
from gateway.store.query import clause_matches
from gateway.store.records import canonical
from gateway.vocabulary.index import extract
from gateway.vocabulary.references import parse_local
from gateway.vocabulary.registry import (
    ANY_PATIENT,
    CONSENT_PATIENT,
    INLINE_LABEL_PARAM,
    Kind,
    lookup,
)
from gateway.write.admit import Checked, ValidResource, admit

# More Consents than this from one recorder on one survivor is not a realistic case; should it
# happen, nothing of that recorder's is released (a Consent left unread could be the deny that
# matters). Reading stops at READ_LIMIT Consents of one survivor in all.
MAX_CONSENTS_READ = 500
READ_LIMIT = 5000
CONSENT_PATIENTS_PER_QUERY = 100
EXPLAINERS = frozenset({"compliance", "admin"})
# The audit's restful-interaction code for each scope check.
SCOPE_INTERACTIONS = {
    "read": "read", "search": "search-type", "create": "create", "update": "update",
    "delete": "delete",
}  # fmt: skip
CONTRIBUTOR = Decision(True, "contributor", None, None)
DIRECTORY = Decision(True, "policy:directory", None, None)
NOT_RELEASED = Decision(False, "not-visible", None, None)
ABSENT = Decision(False, "not-found", None, None)
TOO_MANY = Decision(False, "too-many-consents", None, None)
NO_VERSION = Decision(False, "no-such-version", None, None)
# Clauses that address the record itself (its id, its version's time): no redaction changes them.
RECORD_CLAUSES = frozenset({"_id", "_lastUpdated"})


class Decoy:
    """What a refusal of an existing record does that an absent id gives nothing to do
    (decrypt a version, parse it, find its patient, decide from the policy's facts), done on a
    record of typical size that exists nowhere: an absent id then costs what a hidden record
    costs (the doors must not be told apart by time either)."""

    def __init__(self) -> None:
        self._aead = AESGCM(AESGCM.generate_key(bit_length=256))
        self._nonce = os.urandom(12)
        body = canonical(
            {
                "resourceType": "CarePlan",
                "id": "00000000-0000-4000-8000-000000000000",
                "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000Z",
                         "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                       "code": "R"}]},
                "status": "active", "intent": "plan", "title": "x" * 24,
                "category": [{"coding": [{"system": "http://snomed.info/sct",
                                          "code": "734163000"}]}],
                "subject": {"reference": "Patient/00000000-0000-4000-8000-000000000000"},
                "period": {"start": "2026-01-01", "end": "2026-07-01"},
            }
        )  # fmt: skip
        self._sealed = self._aead.encrypt(self._nonce, body, b"decoy")

    def work(self, session: ConsentedSession) -> None:
        doc = orjson.loads(self._aead.decrypt(self._nonce, self._sealed, b"decoy"))
        session._decide_policy(doc, patient_of(doc), None)


@dataclass(frozen=True, slots=True)
class ConsentRules:
    """What consent decisions need besides the data: built once per app."""

    policy: Policy
    clock: Clock
    partner_kinds: Mapping[str, str] = field(default_factory=dict)  # partner id -> kind
    labels: LabelTables | None = None
    # partner id -> "Organization/<id>" when it differs from the partner id
    partner_organizations: Mapping[str, str] = field(default_factory=dict)
    # Seals paging tokens (one key for every worker: derived from the key ring).
    paging: CursorSeal = field(default_factory=CursorSeal.ephemeral)
    decoy: Decoy = field(default_factory=Decoy)


@dataclass(frozen=True, slots=True)
class Found:
    """What ``_find`` learnt of a record named by id: where it stands (None: no such id), the
    decision on its newest live version, that version as released (None: not released) and its
    patient (for the audit)."""

    located: Located | None
    decision: Decision
    shown: StoredResource | None
    patient: str | None

    @property
    def own(self) -> bool:
        return self.decision is CONTRIBUTOR

    @property
    def live_version(self) -> int | None:
        return self.located.live.version_id if self.located is not None else None


class ConsentedSession:
    """The operations, on a raw store or on one of its units of work, for one requester."""

    def __init__(
        self,
        raw: StoreSession,
        requester: Requester,
        rules: ConsentRules | None = None,
        trail: AuditTrail | None = None,
    ) -> None:
        self._raw = raw
        self._requester = requester
        self._rules = rules
        # What this request disclosed and refused, for its audit events (gateway/audit).
        self._trail = trail if trail is not None else AuditTrail()
        self._labels = rules.labels if rules is not None else None
        self._grant = ScopeGrant.parse(requester.scopes)
        self._visibility = Visibility(
            requester.partner_id,
            rules.policy.directory_types if rules is not None else frozenset(),
        )
        ref = parse_local(requester.organization)
        self._actor = (ref.resource_type, ref.id) if ref is not None else None
        # A patient's Consents, parsed, for this request only (never across requests).
        self._consents: dict[str, list[ParsedConsent] | None] = {}

    # -- rules ------------------------------------------------------------------------------

    def _allow(self, resource_type: str, interaction: str) -> None:
        if not self._grant.allows(resource_type, interaction):
            self._refused(SCOPE_INTERACTIONS[interaction], resource_type, "scope")
            raise Forbidden(
                f"the access token's scopes do not allow {interaction} on {resource_type}"
            )

    def _refused(
        self,
        interaction: str,
        resource_type: str,
        reason: str,
        *,
        target: str | None = None,
        patient: str | None = None,
    ) -> None:
        """Record a refusal (outcome 4) naming the rule, the record and its patient."""
        self._trail.add(
            Activity(
                interaction,
                resource_type,
                outcome=REFUSED,
                refusal=reason,
                target=target,
                target_patient=patient,
            )
        )

    def _disclosed(
        self,
        original: StoredResource,
        decision: Decision,
        *,
        included: bool = False,
    ) -> Disclosed:
        """What the audit event says of one version released: its patient, the rule and
        Consent behind the release, the redactions that changed it."""
        return Disclosed(
            original.resource_type,
            original.id,
            original.version_id,
            patient_of(orjson.loads(original.body)) if original.body else None,
            decision.rule,
            decision.consent,
            tuple(o.rule for o in decision.obligations if may_change(original.body, o)),
            decision.break_glass,
            included,
        )

    def _access(self, interaction: str, requester: Requester | None = None) -> AccessRequest:
        who = requester or self._requester
        return AccessRequest(
            partner_id=who.partner_id,
            partner_kind=who.kind,
            organization=who.organization,
            purposes=who.purpose_of_use,
            interaction=interaction,
        )

    # -- finding one record: the one path for hidden and absent -----------------------------

    def _find(self, resource_type: str, resource_id: str) -> Found:
        """The record named by ``resource_type``/``resource_id`` as this requester may see it.

        A record it may not see and an id that never existed take the same steps: the head
        lookup, then one Consent probe (keyed by the record's patient, or by the requested id
        when there is no record or no patient), and come out as a refusal. Only a probe that
        finds a Consent naming the requester (or break-glass) leads to reading Consents."""
        located = self._raw.locate(resource_type, resource_id)
        if located is not None and self._visibility.admits(resource_type, located.contributor):
            decision = self._own_decision(located.contributor)
            return Found(located, decision, located.live, None)
        if self._rules is None:
            return Found(located, ABSENT if located is None else NOT_RELEASED, None, None)
        doc = orjson.loads(located.live.body) if located is not None else None
        patient = patient_of(doc) if doc is not None else None
        recorder = (located.contributor or "") if located is not None else ""
        named = self._actor is not None and self._raw.consent_probe(
            patient or resource_id, recorder=recorder, actor=self._actor
        )
        if located is None or doc is None:
            self._rules.decoy.work(self)
            return Found(None, ABSENT, None, None)
        if named:
            decision = self._decide_doc(self._raw, located.live, doc)
        else:
            # No Consent of the contributor names the requester: no permit can apply and no
            # deny can name it, so deciding with none gives the same answer, from the few
            # facts the policy reads (rules 1-3, 8).
            decision = self._decide_policy(doc, patient, located.contributor)
        shown = _redacted(located.live, decision, doc) if decision.permit else None
        return Found(located, decision, shown, patient)

    def _decide_policy(
        self, doc: dict[str, Any], patient: str | None, contributor: str | None
    ) -> Decision:
        assert self._rules is not None
        rules = self._rules
        facts = policy_facts(
            doc,
            patient,
            contributor=contributor,
            contributor_kind=rules.partner_kinds.get(contributor or ""),
        )
        return decide(self._access("read"), facts, [], rules.policy, rules.clock.now())

    def _decision_of(
        self, stored: StoredResource, decisions: Mapping[tuple[str, str], Decision]
    ) -> Decision:
        return decisions.get(stored.key) or self._own_decision(stored.contributor)

    def _own_decision(self, contributor: str | None) -> Decision:
        return CONTRIBUTOR if contributor == self._requester.partner_id else DIRECTORY

    def _decide_doc(
        self,
        session: StoreSession,
        stored: StoredResource,
        doc: dict[str, Any],
        *,
        request: AccessRequest | None = None,
    ) -> Decision:
        """``decide`` for one version, with the Consents its contributor recorded."""
        assert self._rules is not None
        rules = self._rules
        facts = facts_from_resource(
            doc,
            contributor=stored.contributor,
            contributor_kind=rules.partner_kinds.get(stored.contributor or ""),
        )
        consents: list[ParsedConsent] | None = []
        if facts.patient_id:
            consents = self._consents_by(session, facts.patient_id, stored.contributor)
        if consents is None:
            return TOO_MANY
        return decide(
            request or self._access("read"), facts, consents, rules.policy, rules.clock.now()
        )

    def _consents_by(
        self, session: StoreSession, patient_id: str, recorder: str | None
    ) -> list[ParsedConsent] | None:
        """The patient's Consents that ``recorder`` recorded (the only ones that govern its
        records); None when there are more than ``MAX_CONSENTS_READ`` of them."""
        held = self._consents_of(session, [patient_id])[patient_id]
        if held is None:
            return None
        mine = [c for c in held if c.recorder == recorder]
        return None if len(mine) > MAX_CONSENTS_READ else mine

    def _consents_of(
        self, session: StoreSession, patient_ids: Iterable[str]
    ) -> dict[str, list[ParsedConsent] | None]:
        """The patients' active Consents, parsed, read once per request (never across requests,
        so a revocation bites on the very next one), with those whose patient could not be read
        (they deny for every patient of their recorder); None for a patient with more than
        ``READ_LIMIT`` (nothing of theirs is released)."""
        missing = sorted({p for p in patient_ids if p not in self._consents})
        for start in range(0, len(missing), CONSENT_PATIENTS_PER_QUERY):
            chunk = missing[start : start + CONSENT_PATIENTS_PER_QUERY]
            found: dict[str, list[ParsedConsent]] = {p: [] for p in chunk}
            wild: list[ParsedConsent] = []
            of_patients = Clause(
                CONSENT_PATIENT,
                Kind.REFERENCE,
                None,
                criteria=tuple(ReferenceCriterion("Patient", p) for p in [*chunk, ANY_PATIENT]),
            )
            # By patient only: a status clause made the planner walk every active Consent of
            # the network (4 ms a read with 1,000 survivors); the few inactive ones a patient
            # has are dropped by the engine, which counts only active Consents.
            query = SearchQuery(
                "Consent", (of_patients,), count=MAX_CONSENTS_READ, with_total=False
            )
            read = 0
            while read <= READ_LIMIT:
                page = session.search(query)
                for stored in page.matches:
                    parsed = parse_consent(orjson.loads(stored.body), recorder=stored.contributor)
                    held = found.get(parsed.patient_id or "")
                    if held is not None:
                        held.append(parsed)
                    elif parsed.any_patient:
                        wild.append(parsed)
                read += len(page.matches)
                if page.next_cursor is None:
                    break
                query = replace(query, cursor=Cursor.decode(page.next_cursor))
            for patient_id, held in found.items():
                self._consents[patient_id] = None if read > READ_LIMIT else [*held, *wild]
        return {p: self._consents[p] for p in patient_ids}

    # -- reading ----------------------------------------------------------------------------

    def _missing(
        self, interaction: str, resource_type: str, resource_id: str, found: Found
    ) -> NoReturn:
        """Audit the refusal of a record not shown and raise the one absent answer. Absent or
        hidden, the event has one shape: the record asked for (``entity``, which is how the
        review finds who probed a survivor's records) and the rule, never the hidden record's
        patient, which an absent id has none of: an event naming her would cost more to write,
        and the refusal would answer slower than an absence."""
        self._refused(
            interaction,
            resource_type,
            found.decision.rule,
            target=f"{resource_type}/{resource_id}",
        )
        raise not_found(resource_type, resource_id)

    def read(self, resource_type: str, resource_id: str) -> StoredResource:
        self._allow(resource_type, "read")
        found = self._find(resource_type, resource_id)
        if found.shown is None or found.located is None:
            self._missing("read", resource_type, resource_id, found)
        if found.located.deleted:  # 410 only for a requester that could see it
            raise Gone(f"Resource {resource_type}/{resource_id} was deleted")
        self._trail.add(
            Activity(
                "read",
                resource_type,
                disclosed=(self._disclosed(found.located.live, found.decision),),
            )
        )
        return self._linked([found.shown])[0] if resource_type == "Patient" else found.shown

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> StoredResource:
        self._allow(resource_type, "read")
        found = self._find(resource_type, resource_id)
        if found.shown is None:  # before the version is looked up: hidden costs what absent does
            self._missing("vread", resource_type, resource_id, found)
        try:
            version = self._raw.vread(resource_type, resource_id, version_id)
        except Gone:  # a deletion, of a record it could see
            raise Gone(
                f"Version {version_id} of {resource_type}/{resource_id} is a deletion"
            ) from None
        except NotFound:
            self._missing("vread", resource_type, resource_id, replace(found, decision=NO_VERSION))
        released, decision = self._release_version(version, found)
        if released is None:
            self._missing("vread", resource_type, resource_id, replace(found, decision=decision))
        self._trail.add(
            Activity("vread", resource_type, disclosed=(self._disclosed(version, decision),))
        )
        return released

    def _release_version(
        self, version: StoredResource, found: Found
    ) -> tuple[StoredResource | None, Decision]:
        """An older version, given that the newest (``found``) is released: released only when
        it is itself released too (older versions follow the newest, never widen it)."""
        if version.version_id == found.live_version:
            return found.shown, found.decision
        if found.own or found.decision is DIRECTORY:
            return version, found.decision
        doc = orjson.loads(version.body)
        decision = self._decide_doc(self._raw, version, doc)
        return (_redacted(version, decision, doc) if decision.permit else None), decision

    def history(
        self,
        resource_type: str,
        resource_id: str,
        *,
        count: int,
        since: datetime | None = None,
        before_version: int | None = None,
    ) -> HistoryPage:
        self._allow(resource_type, "read")
        found = self._find(resource_type, resource_id)
        if found.shown is None:
            self._missing("history-instance", resource_type, resource_id, found)
        page = self._raw.history(
            resource_type, resource_id, count=count, since=since, before_version=before_version
        )
        shown = []
        disclosed = []
        for version in page.versions:
            if version.deleted:
                shown.append(version)
                continue
            released, decision = self._release_version(version, found)
            if released is not None:
                shown.append(released)
                disclosed.append(self._disclosed(version, decision))
        self._trail.add(Activity("history-instance", resource_type, disclosed=tuple(disclosed)))
        return replace(page, versions=shown)

    def search(self, query: SearchQuery) -> SearchPage:
        self._allow(query.resource_type, "search")
        if query.held_only:  # a conditional create's lookup: it answers with the record
            self._allow(query.resource_type, "create")
        for include in (*query.includes, *query.revincludes):
            self._allow(include.source_type, "search")
        included_types = {i.target_type for i in query.includes if i.target_type}
        for target in included_types:
            self._allow(target, "read")
        query = self._opened(query)
        decisions: dict[tuple[str, str], Decision] = {}
        visibility = replace(self._visibility, reach=self._reach(query, decisions))
        page = self._raw.search(replace(query, visible_to=visibility))
        matches = [_redacted(r, decisions.get(r.key)) for r in page.matches]
        # An _include without a target type may reach any type: keep only what scopes allow,
        # and only what the references of the records *as shown* lead to (a reference that
        # redaction removed, e.g. a LOCIS-labelled performer, leads nowhere).
        reached = _included_keys(query, matches)
        match_keys = {m.key for m in matches}
        pairs = [
            (r, shown)
            for r in page.included
            if self._grant.allows(r.resource_type, "read")
            and _still_included(
                query, reached, match_keys, shown := _redacted(r, decisions.get(r.key))
            )
        ]
        included = [r for r, _ in pairs]
        # A conditional create's lookup that matched answers with the record it found: that is
        # a disclosure (to its holder) like any read; one that matched nothing discloses nothing.
        if not query.held_only or page.matches:
            self._trail.add(
                Activity(
                    "search-type",
                    query.resource_type,
                    disclosed=tuple(
                        self._disclosed(r, self._decision_of(r, decisions), included=r is not m)
                        for r, m in (*((r, r) for r in page.matches),
                                     *((r, None) for r in included))
                    ),
                    query=urlencode(query.echo),
                    target_patient=_pinned_patient(query),
                )
            )  # fmt: skip
        included = [shown for _, shown in pairs]
        if any(r.resource_type == "Patient" for r in (*matches, *included)):
            linked = iter(self._linked([*matches, *included]))
            matches = [next(linked) for _ in matches]
            included = list(linked)
        return replace(
            page,
            matches=matches,
            included=included,
            next_cursor=self._sealed(query, page.next_cursor),
            prev_cursor=self._sealed(query, page.prev_cursor),
        )

    # -- paging tokens ----------------------------------------------------------------------

    def _binding(self, query: SearchQuery) -> bytes:
        return orjson.dumps([self._requester.partner_id, query.resource_type, sorted(query.echo)])

    def _sealed(self, query: SearchQuery, position: str | None) -> str | None:
        if position is None or self._rules is None:
            return position
        return self._rules.paging.seal(position, self._binding(query))

    def _opened(self, query: SearchQuery) -> SearchQuery:
        """The query with the client's sealed ``_cursor`` opened into a position."""
        if query.cursor_token is None:
            return query
        token = query.cursor_token
        if self._rules is not None:
            token = self._rules.paging.open(token, self._binding(query))
        return replace(query, cursor=Cursor.decode(token, query.sort), cursor_token=None)

    # -- links between one person's records -------------------------------------------------

    def _linked(self, shown: list[StoredResource]) -> list[StoredResource]:
        """Patients as shown, each linked (``link``, type ``seealso``) to the other Patients of
        the same person that the requester may see: those sharing a value of one of the
        network's person identifier systems. The lookup is a search under this requester's own
        visibility (its records, and what consent releases to it, narrowed in the store), so a
        Patient it may not see is neither linked nor even looked at: holding a person costs
        another partner's search nothing. One lookup for the whole page."""
        rules = self._rules
        systems = rules.policy.person_identifier_systems if rules else frozenset()
        pairs: dict[int, set[tuple[str, str]]] = {}
        for n, r in enumerate(shown):
            if r.resource_type == "Patient" and any(s.encode() in r.body for s in systems):
                pairs[n] = _person_identifiers(r, systems)
        wanted = sorted(set().union(*pairs.values())) if pairs else []
        if not wanted or rules is None or self._actor is None:
            return shown
        same_person = Clause(
            "identifier", Kind.TOKEN, None, criteria=tuple(TokenCriterion(s, v) for s, v in wanted)
        )
        query = SearchQuery("Patient", (same_person,), count=MAX_LINKED, with_total=False)
        reach = ConsentReach(
            self._actor, frozenset(rules.policy.directory_types), self._release(query, {})
        )
        found = self._raw.search(replace(query, visible_to=replace(self._visibility, reach=reach)))
        out = list(shown)
        for n, mine in pairs.items():
            links = [
                other.id
                for other in found.matches
                if other.id != shown[n].id and mine & _person_identifiers(other, systems)
            ]
            if links:
                out[n] = _with_links(shown[n], list(dict.fromkeys(links)))
        return out

    # -- consent in search ------------------------------------------------------------------

    def _reach(
        self, query: SearchQuery, decisions: dict[tuple[str, str], Decision]
    ) -> ConsentReach | None:
        """How far past its own records this search may see: the records ``decide`` releases
        (each Decision kept in ``decisions`` for redaction). None for a conditional create's
        lookup (``held_only``: a partner matches only records it holds) and without rules."""
        rules = self._rules
        if rules is None or query.held_only or self._actor is None:
            return None
        if any(c.missing is not None for c in query.clauses):
            # Whether an element is there at all is itself withheld when redaction removes it:
            # a :missing search matches only what the requester holds.
            return None
        clauses = _through_person_identifiers(query, rules.policy.person_identifier_systems)
        if clauses is None:
            return None
        open_types = set(rules.policy.directory_types)
        if _pinned_patient(query) is not None or _pins_one_patient(query):
            # Break-glass reaches one survivor's record at a time, never a whole population.
            for rule in rules.policy.emergency:
                if self._requester.kind in rule.partner_kinds and not rule.purposes.isdisjoint(
                    self._requester.purpose_of_use
                ):
                    open_types |= rule.resource_types
        release = self._release(query, decisions)
        return ConsentReach(self._actor, frozenset(open_types), release, clauses)

    def _release(self, query: SearchQuery, decisions: dict[tuple[str, str], Decision]) -> Release:
        """The store's callback: which of these candidates ``decide`` releases to this
        requester, each decided once per ``decision_key``, and only those that still match the
        query as the requester would be shown them."""
        rules = self._rules
        assert rules is not None
        request = self._access("search")
        now = rules.clock.now()
        content = [c for c in query.clauses if c.name not in RECORD_CLAUSES]
        # Break-glass reaches one survivor at a time: only her records (a Patient found by one
        # full person identifier, or the records of the Patient the search names), never a
        # population, and never through an _include or _revinclude of another record.
        pinned = _pinned_patient(query)
        by_identifier = _pins_one_patient(query)

        def release(session: StoreSession, found: Sequence[Candidate]) -> set[tuple[str, str]]:
            patients = [patient_from_index(c.resource_type, c.id, c.entries) for c in found]
            consents = self._consents_of(session, {p for p in patients if p})
            facets = {p: facets_examined(held or ()) for p, held in consents.items()}
            decided: dict[tuple[object, ...], Decision] = {}
            released: set[tuple[str, str]] = set()
            for candidate, patient_id in zip(found, patients, strict=True):
                held = consents[patient_id] if patient_id else []
                if held is None:
                    continue  # too many Consents to read them all: nothing is released
                key = decision_key(
                    candidate.resource_type,
                    candidate.id,
                    candidate.contributor,
                    candidate.entries,
                    facets.get(patient_id or "", frozenset()),
                )
                decision = decided.get(key)
                if decision is None:
                    mine = [c for c in held if c.recorder == candidate.contributor]
                    if len(mine) > MAX_CONSENTS_READ:
                        decision = TOO_MANY
                    else:
                        fact = facts_from_index(
                            candidate.resource_type,
                            candidate.id,
                            candidate.entries,
                            contributor=candidate.contributor,
                            contributor_kind=rules.partner_kinds.get(candidate.contributor or ""),
                        )
                        decision = decide(request, fact, mine, rules.policy, now)
                    decided[key] = decision
                if not decision.permit:
                    continue
                if decision.break_glass and not (
                    (pinned is not None and patient_id == pinned)
                    or (by_identifier and candidate.resource_type == query.resource_type)
                ):
                    continue
                if not _shown_matches(session, candidate, decision.obligations, content):
                    continue
                released.add(candidate.key)
                decisions[candidate.key] = decision
            return released

        return release

    # -- explaining -------------------------------------------------------------------------

    def explain(
        self, partner_id: str, resource_type: str, resource_id: str, purposes: tuple[str, ...]
    ) -> Decision:
        """``Consent/$explain``: what ``decide`` answers for another partner, and why. For the
        compliance and admin kinds, with the scopes to read the type (refused as a read is
        otherwise); it discloses the decision, never the record."""
        self._allow(resource_type, "read")
        if self._requester.kind not in EXPLAINERS or self._rules is None:
            self._refused("operation", resource_type, "not-an-explainer")
            raise Forbidden("$explain is for compliance and administration")
        kind = self._rules.partner_kinds.get(partner_id)
        if kind is None:
            raise NotFound("no such partner")
        located = self._raw.locate(resource_type, resource_id)
        if located is None:
            target = f"{resource_type}/{resource_id}"
            self._refused("operation", resource_type, "not-found", target=target)
            raise not_found(resource_type, resource_id)
        if located.deleted:
            raise Gone(f"Resource {resource_type}/{resource_id} was deleted")
        other = _requester(partner_id, kind, self._rules, purposes)
        doc = orjson.loads(located.live.body)
        self._trail.add(
            Activity(
                "operation",
                resource_type,
                target=located.live.reference,
                target_patient=patient_of(doc),
                subtypes=("consent-explain",),
            )
        )
        if other.partner_id == located.contributor:
            return CONTRIBUTOR
        return self._decide_doc(self._raw, located.live, doc, request=self._access("read", other))

    # -- writing ----------------------------------------------------------------------------

    def _check_consent_write(
        self, resource: dict[str, Any], interaction: str, batch: frozenset[str] = frozenset()
    ) -> None:
        """A Consent is its recorder's release of its own records: recorded by the advocates of
        the kinds the policy names, for a Patient the recorder contributed itself (anything
        else is refused alike: another partner's Patient, an absent one, an identifier or a
        foreign reference), pointing at the signed form when the policy requires it.
        ``batch``: ids of Patients the same batch writes as the requester's (each checked to
        be new or the requester's before anything is written)."""
        if resource.get("resourceType") != "Consent":
            return
        self._consents.clear()  # a later read in this unit of work must see the change
        if self._rules is None:
            return
        policy = self._rules.policy
        if self._requester.kind not in policy.consent_writers:
            self._refused(interaction, "Consent", "consent-writing:kind-may-not-record")
            raise Forbidden("this partner may not record Consents")
        patient = resource.get("patient")
        ref = parse_local(patient.get("reference")) if isinstance(patient, dict) else None
        held = None
        if ref is not None and ref.resource_type == "Patient" and ref.version is None:
            if ref.id in batch:
                self._check_consent_source(resource, interaction)
                return
            held = self._raw.locate("Patient", ref.id)
        if held is None or held.deleted or held.contributor != self._requester.partner_id:
            self._refused(interaction, "Consent", "consent-writing:patient-not-held")
            raise NotFound(
                "Consent.patient names no Patient this partner holds",
                issues=[
                    Issue(
                        "not-found",
                        "Consent.patient must reference a Patient this partner contributed",
                        expression=("Consent.patient",),
                    )
                ],
            )
        self._check_consent_source(resource, interaction)

    def _check_consent_source(self, resource: dict[str, Any], interaction: str) -> None:
        policy = self._rules.policy if self._rules is not None else None
        written = resource.get("sourceAttachment") or resource.get("sourceReference")
        if policy is not None and policy.consent_needs_written_source and not written:
            self._refused(interaction, "Consent", "consent-writing:no-signed-form")
            raise Unprocessable(
                "a Consent must point at the signed form",
                issues=[
                    Issue(
                        "required",
                        "a Consent must carry sourceAttachment or sourceReference",
                        expression=("Consent.sourceAttachment", "Consent.sourceReference"),
                    )
                ],
            )

    def _require_own(self, resource_type: str, resource_id: str, interaction: str) -> Found:
        """A record is changed only by the partner that contributed it. One the requester cannot
        see (or that does not exist: nothing is created under a client's id) is answered as
        absent; one it can see (a directory entry, a consented record) but did not contribute
        is refused."""
        found = self._find(resource_type, resource_id)
        if found.own:
            return found
        if found.shown is None:
            self._missing(interaction, resource_type, resource_id, found)
        self._refused(
            interaction,
            resource_type,
            "only-the-contributor-changes-a-record",
            target=f"{resource_type}/{resource_id}",
            patient=found.patient,
        )
        raise Forbidden("a record is changed only by the partner that contributed it")

    def create(self, resource: Checked, *, resource_id: str | None = None) -> StoredResource:
        """A new record, contributed by the requester (a partner cannot write in another's
        name), labelled for its kind; under ``resource_id`` when the gateway chose one."""
        self._allow(resource.resource_type, "create")
        self._check_consent_write(resource.doc, "create")
        stored = self._raw.create(self._admitted(resource), resource_id=resource_id)
        self._wrote("create", stored)
        return stored

    def _admitted(self, resource: Checked) -> ValidResource:
        return admit(
            resource,
            contributor=self._requester.partner_id,
            contributor_kind=self._requester.kind,
            labels=self._labels,
        )

    def _wrote(
        self, interaction: str, stored: StoredResource, *, patient: str | None = None
    ) -> None:
        subtypes: tuple[str, ...] = ()
        if stored.resource_type == "Consent":
            revoked = interaction == "delete" or (
                stored.body and orjson.loads(stored.body).get("status") != "active"
            )
            subtypes = ("consent-revoke",) if revoked else (f"consent-{interaction}",)
        written = self._disclosed(stored, CONTRIBUTOR)
        if patient is not None:
            written = replace(written, patient_id=patient)
        self._trail.add(
            Activity(interaction, stored.resource_type, disclosed=(written,), subtypes=subtypes)
        )

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: Checked,
        *,
        if_match: int | None,
    ) -> tuple[StoredResource, bool]:
        self._allow(resource_type, "update")
        self._require_own(resource_type, resource_id, "update")
        self._check_consent_write(resource.doc, "update")
        stored, created = self._raw.update(
            resource_type, resource_id, self._admitted(resource), if_match=if_match
        )
        self._wrote("create" if created else "update", stored)
        return stored, created

    def delete(self, resource_type: str, resource_id: str) -> StoredResource | None:
        self._allow(resource_type, "delete")
        found = self._require_own(resource_type, resource_id, "delete")
        if resource_type == "Consent":
            self._consents.clear()
        assert found.located is not None
        # The marker has no body: the event names the patient of what was deleted.
        patient = patient_of(orjson.loads(found.located.live.body))
        marker = self._raw.delete(resource_type, resource_id)
        if marker is not None:
            self._wrote("delete", marker, patient=patient)
        return marker

    def write_many(self, resources: Sequence[Checked]) -> list[StoredResource]:
        """The batch path (ingest): each resource either without an id (created under a fresh
        one), or under an id the gateway chose (ingest's stable ids): created when absent,
        a new version when the requester contributed it, refused otherwise (a record it may
        not see is answered as absent would be to a door: here, by refusing the batch)."""
        patients = frozenset(
            r.id for r in resources if r.resource_type == "Patient" and r.id is not None
        )
        # The ids are the gateway's (ingest's ledger), never a partner's guess, so the heads
        # alone say whether the records are the requester's: only a record of another takes
        # the refusal path (audited, answered as a door would).
        owners = self._raw.contributors([(r.resource_type, r.id) for r in resources if r.id])
        for resource in resources:
            interaction = "update" if resource.id else "create"
            self._allow(resource.resource_type, interaction)
            if resource.id:
                key = (resource.resource_type, resource.id)
                if key in owners and owners[key] != self._requester.partner_id:
                    self._require_own(resource.resource_type, resource.id, "update")
            self._check_consent_write(resource.doc, interaction, patients)
        written = self._raw.write_many([self._admitted(r) for r in resources])
        for stored in written:
            self._wrote("update" if stored.version_id > 1 else "create", stored)
        return written

    def locate(self, resource_type: str, resource_id: str) -> Located | None:
        """What a caller outside this class may learn of a record by id: only as ``read`` would
        show it (the raw head is never handed out)."""
        found = self._find(resource_type, resource_id)
        if found.shown is None or found.located is None:
            return None
        return replace(found.located, live=found.shown)

    def contributors(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str | None]:
        raise Forbidden("record heads are internal to the consent layer")

    def consent_probe(self, patient_id: str, *, recorder: str, actor: tuple[str, str]) -> bool:
        raise Forbidden("the consent probe is internal to the consent layer")

    def serialize(self, key: str) -> None:
        self._raw.serialize(key)


# Appends a unit of work's audit events inside its open transaction; what to run after commit.
CommitAudit = Callable[["StoreSession", list[Activity]], Callable[[], None] | None]


class ConsentedStore(ConsentedSession):
    """The per-request store. Its writes run as units of work; with ``commit_audit`` set (the
    REST layer sets it), each unit's audit events are appended in the unit's own transaction,
    so a write and its event commit together or not at all."""

    def __init__(
        self,
        raw: UnitOfWorkStore,
        requester: Requester,
        rules: ConsentRules | None = None,
        trail: AuditTrail | None = None,
        commit_audit: CommitAudit | None = None,
    ) -> None:
        super().__init__(raw, requester, rules, trail)
        self._store = raw
        self.commit_audit = commit_audit

    @property
    def trail(self) -> AuditTrail:
        return self._trail

    @contextmanager
    def transaction(self) -> Iterator[ConsentedSession]:
        """A unit of work bound to the same requester: a Bundle cannot read around consent.
        Its activities (and any still pending before it) are audited in its transaction; when
        it fails, what it recorded as done is dropped (it was rolled back) and its refusals
        stay, to be audited after it."""
        trail = self._trail
        mark = len(trail.activities)
        after: Callable[[], None] | None = None
        audited = 0
        try:
            with self._store.transaction() as session:
                yield ConsentedSession(session, self._requester, self._rules, trail)
                if self.commit_audit is not None and trail.pending():
                    audited = len(trail.activities)
                    after = self.commit_audit(session, trail.pending())
        except BaseException:
            trail.activities[mark:] = [a for a in trail.activities[mark:] if a.outcome == REFUSED]
            raise
        if audited:
            trail.committed = audited
        if after is not None:
            after()

    # Writes are units of work of their own, so that each commits with its audit event.

    def create(self, resource: Checked, *, resource_id: str | None = None) -> StoredResource:
        with self.transaction() as unit:
            return unit.create(resource, resource_id=resource_id)

    def update(
        self,
        resource_type: str,
        resource_id: str,
        resource: Checked,
        *,
        if_match: int | None,
    ) -> tuple[StoredResource, bool]:
        with self.transaction() as unit:
            return unit.update(resource_type, resource_id, resource, if_match=if_match)

    def delete(self, resource_type: str, resource_id: str) -> StoredResource | None:
        with self.transaction() as unit:
            return unit.delete(resource_type, resource_id)

    def write_many(self, resources: Sequence[Checked]) -> list[StoredResource]:
        with self.transaction() as unit:
            return unit.write_many(resources)


def _requester(
    partner_id: str, kind: str, rules: ConsentRules, purposes: tuple[str, ...]
) -> Requester:
    from gateway.access.requester import Requester

    organization = rules.partner_organizations.get(partner_id, f"Organization/{partner_id}")
    return Requester(partner_id, kind, organization, (), purposes)


def _redacted(
    stored: StoredResource, decision: Decision | None, doc: dict[str, Any] | None = None
) -> StoredResource:
    """The version with the decision's obligations applied (unchanged when none could change
    it: most releases, so the body is not parsed and copied for nothing)."""
    if decision is None or not any(may_change(stored.body, o) for o in decision.obligations):
        return stored
    body = doc if doc is not None else orjson.loads(stored.body)
    return replace(stored, body=canonical(redact(body, decision.obligations)))


def _touches(obligation: Obligation, clause: Clause, resource_type: str, inline: bool) -> bool:
    """Whether redacting under ``obligation`` could remove a value ``clause`` reads."""
    if obligation.action == "remove-labelled":
        return inline
    param = lookup(resource_type, clause.name)
    paths = param.paths if param is not None else ()
    if obligation.action == "keep-identifiers":
        return any(p == "identifier" or p.startswith("identifier.") for p in paths)
    if obligation.action == "remove":
        return any(
            p == e or p.startswith(f"{e}.") or e.startswith(f"{p}.")
            for p in paths
            for e in obligation.elements
        )
    return False  # notice: adds labels, removes nothing


def _shown_matches(
    session: StoreSession,
    candidate: Candidate,
    obligations: Sequence[Obligation],
    clauses: Sequence[Clause],
) -> bool:
    """Whether a released record still meets the query's clauses as the recipient would be
    shown it: a value only in an element its redaction removes never matches. Decrypted only
    when an obligation could remove something a clause reads."""
    inline = any(e.param == INLINE_LABEL_PARAM for e in candidate.entries)
    affected = [
        c
        for c in clauses
        if any(_touches(o, c, candidate.resource_type, inline) for o in obligations)
    ]
    if not affected:
        return True
    stored = session.read(candidate.resource_type, candidate.id)
    shown = orjson.loads(_redacted(stored, Decision(True, "", None, None, tuple(obligations))).body)
    entries = extract(shown)
    return all(clause_matches(c, entries) for c in affected)


def _references(stored: StoredResource, params: Iterable[str]) -> set[tuple[str, str, str]]:
    """(parameter, type, id) a record *as shown* points at through these reference
    parameters: one extraction of the shown body, whatever the number of parameters."""
    wanted = frozenset(params)
    if not wanted:
        return set()
    return {
        (e.param, e.ref_type, e.ref_id)
        for e in extract(orjson.loads(stored.body))
        if e.param in wanted and e.ref_type is not None and e.ref_id is not None
    }


def _included_keys(query: SearchQuery, matches: Sequence[StoredResource]) -> set[tuple[str, str]]:
    """The records the page's matches, as shown, point at through the query's ``_include``s
    (each match's shown body read once)."""
    targets: dict[str, set[str | None]] = {}
    for inc in query.includes:
        targets.setdefault(inc.param, set()).add(inc.target_type)
    out: set[tuple[str, str]] = set()
    for match in matches:
        for param, ref_type, ref_id in _references(match, targets):
            if None in targets[param] or ref_type in targets[param]:
                out.add((ref_type, ref_id))
    return out


def _still_included(
    query: SearchQuery,
    reached: set[tuple[str, str]],
    match_keys: set[tuple[str, str]],
    included: StoredResource,
) -> bool:
    """Whether an included record is reached by the references of the page as shown: a
    forward include through a reference a match still carries (``reached``), or a reverse
    include whose own shown reference still names a match."""
    if included.key in reached:
        return True
    params = [inc.param for inc in query.revincludes if inc.source_type == included.resource_type]
    return any((t, i) in match_keys for _, t, i in _references(included, params))


PATIENT_PARAMS = frozenset({"patient", "subject"})


def _pinned_patient(query: SearchQuery) -> str | None:
    """The one survivor a search names (a Patient by one ``_id``, another type by one
    ``patient``/``subject`` reference to a Patient): the audit attributes the search to her,
    even when it finds nothing."""
    for clause in query.clauses:
        if query.resource_type == "Patient":
            if clause.name == "_id" and len(clause.ids) == 1:
                return clause.ids[0]
        elif clause.name in PATIENT_PARAMS and len(clause.criteria) == 1:
            (ref,) = clause.criteria
            if isinstance(ref, ReferenceCriterion) and ref.ref_type in (None, "Patient"):
                return ref.ref_id
    return None


def _pins_one_patient(query: SearchQuery) -> bool:
    """Whether the search names one survivor by something else than her id: a Patient by one
    full person identifier."""
    if query.resource_type != "Patient":
        return False
    for clause in query.clauses:
        if clause.name == "identifier" and len(clause.criteria) == 1:
            (token,) = clause.criteria
            if isinstance(token, TokenCriterion) and token.system and token.code:
                return True
    return False


MAX_LINKED = 50  # Patients sharing one person identifier; more is a data error, not a person


def _person_identifiers(stored: StoredResource, systems: frozenset[str]) -> set[tuple[str, str]]:
    identifiers = orjson.loads(stored.body).get("identifier")
    return {
        (i["system"], i["value"])
        for i in (identifiers if isinstance(identifiers, list) else ())
        if isinstance(i, dict)
        and i.get("system") in systems
        and isinstance(i.get("value"), str)
        and i["value"]
    }


def _with_links(stored: StoredResource, patient_ids: list[str]) -> StoredResource:
    doc = orjson.loads(stored.body)
    links = [link for link in doc.get("link") or () if isinstance(link, dict)]
    present = {(link.get("other") or {}).get("reference") for link in links}
    for patient_id in patient_ids:
        if f"Patient/{patient_id}" not in present:
            links.append({"other": {"reference": f"Patient/{patient_id}"}, "type": "seealso"})
    doc["link"] = links
    return replace(stored, body=canonical(doc))


def _through_person_identifiers(
    query: SearchQuery, systems: frozenset[str]
) -> tuple[Clause, ...] | None:
    """What an ``identifier`` search must also meet to match another partner's record: a person
    identifier (the only identifiers it is shown; matching on a withheld one would confirm
    it). None when no record of another partner can match."""
    extra: list[Clause] = []
    for clause in query.clauses:
        if clause.name != "identifier":
            continue
        if clause.missing is not None:
            return None  # whether a withheld identifier is there is itself withheld
        kept: list[TokenCriterion] = []
        for c in clause.criteria:
            if not isinstance(c, TokenCriterion):
                continue
            if c.system is None:
                kept.extend(TokenCriterion(s, c.code) for s in sorted(systems))
            elif c.system in systems:
                kept.append(c)
        if not kept:
            return None
        extra.append(replace(clause, criteria=tuple(kept)))
    return tuple(extra)


class StoreAccess:
    """The raw store, held for the requests of one app: a route is handed
    ``for_requester(requester)``, a ``ConsentedStore`` bound to who asks, and never the raw
    store itself (DESIGN, "one read path"; ``make lint`` keeps ``disclose`` from importing the
    store's implementations). Only the composition root (``gateway.app``) reaches the raw store,
    for start-up, readiness and administration."""

    __slots__ = ("_raw", "rules")

    def __init__(self, raw: ResourceStore, rules: ConsentRules | None) -> None:
        self._raw = raw
        self.rules = rules

    def for_requester(self, requester: Requester) -> ConsentedStore:
        return ConsentedStore(self._raw, requester, self.rules)
