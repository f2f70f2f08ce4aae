"""From chat messages to what the engine takes: token ids, or prompt embeddings.

Messages are rendered in the expert's prompt format (`base_models[].prompt_template`: the
base tokenizer's own chat template, or hivellm's `qwen3` / legacy `chatml`) by
server.manifest.prompt_formats.render_prompt, the function the trainer renders its rows
with, and tokenised here, so that the gateway knows the prompt length before the engine
sees the request. A soft prompt is
prepended as embeddings: `[soft prompt ; embedding(token ids)]`, the token embeddings
taken from the base model's own embedding matrix.
"""

from __future__ import annotations

import threading
from typing import Any

from server.errors import InvalidRequest
from server.manifest import prompt_formats
from server.manifest.soft_prompt import load_embedding_matrix


class PromptBuilder:
    def __init__(self, model_path: str):
        from transformers import AutoTokenizer

        self.model_path = model_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self._embeddings: Any = None
        self._lock = threading.Lock()

    def render(
        self,
        messages: list[dict[str, Any]],
        template: str | None = None,
        capabilities: list[str] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids of the prompt in the prompt format `template` (None: the tokenizer's own);
        `tools` go to the tokenizer's chat template."""
        try:
            text = prompt_formats.render_prompt(
                template, messages, capabilities=capabilities, tokenizer=self.tokenizer, tools=tools
            )
        except Exception as exc:  # a template may refuse a role order
            raise InvalidRequest(f"the chat template cannot render these messages: {exc}", param="messages") from None
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @property
    def embedding_matrix(self) -> Any:
        """The base model's input embedding matrix [vocab, hidden] (loaded once, on first use)."""
        with self._lock:
            if self._embeddings is None:
                self._embeddings = load_embedding_matrix(self.model_path)
            return self._embeddings

    def embeds(self, soft_prompt: Any, token_ids: list[int]) -> Any:
        """`[soft prompt ; embedding(token ids)]`, or the token embeddings alone."""
        import torch

        table = self.embedding_matrix
        tokens = table[torch.tensor(token_ids, dtype=torch.long)]
        if soft_prompt is None:
            return tokens
        return torch.cat([soft_prompt.to(tokens.dtype), tokens], dim=0)
