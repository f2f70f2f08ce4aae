"""OpenAI-compatible request models (chat completions, text completions).

Sampling fields default to None so "not set" differs from 0.0. Unknown fields are
refused (a typo in a request is an error, as in a manifest). Extensions:
- `top_k`, `min_p`, `repetition_penalty`: vLLM's extra sampling fields;
- `soft_prompt`: the name of one of the expert's soft prompts to prepend, or `"none"` to
  send the prompt without one (default: the expert's first soft prompt).
- `return_token_ids`: each choice also carries the generated `token_ids` (non-streaming).

Which OpenAI fields are accepted without effect, and which are refused, is decided before
these models see a body (server/api/fields.py); tools are modelled in server/api/tools.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from server.api.tools import ToolCall, ToolChoice, ToolDefinition
from server.manifest.sampling import FIELD_NAMES, request_field, request_rules

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_LOGIT_BIAS = 1024  # entries


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls, in the history
    tool_call_id: str | None = None  # a tool message: the call it answers

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("tool_calls belong to assistant messages")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("tool_call_id belongs to tool messages")
        return self

    @field_validator("role")
    @classmethod
    def _role(cls, v: str) -> str:
        if v not in ROLES:
            raise ValueError(f"unknown role {v!r}; expected one of {', '.join(ROLES)}")
        return v

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)

    def template_input(self) -> dict[str, Any]:
        """What server.api.tools.template_messages takes (ValueError: content it cannot render)."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class GenerationFields(BaseModel):
    """The fields chat and text completions share."""

    # strict: a boolean is true or false and a number is a number ("stream": "yes" is a 400)
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    # sampling: None means "not set" (the expert's or the server's default applies);
    # ranges and rules come from server.manifest.sampling
    temperature: float | None = request_field("temperature")
    top_p: float | None = request_field("top_p")
    top_k: int | None = request_field("top_k")
    min_p: float | None = request_field("min_p")
    repetition_penalty: float | None = request_field("repetition_penalty")
    presence_penalty: float | None = request_field("presence_penalty")
    frequency_penalty: float | None = request_field("frequency_penalty")
    max_tokens: int | None = request_field("max_tokens")
    seed: int | None = request_field("seed")
    stop: str | list[str] | None = request_field("stop")
    n: int | None = request_field("n")
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        default=None, max_length=MAX_LOGIT_BIAS
    )
    user: str | None = None
    soft_prompt: str | None = None
    return_token_ids: bool | None = None

    _sampling_rules = request_rules()

    def sampling_fields(self) -> dict[str, Any]:
        """The request's sampling values by field name; None where not set."""
        values = {name: getattr(self, name) for name in FIELD_NAMES}
        newer = getattr(self, "max_completion_tokens", None)
        if newer is not None:
            values["max_tokens"] = newer
        return values

    def logprobs_count(self) -> int | None:
        """Alternatives per token to report log probabilities with; None: no log probabilities."""
        return None


class ChatCompletionRequest(GenerationFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = request_field("max_tokens")  # OpenAI's newer name for max_tokens
    response_format: ResponseFormat | None = None
    tools: list[ToolDefinition] | None = Field(default=None, min_length=1, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("logprobs") is not True:
            raise ValueError("top_logprobs needs logprobs: true")
        return v

    def logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(GenerationFields):
    """`POST /v1/completions`: one prompt, as text or token ids."""

    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=5)

    def logprobs_count(self) -> int | None:
        return self.logprobs
