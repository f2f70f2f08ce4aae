"""Prompt formats (`base_models[].prompt_template`): from chat messages to the prompt text.

One function, `render_prompt`, renders for both the trainer and the server, so an expert is
served with exactly the text it was trained on. The formats:

- `tokenizer` (also when `prompt_template` is absent): the base tokenizer's own chat
  template, `apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`.
- `qwen3`: hivellm's Qwen3 format,
  `<|im_start|>system\\n{S}<|im_end|>\\n<|im_start|>user\\n{U}<|im_end|>\\n<|im_start|>assistant\\n`.
  With one user message, S and U are derived as hivellm does: S is `Dialect: <d>` (d from the
  manifest's capabilities, see `dialect`); if the message holds a blank line, the text before
  it moves into S (`Dialect: <d>\\n<context>`) and U is the rest, both stripped.
- `chatml`: hivellm's legacy variant (not real ChatML):
  `<|system|>\\n{S}\\n<|end|>\\n<|user|>\\n{U}\\n<|end|>\\n<|assistant|>\\n`, S being
  `Dialect: <d>` (or `You are a helpful AI assistant.` when d is `text`) and U the message.

hivellm renders a single prompt; here a request (or training row) for the hivellm formats is
one user message, optionally preceded by one system message, which is then S verbatim.
Anything else (several turns, other roles) is refused with a ValueError that says why.

Nothing here imports torch or transformers: the tokenizer is passed in by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

TOKENIZER = "tokenizer"  # the base tokenizer's own chat template
QWEN3 = "qwen3"
CHATML = "chatml"  # hivellm's legacy format
FORMATS = {
    TOKENIZER: "the base tokenizer's own chat template",
    QWEN3: "hivellm's qwen3 format (<|im_start|>system Dialect ... <|im_end|>)",
    CHATML: "hivellm's legacy chatml format (<|system|> ... <|end|>)",
}
DEFAULT_SYSTEM = "You are a helpful AI assistant."
# What follows the answer in a training row (carries loss); None: the tokenizer's end-of-turn token.
_ANSWER_SUFFIX = {QWEN3: "<|im_end|>", CHATML: "\n<|end|>"}
# Text that ends an answer when the format's end marker is not the tokenizer's end-of-sequence.
_STOP = {CHATML: ["<|end|>"]}

# hivellm's order: the first rule whose words occur (as substrings) in a capability wins
_DIALECTS = (
    ("cypher", ("cypher", "neo4j")),
    ("sql", ("sql", "postgres", "mysql")),
    ("json", ("json",)),
    ("python", ("python",)),
    ("rust", ("rust",)),
    ("typescript", ("typescript", "javascript")),
)


def normalize(template: str | None) -> str | None:
    """The format a manifest's `prompt_template` names, or None when it names no known format."""
    if template is None:
        return TOKENIZER
    name = template.strip().lower()
    return name if name in FORMATS else None


def problem(template: str | None) -> str | None:
    """Why an expert with this `prompt_template` cannot be served, or None."""
    if normalize(template) is not None:
        return None
    return f"unknown prompt template {template!r}; known: {', '.join(sorted(FORMATS))}"


def describe(template: str | None) -> str:
    name = normalize(template)
    return FORMATS[name] if name else "unknown"


def dialect(capabilities: Iterable[str] | None) -> str:
    """hivellm's dialect from an expert's capabilities: cypher, sql, json, python, rust,
    typescript, else text."""
    caps = [str(c) for c in capabilities or ()]
    for name, words in _DIALECTS:
        if any(w in c for c in caps for w in words):
            return name
    return "text"


def _system_and_user(messages: list[dict[str, str]], template: str) -> tuple[str | None, str]:
    roles = [m.get("role") for m in messages]
    if roles == ["user"]:
        return None, messages[0]["content"]
    if roles == ["system", "user"]:
        return messages[0]["content"], messages[1]["content"]
    raise ValueError(
        f"prompt format {template!r} renders one user message, optionally after one system message; "
        f"got roles {', '.join(str(r) for r in roles) or 'none'}"
    )


def _qwen3_derived(prompt: str, d: str) -> tuple[str, str]:
    """hivellm's derivation of (system, user) from one prompt."""
    split = prompt.find("\n\n")
    if split >= 0:
        context, query = prompt[:split].strip(), prompt[split + 2 :].strip()
        if context.startswith("Dialect:"):
            system = context
        elif d != "text":
            system = f"Dialect: {d}\n{context}"
        elif context:
            system = context
        else:
            system = DEFAULT_SYSTEM
        return system, query
    if prompt.startswith("Dialect:"):
        return (prompt if d != "text" else f"Dialect: {prompt}"), prompt
    return (f"Dialect: {d}" if d != "text" else DEFAULT_SYSTEM), prompt


def render_prompt(
    template: str | None,
    messages: list[dict[str, str]],
    *,
    capabilities: Iterable[str] | None = None,
    tokenizer: Any = None,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The prompt text (generation prompt included) for `messages` in the expert's format.

    `tokenizer` is needed for the `tokenizer` format only. ValueError: an unknown format, or
    messages the format cannot render."""
    name = normalize(template)
    if name is None:
        raise ValueError(problem(template))
    if name == TOKENIZER:
        if tokenizer is None:
            raise ValueError("the tokenizer's chat template needs a tokenizer")
        return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    if tools:
        raise ValueError(f"prompt format {name!r} renders no tools")
    system, user = _system_and_user(messages, name)
    d = dialect(capabilities)
    if name == QWEN3:
        if system is None:
            system, user = _qwen3_derived(user, d)
        return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    if system is None:
        system = f"Dialect: {d}" if d != "text" else DEFAULT_SYSTEM
    return f"<|system|>\n{system}\n<|end|>\n<|user|>\n{user}\n<|end|>\n<|assistant|>\n"


def answer_suffix(template: str | None) -> str | None:
    """Text that follows an answer in a training row (None: the tokenizer's end-of-turn token)."""
    return _ANSWER_SUFFIX.get(normalize(template) or "")


def stop_strings(template: str | None) -> list[str]:
    """Strings that end an answer in this format beyond the tokenizer's end-of-sequence."""
    return list(_STOP.get(normalize(template) or "", []))
