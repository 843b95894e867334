"""Recording cost: the ledger, Decimal exactness, F() increments, idempotency, concurrency."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from django.db import connection

from budgets import services
from budgets.base.errors import BudgetExceeded, IdempotencyConflict, InvalidInput, UnknownModel, UnknownUser
from budgets.domain.usage import Usage
from budgets.models import CostEvent, ModelSpend, Project, UserBudget

pytestmark = pytest.mark.django_db


def record(project, user="alice", model="gpt-4o-mini", prompt=0, completion=0, **kwargs):
    return services.cost_record(
        project=project, user_id=user, usage=Usage(model, prompt, completion), source="api", **kwargs
    )


@pytest.mark.slow
def test_a_million_tokens_a_thousand_times_cost_exactly_150_dollars(project, make_budget):
    make_budget(total_budget="1000")

    for _ in range(1000):
        record(project, prompt=1_000_000)  # gpt-4o-mini input: $0.00000015 a token

    budget = UserBudget.objects.get()
    assert budget.current_spend == Decimal(150)
    assert ModelSpend.objects.get().spend == Decimal(150)
    assert sum(CostEvent.objects.values_list("cost", flat=True)) == Decimal(150)
    project.refresh_from_db()
    assert project.current_spend == Decimal(150)


def test_recording_writes_one_ledger_event_and_adds_spend_everywhere(project, make_budget):
    make_budget()

    result = record(project, prompt=1000, completion=500)

    expected = 1000 * Decimal("0.00000015") + 500 * Decimal("0.0000006")
    assert result.created and result.event.cost == expected
    budget = UserBudget.objects.get()
    assert budget.current_spend == expected
    spend = ModelSpend.objects.get()
    assert (spend.model, spend.spend, spend.prompt_tokens, spend.completion_tokens) == (
        "gpt-4o-mini", expected, 1000, 500)
    event = CostEvent.objects.get()
    assert (event.user_id, event.budget_id, event.source) == ("alice", budget.pk, "api")


def test_a_given_cost_is_recorded_for_a_model_without_a_price(project, make_budget):
    make_budget()

    record(project, model="my-private-model", cost=Decimal("0.0123456789"))

    assert UserBudget.objects.get().current_spend == Decimal("0.0123456789")


def test_an_unknown_model_without_a_cost_is_refused_and_writes_nothing(project, make_budget):
    make_budget()
    with pytest.raises(UnknownModel):
        record(project, model="my-private-model", prompt=10)
    assert not CostEvent.objects.exists()
    assert UserBudget.objects.get().current_spend == 0


@pytest.mark.parametrize("bad", [Decimal(-1), Decimal("NaN"), Decimal("Infinity"), "abc", True, float("inf")])
def test_a_bad_cost_is_refused_and_writes_nothing(project, make_budget, bad):
    make_budget()
    with pytest.raises(InvalidInput):
        record(project, model="x", cost=bad)
    assert not CostEvent.objects.exists()


def test_recording_for_an_unknown_user_is_refused(project):
    with pytest.raises(UnknownUser):
        record(project, user="nobody", prompt=1)
    assert not CostEvent.objects.exists()


def test_spend_past_the_budget_still_records_and_says_so(project, make_budget):
    make_budget(total_budget="0.0001")

    result = record(project, prompt=1_000_000)

    assert result.created and result.exceeded == "user"
    assert UserBudget.objects.get().current_spend == Decimal("0.15")


def test_enforce_refuses_a_call_the_budget_has_no_room_for(project, make_budget):
    make_budget(total_budget="0.10")
    with pytest.raises(BudgetExceeded) as caught:
        record(project, prompt=1_000_000, enforce=True)
    assert caught.value.scope == "user" and caught.value.status == 402
    assert not CostEvent.objects.exists()


def test_enforce_names_the_project_budget_when_that_is_the_one_used_up(project, make_budget):
    Project.objects.filter(pk=project.pk).update(max_budget=Decimal("0.10"))
    project.refresh_from_db()
    make_budget(total_budget="100")
    with pytest.raises(BudgetExceeded) as caught:
        record(project, prompt=1_000_000, enforce=True)
    assert caught.value.scope == "project"


def test_a_duplicate_idempotency_key_records_once(project, make_budget):
    make_budget()

    first = record(project, prompt=1000, idempotency_key="req-1", fingerprint="f1")
    second = record(project, prompt=1000, idempotency_key="req-1", fingerprint="f1")

    assert first.created and not second.created
    assert second.event.pk == first.event.pk
    assert CostEvent.objects.count() == 1
    assert UserBudget.objects.get().current_spend == first.event.cost


def test_the_same_idempotency_key_with_another_request_is_a_conflict(project, make_budget):
    make_budget()
    record(project, prompt=1000, idempotency_key="req-1", fingerprint="f1")
    with pytest.raises(IdempotencyConflict):
        record(project, prompt=5, idempotency_key="req-1", fingerprint="f2")
    assert CostEvent.objects.count() == 1


def test_idempotency_keys_belong_to_their_project(project, make_budget):
    other = services.project_create(name="other")
    make_budget()
    make_budget(in_project=other)

    record(project, prompt=1000, idempotency_key="req-1")
    result = record(other, prompt=1000, idempotency_key="req-1")

    assert result.created
    assert CostEvent.objects.count() == 2


def run_in_threads(count: int, target) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrapped() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=wrapped) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_recording_from_many_threads_loses_nothing(project, make_budget):
    make_budget(total_budget="1000")

    def work() -> None:
        for _ in range(25):
            record(project, model="gpt-4o-mini", prompt=1_000_000)
            record(project, model="gpt-4o", prompt=1000)

    errors = run_in_threads(8, work)

    assert errors == []
    budget = UserBudget.objects.get()
    per_call = Decimal("0.15") + 1000 * Decimal("0.0000025")
    assert budget.current_spend == 8 * 25 * per_call
    assert CostEvent.objects.count() == 8 * 25 * 2
    assert dict(ModelSpend.objects.values_list("model", "spend")) == {
        "gpt-4o-mini": Decimal(30), "gpt-4o": 200 * 1000 * Decimal("0.0000025")}
    project.refresh_from_db()
    assert project.current_spend == budget.current_spend


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_with_one_idempotency_key_record_once(project, make_budget):
    make_budget()

    errors = run_in_threads(8, lambda: record(project, prompt=1000, idempotency_key="same", fingerprint="f"))

    assert errors == []
    assert CostEvent.objects.count() == 1
    assert UserBudget.objects.get().current_spend == 1000 * Decimal("0.00000015")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_enforced_concurrent_calls_never_overspend(project, make_budget):
    make_budget(total_budget="1.5")  # room for exactly ten calls of $0.15
    refused: list[BudgetExceeded] = []

    def work() -> None:
        for _ in range(3):
            try:
                record(project, prompt=1_000_000, enforce=True)
            except BudgetExceeded as exc:
                refused.append(exc)

    errors = run_in_threads(6, work)

    assert errors == []
    assert len(refused) == 6 * 3 - 10
    assert UserBudget.objects.get().current_spend == Decimal("1.5")
    assert CostEvent.objects.count() == 10


def test_summing_money_in_sql_is_exact(project, make_budget):
    from django.db.models import Sum

    make_budget()
    for cost in ("1.000000000001", "0.75015", "0.000000000009"):
        record(project, model="x", cost=Decimal(cost))

    total = CostEvent.objects.aggregate(total=Sum("cost"))["total"]

    assert total == Decimal("1.750150000010")
    assert UserBudget.objects.get().current_spend == total
