"""Prompts to token ids, off the engine thread and off the event loop.

Tokenizing a long prompt takes as long as a few decode steps; done on the engine thread it stalls every
running stream, and on the event loop every other client's HTTP traffic. Here it runs on one thread of its
own, with its own copy of the tokenizer (a fast tokenizer is not safe to share between threads that may
change its settings), so the engine thread only adds ready token ids.

Before the expensive work, the cheap bound: no token of the vocabulary is longer than `max_token_bytes`
bytes of UTF-8, so a text of B bytes is at least B / max_token_bytes tokens; with a factor of 4 of slack
for normalizers that shorten text, a prompt longer than that in bytes is refused without being tokenized.
A list of token ids longer than the context is refused before its ids are checked.
"""

from __future__ import annotations

import asyncio
import copy
from concurrent.futures import ThreadPoolExecutor

from ruvoninference.errors import RuvonError

NORMALIZER_SLACK = 4


class Tokenization:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ruvon-tokenize")
        self.tokenizer = None
        self.context_length = 0
        self.vocab_size = 0
        self.max_token_bytes = 1

    def bind(self, engine) -> None:
        """Called once the engine is loaded (on the engine thread, before the server says it is ready)."""
        self.tokenizer = copy.deepcopy(engine.tokenizer)
        self.context_length = engine.context_length
        self.vocab_size = engine.bundle.config.vocab_size
        vocab = self.tokenizer.get_vocab()
        self.max_token_bytes = max((len(piece.encode("utf-8", "replace")) for piece in vocab), default=1)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            self._check_length(len(prompt.encode("utf-8")) // (self.max_token_bytes * NORMALIZER_SLACK))
            return await self._run(self._encode_text, prompt)
        self._check_length(len(prompt))
        bad = next((t for t in prompt if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise RuvonError(f"Token id {bad} is outside the model's vocabulary (0 to {self.vocab_size - 1}).")
        return list(prompt)

    async def encode_chat(self, messages: list[dict], model_name: str) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise RuvonError(f"The model '{model_name}' has no chat template; use /v1/completions, or serve a "
                             f"model with one such as smollm2-135m.")
        self._check_length(sum(len(m["content"].encode("utf-8")) for m in messages)
                           // (self.max_token_bytes * NORMALIZER_SLACK))
        return await self._run(self._encode_chat, messages)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def _check_length(self, at_least: int) -> None:
        if at_least > self.context_length:
            raise RuvonError(f"The prompt is at least {at_least:,} tokens, longer than the model's context of "
                             f"{self.context_length:,} tokens; shorten it.")

    async def _run(self, fn, arg):
        ids = await asyncio.get_running_loop().run_in_executor(self._pool, fn, arg)
        if not ids:
            raise RuvonError("The prompt is empty; give some text to continue.")
        self._check_length(len(ids))
        return ids

    def _encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _encode_chat(self, messages: list[dict]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
