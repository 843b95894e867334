"""LiteLLM's hosted BudgetManager protocol: POST /get_budget and POST /set_budget."""

from __future__ import annotations

urlpatterns: list = []
