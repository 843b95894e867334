"""The console's pages."""

from __future__ import annotations

urlpatterns: list = []
