"""The sampler: one batch of logits in, one token per row out, with a fixed set of kernels for the batch.

Every row of a batch may ask for something different (greedy, a temperature, top-k, top-p, a seed,
penalties, a logit bias). The textbook loop samples row by row, paying several kernel launches per row per
step; at 256 rows that is thousands of launches and most of the step. Here every per-row setting is a
tensor and each stage is one operation over the whole batch:

    logits [N, V] --logit_bias--> --min_tokens (no EOS yet)--> --repetition, frequency, presence penalties-->
           --/ temperature--> --top-k, top-p--> softmax --> race of exponentials --> tokens [N]

Greedy rows take the argmax of the (biased, penalised) logits; a temperature below `MIN_TEMPERATURE` is
greedy, so no row can turn the softmax into NaN. A stage that no row asks for costs nothing.

**The draw.** If E_1..E_V are independent Exp(1) variables, `argmax_i p_i / E_i` is token i with probability
exactly p_i: E_i / p_i is exponential with rate p_i, and the smallest of independent exponentials is the
one with rate p_i with probability p_i / sum(p) ("the race of exponentials"; taking logs, it is the
Gumbel-max trick). So a draw is one elementwise division and one argmax for the whole batch, with no
cumulative sums and no per-row `torch.multinomial`.

**Seeds.** A seeded row's exponentials must not depend on what else is in the batch. They come from a
counter-based hash of (seed, position of the token being drawn, vocabulary id), not from a shared random
stream, so a seeded request gives the same tokens alone, in any batch, at any batch size, with or without
CUDA graphs, on every run. Unseeded rows draw from the engine's generator in one `exponential_` call.

**Log-probabilities** are the model's own: log-softmax of the raw logits in float32, whatever the filters
did, as OpenAI and vLLM report them; they are computed only for the rows that ask. A prompt's own tokens get
theirs the same way (`prompt_logprobs`: the logits of position p against token p + 1).

Shapes: N = rows sampled this step, V = vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ruvoninference.sampling import MIN_TEMPERATURE, SamplingParams

_MASK32 = 0xFFFFFFFF


# -- counter-based random numbers ----------------------------------------------------------------------

def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) on int64 tensors holding values in [0, 2**32).

    The multipliers are below 2**31, so every product stays below 2**63: no signed overflow, the same bits
    on every device.
    """
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _MASK32
    return x ^ (x >> 15)


