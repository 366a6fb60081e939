"""Schemathesis hooks teaching its generator the one request rule the server's OpenAPI schema cannot state: an
OpenRLHF /get_reward body sends as many `prompts` as `query` texts (JSON Schema cannot relate two list lengths).

A generated /get_reward body that is otherwise valid (it passes rmkit's own request model under the limits the served
schema states) gets its `prompts` list cut or padded with nulls to the length of `query`; any other body, valid or
not, is left as generated. Loaded by tests/test_server_fuzz.py, and by the CLI:

    PYTHONPATH=src:tests SCHEMATHESIS_HOOKS=schemathesis_hooks schemathesis run http://127.0.0.1:8000/openapi.json --checks all
"""

from __future__ import annotations

import schemathesis
from pydantic import ValidationError

from rmkit.contract import Limits, use_limits
from rmkit.protocols import GetRewardRequest


def served_limits(raw_schema: dict) -> Limits:
    """The max_items and max_text_chars a served OpenAPI document states (on /get_reward's query list)."""
    query = raw_schema["components"]["schemas"]["GetRewardRequest"]["properties"]["query"]
    return Limits(max_items=query["maxItems"], max_chars=query["items"]["maxLength"])


@schemathesis.hook
def map_case(context, case):
    if context.operation is None or context.operation.path != "/get_reward" or not isinstance(case.body, dict):
        return case
    with use_limits(served_limits(context.operation.schema.raw_schema)):
        try:
            request = GetRewardRequest.model_validate(case.body)
        except ValidationError:
            return case  # invalid anyway: the server must refuse it for its own reasons
    if request.prompts is not None and len(request.prompts) != len(request.query):
        n = len(request.query)
        case.body = {**case.body, "prompts": (case.body["prompts"] + [None] * n)[:n]}
    return case
