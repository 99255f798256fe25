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
