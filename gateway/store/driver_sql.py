"""Statements the SQL store sends straight to the driver on its hot paths (a by-id read, the
head lookup, the consent probe, batch inserts), in the driver's placeholder style."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.store.schema import search_index as SI


@dataclass(frozen=True, slots=True)
class DriverSql:
    """Statements sent straight to the driver, in its placeholder style. Only placeholders are
    interpolated; every value travels as a parameter."""

    read_current: str
    locate: str
    consent_probe: str
    insert_versions: str
    insert_index: str
    placeholder: str

    def heads(self, count: int) -> str:
        """The heads of ``count`` ids of one resource type (the type is the first parameter)."""
        marks = ", ".join([self.placeholder] * count)
        return (
            "SELECT rid, resource_type, id, version_id, deleted, contributor "  # noqa: S608
            f"FROM resources WHERE resource_type = {self.placeholder} AND id IN ({marks})"
        )

    @classmethod
    def for_dialect(cls, paramstyle: str) -> DriverSql:
        def marks(n: int) -> str:
            return ", ".join(["?" if paramstyle == "qmark" else "%s"] * n)

        return cls(
            read_current=(
                "SELECT r.version_id, r.last_updated, r.deleted, v.key_id, v.payload, "  # noqa: S608
                "r.contributor "
                "FROM resources r JOIN resource_versions v "
                "ON v.rid = r.rid AND v.version_id = r.version_id "
                f"WHERE r.resource_type = {marks(1)} AND r.id = {marks(1)}"
            ),
            # The head, and its newest version with a body (a deletion marker has none).
            locate=(
                "SELECT r.version_id, r.deleted, r.contributor, v.version_id, "  # noqa: S608
                "v.last_updated, v.key_id, v.payload "
                "FROM resources r JOIN resource_versions v "
                "ON v.rid = r.rid AND v.payload IS NOT NULL "
                f"WHERE r.resource_type = {marks(1)} AND r.id = {marks(1)} "
                "ORDER BY v.version_id DESC LIMIT 1"
            ),
            # Led by the patient's Consents (a handful; none for the id of an absent record, and
            # never all the Consents that name a busy recipient), then narrowed to the
            # recorder's active ones that name the actor (or an actor that cannot be read).
            consent_probe=(
                "SELECT 1 FROM search_index p JOIN resources c ON c.rid = p.rid "  # noqa: S608
                "WHERE p.resource_type = 'Consent' AND p.param = '_consent-patient' "
                f"AND p.ref_id IN ({marks(1)}, '*') AND p.ref_type = 'Patient' "
                f"AND c.contributor = {marks(1)} AND NOT c.deleted "
                "AND EXISTS (SELECT 1 FROM search_index a WHERE a.rid = p.rid "
                "AND a.param = '_consent-actor' "
                f"AND ((a.ref_type = {marks(1)} AND a.ref_id = {marks(1)}) "
                "OR (a.ref_type = '*' AND a.ref_id = '*'))) "
                "AND EXISTS (SELECT 1 FROM search_index s WHERE s.rid = p.rid "
                "AND s.param = '_consent-active') LIMIT 1"
            ),
            insert_versions=(
                "INSERT INTO resource_versions "  # noqa: S608
                "(rid, version_id, last_updated, deleted, key_id, payload) "
                f"VALUES ({marks(6)})"
            ),
            insert_index=(
                f"INSERT INTO search_index ({', '.join(c.name for c in SI.columns)}) "  # noqa: S608
                f"VALUES ({marks(len(SI.columns))})"
            ),
            placeholder=marks(1),
        )
