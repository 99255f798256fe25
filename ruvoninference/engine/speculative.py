"""Speculative decoding: guess k tokens cheaply, check them all in one pass of the model, keep what it agrees with.

At batch 1 a decode step reads every weight of the model to produce one token; the GPU's arithmetic units
idle while the weights stream by. A pass over 1 + k tokens of the same sequence reads the same weights once
and costs about the same, so if something cheap can guess the next k tokens, one pass can check all of them:
row i of that pass gives the target model's distribution for the token after guess i. Keep the longest
prefix of guesses the target agrees with, plus one token of the target's own (the correction at the first
disagreement, or a bonus token after the last guess), and a step emits between 1 and k + 1 tokens.

Two proposers guess:

- `NgramProposer` (prompt lookup): find the latest earlier place where the sequence's last n tokens occurred
  (n from `ngram_max` down to `ngram_min`, in its own prompt and output) and propose the tokens that followed
  there. No model, a dictionary lookup per step; it pays when the answer copies from the prompt (rewriting
  a passage, editing code, extracting quotes) and proposes nothing otherwise.
- `DraftProposer`: a second, smaller model with the target's vocabulary runs k cheap decode steps over its
  own paged KV cache.

Acceptance keeps the output exactly the target's (Leviathan et al. 2023; Chen et al. 2023). A guess x drawn
from the proposer's distribution q is kept with probability min(1, p(x) / q(x)), p being the target's
distribution after the same prefix; at the first rejection the token is drawn from the residual
normalize(max(0, p - q)). Then the emitted token has distribution p:

    P(emit y) = q(y) min(1, p(y)/q(y)) + (1 - sum_x q(x) min(1, p(x)/q(x))) * max(0, p(y) - q(y)) / Z
              = min(q(y), p(y))        + (1 - sum_x min(q(x), p(x)))        * max(0, p(y) - q(y)) / Z

  and sum_x min(q, p) = 1 - sum_x max(0, p - q) = 1 - Z, so the second term is max(0, p(y) - q(y)) and the
  sum is min(q, p) + max(0, p - q) = p(y).

Every emitted token is therefore a draw from p given the tokens before it, which is what decoding without
speculation does. A deterministic guess (n-gram) is the case q = a point mass on x: keep x with probability
p(x), otherwise draw from p with x removed, which is the same as "draw y from p; keep x if y == x, else emit
y". That is how `accept_point_mass` does it, with the target's own seeded draw, so an n-gram-speculating
seeded request gives exactly the tokens it gives without speculation. Greedy decoding is the temperature-0
case of the same rule: keep guesses while they equal the target's argmax.

Randomness per row comes from (the request's seed, the token's position, the vocabulary id) through the
sampler's counter-based hash, never from a generator's state, so a seeded request draws the same numbers
whatever else is in its batch and however many tokens each step accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ruvoninference.engine.sampler import row_keys, uniforms
from ruvoninference.errors import RuvonError

METHODS = ("ngram", "draft")
MAX_SPECULATIVE_TOKENS = 16  # beyond this a wrong guess early wastes most of a long verify pass
DEFAULT_NGRAM_MAX = 4
MAX_NGRAM = 32


def check_speculative(method: str | None, num_speculative_tokens: int, ngram_max: int = DEFAULT_NGRAM_MAX,
                      draft_model: object | None = None) -> None:
    """One-sentence errors for settings that can never work (before any model loads)."""
    if method is None:
        if draft_model is not None:
            raise RuvonError("A draft model was given without speculation; add --speculative draft.")
        return
    if method not in METHODS:
        raise RuvonError(f"Unknown speculative method '{method}'; choose ngram or draft.")
    if isinstance(num_speculative_tokens, bool) or not isinstance(num_speculative_tokens, int) \
            or not 1 <= num_speculative_tokens <= MAX_SPECULATIVE_TOKENS:
        raise RuvonError(f"The number of speculative tokens must be from 1 to {MAX_SPECULATIVE_TOKENS}, "
                         f"not {num_speculative_tokens!r}.")
    if method == "ngram" and not 1 <= ngram_max <= MAX_NGRAM:
        raise RuvonError(f"--ngram-max must be from 1 to {MAX_NGRAM}, not {ngram_max}.")
    if method == "draft" and draft_model is None:
        raise RuvonError("Speculation with a draft model needs one; name it with --draft-model.")


def check_draft_compatible(target, draft) -> None:
    """A draft must speak the target's vocabulary: same size and the same ids for the same text."""
    tv, dv = target.config.vocab_size, draft.config.vocab_size
    if tv != dv:
        raise RuvonError(f"The draft model '{draft.name}' has a vocabulary of {dv} tokens but the target "
                         f"'{target.name}' has {tv}; choose a draft that shares the target's tokenizer.")
    if target.tokenizer.get_vocab() != draft.tokenizer.get_vocab():
        raise RuvonError(f"The draft model '{draft.name}' uses a different tokenizer from the target "
                         f"'{target.name}'; choose a draft that shares the target's tokenizer.")


