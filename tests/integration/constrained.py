"""Tool-calling and structured-output requests shared by the tools test and the bare-engine
reference: the same prompt, tools and constraint go to the graph (through vLLM's chat serving)
and to a bare vLLM engine (`LLM.chat` with the constraint as `structured_outputs`).

The tiny model is an induction circuit: it copies what followed the current token earlier in
its context. So a context that shows pythonic tool calls makes it write one (`auto`), and a
schema leaves it only the schema's choices (named tool, `required`, `response_format`)."""

from __future__ import annotations

from typing import Any

#: enough choices that two engines agreeing by chance is unlikely
CITIES = ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Quito"]
WEATHER_PARAMETERS = {"type": "object",
                      "properties": {"city": {"type": "string", "enum": CITIES}},
                      "required": ["city"]}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": WEATHER_PARAMETERS}}]
PLAIN = [{"role": "user", "content": "the river and the stone"}]
PYTHONIC_CALL = '[get_weather(city="Paris")]'
JSON_CALL = '[{"name":"get_weather","parameters":{"city":"Paris"}}]'
ANSWER_SCHEMA = {"type": "object",
                 "properties": {"answer": {"type": "string", "enum": ["river", "stone"]}},
                 "required": ["answer"], "additionalProperties": False}
MAX_TOKENS = 100


def shown(call: str) -> list[dict[str, str]]:
    """A context in which the induction model writes `call` next."""
    return [{"role": "user", "content": f"{call}\n{call}\n{call}\n"}]


#: label → what the bare engine runs (`bare_engine.py`): chat messages, tools for the template,
#: the JSON schema constraining the output (a named tool's parameters, as vLLM's chat serving
#: constrains a named `tool_choice`), stop strings
REFERENCE_SPECS: dict[str, dict[str, Any]] = {
    "json-schema": {"messages": PLAIN, "json_schema": ANSWER_SCHEMA},
    "named-tool": {"messages": PLAIN, "tools": TOOLS, "json_schema": WEATHER_PARAMETERS},
    "auto-tool": {"messages": shown(PYTHONIC_CALL), "tools": TOOLS, "stop": ["\n"]},
}


def reference_specs() -> list[dict[str, Any]]:
    return [{"kind": "chat", "label": label, "max_tokens": MAX_TOKENS, **spec}
            for label, spec in REFERENCE_SPECS.items()]
