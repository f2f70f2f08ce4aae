"""Tool calling: the request's tools as a structured-output constraint, and the answer as `tool_calls`.

- `tool_choice` naming a function: the answer is that function's arguments, constrained by
  its `parameters` JSON schema (structured outputs), returned as one tool call.
- `"required"`: the answer is a JSON array of `{"name", "parameters"}` objects, each
  constrained to one of the tools (`parallel_tool_calls: false`: exactly one), returned as
  tool calls.
- `"none"`: plain text. `"auto"` (the default when tools are given) lets the model choose; it
  needs a chat template that renders `tools` and a vLLM tool parser (`EXPERT_TOOL_PARSER`),
  which reads the calls out of the model's text. The answer is not constrained; a stream
  sends it in one chunk at the end, once it is parsed.
- History: assistant `tool_calls` and `tool` messages go to the chat template as Hugging Face
  templates take them (`arguments` as an object). A template that does not render
  `tool_calls` gets them in the assistant's text instead, one
  `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>` each, so no turn is lost.
- A `developer` message is the system message.

Pure functions and pydantic models: nothing here talks to the engine.
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.errors import InvalidRequest

FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=FUNCTION_NAME)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"] = "function"
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: str


class ToolCall(BaseModel):
    """A tool call in the history (an assistant message's `tool_calls`)."""

    model_config = ConfigDict(extra="forbid")
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


Mode = Literal["none", "auto", "named", "required"]
ParsedCalls = tuple[str | None, list[tuple[str, str]]]  # (text before the calls, [(name, arguments JSON)])


@dataclass(frozen=True)
class ToolPlan:
    """What a request's tools do to its generation."""

    mode: Mode
    tools: tuple[ToolDefinition, ...] = ()
    name: str | None = None  # the named function
    schema: dict[str, Any] | None = None  # the structured-output JSON schema (named, required)
    # "auto": reads the calls out of a complete answer (a vLLM tool parser behind the engine seam)
    parser: Callable[[str], ParsedCalls] | None = None

    @property
    def constrained(self) -> bool:
        return self.mode in ("named", "required")

    @property
    def answers_with_calls(self) -> bool:
        """The answer may become `tool_calls`: constrained, or "auto" with a parser."""
        return self.constrained or (self.mode == "auto" and self.parser is not None)

    def template_tools(self) -> list[dict[str, Any]] | None:
        """`tools` for the chat template (None: the template gets none)."""
        if self.mode == "none" or not self.tools:
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]


def _params(fn: FunctionDefinition) -> dict[str, Any]:
    return copy.deepcopy(fn.parameters) if fn.parameters else dict(EMPTY_OBJECT)


def plan_tools(
    tools: list[ToolDefinition] | None, tool_choice: ToolChoice | None, parallel_tool_calls: bool | None
) -> ToolPlan:
    """The plan for a request's `tools`/`tool_choice`; InvalidRequest for choices that cannot work."""
    if not tools:
        if tool_choice is not None and tool_choice != "none":
            raise InvalidRequest("tool_choice needs tools", param="tool_choice")
        return ToolPlan("none")
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequest("tools: function names must be unique", param="tools")
    choice = tool_choice if tool_choice is not None else "auto"
    if choice == "none":
        return ToolPlan("none", tuple(tools))
    if choice == "auto":
        return ToolPlan("auto", tuple(tools))
    if isinstance(choice, NamedToolChoice):
        by_name = {t.function.name: t for t in tools}
        fn = by_name.get(choice.function.name)
        if fn is None:
            raise InvalidRequest(
                f"tool_choice names {choice.function.name!r}, which is not among the tools", param="tool_choice"
            )
        return ToolPlan("named", tuple(tools), fn.function.name, _params(fn.function))
    # "required": an array of calls, each one of the tools
    defs: dict[str, Any] = {}
    variants = []
    for t in tools:
        params = _params(t.function)
        for key, value in (params.pop("$defs", None) or {}).items():
            if key in defs and defs[key] != value:
                raise InvalidRequest(f"tools: two functions define $defs.{key} differently", param="tools")
            defs[key] = value
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": [t.function.name]}, "parameters": params},
                "required": ["name", "parameters"],
                "additionalProperties": False,
            }
        )
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": variants}}
    if parallel_tool_calls is False:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return ToolPlan("required", tuple(tools), None, schema)


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_call(name: str, arguments: str, index: int | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"id": call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}
    if index is not None:
        call = {"index": index, **call}
    return call


