"""Every HTTP surface of the JSON side: the native v1 API, the LiteLLM hosted protocol, health.

Views here authenticate (`auth`), validate once (`schemas`), call one service or
selector, and answer through one error module (`errors`). Routes: `budgets.api.urls`.
"""