# -- the n-gram proposer --------------------------------------------------------------------------------


class _NgramIndex:
    """For one sequence: each n-gram (n in [lo, hi]) -> where the token after its latest occurrence is.

    Appending token t at position p registers the n-grams ending at p - 1 (they are now followed by
    something), so a lookup of the sequence's own last n tokens never finds itself. Tokens are only ever
    appended (rejected guesses never enter `token_ids`), so the index grows by hi - lo + 1 entries a token.
    """

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self.indexed = 0  # tokens token_ids[:indexed] are registered
        self.table: dict[tuple[int, ...], int] = {}

    def update(self, tokens: list[int]) -> None:
        for p in range(max(self.indexed, 1), len(tokens)):
            for n in range(self.lo, min(self.hi, p) + 1):
                self.table[tuple(tokens[p - n:p])] = p
        self.indexed = len(tokens)

    def lookup(self, tokens: list[int], k: int) -> list[int]:
        for n in range(min(self.hi, len(tokens)), self.lo - 1, -1):
            start = self.table.get(tuple(tokens[-n:]))
            if start is not None:
                return tokens[start:start + k]
        return []


class NgramProposer:
    """Prompt lookup: propose what followed the latest earlier occurrence of the sequence's last n tokens."""

    def __init__(self, ngram_max: int = DEFAULT_NGRAM_MAX, ngram_min: int = 1):
        self.ngram_max, self.ngram_min = ngram_max, min(ngram_min, ngram_max)
        self._index: dict[str, _NgramIndex] = {}

    def propose(self, request_id: str, token_ids: list[int], k: int) -> list[int]:
        """Up to k tokens (maybe none) to follow token_ids; pure Python, a few dict lookups."""
        index = self._index.get(request_id)
        if index is None:
            index = self._index[request_id] = _NgramIndex(self.ngram_min, self.ngram_max)
        index.update(token_ids)
        return index.lookup(token_ids, k)

    def forget(self, request_id: str) -> None:
        self._index.pop(request_id, None)


def ngram_propose(token_ids: list[int], k: int, ngram_max: int = DEFAULT_NGRAM_MAX, ngram_min: int = 1) -> list[int]:
    """The proposer's rule without an index, for reading and for testing: scan back for the last n tokens."""
    for n in range(min(ngram_max, len(token_ids) - 1), ngram_min - 1, -1):
        suffix = token_ids[-n:]
        for start in range(len(token_ids) - n - 1, -1, -1):
            if token_ids[start:start + n] == suffix:
                return token_ids[start + n:start + n + k]
    return []


# -- randomness from (seed, position, vocabulary id) ---------------------------------------------------

# Independent streams on top of the sampler's counter-based hash: the target's own draws (the sampler's
# stream itself), acceptance tests, the draft's draws. A stream re-keys the row's key, so two streams never
# share noise (salting the vocabulary ids instead would only permute one stream's noise).
STREAM_ACCEPT, STREAM_DRAFT = 1, 2


def stream_keys(seeds: torch.Tensor, positions: torch.Tensor, stream: int = 0) -> torch.Tensor:
    """One key per row from its seed (int64) and the position of the token it draws: [N] int64."""
    keys = row_keys(seeds.long(), positions.long())
    return keys if stream == 0 else row_keys(keys, torch.full_like(keys, stream))


