"""``ConsentedStore``: the only store a request is handed (``deps.request_store``). It binds the
raw store to one requester, so that no route can read around it (DESIGN section 4, "One read
path").

What it enforces today:
- **Scopes**: the token's SMART scopes must cover the type and interaction (403 otherwise; a
  statement about the token, never about data).
- **The rules that need no Consent**: a partner sees, changes and deletes the records it
  contributed, and every partner sees the gateway's own directory entries (Organizations);
  everything else is absent: a read answers 404 with the same body as a true 404, a search
  neither returns nor counts it, ``_include`` does not pull it in. The filter runs inside the
  store (``SearchQuery.visible_to``, a ``Visibility``), so totals and paging count only visible
  resources.
- **Attribution**: every write records the requester as contributor of what it creates.
- **Labels at write time**: ``consent.labels.labels_for`` adds the sensitivity labels the code
  tables call for (SUD → ETH, mental health → PSY, violence and trafficking → SDV, shelter
  locations → LOCIS) and raises confidentiality for shelter data, keeping the writer's own.

- **Consent on reads by id** (read, vread, history): another partner's record is released when
  ``consent.engine.decide`` permits it for this requester, its purposes of use and the
  patient's Consents *as they are now* (looked up afresh for every request: a revocation takes
  effect on the very next one), and then only as ``consent.redact`` leaves it. Anything else is
  absent, with the same 404 as a record that does not exist.

- **Consent in search** (matches, ``_include``, ``_revinclude``, Bundles): the store hands
  the records of other partners that consent might release (``ConsentReach``: patients with an
  active Consent naming the requester, break-glass types when the search names one survivor)
  to ``decide``, from their index facts and without decrypting them, *before* it counts and
  pages; so totals count only what may be seen and every page but the last is full. Released
  records are then redacted like reads by id. A conditional create matches only what the
  requester holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import orjson

from gateway.audit.events import REFUSED, Activity, Disclosed
from gateway.audit.trail import AuditTrail
from gateway.clock import Clock
from gateway.consent.engine import (
    AccessRequest,
    Decision,
    ResourceFacts,
    decide,
    decision_key,
    facets_examined,
    facts_from_index,
    facts_from_resource,
    patient_from_index,
    patient_of,
)
from gateway.consent.labels import LabelTables, labels_for
from gateway.consent.model import ParsedConsent, parse_consent
from gateway.consent.policy import Policy
from gateway.consent.redact import may_change, redact
from gateway.disclose.scopes import ScopeGrant
from gateway.errors import Forbidden, Gone, Issue, NotFound, Unprocessable, not_found
from gateway.store.port import (
    HistoryPage,
    SearchPage,
    StoredResource,
    StoreSession,
    UnitOfWorkStore,
)
from gateway.store.query import (
    Candidate,
    Clause,
    ConsentReach,
    Cursor,
    ReferenceCriterion,
    SearchQuery,
    TokenCriterion,
    Visibility,
    parse_search,
)
from gateway.store.records import canonical
from gateway.store.searchparams import Kind

# More Consents than this on one survivor is not a realistic case; should it happen, nothing of
# theirs is released (a Consent left unread could be the deny that matters).
MAX_CONSENTS_READ = 500
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

if TYPE_CHECKING:
    from gateway.disclose.deps import Requester


@dataclass(frozen=True, slots=True)
class ConsentRules:
    """What consent decisions need besides the data: built once per app."""

    policy: Policy
    clock: Clock
    partner_kinds: Mapping[str, str] = field(default_factory=dict)  # partner id -> kind
    labels: LabelTables | None = None
    # partner id -> "Organization/<id>" when it differs from the partner id
    partner_organizations: Mapping[str, str] = field(default_factory=dict)


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
        target: StoredResource | None = None,
    ) -> None:
        """Record a refusal (outcome 4) naming the rule, the record and its patient."""
        patient = patient_of(orjson.loads(target.body)) if target and target.body else None
        self._trail.add(
            Activity(
                interaction,
                resource_type,
                outcome=REFUSED,
                refusal=reason,
                target=target.reference if target else None,
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

    def _visible(self, stored: StoredResource) -> bool:
        return self._visibility.admits(stored.resource_type, stored.contributor)

    def _require_own(self, resource_type: str, resource_id: str, interaction: str) -> None:
        """A record is changed only by the partner that contributed it. One the requester cannot
        see is answered as if it were absent; one it can see (a directory entry, a consented
        record) but did not contribute is refused."""
        try:
            current = self._raw.read(resource_type, resource_id)
        except Gone:
            current = self._last_live(resource_type, resource_id)
        except NotFound:
            return
        if current.contributor == self._requester.partner_id:
            return
        released, decision = self._release_decided(current, "read")
        if released is None:
            self._refused(interaction, resource_type, decision.rule, current)
            raise not_found(resource_type, resource_id)
        self._refused(interaction, resource_type, "only-the-contributor-changes-a-record", current)
        raise Forbidden("a record is changed only by the partner that contributed it")

    def _check_consent_write(self, resource: dict[str, Any]) -> None:
        """Consents are recorded by the advocates of the kinds the policy names, and point at the
        signed form when the policy requires a written consent."""
        if resource.get("resourceType") != "Consent":
            return
        self._consents.clear()  # a later read in this unit of work must see the change
        if self._rules is None:
            return
        policy = self._rules.policy
        if self._requester.kind not in policy.consent_writers:
            self._refused("create", "Consent", "consent-writing:kind-may-not-record")
            raise Forbidden("this partner may not record Consents")
        written = resource.get("sourceAttachment") or resource.get("sourceReference")
        if policy.consent_needs_written_source and not written:
            self._refused("create", "Consent", "consent-writing:no-signed-form")
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

    def _labelled(self, resource: dict[str, Any]) -> dict[str, Any]:
        if self._labels is None:
            return resource
        security = labels_for(resource, contributor_kind=self._requester.kind, tables=self._labels)
        if not security:
            return resource
        return {**resource, "meta": {**(resource.get("meta") or {}), "security": security}}

    def _last_live(self, resource_type: str, resource_id: str) -> StoredResource:
        # A deletion marker carries the head's contributor, so it decides like the resource.
        return self._raw.history(resource_type, resource_id, count=1).versions[0]

    def _access(self, interaction: str) -> AccessRequest:
        return AccessRequest(
            partner_id=self._requester.partner_id,
            partner_kind=self._requester.kind,
            organization=self._requester.organization,
            purposes=self._requester.purpose_of_use,
            interaction=interaction,
        )

    def _release(self, stored: StoredResource, interaction: str) -> StoredResource | None:
        """The version as this requester may see it, or None when it may not see it at all."""
        return self._release_decided(stored, interaction)[0]

    def _release_decided(
        self, stored: StoredResource, interaction: str
    ) -> tuple[StoredResource | None, Decision]:
        """``_release``, and the decision behind it."""
        if self._visible(stored):
            return stored, self._own_decision(stored)
        if self._rules is None or stored.deleted:
            return None, NOT_RELEASED
        doc = orjson.loads(stored.body)
        decision = self._decide(self._access(interaction), stored, doc)
        if not decision.permit:
            return None, decision
        return _redacted(stored, decision, doc), decision

    def _own_decision(self, stored: StoredResource) -> Decision:
        return CONTRIBUTOR if stored.contributor == self._requester.partner_id else DIRECTORY

    def _decide(
        self, request: AccessRequest, stored: StoredResource, doc: dict[str, Any]
    ) -> Decision:
        assert self._rules is not None
        rules = self._rules
        facts = facts_from_resource(
            doc,
            contributor=stored.contributor,
            contributor_kind=rules.partner_kinds.get(stored.contributor or ""),
        )
        return self._decide_facts(self._raw, request, facts)

    def _decide_facts(
        self, session: StoreSession, request: AccessRequest, facts: ResourceFacts
    ) -> Decision:
        assert self._rules is not None
        consents: list[ParsedConsent] | None = []
        if facts.patient_id:
            consents = self._consents_of(session, [facts.patient_id])[facts.patient_id]
        if consents is None:
            return Decision(False, "too-many-consents", None, None)
        return decide(request, facts, consents, self._rules.policy, self._rules.clock.now())

    def explain(
        self, partner_id: str, resource_type: str, resource_id: str, purposes: tuple[str, ...]
    ) -> Decision:
        """``Consent/$explain``: what ``decide`` answers for another partner, and why. For the
        compliance and admin kinds only; it discloses the decision, never the record."""
        if self._requester.kind not in EXPLAINERS or self._rules is None:
            raise Forbidden("$explain is for compliance and administration")
        kind = self._rules.partner_kinds.get(partner_id)
        if kind is None:
            raise NotFound("no such partner")
        stored = self._raw.read(resource_type, resource_id)
        request = AccessRequest(
            partner_id=partner_id,
            partner_kind=kind,
            organization=self._rules.partner_organizations.get(
                partner_id, f"Organization/{partner_id}"
            ),
            purposes=purposes,
            interaction="read",
        )
        doc = orjson.loads(stored.body)
        self._trail.add(
            Activity(
                "operation",
                resource_type,
                target=stored.reference,
                target_patient=patient_of(doc),
                subtypes=("consent-explain",),
            )
        )
        return self._decide(request, stored, doc)

    def _consents_of(
        self, session: StoreSession, patient_ids: Iterable[str]
    ) -> dict[str, list[ParsedConsent] | None]:
        """The patients' Consents, parsed, read once per request (never across requests, so a
        revocation bites on the very next one); None for a patient with more than
        ``MAX_CONSENTS_READ`` (nothing of theirs is released)."""
        missing = sorted({p for p in patient_ids if p not in self._consents})
        for start in range(0, len(missing), CONSENT_PATIENTS_PER_QUERY):
            chunk = missing[start : start + CONSENT_PATIENTS_PER_QUERY]
            found: dict[str, list[ParsedConsent] | None] = {p: [] for p in chunk}
            refs = ",".join(f"Patient/{p}" for p in chunk)
            # Only an active Consent counts (engine rule 3), and nobody reads the total.
            criteria = [("patient", refs), ("status", "active"), ("_total", "none")]
            query = replace(parse_search("Consent", criteria), count=MAX_CONSENTS_READ)
            while True:
                page = session.search(query)
                for stored in page.matches:
                    parsed = parse_consent(orjson.loads(stored.body))
                    held = found.get(parsed.patient_id or "")
                    if held is not None:
                        held.append(parsed)
                if page.next_cursor is None:
                    break
                query = replace(query, cursor=Cursor.decode(page.next_cursor))
            for patient_id, held in found.items():
                too_many = held is not None and len(held) > MAX_CONSENTS_READ
                self._consents[patient_id] = None if too_many else held
        return {p: self._consents[p] for p in patient_ids}

    def _could_see(self, resource_type: str, resource_id: str) -> bool:
        """Whether the requester could see the resource before it was deleted."""
        versions = self._raw.history(resource_type, resource_id, count=2).versions
        if versions and versions[0].deleted and self._visible(versions[0]):
            return True
        live = [v for v in versions if not v.deleted]
        return bool(live) and self._release(live[0], "read") is not None

    # -- reading ----------------------------------------------------------------------------

    def read(self, resource_type: str, resource_id: str) -> StoredResource:
        self._allow(resource_type, "read")
        released = self._released(
            "read", resource_type, resource_id, lambda: self._raw.read(resource_type, resource_id)
        )
        return self._linked([released])[0] if resource_type == "Patient" else released

    def vread(self, resource_type: str, resource_id: str, version_id: int) -> StoredResource:
        self._allow(resource_type, "read")
        return self._released(
            "vread",
            resource_type,
            resource_id,
            lambda: self._raw.vread(resource_type, resource_id, version_id),
        )

    def _released(
        self,
        interaction: str,
        resource_type: str,
        resource_id: str,
        fetch: Callable[[], StoredResource],
    ) -> StoredResource:
        try:
            stored = fetch()
        except Gone:
            # 410 only for a requester that could see the resource; for anyone else, absent.
            if not self._could_see(resource_type, resource_id):
                raise not_found(resource_type, resource_id) from None
            raise
        released, decision = self._release_decided(stored, "read")
        if released is None:
            self._refused(interaction, resource_type, decision.rule, stored)
            raise not_found(resource_type, resource_id)
        self._trail.add(
            Activity(interaction, resource_type, disclosed=(self._disclosed(stored, decision),))
        )
        return released

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
        page = self._raw.history(
            resource_type, resource_id, count=count, since=since, before_version=before_version
        )
        if not self._could_see(resource_type, resource_id):
            self._refused("history-instance", resource_type, "not-visible")
            raise not_found(resource_type, resource_id)
        shown = []
        disclosed = []
        for version in page.versions:
            if version.deleted:
                shown.append(version)
                continue
            released, decision = self._release_decided(version, "history")
            if released is not None:
                shown.append(released)
                disclosed.append(self._disclosed(version, decision))
        self._trail.add(Activity("history-instance", resource_type, disclosed=tuple(disclosed)))
        return replace(page, versions=shown)

    def search(self, query: SearchQuery) -> SearchPage:
        self._allow(query.resource_type, "search")
        for include in (*query.includes, *query.revincludes):
            self._allow(include.source_type, "search")
        included_types = {i.target_type for i in query.includes if i.target_type}
        for target in included_types:
            self._allow(target, "read")
        decisions: dict[tuple[str, str], Decision] = {}
        visibility = replace(self._visibility, reach=self._reach(query, decisions))
        page = self._raw.search(replace(query, visible_to=visibility))
        # An _include without a target type may reach any type: keep only what scopes allow.
        included = [r for r in page.included if self._grant.allows(r.resource_type, "read")]
        if not query.held_only:  # a conditional create's lookup discloses nothing
            self._trail.add(
                Activity(
                    "search-type",
                    query.resource_type,
                    disclosed=tuple(
                        self._disclosed(r, decisions.get(r.key) or self._own_decision(r),
                                        included=r is not m)
                        for r, m in (*((r, r) for r in page.matches),
                                     *((r, None) for r in included))
                    ),
                    query=urlencode(query.echo),
                )
            )  # fmt: skip
        matches = [_redacted(r, decisions.get(r.key)) for r in page.matches]
        included = [_redacted(r, decisions.get(r.key)) for r in included]
        if any(r.resource_type == "Patient" for r in (*matches, *included)):
            linked = iter(self._linked([*matches, *included]))
            matches = [next(linked) for _ in matches]
            included = list(linked)
        return replace(page, matches=matches, included=included)

    def _linked(self, shown: list[StoredResource]) -> list[StoredResource]:
        """Patients as shown, each linked (``link``, type ``seealso``) to the other Patients of
        the same person that the requester may see: those sharing a value of one of the
        network's person identifier systems. A Patient it may not see is not linked (it does
        not exist for the requester). One lookup for the whole page."""
        systems = self._rules.policy.person_identifier_systems if self._rules else frozenset()
        pairs: dict[int, set[tuple[str, str]]] = {}
        for n, r in enumerate(shown):
            if r.resource_type == "Patient" and any(s.encode() in r.body for s in systems):
                pairs[n] = _person_identifiers(r, systems)
        wanted = sorted(set().union(*pairs.values())) if pairs else []
        if not wanted:
            return shown
        same_person = Clause(
            "identifier", Kind.TOKEN, None, criteria=tuple(TokenCriterion(s, v) for s, v in wanted)
        )
        found = self._raw.search(
            SearchQuery("Patient", (same_person,), count=MAX_LINKED, with_total=False)
        )
        seen: dict[str, bool] = {}
        out = list(shown)
        for n, mine in pairs.items():
            links = []
            for other in found.matches:
                if other.id == shown[n].id or other.id in links:
                    continue
                if other.id not in seen:
                    seen[other.id] = self._release(other, "read") is not None
                if seen[other.id] and mine & _person_identifiers(other, systems):
                    links.append(other.id)
            if links:
                out[n] = _with_links(shown[n], links)
        return out

    def _reach(
        self, query: SearchQuery, decisions: dict[tuple[str, str], Decision]
    ) -> ConsentReach | None:
        """How far past its own records this search may see: the records ``decide`` releases
        (each Decision kept in ``decisions`` for redaction). None for a conditional create's
        lookup (``held_only``: a partner matches only records it holds) and without rules."""
        rules = self._rules
        actor = _reference_parts(self._requester.organization)
        if rules is None or query.held_only or actor is None:
            return None
        clauses = _through_person_identifiers(query, rules.policy.person_identifier_systems)
        if clauses is None:
            return None
        request = self._access("search")
        now = rules.clock.now()

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
                    fact = facts_from_index(
                        candidate.resource_type,
                        candidate.id,
                        candidate.entries,
                        contributor=candidate.contributor,
                        contributor_kind=rules.partner_kinds.get(candidate.contributor or ""),
                    )
                    decision = decided[key] = decide(request, fact, held, rules.policy, now)
                if decision.permit:
                    released.add(candidate.key)
                    decisions[candidate.key] = decision
            return released

        open_types = set(rules.policy.directory_types)
        if _pins_one_patient(query):
            # Break-glass reaches one survivor's record at a time, never a whole population.
            for rule in rules.policy.emergency:
                if self._requester.kind in rule.partner_kinds and not rule.purposes.isdisjoint(
                    self._requester.purpose_of_use
                ):
                    open_types |= rule.resource_types
        return ConsentReach(actor, frozenset(open_types), release, clauses)

    # -- writing ----------------------------------------------------------------------------

    def create(self, resource: dict[str, Any], *, contributor: str | None = None) -> StoredResource:
        del contributor  # always the requester: a partner cannot write in another's name
        self._allow(resource["resourceType"], "create")
        self._check_consent_write(resource)
        stored = self._raw.create(self._labelled(resource), contributor=self._requester.partner_id)
        self._wrote("create", stored)
        return stored

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
        resource: dict[str, Any],
        *,
        if_match: int | None,
        contributor: str | None = None,
    ) -> tuple[StoredResource, bool]:
        del contributor
        self._allow(resource_type, "update")
        self._require_own(resource_type, resource_id, "update")
        self._check_consent_write(resource)
        stored, created = self._raw.update(
            resource_type,
            resource_id,
            self._labelled(resource),
            if_match=if_match,
            contributor=self._requester.partner_id,
        )
        self._wrote("create" if created else "update", stored)
        return stored, created

    def delete(self, resource_type: str, resource_id: str) -> StoredResource | None:
        self._allow(resource_type, "delete")
        self._require_own(resource_type, resource_id, "delete")
        if resource_type == "Consent":
            self._consents.clear()
        try:
            # The marker has no body: the event names the patient of what was deleted.
            patient = patient_of(orjson.loads(self._raw.read(resource_type, resource_id).body))
        except (NotFound, Gone):
            patient = None
        marker = self._raw.delete(resource_type, resource_id)
        if marker is not None:
            self._wrote("delete", marker, patient=patient)
        return marker

    def write_many(
        self, resources: Sequence[dict[str, Any]], *, contributor: str | None = None
    ) -> list[StoredResource]:
        del contributor
        for resource in resources:
            self._allow(resource["resourceType"], "update" if resource.get("id") else "create")
            if resource.get("id"):
                self._require_own(resource["resourceType"], resource["id"], "update")
            self._check_consent_write(resource)
        written = self._raw.write_many(
            [self._labelled(r) for r in resources], contributor=self._requester.partner_id
        )
        for stored in written:
            self._wrote("update" if stored.version_id > 1 else "create", stored)
        return written

    def serialize(self, key: str) -> None:
        self._raw.serialize(key)


class ConsentedStore(ConsentedSession):
    def __init__(
        self,
        raw: UnitOfWorkStore,
        requester: Requester,
        rules: ConsentRules | None = None,
        trail: AuditTrail | None = None,
    ) -> None:
        super().__init__(raw, requester, rules, trail)
        self._store = raw

    @property
    def trail(self) -> AuditTrail:
        return self._trail

    @contextmanager
    def transaction(self) -> Iterator[ConsentedSession]:
        """A unit of work bound to the same requester: a Bundle cannot read around consent."""
        with self._store.transaction() as session:
            yield ConsentedSession(session, self._requester, self._rules, self._trail)


def _redacted(
    stored: StoredResource, decision: Decision | None, doc: dict[str, Any] | None = None
) -> StoredResource:
    """The version with the decision's obligations applied (unchanged when none could change
    it: most releases, so the body is not parsed and copied for nothing)."""
    if decision is None or not any(may_change(stored.body, o) for o in decision.obligations):
        return stored
    body = doc if doc is not None else orjson.loads(stored.body)
    return replace(stored, body=canonical(redact(body, decision.obligations)))


def _reference_parts(reference: str) -> tuple[str, str] | None:
    resource_type, _, resource_id = reference.partition("/")
    return (resource_type, resource_id) if resource_type and resource_id else None


PATIENT_PARAMS = frozenset({"patient", "subject"})


def _pins_one_patient(query: SearchQuery) -> bool:
    """Whether the search names one survivor: Patient by one ``_id`` or one full identifier,
    or another type by one ``patient``/``subject`` reference to a Patient."""
    for clause in query.clauses:
        if query.resource_type == "Patient":
            if clause.name == "_id" and len(clause.ids) == 1:
                return True
            if clause.name == "identifier" and len(clause.criteria) == 1:
                (token,) = clause.criteria
                if isinstance(token, TokenCriterion) and token.system and token.code:
                    return True
        elif clause.name in PATIENT_PARAMS and len(clause.criteria) == 1:
            (ref,) = clause.criteria
            if isinstance(ref, ReferenceCriterion) and ref.ref_type in (None, "Patient"):
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
