"""budget_client.litellm_proxy: which user a proxy call counts for (the settings' sources, in order).

The hook inside a real proxy is tests/test_client_litellm_proxy.py; these need no process and no
database, only LiteLLM importable (the main virtualenv has it).
"""

from __future__ import annotations

import os

import pytest

# litellm reads this when it is imported: its bundled price map, not a download.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

# slow: importing LiteLLM alone takes seconds.
pytestmark = pytest.mark.slow

pytest.importorskip("litellm", reason="install requirements-litellm.txt")


class ProxyKey:
    """The fields of the proxy's UserAPIKeyAuth that the hook reads."""

    def __init__(self, **fields: str | None) -> None:
        for name in ("key_alias", "team_alias", "team_id", "user_id", "end_user_id"):
            setattr(self, name, fields.get(name))


@pytest.mark.parametrize(("sources", "expected"), [
    (("user",), "body-user"),
    (("end_user",), "end-user"),
    (("key_alias",), "the-key"),
    (("team",), "team-alias"),
    (("key_user",), "key-owner"),
    (("key_alias", "user"), "the-key"),
])
def test_the_user_comes_from_the_first_configured_source_that_names_one(sources, expected):
    from budget_client.litellm_proxy import ProxyHookSettings, call_user

    key = ProxyKey(key_alias="the-key", team_alias="team-alias", team_id="team-1", user_id="key-owner",
                   end_user_id="end-user")
    assert call_user({"user": "body-user"}, key, ProxyHookSettings(user_from=sources)) == expected


def test_a_team_without_an_alias_counts_by_its_id_and_nothing_named_falls_back_to_the_default_user():
    from budget_client.litellm_proxy import ProxyHookSettings, call_user

    assert call_user({}, ProxyKey(team_id="team-1"), ProxyHookSettings(user_from=("team",))) == "team-1"
    assert call_user({}, ProxyKey(), ProxyHookSettings(user_from=("key_alias", "team"))) is None
    assert call_user({}, ProxyKey(), ProxyHookSettings(user_from=("key_alias",), default_user="ops")) == "ops"
    with pytest.raises(ValueError, match="user sources"):
        ProxyHookSettings(user_from=("header",))


def test_the_requests_metadata_tags_go_into_the_reservation_only_when_there_are_some():
    from budget_client import _api
    from budget_client.litellm_proxy import request_tags

    tags = request_tags({"metadata": {"tags": ["prod", "", 7, "prod", "chat"]}})
    assert tags == ["prod", "chat"]
    with_tags = _api.create_reservation("alice", estimated_cost="0.5", tags=tags)
    assert with_tags.body == {"estimated_cost": with_tags.body["estimated_cost"], "tags": ["prod", "chat"]}
    # A server without tag limits refuses an unknown field: none is sent for a call without tags.
    without = _api.create_reservation("alice", estimated_cost="0.5", tags=request_tags({"metadata": {}}))
    assert "tags" not in without.body
