"""A LiteLLM callback loaded by the LiteLLM Proxy under test (copied beside its config.yaml).

It writes what LiteLLM itself saw, one JSON line per event, to $PROXY_WITNESS_FILE: every call
sent on to the model (`log_pre_api_call`, which LiteLLM runs right before the provider, the mock
here; the proxy's gate refusals are told apart), every success with LiteLLM's own `response_cost`,
every failure. It runs in the proxy's process, so the test reads the file rather than memory.
It imports nothing of the project.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from litellm.constants import LITELLM_LOGGING_NO_UPSTREAM_LLM_CALL as NO_UPSTREAM_CALL
from litellm.integrations.custom_logger import CustomLogger

_lock = threading.Lock()


def _write(event: str, kwargs: dict[str, Any], **fields: Any) -> None:
    line = json.dumps({"event": event, "call_id": kwargs.get("litellm_call_id"), **fields})
    with _lock, open(os.environ["PROXY_WITNESS_FILE"], "a") as out:
        out.write(line + "\n")


class Witness(CustomLogger):
    def log_pre_api_call(self, model: Any, messages: Any, kwargs: dict[str, Any]) -> None:
        # The proxy also runs this input hook for a request its gate refused (auth, budgets, a pre-call
        # hook), marked as one that never reached a provider: those are not model calls.
        if kwargs.get(NO_UPSTREAM_CALL):
            _write("refused_at_gate", kwargs, model=model)
        else:
            _write("model_call", kwargs, model=model)

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        # repr: LiteLLM's float as it prints it, read back as a Decimal by the test.
        _write("success", kwargs, response_cost=repr(kwargs.get("response_cost")), stream=bool(kwargs.get("stream")))

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: Any,
                                      end_time: Any) -> None:
        _write("failure", kwargs)


witness = Witness()
