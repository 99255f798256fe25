"""The wire format: OpenAI's completions and chat bodies as pydantic models, and nothing else.

Requests are validated here, before they reach the engine, so a bad value is a 400 with the field's name
(`param`) instead of an exception in the engine thread, and no value a client can send makes a step fail:

- numbers are finite (`NaN` and `Infinity`, which Python's JSON reader accepts, are refused), temperatures
  are in OpenAI's [0, 2], top_p in (0, 1], seeds 64-bit, penalties in their APIs' ranges;
- text is valid Unicode (a lone surrogate such as `"\\ud800"` cannot be encoded, so cannot be tokenized);
- a temperature below `GREEDY_BELOW` is greedy and a top_p below `MIN_TOP_P` keeps only the most likely
  token, which is what they mean, without dividing logits by 1e-40 or comparing masses to 1e-300.

The fields we implement follow OpenAI's ranges and defaults (temperature 1, top_p 1, max_tokens 16 for
completions). `top_k`, `ignore_eos`, `repetition_penalty` and `min_tokens` are vLLM's extensions;
`attention_implementation` is this series' own. Fields an OpenAI client may send that change the result
and that this server does not implement (`best_of`, `suffix`, `tools`, `response_format`, ...) are refused
with a 400 naming the field, never silently dropped; fields that do not change the result (`user`,
`metadata`, `store`) and unknown fields are ignored, as OpenAI and vLLM do.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

MAX_LOGPROBS_COMPLETIONS = 5  # OpenAI's limit for /v1/completions `logprobs`
MAX_TOP_LOGPROBS_CHAT = 20  # OpenAI's limit for chat `top_logprobs`
MAX_N = 16
MAX_STOP = 4
MAX_TEMPERATURE = 2.0  # OpenAI's
GREEDY_BELOW = 1e-5  # vLLM's threshold: below it a temperature means greedy
MIN_TOP_P = 1e-6  # the most likely of V <= 1e6 tokens has p >= 1/V >= top_p: it alone reaches the mass
SEED_RANGE = (-(2**63), 2**64 - 1)  # vLLM's signed and OpenAI's unsigned 64-bit seeds, both accepted


def _encodable(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the text holds a lone surrogate (such as \\ud800) that is not valid Unicode; "
                         "send UTF-8 text") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class StreamOptions(_Request):
    include_usage: bool = False


# Fields OpenAI's or vLLM's clients send that this server does not implement: refused unless they hold the
# value that means "off" (so a client that sends the defaults works).
_OFF_VALUES: dict[str, tuple] = {
    "best_of": (None, 1), "suffix": (None, ""), "tools": (None, []), "tool_choice": (None, "none"),
    "functions": (None, []), "function_call": (None, "none"), "response_format": (None, {"type": "text"}),
    "guided_json": (None,), "guided_regex": (None,), "guided_choice": (None,), "audio": (None,), "modalities": (None, ["text"]), "prediction": (None,),
    "reasoning_effort": (None,), "web_search_options": (None,), "use_beam_search": (None, False),
}


def _refuse_unimplemented(value: Any, info: ValidationInfo) -> Any:
    if value not in _OFF_VALUES[info.field_name]:
        raise ValueError(f"this server does not implement '{info.field_name}'; leave it out")
    return value


class _SamplingFields(_Request):
    """What completions and chat share: how to sample and when to stop."""

    model: Text | None = None
    temperature: float = Field(1.0, ge=0.0, le=MAX_TEMPERATURE)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)  # -1 (vLLM's "off") and 0 both turn it off
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    ignore_eos: bool = False
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(1.0, ge=0.01, le=100.0)
    min_tokens: int = Field(0, ge=0)
    logit_bias: dict[str, float] | None = None
    # Accepted by OpenAI's API, not implemented here: refused unless "off".
    best_of: Any = None
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    response_format: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    use_beam_search: Any = None
    _check_unimplemented = field_validator(
        "best_of", "tools", "tool_choice", "functions", "function_call", "response_format", "guided_json",
        "guided_regex", "guided_choice", "use_beam_search")(_refuse_unimplemented)

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, bias):
        for key, value in (bias or {}).items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids such as \"50256\", not {key[:20]!r}")
            if not -100.0 <= value <= 100.0:
                raise ValueError(f"logit_bias values must be between -100 and 100, not {value}")
        return bias

    @model_validator(mode="after")
    def _check_stop(self):
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP:
            raise ValueError(f"stop takes at most {MAX_STOP} strings, not {len(self.stop)}")
        return self

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return tuple(s for s in ((self.stop,) if isinstance(self.stop, str) else self.stop) if s)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def safe_temperature(self) -> float:
        return 0.0 if self.temperature < GREEDY_BELOW else self.temperature

    @property
    def safe_top_p(self) -> float:
        return max(self.top_p, MIN_TOP_P)

    def seed_for(self, index: int) -> int | None:
        """Choice `index`'s seed: consecutive seeds, as unsigned 64-bit numbers."""
        return None if self.seed is None else (self.seed + index) % 2**64

    def penalties(self) -> dict[str, Any]:
        """The sampler's extra settings this request changes from their defaults (empty when none)."""
        asked = {"presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
                 "repetition_penalty": self.repetition_penalty, "min_tokens": self.min_tokens,
                 "logit_bias": {int(k): v for k, v in (self.logit_bias or {}).items()}}
        defaults = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
                    "min_tokens": 0, "logit_bias": {}}
        return {k: v for k, v in asked.items() if v != defaults[k]}


class CompletionRequest(_SamplingFields):
    prompt: Text | list[Text] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS_COMPLETIONS)
    echo: bool = False
    attention_implementation: Text | None = None
    suffix: Any = None
    _check_suffix = field_validator("suffix")(_refuse_unimplemented)

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
    text: Text = ""


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[ContentPart] | None = None

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
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    web_search_options: Any = None
    _check_chat_only = field_validator("audio", "modalities", "prediction", "reasoning_effort",
                                       "web_search_options")(_refuse_unimplemented)

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
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "not_found_error",
               405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
               503: "service_unavailable"}


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope: `type` follows the status as OpenAI's API names it; `code` is a short string
    a program can test (`invalid_api_key`, `model_not_found`, ...) or null."""
    kind = ERROR_TYPES.get(status, "server_error")
    return ErrorResponse(error=ErrorBody(message=message, type=kind, param=param, code=code)).model_dump()


def sse(payload: BaseModel | str) -> str:
    """One server-sent event: `data: <json>` and a blank line (`[DONE]` is sent as is)."""
    body = payload if isinstance(payload, str) else payload.model_dump_json(exclude_unset=False)
    return f"data: {body}\n\n"
