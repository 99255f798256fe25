"""The wire format: OpenAI's completions and chat bodies as pydantic models, and nothing else.

Requests are validated here, before they reach the engine, so a bad value is a 400 with the field's name
(`param`) instead of an exception in the engine thread. Fields OpenAI clients may send that we do not
implement (`user`, `presence_penalty`, `logit_bias`, ...) are accepted and ignored (`extra="ignore"`), as
vLLM does; the ones we implement follow OpenAI's ranges and defaults (temperature 1, top_p 1, max_tokens 16
for completions). `top_k` and `ignore_eos` are vLLM's extensions; `attention_implementation` is this
series' own, honoured on every completions route.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_LOGPROBS_COMPLETIONS = 5  # OpenAI's limit for /v1/completions `logprobs`
MAX_TOP_LOGPROBS_CHAT = 20  # OpenAI's limit for chat `top_logprobs`
MAX_N = 16
MAX_STOP = 4


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Request):
    include_usage: bool = False


class _SamplingFields(_Request):
    """What completions and chat share: how to sample and when to stop."""

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)  # -1 (vLLM's "off") and 0 both turn it off
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    ignore_eos: bool = False

    @model_validator(mode="after")
    def _check_stop(self):
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP:
            raise ValueError(f"stop takes at most {MAX_STOP} strings, not {len(self.stop)}")
        return self

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS_COMPLETIONS)
    echo: bool = False
    attention_implementation: str | None = None

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, prompt):
        if prompt == "" or prompt == [] or any(p == "" or p == [] for p in _prompts(prompt)):
            raise ValueError("the prompt is empty; give at least one character or token")
        return prompt

    @property
    def prompt_list(self) -> list[str | list[int]]:
        """One entry per prompt: a string, or a list of token ids (OpenAI accepts both)."""
        return _prompts(self.prompt)


def _prompts(prompt) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(x, int) for x in prompt):
        return [prompt]  # one prompt given as token ids
    return list(prompt)


class ContentPart(_Request):
    type: str = "text"
    text: str = ""


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content if part.type == "text")


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS_CHAT)

    @model_validator(mode="after")
    def _check_top_logprobs(self):
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# --- responses -------------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy shape: parallel lists, one entry per token; the prompt's entries are null under echo."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ruvoninference"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def error_body(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope; `type` follows the status as OpenAI's API names it."""
    kind = {400: "invalid_request_error", 404: "not_found_error", 422: "invalid_request_error",
            429: "rate_limit_exceeded", 503: "service_unavailable"}.get(status, "server_error")
    return ErrorResponse(error=ErrorBody(message=message, type=kind, param=param, code=status)).model_dump()


def sse(payload: BaseModel | str) -> str:
    """One server-sent event: `data: <json>` and a blank line (`[DONE]` is sent as is)."""
    body = payload if isinstance(payload, str) else payload.model_dump_json(exclude_unset=False)
    return f"data: {body}\n\n"
