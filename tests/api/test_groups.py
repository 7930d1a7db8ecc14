"""The membership answers' policy (kept, bounded, left alone while Graph says to wait) with a
fake source and clock; Graph's wire is tested against devstack in test_group_overage."""

from __future__ import annotations

import pytest

from api.groups import (
    MAX_RETRY_AFTER_SECONDS,
    GroupMembership,
    member_groups,
    retry_after_seconds,
    unavailable,
)
from api.principal import Principal
from refresher.errors import GroupMembershipUnavailableError

TENANT = "tenant-a"
GROUP = "group-1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """Answers from a set of (object id, group) pairs; counts the questions."""

    def __init__(self, members: set[tuple[str, str]]) -> None:
        self.members = members
        self.asked: list[tuple[str, str]] = []
        self.failure: GroupMembershipUnavailableError | None = None

    def is_member(self, object_id: str, group: str) -> bool:
        self.asked.append((object_id, group))
        if self.failure is not None:
            raise self.failure
        return (object_id, group) in self.members


def user(subject: str, tenant: str = TENANT) -> Principal:
    return Principal(kind="user", subject=subject, tenant_id=tenant, app_id="client")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_an_answer_is_kept_for_its_ttl_then_asked_again(clock: Clock) -> None:
    source = Source({("ada", GROUP)})
    groups = GroupMembership(source, tenant_id=TENANT, ttl=300, clock=clock)

    assert groups.cached(user("ada"), GROUP) is None
    assert groups.check(user("ada"), GROUP) is True
    clock.now += 299
    assert groups.cached(user("ada"), GROUP) is True
    assert groups.check(user("ada"), GROUP) is True
    clock.now += 1
    assert groups.cached(user("ada"), GROUP) is None
    assert groups.check(user("ada"), GROUP) is True

    assert source.asked == [("ada", GROUP), ("ada", GROUP)]


def test_not_a_member_is_kept_too(clock: Clock) -> None:
    source = Source(set())
    groups = GroupMembership(source, tenant_id=TENANT, clock=clock)

    assert groups.check(user("bob"), GROUP) is False
    assert groups.cached(user("bob"), GROUP) is False
    assert len(source.asked) == 1


def test_the_oldest_answers_are_dropped_beyond_the_bound(clock: Clock) -> None:
    groups = GroupMembership(Source(set()), tenant_id=TENANT, max_entries=2, clock=clock)

    for subject in ("a", "b", "c"):
        groups.check(user(subject), GROUP)

    assert len(groups) == 2
    assert groups.cached(user("a"), GROUP) is None
    assert groups.cached(user("c"), GROUP) is False


def test_a_caller_of_another_tenant_is_no_member_and_graph_is_not_asked(clock: Clock) -> None:
    source = Source({("ada", GROUP)})
    groups = GroupMembership(source, tenant_id=TENANT, clock=clock)

    assert groups.check(user("ada", tenant="tenant-b"), GROUP) is False
    assert source.asked == []


def test_failures_are_not_kept(clock: Clock) -> None:
    source = Source({("ada", GROUP)})
    source.failure = unavailable()
    groups = GroupMembership(source, tenant_id=TENANT, clock=clock)

    with pytest.raises(GroupMembershipUnavailableError):
        groups.check(user("ada"), GROUP)
    source.failure = None

    assert groups.check(user("ada"), GROUP) is True
    assert len(source.asked) == 2


def test_graph_is_left_alone_until_its_retry_after_passes(clock: Clock) -> None:
    source = Source({("ada", GROUP)})
    source.failure = unavailable(retry_after=10)
    groups = GroupMembership(source, tenant_id=TENANT, clock=clock)
    with pytest.raises(GroupMembershipUnavailableError):
        groups.check(user("ada"), GROUP)
    source.failure = None

    clock.now += 4
    with pytest.raises(GroupMembershipUnavailableError) as waiting:
        groups.check(user("bob"), GROUP)
    clock.now += 6
    answered = groups.check(user("ada"), GROUP)

    assert waiting.value.retry_after == pytest.approx(6)
    assert answered is True
    assert len(source.asked) == 2


@pytest.mark.parametrize(
    ("body", "groups"),
    [({"value": ["g1", "g2"]}, ["g1", "g2"]), ({"value": []}, [])],
)
def test_member_groups_reads_the_value_list(body: object, groups: list[str]) -> None:
    assert member_groups(body) == groups


@pytest.mark.parametrize("body", [None, [], {"value": "g1"}, {"value": [1]}, {"error": {}}])
def test_member_groups_refuses_anything_else(body: object) -> None:
    with pytest.raises(ValueError, match="checkMemberGroups"):
        member_groups(body)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("100000", MAX_RETRY_AFTER_SECONDS),
        (None, None),
        ("soon", None),
        ("-1", None),
        ("nan", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_retry_after_is_capped_seconds(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds
