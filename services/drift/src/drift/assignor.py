"""Active/standby partition assignment of the drift consumer group.

The drift state is one table with one changelog partition, while the inputs have several
partitions keyed by entity: a window counts a dataset's events from every partition, so the
members of one group cannot split the inputs. This assignor gives every partition of every
topic (inputs, the state changelog, faust's leader topic) to ONE member, the *active*; the
others get an empty assignment and wait as hot standbys: they stay in the group, and when the
active leaves or dies the next rebalance makes one of them active (it recovers the table from
the changelog and resumes the inputs from the positions kept in it).

Sticky: the member that holds the partitions keeps them while it is in the group, so a standby
joining or leaving never moves the work. Every assignment carries an *epoch* (one more than the
highest any member reports); members report the epoch of the last assignment they received and
whether it made them active, so a member that was active once and was dropped from the group
meanwhile (a zombie past its session) does not win over the member that took over after it.
Without a holder the choice is deterministic: the lowest member id.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka.coordinator.protocol import (  # type: ignore[import-untyped]
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from faust.assignor import PartitionAssignor
from faust.assignor.client_assignment import ClientAssignment, ClientMetadata

from drift import metrics

log = logging.getLogger(__name__)

Role = Literal["active", "standby"]

PROTOCOL_NAME = "drift-active-standby"
"""The group protocol's assignor name. Not faust's ``faust``: a worker of an earlier version (faust's
round-robin assignor, which would split the inputs) cannot share the group with one of this version."""


@dataclass(frozen=True)
class MemberClaim:
    """What a member reports when it joins: its last assignment's epoch and whether it made it active."""

    epoch: int = 0
    active: bool = False


@dataclass(frozen=True)
class Plan:
    """One assignment of the group: the active member, the epoch and every member's partitions."""

    active: str
    epoch: int
    assignments: Mapping[str, Mapping[str, list[int]]]


def choose_active(claims: Mapping[str, MemberClaim]) -> str:
    """The member that gets every partition.

    The member holding them (sticky), the one with the latest epoch when several claim to
    (one was dropped from the group and came back); without one, the lowest member id.
    """
    if not claims:
        raise ValueError("no members to assign")
    holders = [member for member, claim in claims.items() if claim.active]
    if holders:
        return min(holders, key=lambda member: (-claims[member].epoch, member))
    return min(claims)


def plan_assignment(claims: Mapping[str, MemberClaim], subscriptions: Mapping[str, Iterable[str]],
                    partitions: Mapping[str, int]) -> Plan:
    """Every partition of every topic the active member subscribes to goes to it; the others get none.

    ``partitions`` counts the partitions of each topic in the cluster (a topic missing from it
    or with none is left out, as faust's assignor does).
    """
    active = choose_active(claims)
    epoch = max(claim.epoch for claim in claims.values()) + 1
    topics = sorted(t for t in set(subscriptions.get(active, ())) if partitions.get(t, 0) > 0)
    assignments: dict[str, dict[str, list[int]]] = {member: {} for member in claims}
    assignments[active] = {topic: list(range(partitions[topic])) for topic in topics}
    return Plan(active=active, epoch=epoch, assignments=assignments)


class DriftClientMetadata(ClientMetadata, serializer="json", include_metadata=False,
                          namespace="@DriftClientMetadata"):
    """faust's member metadata plus the epoch of the assignment (sent both ways)."""

    epoch: int = 0


class ActiveStandbyAssignor(PartitionAssignor):
    """faust's partition assignor with one active member and hot standbys (``PartitionAssignor`` setting)."""

    epoch: int = 0
    """Epoch of the last assignment this member received (0: none yet)."""

    role: Role | None = None
    """This member's role in the last assignment (None: none yet)."""

    @property
    def name(self) -> str:
        """The assignor's name in the group protocol."""
        return PROTOCOL_NAME

    @property
    def is_active_member(self) -> bool:
        """Whether the last assignment made this member the active one."""
        return self.role == "active"

    @property
    def _metadata(self) -> DriftClientMetadata:
        return DriftClientMetadata(assignment=self._assignment, url=str(self._url),
                                   changelog_distribution=self.changelog_distribution,
                                   external_topic_distribution=self.external_topic_distribution,
                                   topic_groups=self._topic_groups, epoch=self.epoch)

    @classmethod
    def _get_client_metadata(cls, metadata: ConsumerProtocolMemberMetadata) -> DriftClientMetadata:
        loaded: DriftClientMetadata = DriftClientMetadata.loads(metadata.user_data)
        return loaded

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        """Take this member's assignment (called by the consumer on every rebalance); log and export the role."""
        metadata: DriftClientMetadata = DriftClientMetadata.loads(self._decompress(assignment.user_data))
        self._assignment = metadata.assignment
        self._topic_groups = dict(metadata.topic_groups)
        self._active_tps = self._assignment.active_tps
        self._standby_tps = self._assignment.standby_tps
        self.changelog_distribution = metadata.changelog_distribution
        self.external_topic_distribution = metadata.external_topic_distribution
        given = sorted((topic, sorted(parts)) for topic, parts in assignment.assignment)
        expected = sorted((topic, sorted(parts))
                          for topic, parts in self._assignment.kafka_protocol_assignment(self._table_manager))
        if given != expected:
            raise RuntimeError(f"assignment {given!r} does not match its metadata {expected!r}")
        self.epoch = int(metadata.epoch)
        self.role = "active" if self._active_tps else "standby"
        metrics.ACTIVE.set(1 if self.role == "active" else 0)
        metrics.ASSIGNMENT_EPOCH.set(self.epoch)
        log.info("drift assignment: %s (epoch %d, %d partitions)", self.role, self.epoch, len(self._active_tps),
                 extra={"role": self.role, "epoch": self.epoch, "partitions": len(self._active_tps)})

    def _perform_assignment(self, cluster: Any,
                            member_metadata: Mapping[str, ConsumerProtocolMemberMetadata]
                            ) -> dict[str, ConsumerProtocolMemberAssignment]:
        clients = {member: self._get_client_metadata(md) for member, md in member_metadata.items()}
        subscriptions = {member: list(md.subscription) for member, md in member_metadata.items()}
        self._update_member_urls(clients)
        topics = {topic for subscription in subscriptions.values() for topic in subscription}
        partitions = {topic: len(cluster.partitions_for_topic(topic) or ()) for topic in topics}
        claims = {member: MemberClaim(epoch=int(client.epoch),
                                      active=any(client.assignment.actives.values()))
                  for member, client in clients.items()}
        plan = plan_assignment(claims, subscriptions, partitions)
        assignments = {member: ClientAssignment(actives=dict(actives), standbys={})
                       for member, actives in plan.assignments.items()}
        sizes = sorted({n for n in partitions.values() if n > 0})
        topic_groups = {topic: sizes.index(n) for topic, n in partitions.items() if n > 0}
        changelogs = self._get_changelog_distribution(assignments)
        externals = self._get_external_topic_distribution(assignments)
        log.info("drift group assigned: active %s of %d members (epoch %d)", plan.active, len(claims), plan.epoch,
                 extra={"active_member": plan.active, "members": len(claims), "epoch": plan.epoch})
        return {
            member: ConsumerProtocolMemberAssignment(
                self.version, sorted(assignment.kafka_protocol_assignment(self._table_manager)),
                self._compress(DriftClientMetadata(
                    assignment=assignment, url=self._member_urls[member], changelog_distribution=changelogs,
                    external_topic_distribution=externals, topic_groups=topic_groups, epoch=plan.epoch).dumps()))
            for member, assignment in assignments.items()
        }
