"""The generation loop: prefill once, then decode one token at a time from the KV cache.

This is our own loop, not `model.generate`. It is written in two layers so that later chapters (CUDA-graph
decode, a continuous-batching server) can swap one without touching the other:

- `Sequence` holds everything about one request: its tokens, its row in the batch (its cache slot), its
  sampling parameters and generator, its stop rule, and what it has produced so far.
- `forward_step` advances a whole batch by one forward pass and knows nothing about requests.

Shapes: b = batch, L = padded prompt length, V = vocabulary.

    prefill: input_ids [b, L] (left-padded) --model--> logits [b, 1, V] --sample--> tokens [b]
    decode:  tokens    [b, 1]                --model--> logits [b, 1, V] --sample--> tokens [b]

The only host-device synchronization per step is reading the sampled tokens, which we must do anyway to
detokenize, stream and check stop rules.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence as SequenceType
from dataclasses import dataclass, field

import torch

from ruvoninference.attention import LoadedModel
from ruvoninference.errors import RuvonError
from ruvoninference.kv_cache import new_cache
from ruvoninference.sampling import SamplingParams, sample_next
from ruvoninference.stats import GenerationStats, peak_memory, reset_peak_memory

TokenCallback = Callable[[int, int, str], None]
"""`on_token(sequence_index, token_id, new_text)`, called once per generated token."""


@dataclass(frozen=True)
class StopRule:
    max_new_tokens: int
    eos_token_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise RuvonError(f"The number of tokens to generate must be at least 1, not {self.max_new_tokens}.")


@dataclass
class Sequence:
    """One request's state, independent of how it is batched."""

    prompt_ids: list[int]
    sampling: SamplingParams
    stop: StopRule
    slot: int  # its row in the batch and in the KV cache
    generator: torch.Generator | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "eos", "length" or "stop"
    # Incremental detokenization: token_ids[_prefix:_read] were already turned into text; they are decoded
    # again only as context for the new tokens, so each step decodes a few tokens, not the whole output.
    _prefix: int = 0
    _read: int = 0

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _new_text(self, tokenizer) -> str:
        """Text added by the tokens after _read, or "" while they end inside a multi-byte character."""
        done = tokenizer.decode(self.token_ids[self._prefix:self._read], skip_special_tokens=True)
        upto = tokenizer.decode(self.token_ids[self._prefix:], skip_special_tokens=True)
        last = len(self.token_ids) >= self.stop.max_new_tokens
        if upto.endswith("\ufffd") and not last:  # a character still incomplete: hold it back
            return ""
        self._prefix, self._read = self._read, len(self.token_ids)
        return upto[len(done):]

    def append(self, token: int, logprob: float, tokenizer) -> str:
        """Record one token, update the text, apply the stop rule; return the text it added."""
        self.token_ids.append(token)
        self.logprobs.append(logprob)
        if token in self.stop.eos_token_ids:
            self.finish_reason = "eos"
            return ""
        full = self.text + self._new_text(tokenizer)
        for stop in self.stop.stop_strings:
            cut = full.find(stop, max(0, len(self.text) - len(stop) + 1))
            if cut != -1:
                full, self.finish_reason = full[:cut], "stop"
                break
        if self.finish_reason is None and len(self.token_ids) >= self.stop.max_new_tokens:
            self.finish_reason = "length"
        delta, self.text = full[len(self.text):], full
        return delta


@dataclass
class GenerationResult:
    sequences: list[Sequence]
    stats: GenerationStats

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.sequences]


def eos_token_ids(loaded: LoadedModel) -> frozenset[int]:
    ids = loaded.model.generation_config.eos_token_id
    if ids is None:
        ids = loaded.tokenizer.eos_token_id
    if ids is None:
        return frozenset()
    return frozenset([ids] if isinstance(ids, int) else ids)


def encode_prompts(loaded: LoadedModel, prompts: SequenceType[str], max_new_tokens: int) -> list[list[int]]:
    """Tokenize and check each prompt fits the context together with the tokens it will generate."""
    encoded = []
    for prompt in prompts:
        ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            raise RuvonError("The prompt is empty; give some text to continue.")
        if len(ids) + max_new_tokens > loaded.context_length:
            raise RuvonError(
                f"The prompt is {len(ids)} tokens and {max_new_tokens} more were asked for, but the model's "
                f"context is {loaded.context_length} tokens; shorten the prompt or ask for fewer tokens."
            )
        encoded.append(ids)
    return encoded