def row_keys(seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per row from its 64-bit seed (as two halves) and the position being drawn. [N] -> [N]"""
    lo, hi = seeds & _MASK32, (seeds >> 32) & _MASK32
    key = _mix32(lo ^ _mix32(hi ^ 0x2545F491))
    return _mix32(key ^ _mix32((positions & _MASK32) ^ 0x68E31DA4))


def uniforms(keys: torch.Tensor, num: int, salt: int = 0) -> torch.Tensor:
    """[N] keys -> [N, num] float32 uniforms in (0, 1): entry (r, i) depends only on keys[r], i and salt."""
    ids = torch.arange(num, device=keys.device, dtype=torch.int64)
    x = _mix32(keys[:, None] ^ _mix32(ids ^ (0x1B873593 + salt)))  # [N, num]
    return ((x >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # 24 bits: exact in float32, never 0 or 1


def seeded_exponentials(seeds: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """Exp(1) noise [N, V] that depends only on each row's seed, position and the vocabulary id."""
    return -torch.log(uniforms(row_keys(seeds, positions), vocab))


# -- the batch's settings as tensors -------------------------------------------------------------------

@dataclass
class SamplingTensors:
    """Per-row sampling settings for one step, on the device. Stages no row needs are None."""

    temperature: torch.Tensor  # [N] float32; 1.0 on greedy rows (never divided by 0)
    greedy: torch.Tensor  # [N] bool
    all_greedy: bool
    any_greedy: bool
    seeded_rows: torch.Tensor | None  # [S] rows with their own seed
    seeds: torch.Tensor | None  # [S] int64 (the seed's 64 bits as a signed integer)
    positions: torch.Tensor | None  # [S] int64: index of the token being drawn in its sequence
    top_k: torch.Tensor | None  # [N] int64, V where a row does not filter
    top_p: torch.Tensor | None  # [N] float32, 1.0 where a row does not filter
    penalty_rows: torch.Tensor | None  # [P] rows with penalties
    presence: torch.Tensor | None  # [P, 1]
    frequency: torch.Tensor | None  # [P, 1]
    repetition: torch.Tensor | None  # [P, 1]
    output_ids: torch.Tensor | None  # [P, Lo] int64, padded with V
    prompt_ids: torch.Tensor | None  # [P, Lp] int64, padded with V
    bias_index: tuple[torch.Tensor, torch.Tensor] | None  # (rows [K], token ids [K])
    bias_values: torch.Tensor | None  # [K] float32
    no_eos: tuple[torch.Tensor, torch.Tensor] | None  # (rows, token ids) masked to -inf (min_tokens)
    logprob_rows: list[int]  # rows that report log-probabilities
    num_top_logprobs: int  # the most alternatives any row asked for

    @staticmethod
    def from_sequences(seqs, device: torch.device, vocab_size: int, positions: list[int] | None = None,
                       pin: bool = False) -> SamplingTensors:
        """Build the step's tensors from its sequences (objects with `.sampling`, `.token_ids`,
        `.prompt_token_ids`, `.num_tokens`, `.num_output_tokens`, `.eos_token_ids`).

        `positions[r]` is the index of the token row r draws (default: the sequence's next token).
        """
        params: list[SamplingParams] = [s.sampling for s in seqs]
        if positions is None:
            positions = [s.num_tokens for s in seqs]

        def tensor(values, dtype):
            return torch.tensor(values, dtype=dtype, pin_memory=pin).to(device, non_blocking=True)

        def padded(lists, pad):
            width = max(1, max(len(x) for x in lists))
            return tensor([x + [pad] * (width - len(x)) for x in lists], torch.int64)

        greedy = [p.greedy for p in params]
        all_greedy = all(greedy)
        temperature = tensor([1.0 if g else p.temperature for p, g in zip(params, greedy)], torch.float32)
        if all(p.plain for p in params):  # the common case: nothing but temperatures, nothing else to build
            return SamplingTensors(temperature, tensor(greedy, torch.bool), all_greedy, any(greedy), *[None] * 14,
                                   [], 0)
        seeded = [r for r, p in enumerate(params) if not greedy[r] and p.seed is not None]
        filtering = not all_greedy and any((p.top_k and p.top_k < vocab_size) or p.top_p < 1.0
                                           for p, g in zip(params, greedy) if not g)
        penalised = [r for r, p in enumerate(params) if p.has_penalties]
        bias = [(r, t, v) for r, p in enumerate(params) for t, v in p.logit_bias.items()]
        no_eos = [(r, t) for r, (s, p) in enumerate(zip(seqs, params))
                  if s.num_output_tokens < p.min_tokens for t in sorted(s.eos_token_ids)]
        wants_lp = [r for r, p in enumerate(params) if p.logprobs is not None]
        return SamplingTensors(
            temperature=temperature,
            greedy=tensor(greedy, torch.bool),
            all_greedy=all_greedy,
            any_greedy=any(greedy),
            seeded_rows=tensor(seeded, torch.int64) if seeded else None,
            seeds=tensor([params[r].seed - (1 << 64) if params[r].seed >= 1 << 63 else params[r].seed
                          for r in seeded], torch.int64) if seeded else None,
            positions=tensor([positions[r] for r in seeded], torch.int64) if seeded else None,
            top_k=tensor([p.top_k if p.top_k and not g else vocab_size for p, g in zip(params, greedy)],
                         torch.int64) if filtering else None,
            top_p=tensor([1.0 if g else p.top_p for p, g in zip(params, greedy)], torch.float32)
            if filtering else None,
            penalty_rows=tensor(penalised, torch.int64) if penalised else None,
            presence=tensor([[params[r].presence_penalty] for r in penalised], torch.float32)
            if penalised else None,
            frequency=tensor([[params[r].frequency_penalty] for r in penalised], torch.float32)
            if penalised else None,
            repetition=tensor([[params[r].repetition_penalty] for r in penalised], torch.float32)
            if penalised else None,
            output_ids=padded([seqs[r].token_ids[seqs[r].num_prompt_tokens:] for r in penalised], vocab_size)
            if penalised else None,
            prompt_ids=padded([seqs[r].prompt_token_ids for r in penalised], vocab_size) if penalised else None,
            bias_index=(tensor([b[0] for b in bias], torch.int64), tensor([b[1] for b in bias], torch.int64))
            if bias else None,
            bias_values=tensor([b[2] for b in bias], torch.float32) if bias else None,
            no_eos=(tensor([x[0] for x in no_eos], torch.int64), tensor([x[1] for x in no_eos], torch.int64))
            if no_eos else None,
            logprob_rows=wants_lp,
            num_top_logprobs=max((params[r].logprobs for r in wants_lp), default=0),
        )


@dataclass
class SamplerOutput:
    """A step's draws, still on the device: the caller decides when to pay for the host sync."""

    tokens: torch.Tensor  # [N] int64
    logprobs: torch.Tensor | None  # [L] float32 for the rows in `logprob_rows`, the chosen tokens'
    top_ids: torch.Tensor | None  # [L, n] int64 when some row asked for n > 0 alternatives
    top_logprobs: torch.Tensor | None  # [L, n] float32
    logprob_rows: list[int]


# -- the stages, each one operation over the batch -----------------------------------------------------

def apply_logit_bias(logits: torch.Tensor, t: SamplingTensors) -> torch.Tensor:
    if t.bias_index is not None:
        logits = logits.index_put(t.bias_index, t.bias_values, accumulate=True)
    if t.no_eos is not None:
        logits = logits.index_put(t.no_eos, torch.tensor(float("-inf"), device=logits.device))
    return logits


def token_counts(ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """[P, L] token ids padded with `vocab` -> [P, V] how often each id occurs."""
    counts = torch.zeros(ids.shape[0], vocab + 1, dtype=torch.float32, device=ids.device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float32))
    return counts[:, :vocab]


def apply_penalties(logits: torch.Tensor, t: SamplingTensors) -> torch.Tensor:
    """vLLM's definitions. Repetition: a token seen in the prompt or the output has its logit divided by the
    penalty if positive, multiplied if negative. Frequency and presence (OpenAI): subtract `frequency *
    count` and `presence * (count > 0)`, counting generated tokens only."""
    if t.penalty_rows is None:
        return logits
    vocab = logits.shape[1]
    rows = logits[t.penalty_rows]  # [P, V]
    out_counts = token_counts(t.output_ids, vocab)
    seen = (out_counts + token_counts(t.prompt_ids, vocab)) > 0
    penalised = torch.where(rows > 0, rows / t.repetition, rows * t.repetition)
    rows = torch.where(seen, penalised, rows)
    rows = rows - t.frequency * out_counts - t.presence * (out_counts > 0).to(rows.dtype)
    return logits.index_copy(0, t.penalty_rows, rows)


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Mask to -inf what each row's top-k and top-p leave out: one sort for the batch.

    Top-p keeps the smallest set of most likely tokens whose mass reaches p: a token is dropped when the
    tokens strictly more likely than it already cover p. The most likely token always stays, so a top-p of
    1e-300 (zero in float32) is greedy, not an empty set.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [N, V]
    rank = torch.arange(logits.shape[1], device=logits.device)
    drop = rank[None, :] >= top_k[:, None]
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs
    drop |= mass_before >= top_p[:, None]
    drop[:, 0] = False
    return logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def draw(probs: torch.Tensor, t: SamplingTensors, generator: torch.Generator | None) -> torch.Tensor:
    """argmax(p / E), E ~ Exp(1): a sample from each row of `probs` [N, V]."""
    # exponential_ may return exactly 0; 0/0 on a filtered token would be NaN, which argmax would pick.
    noise = torch.empty_like(probs).exponential_(generator=generator).clamp_min_(1e-20)
    if t.seeded_rows is not None:
        noise[t.seeded_rows] = seeded_exponentials(t.seeds, t.positions, probs.shape[1])
    return probs.div_(noise).argmax(dim=-1)  # in place: probs is the caller's scratch


def draw_keys(t: SamplingTensors, n: int, device: torch.device,
              generator: torch.Generator | None) -> torch.Tensor:
    """Each row's 32-bit noise key [N]: from its seed and position when seeded, else from the generator."""
    keys = torch.randint(0, 1 << 32, (n,), device=device, generator=generator, dtype=torch.int64)
    if t.seeded_rows is not None:
        keys[t.seeded_rows] = row_keys(t.seeds, t.positions)
    return keys


def _fused_draw(x: torch.Tensor) -> bool:
    """On CUDA the draw is one Triton kernel (`kernels/sampling.py`); elsewhere it is the PyTorch code above."""
    return x.is_cuda and x.stride(-1) == 1 and _triton_available()


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def warm_up(device: torch.device, vocab_size: int, dtype: torch.dtype) -> None:
    """Compile the fused draw now, for the logits' dtype and for float32 (the copy penalties and top-k make):
    compiled at a request's first sampled token instead, it held that step up for about 0.5 s on an H200."""
    probe = torch.zeros(1, vocab_size, dtype=dtype, device=device)
    if not _fused_draw(probe):
        return
    from ruvoninference.kernels.sampling import gumbel_argmax

    one = torch.ones(1, device=device)
    for logits in (probe, probe.float()):
        gumbel_argmax(logits, one, one, torch.zeros(1, dtype=torch.long, device=device))


def sample(logits: torch.Tensor, t: SamplingTensors, generator: torch.Generator | None = None) -> SamplerOutput:
    """One token per row of `logits` [N, V] (any float dtype)."""
    edits = t.penalty_rows is not None or t.bias_index is not None or t.no_eos is not None
    # The fused draw reads the logits in their own dtype; every other path works on a float32 copy.
    untouched = not edits and t.top_k is None and not t.logprob_rows
    if untouched and t.all_greedy:  # argmax is exact in any dtype: no float32 copy
        return SamplerOutput(logits.argmax(dim=-1), None, None, None, [])
    raw = logits if untouched and _fused_draw(logits) else logits.float()
    scores = apply_penalties(apply_logit_bias(raw, t), t)
    if t.all_greedy:
        return _with_logprobs(raw, scores.argmax(dim=-1), t)
    inv_temperature = t.temperature.reciprocal()
    if t.top_k is not None:
        scores = apply_top_k_top_p(scores * inv_temperature[:, None], t.top_k, t.top_p)
        inv_temperature = torch.ones_like(inv_temperature)
    if _fused_draw(scores):
        from ruvoninference.kernels.sampling import gumbel_argmax

        keys = draw_keys(t, scores.shape[0], scores.device, generator)
        tokens = gumbel_argmax(scores, inv_temperature, (~t.greedy).float(), keys)
        return _with_logprobs(raw, tokens, t)
    tokens = draw((scores * inv_temperature[:, None]).softmax(dim=-1), t, generator)
    if t.any_greedy:
        tokens = torch.where(t.greedy, scores.argmax(dim=-1), tokens)
    return _with_logprobs(raw, tokens, t)


def _with_logprobs(raw: torch.Tensor, tokens: torch.Tensor, t: SamplingTensors) -> SamplerOutput:
    if not t.logprob_rows:
        return SamplerOutput(tokens, None, None, None, [])
    rows = torch.tensor(t.logprob_rows, device=raw.device)
    return _logprobs(raw[rows], tokens, tokens[rows], t.num_top_logprobs, t.logprob_rows)


def _logprobs(raw: torch.Tensor, tokens: torch.Tensor, chosen_ids: torch.Tensor, num_top: int,
              rows: list[int]) -> SamplerOutput:
    """raw [L, V] float32 logits of the rows `rows`; chosen_ids [L]: each row's token -> its logprob and the
    num_top most likely (with `tokens` [N], the step's draws)."""
    logprobs = raw.log_softmax(dim=-1)  # the model's own distribution, before any filter
    chosen = logprobs.gather(1, chosen_ids[:, None])[:, 0]
    if num_top == 0:
        return SamplerOutput(tokens, chosen, None, None, rows)
    top = logprobs.topk(num_top, dim=-1)  # sorted, most likely first
    return SamplerOutput(tokens, chosen, top.indices, top.values, rows)


def prompt_logprobs(logits: torch.Tensor, next_ids: torch.Tensor, num_top: int) -> SamplerOutput:
    """logits [P, V] of prompt positions (any float dtype), next_ids [P] the prompt token after each: every
    row's logprob of its next token and its num_top most likely, in the sampler's output shape (`tokens` are
    the next tokens, every row reports)."""
    return _logprobs(logits.float(), next_ids, next_ids, num_top, list(range(logits.shape[0])))
