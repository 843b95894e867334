"""The seed's BudgetManager API, walked through with LiteLLM's own documented examples."""

from __future__ import annotations

import time
from decimal import Decimal
from types import SimpleNamespace

import pytest

from budgets.base.errors import UnknownModel, UnknownUser
from budgets.domain import tokens
from budgets.domain.pricing import get_price
from budgets.manager import BudgetManager
from budgets.models import AuditLog, CostEvent, ModelSpend, Project, UserBudget

pytestmark = pytest.mark.django_db

GPT35_IN = Decimal("0.0000005")  # gpt-3.5-turbo, per token, from the shipped price map
GPT35_OUT = Decimal("0.0000015")


def completion(model: str = "gpt-3.5-turbo", prompt: int = 14, completion_tokens: int = 9) -> dict:
    """An OpenAI chat completion response, as `litellm.completion` returns it (dict form)."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Going well!"}}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                  "total_tokens": prompt + completion_tokens},
    }


def test_the_price_map_prices_gpt_35_turbo_as_the_tests_assume():
    price = get_price("gpt-3.5-turbo")
    assert (price.input, price.output) == (GPT35_IN, GPT35_OUT)


def test_constructing_it_with_a_new_project_name_creates_the_project():
    manager = BudgetManager(project_name="test_project")

    assert Project.objects.filter(name="test_project").count() == 1
    assert manager.get_users() == []
    BudgetManager(project_name="test_project")
    assert Project.objects.filter(name="test_project").count() == 1


def test_the_quick_start_example_records_a_completion():
    budget_manager = BudgetManager(project_name="test_project")
    user = "1234"
    if not budget_manager.is_valid_user(user):
        budget_manager.create_budget(total_budget=10, user=user)
    assert budget_manager.is_valid_user(user)
    assert budget_manager.get_current_cost(user=user) <= budget_manager.get_total_budget(user)

    answer = budget_manager.update_cost(completion_obj=completion(), user=user)

    expected = 14 * GPT35_IN + 9 * GPT35_OUT
    assert budget_manager.get_current_cost(user) == expected
    assert answer["user"]["current_cost"] == expected
    assert answer["user"]["model_cost"] == {"gpt-3.5-turbo": expected}
    assert budget_manager.get_total_budget(user) == Decimal(10)
    event = CostEvent.objects.get()
    assert (event.user_id, event.model, event.prompt_tokens, event.completion_tokens, event.cost) == (
        "1234", "gpt-3.5-turbo", 14, 9, expected)
    assert event.source == "manager"


def test_a_completion_object_with_attributes_is_read_like_a_dict():
    manager = BudgetManager(project_name="p")
    manager.create_budget(total_budget=1, user="u")
    usage = SimpleNamespace(prompt_tokens=100, completion_tokens=50,
                            prompt_tokens_details=SimpleNamespace(cached_tokens=40))
    response = SimpleNamespace(model="gpt-4o", usage=usage)

    manager.update_cost(user="u", completion_obj=response)

    price = get_price("gpt-4o")
    assert manager.get_model_cost("u") == {"gpt-4o": 60 * price.input + 40 * price.cache_read + 50 * price.output}
    assert CostEvent.objects.get().cached_tokens == 40


def test_user_based_rate_limiting_with_text_input_and_output():
    budget_manager = BudgetManager(project_name="<my-unique-project>")
    user = "12345"
    budget_manager.create_budget(total_budget=10, user=user, duration="daily")
    input_text = "hello world"
    output_text = "it's a sunny day in san francisco"

    budget_manager.update_cost(user=user, model="gpt-3.5-turbo", input_text=input_text, output_text=output_text)

    # Billed as the provider bills: the input as one user chat message, the output as plain tokens.
    prompt = tokens.count_message_tokens("gpt-3.5-turbo", [{"role": "user", "content": input_text}])
    completion_tokens = tokens.count_text_tokens("gpt-3.5-turbo", output_text)
    assert (prompt, completion_tokens) == (3 + 1 + 2 + 3, 9)
    assert budget_manager.get_current_cost(user) == prompt * GPT35_IN + completion_tokens * GPT35_OUT
    assert UserBudget.objects.get(user_id=user).duration == "daily"


def test_projected_cost_adds_the_prompt_cost_of_the_messages_to_current_cost():
    manager = BudgetManager(project_name="p")
    manager.create_budget(total_budget=10, user="u")
    manager.update_cost(user="u", completion_obj=completion())
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hey, how's it going?"}]

    projected = manager.projected_cost(model="gpt-3.5-turbo", messages=messages, user="u")

    prompt = tokens.count_message_tokens("gpt-3.5-turbo", messages)
    assert projected == manager.get_current_cost("u") + prompt * GPT35_IN
    assert CostEvent.objects.count() == 1  # projecting records nothing


def test_model_cost_is_kept_per_model():
    manager = BudgetManager(project_name="p")
    manager.create_budget(total_budget=10, user="u")
    manager.update_cost(user="u", completion_obj=completion("gpt-3.5-turbo"))
    manager.update_cost(user="u", completion_obj=completion("gpt-4o"))
    manager.update_cost(user="u", completion_obj=completion("gpt-4o"))

    costs = manager.get_model_cost("u")

    assert set(costs) == {"gpt-3.5-turbo", "gpt-4o"}
    gpt4o = get_price("gpt-4o")
    assert costs["gpt-4o"] == 2 * (14 * gpt4o.input + 9 * gpt4o.output)
    assert sum(costs.values()) == manager.get_current_cost("u")


def test_reset_cost_zeroes_spend_keeps_the_ledger_and_audits():
    manager = BudgetManager(project_name="p")
    manager.create_budget(total_budget=10, user="u")
    manager.update_cost(user="u", completion_obj=completion())

    answer = manager.reset_cost("u")

    assert answer["user"]["current_cost"] == 0
    assert answer["user"]["model_cost"] == {}
    assert manager.get_current_cost("u") == 0
    assert not ModelSpend.objects.exists()
    assert CostEvent.objects.count() == 1
    assert AuditLog.objects.filter(action="budget_reset_manual", user_id="u").count() == 1


def test_create_budget_returns_the_record_the_seed_returns():
    manager = BudgetManager(project_name="p")
    created = time.time() - 5

    record = manager.create_budget(total_budget=25, user="u", duration="weekly", created_at=created)

    assert record["total_budget"] == Decimal(25)
    assert record["duration"] == 7
    assert record["created_at"] == pytest.approx(created)
    assert record["current_cost"] == 0
    assert manager.get_users() == ["u"]


def test_create_budget_rejects_a_duration_the_seed_does_not_know():
    manager = BudgetManager(project_name="p")
    with pytest.raises(ValueError, match="duration"):
        manager.create_budget(total_budget=1, user="u", duration="hourly")
    assert not UserBudget.objects.exists()


def test_update_cost_without_a_completion_or_texts_is_refused():
    manager = BudgetManager(project_name="p")
    manager.create_budget(total_budget=1, user="u")
    with pytest.raises(ValueError, match="completion object or the text"):
        manager.update_cost(user="u")
    assert not CostEvent.objects.exists()


def test_an_unknown_user_raises_key_error_as_the_seed_does():
    manager = BudgetManager(project_name="p")
    with pytest.raises(KeyError):
        manager.get_total_budget("nobody")
    with pytest.raises(UnknownUser):
        manager.update_cost(user="nobody", completion_obj=completion())
    assert not manager.is_valid_user("nobody")
    assert not CostEvent.objects.exists()


def test_an_unknown_model_is_refused_and_writes_nothing():
    manager = BudgetManager(project_name="p")
    manager.create_budget(total_budget=1, user="u")
    with pytest.raises(UnknownModel):
        manager.update_cost(user="u", completion_obj=completion("no-such-model-xyz"))
    assert manager.get_current_cost("u") == 0
    assert not CostEvent.objects.exists()


def test_save_data_answers_like_the_seed():
    assert BudgetManager(project_name="p").save_data() == {"status": "success"}


def test_update_budget_all_users_resets_users_whose_period_ended(time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    manager = BudgetManager(project_name="p")
    manager.create_budget(total_budget=10, user="daily-user", duration="daily")
    manager.create_budget(total_budget=10, user="forever-user")
    manager.update_cost(user="daily-user", completion_obj=completion())
    manager.update_cost(user="forever-user", completion_obj=completion())

    time_machine.move_to("2026-03-11 00:00:01+00:00", tick=False)
    manager.update_budget_all_users()

    assert UserBudget.objects.get(user_id="daily-user").current_spend == 0
    assert UserBudget.objects.get(user_id="forever-user").current_spend > 0
    assert manager.get_current_cost("daily-user") == 0


def test_reset_on_duration_resets_only_when_the_period_ended(time_machine):
    time_machine.move_to("2026-03-10 12:00:00+00:00", tick=False)
    manager = BudgetManager(project_name="p")
    manager.create_budget(total_budget=10, user="u", duration="daily")
    manager.update_cost(user="u", completion_obj=completion())

    manager.reset_on_duration("u")
    assert UserBudget.objects.get().current_spend > 0

    time_machine.move_to("2026-03-11 00:00:00+00:00", tick=False)
    manager.reset_on_duration("u")
    assert UserBudget.objects.get().current_spend == 0
