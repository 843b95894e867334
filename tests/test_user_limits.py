"""GET /api/v1/users/{u}/limits: every limit that applies to a user's calls, the binding one first; tag filters."""

from __future__ import annotations

from decimal import Decimal

import pytest

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import CostEvent, Limit
from tests.api_helpers import assert_error, body_of

pytestmark = pytest.mark.django_db


def limit(project, *, used="0", held="0", **fields):
    created = services.limit_create(project=project, actor="test", **fields)
    Limit.objects.filter(pk=created.pk).update(used=Decimal(used), held=Decimal(held))
    return created


def test_every_applicable_limit_is_listed_with_its_figures_the_binding_one_first(api, project, make_budget):
    make_budget("alice", "10", "monthly")
    project.max_budget = Decimal(100)
    project.save()
    services.team_set(project=project, name="research", members=["alice"], actor="test")
    team = limit(project, scope="team", subject="research", amount=1, used="0.9")            # 10 % left
    day = limit(project, scope="user", subject="alice", window="day", amount="0.5", used="0.1", held="0.1")
    requests = limit(project, scope="user", subject="alice", unit="requests", window="day", amount=7, used="7")
    limit(project, scope="user", subject="bob", amount=1)                                       # not alice's
    limit(project, scope="tag", subject="summarizer", amount=1)                                 # no tag asked

    response = api.get("/api/v1/users/alice/limits")

    assert response.status_code == 200, response.content
    body = body_of(response)
    assert (body["user"], body["team"]) == ("alice", "research")
    order = [(item["id"], item["scope"], item["unit"]) for item in body["items"]]
    assert order == [(requests.pk, "user", "requests"), (team.pk, "team", "usd"), (day.pk, "user", "usd"),
                     (None, "user", "usd"), (None, "project", "usd")]
    figures = {item["id"]: item for item in body["items"]}
    assert (figures[day.pk]["used"], figures[day.pk]["held"], figures[day.pk]["remaining"]) == (
        Decimal("0.1"), Decimal("0.1"), Decimal("0.3"))
    assert figures[requests.pk]["remaining"] == 0
    budget = body["items"][3]
    assert (budget["subject"], budget["window"], budget["limit"], budget["remaining"]) == ("alice", "month", 10, 10)
    assert body["items"][4]["subject"] is None


def test_model_and_tags_bring_in_the_limits_on_them(api, project, make_budget):
    make_budget("alice")
    gpt4o = limit(project, scope="user", subject="alice", model="gpt-4o", window="day", amount=2)
    tag = limit(project, scope="tag", subject="summarizer", amount=1)
    other_tag = limit(project, scope="tag", subject="chat", amount=1)

    plain = {item["id"] for item in body_of(api.get("/api/v1/users/alice/limits"))["items"]}
    on_gpt4o = {item["id"] for item in body_of(api.get("/api/v1/users/alice/limits?model=openai/gpt-4o"))["items"]}
    tagged = {item["id"] for item in body_of(api.get("/api/v1/users/alice/limits?tags=summarizer,x"))["items"]}

    assert plain == {None}
    assert on_gpt4o == {None, gpt4o.pk}
    assert tagged == {None, tag.pk} and other_tag.pk not in tagged


def test_the_asking_keys_limits_apply(api, project):
    key = limit(project, scope="key", subject="test key", amount=3)
    services.api_key_create(project=project, name="other key")
    limit(project, scope="key", subject="other key", amount=3)

    body = body_of(api.get("/api/v1/users/alice/limits"))

    assert [item["id"] for item in body["items"]] == [key.pk]
    assert body["team"] is None


def test_bad_tags_are_400(api):
    assert_error(api.get("/api/v1/users/alice/limits?tags=ok,not%20ok"), 400, "validation_error")
    many = ",".join(f"t{n}" for n in range(11))
    assert_error(api.get(f"/api/v1/users/alice/limits?tags={many}"), 400, "validation_error")


def record(project, user, cost, tags=""):
    recorded = services.cost_record(project=project, user_id=user, usage=Usage("gpt-4o", 0, 0), cost=Decimal(cost),
                                    source="api")
    CostEvent.objects.filter(pk=recorded.event.pk).update(tags=tags)
    return recorded.event.pk


def test_the_ledger_filters_by_tag(api, project, make_budget):
    make_budget("alice")
    make_budget("bob")
    tagged = record(project, "alice", "1", ",chat,summarizer,")
    record(project, "alice", "2", ",chat,")
    record(project, "alice", "3", ",summarizer-v2,")
    bob = record(project, "bob", "4", ",summarizer,")

    everyone = body_of(api.get("/api/v1/costs?tag=summarizer"))
    alice = body_of(api.get("/api/v1/users/alice/costs?tag=summarizer"))

    assert [event["id"] for event in everyone["items"]] == [bob, tagged]
    assert [event["id"] for event in alice["items"]] == [tagged]
    assert_error(api.get("/api/v1/costs?tag=a%20b"), 400, "validation_error")
