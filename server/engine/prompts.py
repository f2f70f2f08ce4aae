"""From chat messages to what the engine takes: token ids, or prompt embeddings.

Messages are rendered with the base tokenizer's chat template (every `prompt_template` a
manifest may name maps to it: see fates.KNOWN_TEMPLATES) and tokenised here, so that the
gateway knows the prompt length before the engine sees the request. A soft prompt is
prepended as embeddings: `[soft prompt ; embedding(token ids)]`, the token embeddings
taken from the base model's own embedding matrix.
"""

from __future__ import annotations

import threading
from typing import Any

from server.errors import InvalidRequest
from server.manifest.soft_prompt import load_embedding_matrix


class PromptBuilder:
    def __init__(self, model_path: str):
        from transformers import AutoTokenizer

        self.model_path = model_path
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self._embeddings: Any = None
        self._lock = threading.Lock()

    def render(self, messages: list[dict[str, str]]) -> list[int]:
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
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
