"""Engine outputs in OpenAI's shapes: choices, logprobs (completions' parallel lists, chat's objects), usage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ruvoninference.server.protocol import (
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    TopLogprob,
    Usage,
)


@dataclass
class Choice:
    """What one engine request has produced so far, for one `choices[i]`."""

    index: int
    request_id: str
    group: int  # which prompt of the request
    prompt_ids: list[int]
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[Any] = field(default_factory=list)  # the engine's TokenLogprob per token
    finish_reason: str | None = None
    prompt_logprobs: list[Any] | None = None  # echo with logprobs: the engine's entry per prompt token


def _piece(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def completion_logprobs(tokenizer, new: list, start_offset: int, prompt_ids: list[int] | None = None,
                        prompt_entries: list | None = None) -> CompletionLogprobs:
    """OpenAI's completions logprobs for `new` tokens whose text starts at `start_offset` in the choice's text.

    With `prompt_ids` (echo), the prompt's tokens come first, with their log-probabilities given the tokens
    before them (`prompt_entries`, the engine's prompt logprobs: a TokenLogprob per token, None for the first,
    which has no context).
    """
    result = CompletionLogprobs()
    offset = start_offset

    def add(token_id: int, logprob: float | None, top: list | None) -> None:
        nonlocal offset
        piece = _piece(tokenizer, token_id)
        result.tokens.append(piece)
        result.token_logprobs.append(logprob)
        result.top_logprobs.append({_piece(tokenizer, t): v for t, v in top} if top else None)
        result.text_offset.append(offset)
        offset += len(piece)

    for i, token_id in enumerate(prompt_ids or ()):
        entry = prompt_entries[i] if prompt_entries else None
        add(token_id, None if entry is None else entry.logprob, None if entry is None else entry.top)
    for lp in new:
        add(lp.token_id, lp.logprob, lp.top)
    return result


def chat_logprobs(tokenizer, new: list) -> ChatLogprobs:
    def entry(token_id: int, logprob: float) -> TopLogprob:
        token = _piece(tokenizer, token_id)
        return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode("utf-8")))

    content = []
    for lp in new:
        head = entry(lp.token_id, lp.logprob)
        content.append(ChatTokenLogprob(**head.model_dump(), top_logprobs=[entry(t, v) for t, v in lp.top]))
    return ChatLogprobs(content=content)


def usage(choices: list[Choice]) -> Usage:
    # A prompt's tokens count once however many choices (n) it has, as OpenAI and vLLM count them.
    prompt_tokens = sum({c.group: len(c.prompt_ids) for c in choices}.values())
    completion_tokens = sum(len(c.token_ids) for c in choices)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 total_tokens=prompt_tokens + completion_tokens)
