"""The active/standby assignor: one member gets every partition of every topic, sticky, the others none."""

from __future__ import annotations

import json
import zlib
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata
from drift.api import readyz
from drift.assignor import (
    PROTOCOL_NAME,
    ActiveStandbyAssignor,
    DriftClientMetadata,
    MemberClaim,
    choose_active,
    plan_assignment,
)
from faust.assignor.client_assignment import ClientAssignment, ClientMetadata

TOPICS = {"features": 3, "predictions": 3, "labels": 3, "specs": 1, "app-state-changelog": 1, "app-__leader": 1}
ALL = {topic: list(range(n)) for topic, n in TOPICS.items()}


def subscriptions(*members: str) -> dict[str, list[str]]:
    return {m: list(TOPICS) for m in members}


def test_a_single_member_gets_every_partition_of_every_topic() -> None:
    plan = plan_assignment({"a": MemberClaim()}, subscriptions("a"), TOPICS)
    assert plan.active == "a"
    assert plan.assignments == {"a": ALL}
    assert plan.epoch == 1


def test_a_joining_member_is_a_standby_the_holder_keeps_everything() -> None:
    # "z" holds the partitions; "a" (a lower id) joins: nothing moves
    claims = {"z": MemberClaim(epoch=4, active=True), "a": MemberClaim(epoch=0)}
    plan = plan_assignment(claims, subscriptions("z", "a"), TOPICS)
    assert plan.active == "z"
    assert plan.assignments == {"z": ALL, "a": {}}
    assert plan.epoch == 5


def test_every_partition_is_assigned_to_exactly_one_member() -> None:
    members = [f"m{i}" for i in range(5)]
    claims = {m: MemberClaim(epoch=7, active=m == "m3") for m in members}
    plan = plan_assignment(claims, subscriptions(*members), TOPICS)
    owners: dict[tuple[str, int], list[str]] = {}
    for member, topics in plan.assignments.items():
        for topic, parts in topics.items():
            for p in parts:
                owners.setdefault((topic, p), []).append(member)
    assert owners == {(t, p): ["m3"] for t, parts in ALL.items() for p in parts}


def test_when_the_active_member_is_gone_a_standby_takes_over_deterministically() -> None:
    # the active died: the standbys report the last epoch, none holds anything
    claims = {"b-2": MemberClaim(epoch=5), "b-1": MemberClaim(epoch=5), "c": MemberClaim(epoch=3)}
    first = plan_assignment(claims, subscriptions(*claims), TOPICS)
    again = plan_assignment(dict(reversed(list(claims.items()))), subscriptions(*claims), TOPICS)
    assert first.active == again.active == "b-1"
    assert first.assignments == again.assignments
    assert first.epoch == 6


def test_the_takeover_is_sticky_once_made() -> None:
    claims = {"b": MemberClaim(epoch=5)}
    plan = plan_assignment(claims, subscriptions("b"), TOPICS)
    # the old active comes back under a lower member id: the new active keeps its partitions
    claims = {"b": MemberClaim(epoch=plan.epoch, active=True), "a": MemberClaim()}
    assert plan_assignment(claims, subscriptions("a", "b"), TOPICS).active == "b"


def test_a_member_dropped_from_the_group_does_not_win_over_the_one_that_took_over() -> None:
    # "a" was active at epoch 3, was dropped (session expired) and rejoins still claiming; "b" took over at epoch 4
    claims = {"a": MemberClaim(epoch=3, active=True), "b": MemberClaim(epoch=4, active=True)}
    assert choose_active(claims) == "b"
    # equal epochs cannot come from one assignment; still deterministic
    assert choose_active({"y": MemberClaim(2, True), "x": MemberClaim(2, True)}) == "x"


def test_topics_without_partitions_or_unsubscribed_are_left_out() -> None:
    plan = plan_assignment({"a": MemberClaim()}, {"a": ["features", "missing"]}, {"features": 3, "missing": 0})
    assert plan.assignments == {"a": {"features": [0, 1, 2]}}


