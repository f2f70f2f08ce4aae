"""Training data: read JSONL rows, check every row, render them with the chat template.

A row is one of (field names can be renamed with `training.dataset.field_mapping`,
which maps these canonical names to the row's own keys, e.g. {"prompt": "instruction"}):

- `{"messages": [{"role": ..., "content": ...}, ...]}`: a chat; the last message is the
  assistant answer to learn, the ones before it are the prompt;
- `{"prompt": ..., "completion": ...}` (optional `"system"`): one user turn and its answer;
- `{"text": ...}`: a conversation already written in ChatML
  (`<|im_start|>role\\ncontent<|im_end|>` turns), ending with an assistant turn.

Every row becomes a list of messages, rendered the way the server renders a request, by
the one function both use: `server.manifest.prompt_formats.render_prompt` in the expert's
prompt format (`base_models[].prompt_template`: the tokenizer's own chat template, or
hivellm's `qwen3` / legacy `chatml`), tokenised without adding special tokens again,
followed by the answer's tokens and the format's end of turn (the template's end-of-turn
token, `<|im_end|>` for qwen3, `\n<|end|>` for hivellm's chatml). Only the answer and the
end of turn carry loss.

All problems of a file are reported together (line number and what is wrong) before any
model is loaded: `DatasetError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from server.manifest import prompt_formats

CANONICAL_FIELDS = ("messages", "prompt", "completion", "system", "text")
ROLES = ("system", "user", "assistant", "tool")
MAX_REPORTED = 20
IGNORE_INDEX = -100  # label of a token without loss


class DatasetError(Exception):
    """A dataset that cannot be used; `problems` lists every problem found (file, line, what)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = problems[:MAX_REPORTED]
        more = len(problems) - len(shown)
        text = "\n".join(shown) + (f"\n... and {more} more problems" if more > 0 else "")
        super().__init__(text)


@dataclass(frozen=True)
class Conversation:
    """One checked row: `messages[:-1]` is the prompt, `messages[-1]` the assistant answer."""

    source: str  # "file:line", for messages
    messages: list[dict[str, str]]


@dataclass(frozen=True)
class Example:
    """One tokenised row: `labels` is IGNORE_INDEX on the prompt, the token id elsewhere."""

    source: str
    input_ids: list[int]
    labels: list[int]


# ----------------------------------------------------------------------------- reading


def load_conversations(path: Path, field_mapping: dict[str, str] | None = None) -> list[Conversation]:
    """Every row of a JSONL file as a Conversation; DatasetError lists all bad rows."""
    mapping = _check_mapping(field_mapping)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError([f"{path}: file not found"]) from None
    except IsADirectoryError:
        raise DatasetError([f"{path}: is a folder, expected a JSONL file"]) from None
    except UnicodeDecodeError as exc:
        raise DatasetError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except OSError as exc:
        raise DatasetError([f"{path}: cannot read: {exc.strerror or exc}"]) from None

    conversations: list[Conversation] = []
    problems: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path} line {lineno}: invalid JSON at column {exc.colno}: {exc.msg}")
            continue
        try:
            conversations.append(Conversation(where, row_to_messages(row, mapping)))
        except ValueError as exc:
            problems.append(f"{path} line {lineno}: {exc}")
    if problems:
        raise DatasetError(problems)
    if not conversations:
        raise DatasetError([f"{path}: no rows (the file is empty)"])
    return conversations


def _check_mapping(field_mapping: dict[str, str] | None) -> dict[str, str]:
    mapping = {name: name for name in CANONICAL_FIELDS}
    for canonical, key in (field_mapping or {}).items():
        if canonical not in CANONICAL_FIELDS:
            raise DatasetError(
                [
                    f"training.dataset.field_mapping: unknown field '{canonical}' "
                    f"(it maps one of {', '.join(CANONICAL_FIELDS)} to the key used in the rows)"
                ]
            )
        mapping[canonical] = key
    return mapping


def row_to_messages(row: Any, mapping: dict[str, str] | None = None) -> list[dict[str, str]]:
    """The messages of one decoded row; ValueError says what is wrong with it."""
    m = mapping or {name: name for name in CANONICAL_FIELDS}
    if not isinstance(row, dict):
        raise ValueError(f"a row is a JSON object, got {type(row).__name__}")
    if m["messages"] in row:
        messages = _chat_messages(row[m["messages"]], m["messages"])
    elif m["prompt"] in row or m["completion"] in row:
        messages = _prompt_completion(row, m)
    elif m["text"] in row:
        messages = _chatml_messages(row[m["text"]], m["text"])
    else:
        found = ", ".join(sorted(map(str, row))) or "none"
        raise ValueError(
            f"a row needs '{m['messages']}', or '{m['prompt']}' and '{m['completion']}', "
            f"or '{m['text']}' (keys found: {found})"
        )
    _check_target(messages)
    return messages