def _accepts(model: torch.nn.Module, argument: str) -> bool:
    return argument in inspect.signature(model.forward).parameters


def forward_step(
    model: torch.nn.Module,
    input_ids: torch.Tensor,  # [b, n]
    attention_mask: torch.Tensor,  # [b, cached + n], 1 for real tokens
    position_ids: torch.Tensor,  # [b, n]
    cache,
    **model_kwargs,
) -> torch.Tensor:
    """One forward pass over n new tokens per row; returns the last position's logits [b, V]."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
        **model_kwargs,
    )
    return out.logits[:, -1, :]


def _left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def generate(
    loaded: LoadedModel,
    prompts: str | SequenceType[str],
    max_new_tokens: int = 50,
    sampling: SamplingParams | SequenceType[SamplingParams] = SamplingParams(),
    stop_strings: SequenceType[str] = (),
    on_token: TokenCallback | None = None,
    prompt_ids: SequenceType[SequenceType[int]] | None = None,
    ignore_eos: bool = False,
) -> GenerationResult:
    """Generate a continuation for each prompt (a batch when given several), with a KV cache.

    `prompt_ids` replaces `prompts` with already-tokenized input, and `ignore_eos` makes every sequence run
    to `max_new_tokens`: benchmarks use both so that every run does the same work.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    eos = frozenset() if ignore_eos else eos_token_ids(loaded)
    stop = StopRule(max_new_tokens, eos, tuple(s for s in stop_strings if s))
    if prompt_ids is not None:
        encoded = [list(p) for p in prompt_ids]
    else:
        encoded = encode_prompts(loaded, prompts, max_new_tokens)
    params = [sampling] * len(encoded) if isinstance(sampling, SamplingParams) else list(sampling)
    if len(params) != len(encoded):
        raise RuvonError(f"Got {len(params)} sampling settings for {len(encoded)} prompts; give one or one each.")
    device, model, tokenizer = loaded.device, loaded.model, loaded.tokenizer
    sequences = [
        Sequence(ids, p, stop, slot=row, generator=p.make_generator(device))
        for row, (ids, p) in enumerate(zip(encoded, params))
    ]

    reset_peak_memory(device)
    start = time.perf_counter()
    input_ids, attention_mask = _left_pad(encoded, tokenizer.pad_token_id, device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cache = new_cache(model.config)
    # Only the last position's logits are needed: skipping the rest saves a [b, L, V] matmul in prefill.
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    logits = forward_step(model, input_ids, attention_mask, position_ids, cache, **extra)
    first_token_at = None
    generators = [s.generator for s in sequences]
    ones = torch.ones((len(sequences), 1), dtype=attention_mask.dtype, device=device)

    while True:
        tokens, logprobs = sample_next(logits, params, generators)
        host_tokens, host_logprobs = tokens.tolist(), logprobs.tolist()  # the one sync per step
        if first_token_at is None:
            first_token_at = time.perf_counter()
        for seq in sequences:
            if not seq.finished:
                delta = seq.append(host_tokens[seq.slot], host_logprobs[seq.slot], tokenizer)
                if on_token is not None:
                    on_token(seq.slot, host_tokens[seq.slot], delta)
        if all(seq.finished for seq in sequences):
            break
        # Finished rows keep riding along (their outputs are ignored) so the batch keeps its shape.
        attention_mask = torch.cat([attention_mask, ones], dim=1)
        position_ids = position_ids[:, -1:] + 1
        logits = forward_step(model, tokens[:, None], attention_mask, position_ids, cache, **extra)

    end = time.perf_counter()
    peak, kind = peak_memory(device)
    stats = GenerationStats(
        prompt_tokens=sum(len(p) for p in encoded),
        generated_tokens=sum(len(s.token_ids) for s in sequences),
        time_to_first_token_s=first_token_at - start,
        decode_time_s=end - first_token_at,
        total_time_s=end - start,
        peak_memory_bytes=peak,
        peak_memory_kind=kind,
        sequences=len(sequences),
    )
    return GenerationResult(sequences, stats)