def test_no_members_is_an_error() -> None:
    with pytest.raises(ValueError, match="no members"):
        choose_active({})


# ---- the faust assignor around the plan ------------------------------------------------------


class _Cluster:
    def partitions_for_topic(self, topic: str) -> set[int] | None:
        n = TOPICS.get(topic)
        return set(range(n)) if n else None


def _assignor() -> ActiveStandbyAssignor:
    tables = SimpleNamespace(changelog_topics={"app-state-changelog"})
    app = SimpleNamespace(tables=tables, conf=SimpleNamespace(canonical_url="http://worker:6066"), tracer=None,
                          sensors=SimpleNamespace(on_assignment_start=lambda a: None,
                                                  on_assignment_completed=lambda a, s: None,
                                                  on_assignment_error=lambda a, s, e: None))
    return ActiveStandbyAssignor(app)


def _join(assignor: ActiveStandbyAssignor) -> Any:
    return assignor.metadata(set(TOPICS))


def test_members_join_with_their_epoch_and_get_their_role() -> None:
    a, b = _assignor(), _assignor()
    assert a.name == PROTOCOL_NAME
    result = a.assign(_Cluster(), {"a": _join(a), "b": _join(b)})
    a.on_assignment(result["a"])
    b.on_assignment(result["b"])
    assert (a.role, b.role) == ("active", "standby")
    assert a.epoch == b.epoch == 1
    assert sorted(result["a"].assignment) == sorted(ALL.items())
    assert result["b"].assignment == []
    assert a.assigned_actives() == {(t, p) for t, parts in ALL.items() for p in parts}
    assert b.assigned_actives() == set() and b.assigned_standbys() == set()

    # a standby joins: "a" keeps everything even though the newcomer's id sorts first
    c = _assignor()
    result = b.assign(_Cluster(), {"a": _join(a), "b": _join(b), "0c": _join(c)})
    for member, assignor in (("a", a), ("b", b), ("0c", c)):
        assignor.on_assignment(result[member])
    assert (a.role, b.role, c.role) == ("active", "standby", "standby")
    assert a.epoch == c.epoch == 2

    # "a" dies: of the standbys, the lowest member id takes over
    result = b.assign(_Cluster(), {"b": _join(b), "0c": _join(c)})
    b.on_assignment(result["b"])
    c.on_assignment(result["0c"])
    assert (b.role, c.role) == ("standby", "active")
    assert sorted(result["0c"].assignment) == sorted(ALL.items())


def test_metadata_of_a_faust_member_reads_as_a_member_without_a_claim() -> None:
    plain = ClientMetadata(assignment=ClientAssignment(actives={}, standbys={}), url="u", changelog_distribution={})
    loaded = ActiveStandbyAssignor._get_client_metadata(ConsumerProtocolMemberMetadata(0, ["features"], plain.dumps()))
    assert isinstance(loaded, DriftClientMetadata) and loaded.epoch == 0


def test_the_assignment_carries_the_epoch() -> None:
    a = _assignor()
    result = a.assign(_Cluster(), {"a": _join(a)})
    body = json.loads(zlib.decompress(result["a"].user_data))
    assert body["epoch"] == 1 and body["assignment"]["actives"] == {t: p for t, p in ALL.items()}


@pytest.mark.parametrize("role", ["active", "standby"])
async def test_readiness_names_the_role(role: str) -> None:
    assignor = SimpleNamespace(role=role)
    recovery = SimpleNamespace(completed=SimpleNamespace(is_set=lambda: True))
    faust = SimpleNamespace(started=True, rebalancing=False, crashed=False, consumer=SimpleNamespace(crashed=False),
                            agents={}, assignor=assignor, tables=SimpleNamespace(recovery=recovery))
    response = await readyz(SimpleNamespace(app=SimpleNamespace(state=SimpleNamespace(faust=faust))))  # type: ignore[arg-type]
    assert response.status_code == 200
    assert json.loads(response.body) == {"status": "ready", "role": role}