def _chat_messages(value: Any, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{key}' must be a non-empty list of {{role, content}} objects")
    messages = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise ValueError(f"'{key}[{i}]' must be an object with 'role' and 'content'")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise ValueError(f"'{key}[{i}].role' must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"'{key}[{i}].content' must be a string, got {type(content).__name__}")
        messages.append({"role": role, "content": content})
    return messages


def _prompt_completion(row: dict, m: dict[str, str]) -> list[dict[str, str]]:
    for key in (m["prompt"], m["completion"]):
        if key not in row:
            raise ValueError(f"'{key}' is missing (a prompt/completion row needs both)")
        if not isinstance(row[key], str):
            raise ValueError(f"'{key}' must be a string, got {type(row[key]).__name__}")
    messages = []
    system = row.get(m["system"])
    if system is not None:
        if not isinstance(system, str):
            raise ValueError(f"'{m['system']}' must be a string, got {type(system).__name__}")
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": row[m["prompt"]]})
    messages.append({"role": "assistant", "content": row[m["completion"]]})
    return messages


_CHATML_TURN = re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>\s*", re.DOTALL)


def _chatml_messages(value: Any, key: str) -> list[dict[str, str]]:
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string, got {type(value).__name__}")
    messages, pos, text = [], 0, value.strip()
    while pos < len(text):
        match = _CHATML_TURN.match(text, pos)
        if match is None:
            if text.startswith("<|im_start|>assistant\n", pos):  # last answer without <|im_end|>
                messages.append({"role": "assistant", "content": text[pos + len("<|im_start|>assistant\n") :]})
                break
            raise ValueError(
                f"'{key}' must be ChatML turns '<|im_start|>role\\n...<|im_end|>'; "
                f"cannot read it from character {pos}: {text[pos : pos + 40]!r}"
            )
        messages.append({"role": match.group(1), "content": match.group(2)})
        pos = match.end()
    for msg in messages:
        if msg["role"] not in ROLES:
            raise ValueError(f"'{key}': unknown role {msg['role']!r} (expected one of {', '.join(ROLES)})")
    return messages


def _check_target(messages: list[dict[str, str]]) -> None:
    if not messages or messages[-1]["role"] != "assistant":
        last = messages[-1]["role"] if messages else "nothing"
        raise ValueError(f"no assistant answer to learn: the last message must have role 'assistant', not '{last}'")
    if not messages[-1]["content"].strip():
        raise ValueError("the assistant answer (last message) is empty")
    if not any(msg["role"] in ("user", "tool") for msg in messages[:-1]):
        raise ValueError("no prompt: a user message must come before the assistant answer")


# ----------------------------------------------------------------------------- tokenising


def end_of_turn_id(tokenizer: Any) -> int:
    """The token the chat template writes right after an assistant answer (`<|im_end|>`)."""
    probe = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    prompt = tokenizer.apply_chat_template(probe[:1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(probe, tokenize=False)
    if full.startswith(prompt + "b"):
        suffix = full[len(prompt) + 1 :]
        ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
        if ids:
            return ids[0]
    if tokenizer.eos_token_id is None:
        raise ValueError("cannot tell the end-of-turn token of this tokenizer's chat template")
    return tokenizer.eos_token_id


def render_prompt(
    tokenizer: Any,
    messages: list[dict[str, str]],
    template: str | None = None,
    capabilities: list[str] | None = None,
) -> list[int]:
    """Token ids of a prompt exactly as the server renders it (generation prompt included), in
    the expert's prompt format (server.manifest.prompt_formats.render_prompt, shared with the
    server); ValueError when the format cannot render these messages."""
    text = prompt_formats.render_prompt(template, messages, capabilities=capabilities, tokenizer=tokenizer)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize(
    tokenizer: Any,
    conversations: list[Conversation],
    max_seq_length: int,
    eot_id: int | None = None,
    *,
    template: str | None = None,
    capabilities: list[str] | None = None,
) -> list[Example]:
    """Render (in the expert's prompt format) and tokenise; DatasetError lists rows longer than
    max_seq_length and rows the format cannot render."""
    suffix = prompt_formats.answer_suffix(template)
    suffix_ids = (
        tokenizer(suffix, add_special_tokens=False)["input_ids"]
        if suffix is not None
        else [end_of_turn_id(tokenizer) if eot_id is None else eot_id]
    )
    examples, problems = [], []
    for conv in conversations:
        try:
            prompt_ids = render_prompt(tokenizer, conv.messages[:-1], template, capabilities)
        except ValueError as exc:
            file, _, line = conv.source.rpartition(":")
            problems.append(f"{file} line {line}: {exc}")
            continue
        answer_ids = tokenizer(conv.messages[-1]["content"], add_special_tokens=False)["input_ids"] + suffix_ids
        n = len(prompt_ids) + len(answer_ids)
        if n > max_seq_length:
            file, _, line = conv.source.rpartition(":")
            problems.append(
                f"{file} line {line}: {n} tokens once rendered, longer than "
                f"training.config.max_seq_length ({max_seq_length})"
            )
            continue
        examples.append(Example(conv.source, prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids))
    if problems:
        raise DatasetError(problems)
    return examples


# ----------------------------------------------------------------------------- batching


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch (positions start at 0 for every row, as in serving)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def batches(examples: list[Example], batch_size: int, pad_id: int, generator: torch.Generator) -> Iterator[dict]:
    """An endless stream of batches: each epoch is a fresh seeded shuffle of all examples."""
    while True:
        order = torch.randperm(len(examples), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            yield collate([examples[i] for i in order[start : start + batch_size]], pad_id)
