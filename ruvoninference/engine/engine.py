"""The engine: requests in, tokens out, one scheduler step at a time.

    add_request(prompt, sampling) -> request_id      a Sequence joins the waiting queue
    step() -> [StepOutput]                           schedule -> run the model -> sample -> postprocess
    abort(request_id)                                its blocks are freed at once

`step()` is the whole architecture in a few lines: the scheduler picks the step's sequences (prefill chunks
and decodes, mixed), the model runner turns them into tensors and logits, the sampler draws a token for
every row at once, and each sequence appends its token, checks its stop rules and, when finished, leaves
the batch and gives its blocks back. One host sync per step: reading the drawn tokens. `generate()` is the
offline loop on top: add every prompt, step until all are done.

Prompt log-probabilities (`SamplingParams.prompt_logprobs`, what `echo` with `logprobs` scores) are computed
inside the steps: the prefill chunks of such a request also produce logits rows for its prompt positions
(at most `scheduler.PROMPT_LOGPROB_ROWS` a step), the sampler's log-softmax turns them into `TokenLogprob`s,
they gather on the sequence and come out whole in its first `StepOutput` (and its `RequestOutput`). With
`max_tokens=0` the request runs as a one-token request whose drawn token is dropped: it ends after its
prefill with `finish_reason` "length" and no tokens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence as SequenceType
from dataclasses import dataclass, field

import torch

from ruvoninference.attention import AttentionImplementation, check_implementation, parse_implementation
from ruvoninference.attention.paged import FLASH_ATTENTION_BLOCK_SIZE, default_block_size
from ruvoninference.config import resolve_device, resolve_dtype
from ruvoninference.engine.block_manager import BlockManager
from ruvoninference.engine.detokenizer import IncrementalDetokenizer
from ruvoninference.engine.kv_cache import allocate_kv_cache, bytes_per_block
from ruvoninference.engine.model_runner import ModelRunner
from ruvoninference.engine.overlap import HostCopy, InFlight, PromptScores, patch_inputs
from ruvoninference.engine.scheduler import PROMPT_LOGPROB_ROWS, PromptChunk, ScheduledBatch, Scheduler
from ruvoninference.engine.sequence import Sequence, new_request_id
from ruvoninference.engine.speculative import check_speculative, make_speculator
from ruvoninference.errors import RuvonError
from ruvoninference.models import ModelBundle, load_model
from ruvoninference.engine.sampler import SamplerOutput, SamplingTensors, prompt_logprobs, sample
from ruvoninference.engine.sampler import warm_up as warm_up_sampler
from ruvoninference.sampling import MAX_LOGPROBS, SamplingParams, TokenLogprob
from ruvoninference.weights import ProgressCallback

CPU_KV_CACHE_BYTES = 1 << 30  # the CPU default: a laptop's memory is shared with everything else
GPU_MEMORY_UTILIZATION = 0.9  # share of the GPU the engine may fill: weights, activations, then KV cache


@dataclass
class StepOutput:
    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    new_logprobs: list[TokenLogprob] = field(default_factory=list)
    # In a request's first output only, when it asked for them: one entry per prompt token (None for the first)
    prompt_logprobs: list[TokenLogprob | None] | None = None

    def extend(self, later: StepOutput) -> StepOutput:
        """This step's output followed by a later token's (speculative decoding emits several a step)."""
        return StepOutput(self.request_id, self.new_token_ids + later.new_token_ids, self.new_text + later.new_text,
                          later.finished, later.finish_reason, self.new_logprobs + later.new_logprobs,
                          self.prompt_logprobs)


class RequestsFailed(Exception):
    """A step went wrong for some requests only: they are aborted (their blocks freed); `outputs` holds what
    the step produced for every other request, which go on. A server fails `request_ids` alone."""

    def __init__(self, request_ids: list[str], outputs: list[StepOutput]):
        super().__init__(f"the step failed for request(s) {', '.join(request_ids)}")
        self.request_ids, self.outputs = request_ids, outputs


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None
    num_cached_tokens: int
    arrival_time: float
    first_token_time: float | None
    finish_time: float | None
    prompt_logprobs: list[TokenLogprob | None] | None = None  # asked for: one entry per prompt token

    @property
    def time_to_first_token_s(self) -> float | None:
        return None if self.first_token_time is None else self.first_token_time - self.arrival_time


class Engine:
    def __new__(cls, *args, tensor_parallel_size: int = 1, **kwargs):
        """tensor_parallel_size > 1: this engine is rank 0 of a group of processes (parallel/engine.py)."""
        if tensor_parallel_size == 1:
            return super().__new__(cls)
        from ruvoninference.parallel.engine import tensor_parallel_engine

        return tensor_parallel_engine(*args, tensor_parallel_size=tensor_parallel_size, **kwargs)

    def __init__(
        self,
        model: str | ModelBundle = "smollm2-135m",
        attn: str | AttentionImplementation = "sdpa",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_batch_size: int = 32,
        block_size: int | None = None,
        scheduler: str = "continuous",
        max_num_batched_tokens: int | None = None,
        kv_cache_memory: int | None = None,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        enable_prefix_caching: bool = True,
        mixed_batches: bool = True,
        progress: ProgressCallback | None = None,
        speculative: str | None = None,
        num_speculative_tokens: int = 4,
        draft_model: str | ModelBundle | None = None,
        ngram_max: int = 4,
        speculative_max_batch: int | None = None,
        tensor_parallel_size: int = 1,
        async_scheduling: bool | None = None,
    ):
        if tensor_parallel_size != 1:
            return  # __new__ built this engine as rank 0 of its tensor-parallel group
        started = time.perf_counter()
        check_speculative(speculative, num_speculative_tokens, ngram_max, draft_model)
        self.attn = parse_implementation(attn)
        if isinstance(model, ModelBundle):
            self.device, self.dtype = model.device, model.dtype
        else:
            self.device = resolve_device(device)
            self.dtype = resolve_dtype(dtype, self.device)
        check_implementation(self.attn, self.device, self.dtype)
        self.block_size = block_size or default_block_size(self.attn)
        _check_block_size(self.block_size, self.attn)
        if max_batch_size < 1:
            raise RuvonError(f"The maximum batch size must be at least 1, not {max_batch_size}.")
        self.bundle = model if isinstance(model, ModelBundle) else load_model(model, self.device, self.dtype, progress)
        self.tokenizer = self.bundle.tokenizer
        self.context_length = min(max_model_len or self.bundle.context_length, self.bundle.context_length)
        self.max_batch_size = max_batch_size
        self.max_num_batched_tokens = max_num_batched_tokens or (8192 if self.device.type == "cuda" else 2048)
        self.use_cuda_graphs = self.device.type == "cuda" and not enforce_eager
        if progress:
            progress("Sizing the KV cache", 0, 1)
        num_blocks = self._num_blocks(kv_cache_memory)
        self.kv_cache = allocate_kv_cache(self.bundle.config, num_blocks, self.block_size, self.device, self.dtype)
        self.block_manager = BlockManager(num_blocks, self.block_size, enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, scheduler, max_batch_size, self.max_num_batched_tokens,
                                   mixed_batches)
        self.runner = ModelRunner(self.bundle, self.attn, self.kv_cache, max_batch_size, self.context_length,
                                  self.use_cuda_graphs)
        # Everything a run can need is compiled and captured now, not when a step first needs it (a capture in
        # the middle of a served run stalls every stream): FA2 and our Triton kernels capture one graph per
        # batch bucket, the gathering backends one per (bucket, power-of-two table width).
        if self.use_cuda_graphs:
            self.runner.capture_all(progress)
        else:
            self.runner.warm_up(progress)
        warm_up_sampler(self.device, self.bundle.config.vocab_size, self.dtype)
        self._seqs: dict[str, Sequence] = {}
        self.generator = torch.Generator(device=self.device)  # unseeded draws; seeded rows bring their own
        self.generator.seed()
        self.num_prefill_tokens = 0  # tokens computed in prefill steps (a prefix-cache hit saves some)
        self.speculator = make_speculator(self, speculative, num_speculative_tokens, draft_model, ngram_max,
                                          progress, speculative_max_batch) if speculative else None
        self.num_steps = 0
        # Overlapped steps (engine/overlap.py): on by default where the device runs asynchronously (CUDA).
        # Speculative decoding proposes from the tokens' values, so it steps plainly.
        if async_scheduling is None:
            async_scheduling = self.device.type == "cuda"
        self.async_scheduling = async_scheduling and self.speculator is None
        self._in_flight: InFlight | None = None
        # Loading, sizing the cache, compiling and capturing: nothing of it happens after this point.
        self.startup_s = time.perf_counter() - started

    # -- sizing ---------------------------------------------------------------------------------------

    def _num_blocks(self, kv_cache_memory: int | None) -> int:
        per_block = bytes_per_block(self.bundle.config, self.block_size, self.dtype)
        if kv_cache_memory is not None:
            budget = kv_cache_memory
        elif self.device.type == "cuda":
            budget = self._gpu_budget()
        else:
            wanted = self.max_batch_size * self.context_length * self.bundle.config.kv_bytes_per_token(self.dtype)
            budget = min(CPU_KV_CACHE_BYTES, wanted)
        num_blocks = int(budget // per_block)
        if num_blocks < 1:
            raise RuvonError(
                f"The KV cache budget ({budget / 2**20:,.1f} MiB) holds no block of {self.block_size} tokens "
                f"({per_block / 2**20:,.2f} MiB); give --kv-cache-memory at least {per_block / 2**20:,.2f} MiB"
                + (" or a smaller block size." if self.block_size > 16 else ".")
            )
        return num_blocks

    def _gpu_budget(self) -> float:
        """What is left for the cache once weights and a worst-case prefill step's activations are in."""
        config = self.bundle.config
        tokens = min(self.max_num_batched_tokens, self.max_batch_size * self.context_length)
        seq_len = min(self.context_length, tokens)
        n_seqs = max(1, tokens // seq_len)
        per_seq = -(-seq_len // self.block_size)
        scratch = allocate_kv_cache(config, n_seqs * per_seq, self.block_size, self.device, self.dtype)
        runner = ModelRunner(self.bundle, self.attn, scratch, self.max_batch_size, self.context_length, False)
        seqs = []
        for i in range(n_seqs):
            seq = Sequence(f"profile-{i}", [0] * seq_len, SamplingParams(), frozenset())
            seq.block_table = list(range(i * per_seq, (i + 1) * per_seq))
            seqs.append(seq)
        # The step also scores as many prompt positions as one step may (their logits and log-softmax).
        scored = min(PROMPT_LOGPROB_ROWS, seq_len - 1)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        logits, _ = runner.run(ScheduledBatch(seqs, [seq_len] * n_seqs, n_seqs,
                                              [PromptChunk(seqs[0], 0, scored)] if scored > 0 else []))
        if scored > 0:
            prompt_logprobs(logits[:scored], torch.zeros(scored, dtype=torch.long, device=self.device), MAX_LOGPROBS)
        del logits
        torch.cuda.synchronize(self.device)
        activations = torch.cuda.max_memory_allocated(self.device) - before
        del runner, scratch
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        return free - (1 - GPU_MEMORY_UTILIZATION) * total - activations

    # -- requests -------------------------------------------------------------------------------------

    def encode(self, prompt: str | SequenceType[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        else:
            ids = [int(t) for t in prompt]
            vocab = self.bundle.config.vocab_size
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise RuvonError(f"Token id {bad[0]} is outside the model's vocabulary (0 to {vocab - 1}).")
        if not ids:
            raise RuvonError("The prompt is empty; give some text to continue.")
        return ids

    def check_request(self, prompt_ids: list[int], sampling: SamplingParams) -> None:
        """Raise a one-sentence RuvonError for a request that could never run."""
        sampling.check_vocabulary(self.bundle.config.vocab_size)
        if sampling.prompt_logprobs is not None and self.speculator is not None:
            raise RuvonError("Prompt log-probabilities are not computed with speculative decoding; leave "
                             "prompt_logprobs out or use an engine without --speculative.")
        total = len(prompt_ids) + sampling.max_tokens
        if total > self.context_length:
            raise RuvonError(
                f"The prompt is {len(prompt_ids)} token{'s' if len(prompt_ids) != 1 else ''} and "
                f"{sampling.max_tokens} more were asked for, but the "
                f"model's context is {self.context_length} tokens; shorten the prompt or ask for fewer tokens."
            )
        needed = self.block_manager.blocks_for(total)
        if needed > self.block_manager.num_blocks:
            raise RuvonError(
                f"The request needs {needed} KV-cache blocks ({total} tokens) but the cache has "
                f"{self.block_manager.num_blocks}; give the cache more memory (--kv-cache-memory) or ask for "
                f"fewer tokens."
            )

    def add_request(self, prompt: str | SequenceType[int], sampling: SamplingParams = SamplingParams(),
                    request_id: str | None = None, stream_text: bool = True) -> str:
        """Queue a request. `stream_text=False`: `StepOutput.new_text` stays empty and the text is decoded
        once at the end (cheaper, for callers that only read the final output)."""
        ids = self.encode(prompt)
        self.check_request(ids, sampling)
        return self._add(ids, sampling, request_id, stream_text)

    def _add(self, ids: list[int], sampling: SamplingParams, request_id: str | None = None,
             stream_text: bool = True) -> str:
        request_id = request_id or new_request_id()
        if request_id in self._seqs:
            raise RuvonError(f"Request id '{request_id}' is already in use; give a new one.")
        eos = frozenset() if sampling.ignore_eos else self.bundle.eos_token_ids
        seq = Sequence(request_id, ids, sampling, eos)
        if stream_text or sampling.stop:  # stop strings are found in the text as it grows
            seq.detokenizer = IncrementalDetokenizer(self.tokenizer, sampling.stop)
        self._seqs[request_id] = seq
        self.scheduler.add(seq)
        return request_id

    def abort(self, request_id: str) -> None:
        seq = self._seqs.pop(request_id, None)
        if seq is not None:
            if self.speculator is not None:
                self.speculator.forget(request_id)
            self.scheduler.finish(seq, "abort")
            if seq.num_pending:  # drawn but never read (overlapped steps): not part of its output
                del seq.token_ids[len(seq.token_ids) - seq.num_pending:]
                seq.num_pending = 0
            seq.finish_time = time.perf_counter()
            seq.finish_text(self.tokenizer)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or self._in_flight is not None

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    def sequence(self, request_id: str) -> Sequence | None:
        return self._seqs.get(request_id)

    # -- the step -------------------------------------------------------------------------------------

    def step(self) -> list[StepOutput]:
        if self.async_scheduling and type(self.runner) is ModelRunner:
            return self._step_overlapped()
        spec = self.speculator
        if spec is not None:
            spec.propose(self.scheduler.running)  # guesses for the decoding sequences (seq.spec_token_ids)
        batch = self.scheduler.schedule()
        if batch is None:
            return []
        logits, producing = self.runner.run(batch)
        self._advance(batch)
        scores = None
        if batch.prompt_rows:  # the first rows score prompt positions
            scores, logits = self._score(batch, logits)
        if not producing:
            if scores is not None:
                self._land_scores(scores)
            return []
        seqs = [batch.seqs[i] for i in producing]
        positions = spec.positions(seqs) if spec is not None else None
        tensors = SamplingTensors.from_sequences(seqs, self.device, logits.shape[1], positions,
                                                 pin=self.device.type == "cuda")
        sampled = sample(logits, tensors, self.generator)
        if scores is not None:  # (never with speculation: check_request refuses it)
            self._land_scores(scores)
        if spec is None:
            return self._postprocess(seqs, sampled)
        seqs, sampled = spec.accept(seqs, logits, tensors, sampled)  # each sequence's accepted rows
        outputs = self._postprocess(seqs, sampled)
        spec.settle(batch)
        return outputs

    def _step_overlapped(self) -> list[StepOutput]:
        """Launch the next step before reading the last one's tokens (engine/overlap.py)."""
        flight, outputs = self._in_flight, []
        self._in_flight = None  # landed below, once (RequestsFailed may interrupt a landing)
        if flight is not None and flight.needs_values:  # penalties read the drawn tokens: wait for them
            flight, outputs = None, self._land(flight)
        launched = None
        batch = self.scheduler.schedule()
        if batch is not None:
            inputs = self.runner.prepare(batch)
            if flight is not None:
                patch_inputs(inputs.input_ids, batch.seqs[batch.num_prefill:], inputs.meta.num_prefill_tokens,
                             flight)
            logits = self.runner.execute(inputs)
            self._advance(batch)
            scores = None
            if batch.prompt_rows:  # the first rows score prompt positions
                scores, logits = self._score(batch, logits)
            if inputs.producing:
                seqs = [batch.seqs[i] for i in inputs.producing]
                tensors = SamplingTensors.from_sequences(seqs, self.device, logits.shape[1],
                                                         pin=self.device.type == "cuda")
                launched = InFlight.launch(seqs, sample(logits, tensors, self.generator), scores)
            elif scores is not None:
                launched = InFlight.launch([], None, scores)
        self._in_flight = launched
        if flight is not None:
            outputs = self._land(flight)  # the GPU runs the step just launched meanwhile
        return outputs

    def _land(self, flight: InFlight) -> list[StepOutput]:
        if flight.prompt is not None:
            self._land_scores(flight.prompt)
        if not flight.seqs:
            return []
        outputs = self._postprocess(flight.seqs, flight.copy, flight.indices)
        for seq in flight.seqs:
            if not seq.finished and seq.num_computed_tokens // self.block_size > seq.num_hashed_blocks:
                self.block_manager.commit_full_blocks(seq)  # blocks whose last token was still on the way
        return outputs

    def _advance(self, batch: ScheduledBatch) -> None:
        """The step's tokens are in the cache now: count them, and offer full blocks to the prefix cache."""
        self.num_steps += 1
        block_size = self.block_size
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n - len(seq.spec_token_ids)  # accepted guesses count once verified
            if seq.num_computed_tokens // block_size > seq.num_hashed_blocks:  # a block became full
                self.block_manager.commit_full_blocks(seq)
        self.num_prefill_tokens += sum(batch.num_new_tokens[:batch.num_prefill])
        for seq, first, count in batch.prompt_rows:
            seq.prompt_logprob_next = first + count

    def _score(self, batch: ScheduledBatch, logits: torch.Tensor) -> tuple[PromptScores, torch.Tensor]:
        """Turn the step's first rows (prompt positions) into log-probabilities and start their copy to the
        host; return them and the rows left, the ones that sample."""
        chunks = batch.prompt_rows
        next_ids = [t for seq, first, count in chunks for t in seq.prompt_token_ids[first + 1:first + 1 + count]]
        ids = torch.tensor(next_ids, dtype=torch.long, pin_memory=self.device.type == "cuda")
        num_top = max(seq.sampling.prompt_logprobs for seq, _, _ in chunks)
        scored = prompt_logprobs(logits[:len(next_ids)], ids.to(self.device, non_blocking=True), num_top)
        return PromptScores(chunks, HostCopy.start(scored)), logits[len(next_ids):]

    @staticmethod
    def _land_scores(scores: PromptScores) -> None:
        """Append each scored prompt position's TokenLogprob to its sequence (in position order: chunks land in
        the order they ran, and a position is scheduled once)."""
        tokens, logprobs, top_ids, top_lps = scores.copy.finish()
        row = 0
        for seq, _, count in scores.chunks:
            if not seq.finished:  # (aborted since)
                k = seq.sampling.prompt_logprobs
                seq.prompt_logprobs += [TokenLogprob(tokens[r], logprobs[r], list(zip(top_ids[r][:k], top_lps[r][:k])))
                                        for r in range(row, row + count)]
            row += count

    def _postprocess(self, seqs: list[Sequence], sampled: SamplerOutput | HostCopy,
                     pending_at: list[int] | None = None) -> list[StepOutput]:
        """Append each drawn token (or fill in its pending token), apply the stop rules, release finished
        sequences' blocks."""
        copy = sampled if isinstance(sampled, HostCopy) else HostCopy.start(sampled)
        tokens, logprobs, top_ids, top_lps = copy.finish()  # the one host sync of the step
        now = time.perf_counter()
        failed: list[tuple[str, Exception]] = []
        outputs = []
        for row, seq in enumerate(seqs):
            if seq.finished:
                continue  # speculative decoding: a token after the one that finished the sequence
            if not seq.sampling.max_tokens:  # the prompt's log-probabilities were all it asked for
                outputs.append(self._scored_only(seq, None if pending_at is None else pending_at[row], now))
                continue
            lp = None
            if row in logprobs:
                n = seq.sampling.logprobs
                lp = TokenLogprob(tokens[row], logprobs[row], list(zip(top_ids[row][:n], top_lps[row][:n])))
            first = seq.first_token_time is None
            if first:
                seq.first_token_time = now
            try:
                if pending_at is None:
                    delta = seq.append_token(tokens[row], lp)
                else:
                    delta = seq.resolve_token(pending_at[row], tokens[row], lp)
                if seq.finish_reason is not None:
                    self._finish(seq, now)
            except Exception as exc:  # a bug in one sequence's bookkeeping (text, stop rules): it fails alone
                failed.append((seq.request_id, exc))
                self.abort(seq.request_id)
                continue
            out = StepOutput(seq.request_id, [tokens[row]], delta, seq.finished, seq.finish_reason,
                             [lp] if lp is not None else [], seq.prompt_logprobs if first else None)
            if outputs and outputs[-1].request_id == seq.request_id:  # several tokens in one step (speculation)
                out = outputs.pop().extend(out)
            outputs.append(out)
        if failed:
            raise RequestsFailed([rid for rid, _ in failed], outputs) from failed[0][1]
        return outputs

    def _scored_only(self, seq: Sequence, pending_at: int | None, now: float) -> StepOutput:
        """max_tokens=0: the token drawn after the prompt is dropped (a pending one taken back) and the request
        ends with its prompt's log-probabilities, which the steps of its prefill have all landed by now."""
        if pending_at is not None:
            del seq.token_ids[pending_at:]
            seq.num_pending = 0
        seq.finish_reason = "length"
        self._finish(seq, now)
        return StepOutput(seq.request_id, [], "", True, "length", [], seq.prompt_logprobs)

    def _finish(self, seq: Sequence, now: float) -> None:
        if self.speculator is not None:
            self.speculator.forget(seq.request_id)
        self.scheduler.finish(seq, seq.finish_reason)
        self._seqs.pop(seq.request_id, None)
        seq.finish_time = now
        seq.finish_text(self.tokenizer)

    # -- offline ----------------------------------------------------------------------------------------

    def generate(
        self,
        prompts: str | SequenceType[str] | SequenceType[SequenceType[int]],
        sampling: SamplingParams | SequenceType[SamplingParams] = SamplingParams(),
        on_output: Callable[[StepOutput], None] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs in the order of the prompts."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = [sampling] * len(prompts) if isinstance(sampling, SamplingParams) else list(sampling)
        if len(params) != len(prompts):
            raise RuvonError(f"Got {len(params)} sampling settings for {len(prompts)} prompts; give one or one each.")
        encoded = [self.encode(p) for p in prompts]
        for ids, p in zip(encoded, params):  # every request is checked before any runs
            self.check_request(ids, p)
        # encoded and checked above; text is decoded incrementally only for a caller that reads it as it grows
        ids = [self._add(e, p, stream_text=on_output is not None) for e, p in zip(encoded, params)]
        seqs = [self._seqs[i] for i in ids]
        while any(not s.finished for s in seqs):
            for out in self.step():
                if on_output is not None:
                    on_output(out)
        return [_request_output(s) for s in seqs]


def _check_block_size(block_size: int, attn: AttentionImplementation) -> None:
    if block_size < 16 or block_size & (block_size - 1):
        raise RuvonError(f"The block size must be a power of two of at least 16, not {block_size}.")
    if attn is AttentionImplementation.FLASH_ATTENTION_2 and block_size % FLASH_ATTENTION_BLOCK_SIZE:
        raise RuvonError(
            f"FlashAttention-2's paged KV cache needs a block size that is a multiple of "
            f"{FLASH_ATTENTION_BLOCK_SIZE}, not {block_size}; leave --block-size out or pass 256."
        )


def _request_output(seq: Sequence) -> RequestOutput:
    return RequestOutput(
        request_id=seq.request_id,
        prompt_token_ids=seq.prompt_token_ids,
        token_ids=seq.output_token_ids,
        text=seq.text,
        logprobs=seq.logprobs if seq.sampling.logprobs is not None else None,
        finish_reason=seq.finish_reason,
        num_cached_tokens=seq.num_cached_tokens,
        arrival_time=seq.arrival_time,
        first_token_time=seq.first_token_time,
        finish_time=seq.finish_time,
        prompt_logprobs=seq.prompt_logprobs,
    )
