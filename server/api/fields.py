"""Which OpenAI request fields the gateway takes, which it ignores (and says so), which it refuses.

`screen(payload, kind)` runs on a parsed JSON body before the request model validates it:

- `null` for an optional field means "not set": the key is dropped, in the body and in the
  objects nested in it (messages, their tool calls, `stream_options`, `response_format`,
  `tools`, `tool_choice`), never inside data (JSON schemas, `metadata`, `logit_bias`).
  Required fields (`model`, `messages`, a message's `role`, ...) keep their null, which the
  request model refuses.
- Fields that do not change what is generated (`metadata`, `store`, `service_tier`, `user`,
  `reasoning_effort`, ..., an assistant message's `annotations`) are dropped and named:
  the response carries them in `X-Expert-Ignored`.
- Fields that would change what is generated and are not supported here (`audio`,
  `functions`, `web_search_options`, `echo`, ...) are collected; `request_error` then makes
  ONE 400 that names all of them, with every unknown field the request model found.

Names in `X-Expert-Ignored` come from the tables below (and message indices), never from the
request, so the header is always plain ASCII.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from server.errors import InvalidRequest

Kind = Literal["chat", "completions"]

IGNORED_HEADER = "X-Expert-Ignored"

# Accepted, without effect on generation (the value, whatever it is, changes nothing here).
_IGNORED_COMMON = (
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
)
IGNORED: dict[Kind, tuple[str, ...]] = {
    # reasoning_effort: the chat templates served here take no reasoning setting;
    # prediction: OpenAI's predicted outputs only speed generation up, never change it.
    "chat": (*_IGNORED_COMMON, "reasoning_effort", "prediction"),
    "completions": _IGNORED_COMMON,
}
# Fields that would change generation and are not supported (when not null).
UNSUPPORTED: dict[Kind, tuple[str, ...]] = {
    "chat": ("audio", "functions", "function_call", "web_search_options", "verbosity", "moderation"),
    "completions": ("suffix",),
}
# Message fields of an assistant turn that only describe it (OpenAI returns them, clients send them back).
_MESSAGE_IGNORED = ("annotations",)
_MESSAGE_UNSUPPORTED = ("audio", "refusal", "function_call")
# Objects whose null-valued keys mean "not set".
_NULLABLE_OBJECTS_IN_TOOL = ("function",)


@dataclass
class Screened:
    body: dict[str, Any]
    ignored: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)

    def header(self) -> dict[str, str]:
        """`X-Expert-Ignored: a, b` when something was ignored."""
        return {IGNORED_HEADER: ", ".join(self.ignored)} if self.ignored else {}


def _drop_nulls(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: v for k, v in obj.items() if v is not None}
    return obj


def _screen_message(i: int, message: Any, out: Screened) -> Any:
    if not isinstance(message, dict):
        return message  # the request model says what is wrong
    message = _drop_nulls(message)
    for name in _MESSAGE_IGNORED:
        if name in message:
            del message[name]
            out.ignored.append(f"messages.{i}.{name}")
    for name in _MESSAGE_UNSUPPORTED:
        if name in message:
            del message[name]
            out.unsupported.append(f"messages.{i}.{name}")
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        message["tool_calls"] = [
            {
                **_drop_nulls(c),
                **({"function": _drop_nulls(c["function"])} if isinstance(c.get("function"), dict) else {}),
            }
            if isinstance(c, dict)
            else c
            for c in calls
        ]
    return message


def _screen_tools(tools: Any, out: Screened) -> Any:
    if not isinstance(tools, list):
        return tools
    screened = []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict):
            tool = _drop_nulls(tool)
            if tool.get("type", "function") != "function":
                out.unsupported.append(f"tools.{i}.type")
                continue
            for key in _NULLABLE_OBJECTS_IN_TOOL:
                if isinstance(tool.get(key), dict):
                    tool[key] = _drop_nulls(tool[key])
        screened.append(tool)
    return screened


def screen(payload: dict[str, Any], kind: Kind) -> Screened:
    """The body with nulls and ignored fields dropped; what was ignored; what is unsupported."""
    out = Screened(body={})
    body = _drop_nulls(payload)
    for name in (*body,):
        if name in IGNORED[kind]:
            del body[name]
            out.ignored.append(name)
        elif name in UNSUPPORTED[kind]:
            del body[name]
            out.unsupported.append(name)
    if kind == "chat":
        modalities = body.pop("modalities", None)
        if modalities is not None:
            (out.ignored if modalities == ["text"] else out.unsupported).append("modalities")
        if isinstance(body.get("messages"), list):
            body["messages"] = [_screen_message(i, m, out) for i, m in enumerate(body["messages"])]
        if "tools" in body:
            body["tools"] = _screen_tools(body["tools"], out)
        if isinstance(body.get("tool_choice"), dict):
            body["tool_choice"] = _drop_nulls(body["tool_choice"])
        if "parallel_tool_calls" in body and not body.get("tools"):
            del body["parallel_tool_calls"]
            out.ignored.append("parallel_tool_calls")
        if isinstance(body.get("response_format"), dict):
            rf = _drop_nulls(body["response_format"])
            if isinstance(rf.get("json_schema"), dict):
                rf["json_schema"] = _drop_nulls(rf["json_schema"])
            body["response_format"] = rf
    else:
        # echo=false and best_of equal to n (or 1) change nothing; anything else is not supported
        if body.get("echo") is False:
            del body["echo"]
        elif "echo" in body:
            del body["echo"]
            out.unsupported.append("echo")
        if "best_of" in body:
            best_of = body.pop("best_of")
            if best_of != body.get("n", 1) or isinstance(best_of, bool):
                out.unsupported.append("best_of")
    if isinstance(body.get("stream_options"), dict):
        options = _drop_nulls(body["stream_options"])
        if "include_obfuscation" in options:
            del options["include_obfuscation"]
            out.ignored.append("stream_options.include_obfuscation")
        body["stream_options"] = options
    out.body = body
    return out


def _loc(loc: Iterable[Any]) -> str:
    return ".".join(str(p) for p in loc if p != "body")


def invalid(screened: Screened, err: ValidationError) -> InvalidRequest:
    """The 400 for a body the request model refused (with every unsupported field named too)."""
    return request_error(screened, err) or InvalidRequest("invalid request")


def request_error(screened: Screened, err: ValidationError | None = None) -> InvalidRequest | None:
    """One 400 for a request: every unsupported and unknown field named at once, then the
    first invalid value; None when there is nothing to refuse."""
    unknown: list[str] = []
    invalid: list[tuple[str, str]] = []
    for e in err.errors() if err is not None else ():
        where = _loc(e.get("loc", ()))
        if e.get("type") == "extra_forbidden":
            unknown.append(where)
        else:
            invalid.append((where, e.get("msg", "invalid value").removeprefix("Value error, ")))
    parts = []
    if screened.unsupported:
        parts.append("not supported here: " + ", ".join(screened.unsupported))
    if unknown:
        parts.append("unknown field" + ("s" if len(unknown) > 1 else "") + ": " + ", ".join(unknown))
    if invalid:
        where, msg = invalid[0]
        parts.append(f"{where}: {msg}" if where else msg)
    if not parts:
        return None
    first = (screened.unsupported or unknown or [invalid[0][0]])[0] or None
    fields_named = [*screened.unsupported, *unknown]
    return InvalidRequest(
        "; ".join(parts),
        param=first,
        code="unsupported_field" if fields_named else None,
        details={"fields": fields_named} if fields_named else None,
    )