def race(probs: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """A draw from each row of probs [N, V] (need not be normalized): argmax p / E with E ~ Exp(1) per entry.

    The sampler's race of exponentials with noise from (key, vocabulary id) alone, so the draw does not
    depend on the batch; with stream 0 keys it is exactly the sampler's seeded draw.
    """
    return (probs / -torch.log(uniforms(keys, probs.shape[-1]))).argmax(-1)


# -- acceptance -------------------------------------------------------------------------------------------


def accept_point_mass(target_tokens: torch.Tensor, draft_tokens: torch.Tensor,
                      num_draft: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic guesses (n-gram; any guess when greedy) against the target's own draws.

    target_tokens [B, K+1]: the target's token after each prefix (argmax when greedy, its seeded draw
    otherwise); draft_tokens [B, K] (padding anywhere past num_draft [B]). Keep guesses while they equal
    the target's token; the first disagreement, or the (K_b+1)-th row, gives the target's own token.
    Returns tokens [B, K+1] (the first num_emitted valid) and num_emitted [B] in [1, K_b + 1].
    """
    k = draft_tokens.shape[1]
    valid = torch.arange(k, device=draft_tokens.device)[None, :] < num_draft[:, None]
    agree = (target_tokens[:, :k] == draft_tokens) & valid
    accepted = agree.long().cumprod(-1).sum(-1)  # [B] leading agreements
    # Emitted: the accepted guesses (which equal the target's tokens there), then the target's token at
    # the first row that disagrees: that is target_tokens[:, :accepted + 1] in every case.
    return target_tokens, accepted + 1


def rejection_sample(target_probs: torch.Tensor, draft_tokens: torch.Tensor, draft_probs: torch.Tensor,
                     num_draft: torch.Tensor, accept_u: torch.Tensor,
                     residual_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact speculative sampling for guesses drawn from a distribution q (a draft model).

    target_probs [B, K+1, V]: p after each prefix (temperature, top-k, top-p applied);
    draft_tokens [B, K] drawn from draft_probs [B, K, V] (q); num_draft [B] guesses per row;
    accept_u [B, K] uniforms; residual_keys [B, K+1] keys for the correction / bonus draws.
    Guess i is kept when u_i * q(x_i) <= p(x_i), i.e. with probability min(1, p/q). The token after the
    kept prefix is a draw from max(0, p - q) at the first rejection, or from p after all K_b were kept.
    Returns tokens [B, K+1] (the first num_emitted valid) and num_emitted [B].
    """
    b, k = draft_tokens.shape
    rows = torch.arange(b, device=draft_tokens.device)
    valid = torch.arange(k, device=draft_tokens.device)[None, :] < num_draft[:, None]
    x = draft_tokens.clamp(min=0)[..., None]
    p_x = target_probs[:, :k].gather(-1, x)[..., 0]  # [B, K]
    q_x = draft_probs.gather(-1, x)[..., 0]
    keep = (accept_u * q_x <= p_x) & valid
    accepted = keep.long().cumprod(-1).sum(-1)  # [B]
    # The distribution the next token comes from: the residual at a rejection, p itself after all guesses.
    p_next = target_probs[rows, accepted]  # [B, V]
    q_next = torch.cat([draft_probs, torch.zeros_like(draft_probs[:, :1])], 1)[rows, accepted]
    rejected = (accepted < num_draft)[:, None]
    residual = torch.where(rejected, (p_next - q_next).clamp(min=0), p_next)
    # p == q makes a rejection impossible (probability 0); guard the empty residual all the same.
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p_next)
    last = race(residual, residual_keys[rows, accepted])
    tokens = torch.cat([draft_tokens, torch.zeros_like(draft_tokens[:, :1])], 1).clone()
    tokens[rows, accepted] = last
    return tokens, accepted + 1


@dataclass
class SpecStats:
    """Counters in vLLM's terms: guesses proposed, guesses accepted, tokens emitted by verify steps."""

    num_drafts: int = 0  # sequence-steps that verified at least one guess
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    num_emitted_tokens: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else None

    @property
    def mean_tokens_per_step(self) -> float | None:
        """Tokens a speculating sequence gained per verify step (1 would be plain decoding)."""
        return self.num_emitted_tokens / self.num_drafts if self.num_drafts else None

    def as_dict(self) -> dict:
        return {"num_drafts": self.num_drafts, "num_draft_tokens": self.num_draft_tokens,
                "num_accepted_tokens": self.num_accepted_tokens, "num_emitted_tokens": self.num_emitted_tokens,
                "acceptance_rate": self.acceptance_rate, "mean_tokens_per_step": self.mean_tokens_per_step}


# -- the draft-model proposer ---------------------------------------------------------------------------