def parse_calls(plan: ToolPlan, text: str) -> list[tuple[str, str]] | None:
    """(name, arguments JSON) for each call in a constrained answer; None when the text is not
    a complete answer (cut by max_tokens or a stop sequence)."""
    if plan.mode == "named":
        assert plan.name is not None
        try:
            json.loads(text)
        except ValueError:
            return None
        return [(plan.name, text.strip())]
    if plan.mode == "required":
        try:
            calls = json.loads(text)
        except ValueError:
            return None
        if not isinstance(calls, list) or not all(
            isinstance(c, dict) and isinstance(c.get("name"), str) and "parameters" in c for c in calls
        ):
            return None
        return [(c["name"], json.dumps(c["parameters"], ensure_ascii=False)) for c in calls]
    return None


def message_with_calls(plan: ToolPlan, text: str, finish_reason: str | None) -> tuple[dict[str, Any], str | None]:
    """The assistant message and finish reason of an answer that may hold tool calls.

    A complete constrained answer becomes `tool_calls` (content null; finish reason
    `tool_calls` for "required", `stop` for a named function, as OpenAI answers); an answer
    cut short stays text, with the engine's finish reason. Under "auto", the tool parser
    decides: calls found become `tool_calls` beside the text before them (finish reason
    `tool_calls`); otherwise the answer is text."""
    if plan.mode == "auto" and plan.parser is not None:
        content, found = plan.parser(text)
        if not found:
            return {"role": "assistant", "content": text}, finish_reason
        return {
            "role": "assistant",
            "content": content,
            "tool_calls": [tool_call(n, a) for n, a in found],
        }, "tool_calls"
    parsed = parse_calls(plan, text)
    if parsed is None:
        return {"role": "assistant", "content": text}, finish_reason
    message = {"role": "assistant", "content": None, "tool_calls": [tool_call(n, a) for n, a in parsed]}
    return message, ("tool_calls" if plan.mode == "required" else finish_reason)


# ---------------------------------------------------------------------------- the chat template


@dataclass(frozen=True)
class TemplateSupport:
    tools: bool  # the template renders the `tools` it is given
    tool_calls: bool  # the template renders an assistant message's `tool_calls`


_PROBE = "zq_probe_fn_7x"


def probe_template(render: Callable[[list[dict[str, Any]], list[dict[str, Any]] | None], str]) -> TemplateSupport:
    """What a chat template does with tools, found by rendering a probe with a marker name."""
    user = {"role": "user", "content": "hi"}
    try:
        with_tools = _PROBE in render([user], [{"type": "function", "function": {"name": _PROBE, "parameters": {}}}])
    except Exception:
        with_tools = False
    call = {"id": "call_probe", "type": "function", "function": {"name": _PROBE, "arguments": {}}}
    try:
        with_calls = _PROBE in render(
            [user, {"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "user", "content": "ok"}],
            None,
        )
    except Exception:
        with_calls = False
    return TemplateSupport(with_tools, with_calls)


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def template_messages(messages: list[dict[str, Any]], support: TemplateSupport | None) -> list[dict[str, Any]]:
    """Messages as the chat template takes them.

    Each input is `{"role", "content" (text), "name"?, "tool_calls"? (ToolCall dicts),
    "tool_call_id"?}`. `developer` becomes `system`."""
    out = []
    for m in messages:
        role = "system" if m["role"] == "developer" else m["role"]
        rendered: dict[str, Any] = {"role": role, "content": m.get("content") or ""}
        if m.get("name"):
            rendered["name"] = m["name"]
        if role == "tool" and m.get("tool_call_id"):
            rendered["tool_call_id"] = m["tool_call_id"]
        calls = m.get("tool_calls") or []
        if calls:
            if support is not None and support.tool_calls:
                rendered["tool_calls"] = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {
                            "name": c["function"]["name"],
                            "arguments": _arguments(c["function"]["arguments"]),
                        },
                    }
                    for c in calls
                ]
            else:
                text = "\n".join(
                    "<tool_call>\n"
                    + json.dumps(
                        {"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])},
                        ensure_ascii=False,
                    )
                    + "\n</tool_call>"
                    for c in calls
                )
                rendered["content"] = f"{rendered['content']}\n{text}" if rendered["content"] else text
        out.append(rendered)
    return out
