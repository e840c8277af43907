"""The deterministic floor: the rules parser and planner behind the LLM interface (no model, no network).

It answers `ParsedRequest` and `Plan` requests by reading the JSON context the agents put in the last user
message; prose (articles, captions) is not its job, so other schemas raise `LLMInvalidOutput` and the agents
use their templates.
"""
from __future__ import annotations

import json

from ditflow.agents.llm.base import LLMInvalidOutput, Message, T, register
from ditflow.schemas import ParsedRequest, Plan


class RulesBackend:
    name = "rules"
    supports_images = False

    def complete(self, messages: list[Message], schema: type[T], *, task: str = "") -> T:
        from ditflow.agents.parsing import context_from_messages, parse_rules
        from ditflow.agents.planning import plan_rules

        if schema is ParsedRequest:
            return parse_rules(context_from_messages(messages)).request
        if schema is Plan:
            user = next(m for m in reversed(messages) if m.get("role") == "user")
            return plan_rules(ParsedRequest.model_validate(json.loads(user["content"])))
        raise LLMInvalidOutput(f"the rules backend answers ParsedRequest and Plan, not {schema.__name__}")


@register("rules")
def make_rules(**_ignored) -> RulesBackend:
    return RulesBackend()