class DraftProposer:
    """A second model that guesses: k cheap decode steps over its own paged KV cache.

    The draft keeps a shadow of every speculating sequence (its tokens, its own block table). Each step the
    shadow is brought level with the target's tokens: the draft's cache stays valid up to the first token
    where the shadow and the sequence differ (its rejected guesses are simply recomputed over), so a step
    costs one varlen pass over the tokens the draft has not seen (usually the target's correction) and
    k - 1 one-token decode passes. When the draft's cache is full the shadows of sequences that are not
    speculating this step are dropped; if that is not enough the sequence gets no guesses this step.
    """

    def __init__(self, bundle, implementation, kv_cache_memory: int, block_size: int, max_batch_size: int,
                 max_model_len: int, use_cuda_graphs: bool):
        from ruvoninference.engine.block_manager import BlockManager
        from ruvoninference.engine.kv_cache import allocate_kv_cache, bytes_per_block
        from ruvoninference.engine.model_runner import ModelRunner

        self.bundle = bundle
        num_blocks = max(1, int(kv_cache_memory // bytes_per_block(bundle.config, block_size, bundle.dtype)))
        cache = allocate_kv_cache(bundle.config, num_blocks, block_size, bundle.device, bundle.dtype)
        self.block_manager = BlockManager(num_blocks, block_size, enable_prefix_caching=False)
        self.runner = ModelRunner(bundle, implementation, cache, max_batch_size, max_model_len, use_cuda_graphs)
        if use_cuda_graphs:  # the draft's decode graphs too, before the engine is ready
            self.runner.capture_all()
        self._shadows: dict[str, object] = {}

    def _shadow(self, seq):
        from ruvoninference.engine.sequence import Sequence, SequenceStatus

        shadow = self._shadows.get(seq.request_id)
        if shadow is None:
            shadow = Sequence(seq.request_id, list(seq.prompt_token_ids), seq.sampling, frozenset())
            shadow.status = SequenceStatus.RUNNING
            self._shadows[seq.request_id] = shadow
        # Level with the target: the cache is valid up to the first token where they differ.
        common = 0
        limit = min(shadow.num_tokens, seq.num_tokens)
        while common < limit and shadow.token_ids[common] == seq.token_ids[common]:
            common += 1
        shadow.token_ids = list(seq.token_ids)
        shadow.num_computed_tokens = min(shadow.num_computed_tokens, common, seq.num_tokens - 1)
        return shadow

    def _reserve(self, shadow, num_tokens: int, keep: set[str]) -> bool:
        """Blocks for num_tokens tokens, dropping shadows outside `keep` when the draft's cache is full."""
        need = self.block_manager.blocks_for(num_tokens) - len(shadow.block_table)
        for other in list(self._shadows):
            if need <= self.block_manager.num_free_blocks:
                break
            if other not in keep:
                self.forget(other)
        if need > self.block_manager.num_free_blocks:
            return False
        self.block_manager.reserve(shadow, num_tokens)
        return True

    @torch.inference_mode()
    def propose(self, seqs, ks: list[int], probs_fn) -> tuple[list[list[int]], list[torch.Tensor | None]]:
        """Up to ks[i] guesses for each sequence, and the draft's distributions q [k_i, V] (None: greedy)."""
        from ruvoninference.engine.scheduler import ScheduledBatch

        keep = {s.request_id for s in seqs}
        shadows, active = [], []
        for seq, k in zip(seqs, ks):
            shadow = self._shadow(seq)
            if k > 0 and self._reserve(shadow, seq.num_tokens + k - 1, keep):
                shadows.append(shadow), active.append(len(shadows) - 1)
            else:
                shadows.append(None)
        guesses: list[list[int]] = [[] for _ in seqs]
        dists: list[list[torch.Tensor]] = [[] for _ in seqs]
        live = [i for i in range(len(seqs)) if shadows[i] is not None]
        step = 0
        while live:
            batch_seqs = [shadows[i] for i in live]
            if step == 0:  # the tokens the draft has not seen yet, as varlen chunks
                batch = ScheduledBatch(batch_seqs, [s.num_uncomputed_tokens for s in batch_seqs], len(batch_seqs))
            else:
                batch = ScheduledBatch(batch_seqs, [1] * len(batch_seqs), 0)
            logits, _ = self.runner.run(batch)
            for s, n in zip(batch_seqs, batch.num_new_tokens):
                s.num_computed_tokens += n
            tokens, q = probs_fn([seqs[i] for i in live], logits, [shadows[i].num_tokens for i in live])
            tokens = tokens.tolist()
            for j, i in enumerate(live):
                guesses[i].append(tokens[j])
                shadows[i].token_ids.append(tokens[j])
                if q is not None:
                    dists[i].append(q[j])
            step += 1
            live = [i for i in live if len(guesses[i]) < ks[i]]
        return guesses, [torch.stack(d) if d else None for d in dists]

    def forget(self, request_id: str) -> None:
        shadow = self._shadows.pop(request_id, None)
        if shadow is not None:
            self.block_manager.free(shadow)


# -- the engine's side ----------------------------------------------------------------------------------


class Speculator:
    """What the engine calls around its step when speculation is on.

        propose(running)           before scheduling: seq.spec_token_ids for the sequences that speculate
        positions(seqs)            the token position each sampled row draws (1 + k rows per speculating seq)
        accept(seqs, logits, ...)  after sampling: keep each sequence's accepted rows, drop the rest
        settle(batch)              after the tokens are appended: the accepted guesses count as computed,
                                   and blocks reserved for rejected ones go back to the block manager

    Speculation is per sequence: a sequence speculates when it is decoding, its request has no penalties
    (they would depend on the guesses before each row) and is past min_tokens, and the proposer found
    something. It is off for the whole step when more than `max_batch` sequences run: a large batch already
    keeps the device busy, and verifying guesses then costs more than it saves (see docs/benchmarks).
    """

    def __init__(self, method: str, num_tokens: int, block_manager, vocab_size: int, device: torch.device,
                 ngram_max: int = DEFAULT_NGRAM_MAX, draft: DraftProposer | None = None,
                 max_batch: int | None = None):
        self.method, self.k = method, num_tokens
        self.block_manager = block_manager
        self.vocab_size, self.device = vocab_size, device
        self.ngram = NgramProposer(ngram_max) if method == "ngram" else None
        self.draft = draft
        self.max_batch = max_batch
        self.stats = SpecStats()
        self._draft_probs: dict[str, torch.Tensor] = {}
        self._seeds: dict[str, int] = {}
        self._rng = torch.Generator().manual_seed(torch.seed())
        self._accepted: dict[str, int] = {}

    # -- before the step --------------------------------------------------------------------------------

    def _budget(self, seq) -> int:
        """How many guesses this sequence may take: none past max_tokens (the last row's token is free)."""
        p = seq.sampling
        if p.has_penalties or seq.num_output_tokens < p.min_tokens or seq.num_uncomputed_tokens != 1:
            return 0
        return max(0, min(self.k, p.max_tokens - seq.num_output_tokens - 1))

    def propose(self, running) -> None:
        from ruvoninference.engine.sequence import SequenceStatus

        running = [s for s in running if s.status is SequenceStatus.RUNNING]
        for seq in running:
            seq.spec_token_ids = []
        if self.max_batch is not None and len(running) > self.max_batch:
            return
        ks = [self._budget(s) for s in running]
        cands = [(s, k) for s, k in zip(running, ks) if k > 0]
        if not cands:
            return
        if self.ngram is not None:
            guesses = [self.ngram.propose(s.request_id, s.token_ids, k) for s, k in cands]
            dists = [None] * len(cands)
        else:
            guesses, dists = self.draft.propose([s for s, _ in cands], [k for _, k in cands], self._draft_probs_fn)
        # Slots for the guesses, only from blocks nobody else needs this step (speculation never preempts):
        # the free blocks beyond one per running sequence.
        spare = self.block_manager.num_free_blocks - len(running)
        for (seq, _), guess, q in zip(cands, guesses, dists):
            need = self.block_manager.blocks_for(seq.num_tokens + len(guess)) - len(seq.block_table)
            while guess and need > spare:
                guess = guess[:-1]
                need = self.block_manager.blocks_for(seq.num_tokens + len(guess)) - len(seq.block_table)
            if not guess:
                continue
            self.block_manager.reserve(seq, seq.num_tokens + len(guess))
            spare -= max(0, need)
            seq.spec_token_ids = guess
            if q is not None:
                self._draft_probs[seq.request_id] = q[:len(guess)]

    def _seed(self, seq) -> int:
        """The request's seed, or one drawn for it once (draft rejection sampling needs keys for every row)."""
        if seq.sampling.seed is not None:
            s = seq.sampling.seed
            return s - (1 << 64) if s >= 1 << 63 else s
        if seq.request_id not in self._seeds:
            self._seeds[seq.request_id] = int(torch.randint(-(1 << 62), 1 << 62, (1,), generator=self._rng))
        return self._seeds[seq.request_id]

    def _draft_probs_fn(self, seqs, logits: torch.Tensor, positions: list[int]):
        """The draft's guesses (argmax when greedy, a draw from q otherwise) and q itself when sampling."""
        if all(s.sampling.greedy for s in seqs):
            return logits.argmax(-1), None
        q = self._probs(seqs, logits, positions)
        keys = stream_keys(self._seed_tensor(seqs), torch.tensor(positions, device=logits.device), STREAM_DRAFT)
        return race(q, keys), q

    def _seed_tensor(self, seqs) -> torch.Tensor:
        return torch.tensor([self._seed(s) for s in seqs], dtype=torch.int64, device=self.device)

    def _probs(self, seqs, logits: torch.Tensor, positions: list[int]) -> torch.Tensor:
        """The distribution a row samples from: logit bias, temperature, top-k, top-p (greedy: one-hot)."""
        from ruvoninference.engine.sampler import SamplingTensors, apply_logit_bias, apply_top_k_top_p

        t = SamplingTensors.from_sequences(seqs, logits.device, logits.shape[1], positions)
        scaled = apply_logit_bias(logits.float(), t) / t.temperature[:, None]
        if t.top_k is not None:
            scaled = apply_top_k_top_p(scaled, t.top_k, t.top_p)
        probs = scaled.softmax(-1)
        onehot = torch.nn.functional.one_hot(scaled.argmax(-1), logits.shape[1]).to(probs.dtype)
        return torch.where(t.greedy[:, None], onehot, probs)

    # -- after the forward pass -------------------------------------------------------------------------

    def positions(self, seqs) -> list[int]:
        """Row r draws the token at this position: a speculating sequence's rows are consecutive."""
        out, prev, j = [], None, 0
        for seq in seqs:
            j = j + 1 if seq is prev else 0
            out.append(seq.num_tokens + j)
            prev = seq
        return out

    def accept(self, seqs, logits: torch.Tensor, tensors, sampled):
        """Keep, for each speculating sequence, the rows of its accepted guesses and the one after them.

        seqs [N] lists a speculating sequence once per row (1 + k consecutive rows); `sampled` holds the
        target's draw for every row. Deterministic guesses (n-gram, and every greedy row) are kept while they
        equal the target's draw; a draft's sampled guesses go through `rejection_sample`.
        """
        from ruvoninference.engine.sampler import SamplerOutput, _with_logprobs

        if not any(s.spec_token_ids for s in seqs):
            return seqs, sampled
        decided: dict[str, int] = {}
        if self.draft is not None and any(s.spec_token_ids and not s.sampling.greedy for s in seqs):
            tokens, decided = self._rejection_sample(seqs, logits, sampled.tokens)
            sampled = _with_logprobs(logits.float(), tokens, tensors)  # the logprobs of the tokens kept
        host = sampled.tokens.tolist()
        keep, r = [], 0
        while r < len(seqs):
            seq = seqs[r]
            guess = seq.spec_token_ids
            if not guess:
                keep.append(r)
                r += 1
                continue
            a = decided.get(seq.request_id)
            if a is None:
                a = 0
                while a < len(guess) and host[r + a] == guess[a]:
                    a += 1
            keep += range(r, r + a + 1)
            self._accepted[seq.request_id] = a
            self.stats.num_drafts += 1
            self.stats.num_draft_tokens += len(guess)
            self.stats.num_accepted_tokens += a
            self.stats.num_emitted_tokens += a + 1
            r += len(guess) + 1
        rows = torch.tensor(keep, device=sampled.tokens.device)
        return [seqs[i] for i in keep], SamplerOutput(*_select(sampled, rows, keep))

    def _rejection_sample(self, seqs, logits: torch.Tensor, drawn: torch.Tensor):
        """Sampled draft guesses: min(1, p/q) acceptance and residual draws, sequence by sequence.

        Returns the rows' tokens and, per sequence decided here, how many guesses it kept.
        """
        positions = self.positions(seqs)
        p = self._probs(seqs, logits, positions)  # [N, V]
        tokens, decided, r = drawn.clone(), {}, 0
        dev = logits.device
        while r < len(seqs):
            seq = seqs[r]
            k = len(seq.spec_token_ids)
            if k and not seq.sampling.greedy:
                q = self._draft_probs.pop(seq.request_id)
                seeds = self._seed_tensor([seq]).expand(k + 1)
                pos = torch.tensor(positions[r:r + k + 1], device=dev)
                out, n = rejection_sample(
                    p[r:r + k + 1][None], torch.tensor([seq.spec_token_ids], device=dev), q[None],
                    torch.tensor([k], device=dev), uniforms(stream_keys(seeds[:k], pos[:k], STREAM_ACCEPT), 1).T,
                    stream_keys(seeds, pos)[None])
                tokens[r:r + k + 1] = out[0]
                decided[seq.request_id] = int(n) - 1
            r += k + 1
        return tokens, decided

    # -- after the tokens were appended -----------------------------------------------------------------

    def settle(self, batch) -> None:
        """Accepted guesses are computed tokens now; the blocks only rejected ones used go back."""
        for seq in batch.seqs[:batch.num_prefill]:
            if not seq.spec_token_ids:
                continue
            a = self._accepted.pop(seq.request_id, 0)
            self._draft_probs.pop(seq.request_id, None)
            seq.spec_token_ids = []
            if seq.finished:
                continue
            seq.num_computed_tokens += a
            self.block_manager.commit_full_blocks(seq)
            self.block_manager.trim(seq)

    def forget(self, request_id: str) -> None:
        """A request left: drop what the proposers keep for it."""
        if self.ngram is not None:
            self.ngram.forget(request_id)
        if self.draft is not None:
            self.draft.forget(request_id)
        self._draft_probs.pop(request_id, None)
        self._seeds.pop(request_id, None)


def _select(sampled, rows: torch.Tensor, keep: list[int]):
    """The SamplerOutput fields for the kept rows (logprob rows renumbered)."""
    if not sampled.logprob_rows:
        return sampled.tokens[rows], None, None, None, []
    index = {row: i for i, row in enumerate(sampled.logprob_rows)}
    new_rows = [j for j, row in enumerate(keep) if row in index]
    lp_index = torch.tensor([index[keep[j]] for j in new_rows], device=rows.device, dtype=torch.long)
    top = (None, None) if sampled.top_ids is None else (sampled.top_ids[lp_index], sampled.top_logprobs[lp_index])
    return sampled.tokens[rows], sampled.logprobs[lp_index], top[0], top[1], new_rows


# Speculation turns itself off for the step when more sequences than this run: a batch this large already
# keeps the device busy, and verifying k guesses per sequence multiplies the step's work. CPU: with speculation
# forced on, SmolLM2 fp32 on copying text measured 1.61x at batch 1 and 1.05x at batch 16, where it no longer
# pays for its risk (docs/benchmarks/cpu-spec). CUDA: not measured yet (docs/benchmarks/h200-spec); 32 is a guess.
MAX_SPECULATIVE_BATCH = {"cpu": 16, "cuda": 32}


def make_speculator(engine, method: str, num_tokens: int, draft_model, ngram_max: int, progress=None,
                    max_batch: int | None = None) -> Speculator:
    """The engine's Speculator: an n-gram proposer, or a draft model loaded on the engine's device."""
    draft = None
    if method == "draft":
        from ruvoninference.models import ModelBundle, load_model

        bundle = draft_model if isinstance(draft_model, ModelBundle) else load_model(
            draft_model, engine.device, engine.dtype, progress)
        check_draft_compatible(engine.bundle, bundle)
        # As many tokens as the target's cache holds, at most a full batch of full contexts.
        tokens = min(engine.block_manager.num_blocks * engine.block_size, engine.max_batch_size * engine.context_length)
        draft = DraftProposer(bundle, engine.attn, tokens * bundle.config.kv_bytes_per_token(bundle.dtype),
                              engine.block_size, engine.max_batch_size, engine.context_length, engine.use_cuda_graphs)
    if max_batch is None:
        max_batch = MAX_SPECULATIVE_BATCH.get(engine.device.type, MAX_SPECULATIVE_BATCH["cuda"])
    return Speculator(method, num_tokens, engine.block_manager, engine.bundle.config.vocab_size, engine.device,
                      ngram_max, draft, max_batch)
