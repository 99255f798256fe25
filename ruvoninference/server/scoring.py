"""The log-probability of every prompt token given the ones before it: what `echo` with `logprobs` returns.

lm-eval-harness scores a multiple-choice answer by sending context + answer with `echo: true`,
`max_tokens: 0` and `logprobs: 1`, and summing the answer tokens' log-probabilities. That is one forward
pass over the prompt with a causal mask, the logits of position i giving token i+1's log-probability:

    hidden = model(ids [T], positions [T], causal attention)          (T, C)
    logprobs[i + 1] = log_softmax(compute_logits(hidden[i]))[ids[i + 1]]

The first token has no context, so its entry is null (as OpenAI and vLLM report it). The pass runs on the
engine thread between two steps, without the paged cache (a prompt of the context's length at most, with
no cache blocks to reserve), and computes the logits a chunk of rows at a time, so a 32k-token prompt never
holds a [32k, vocab] tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOGIT_ROWS = 512  # rows of logits at once: 512 x 152k float32 is 300 MiB


def causal_attention(scale: float):
    """The model's attention callable for one sequence, no cache: q [T, Hq, D], k/v [T, Hkv, D]."""

    def attention(_layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (T, Hq, D)
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                             is_causal=True, scale=scale)  # (Hq, T, D)
        return out.transpose(0, 1)  # (T, Hq, D)

    return attention


@torch.inference_mode()
def prompt_logprobs(bundle, ids: list[int], top_n: int = 0) -> list[tuple[float, list[tuple[int, float]]] | None]:
    """[None, (logprob of ids[1], top_n alternatives), ...]: one entry per prompt token."""
    model, device = bundle.model, bundle.device
    tokens = torch.tensor(ids, dtype=torch.long, device=device)  # (T,)
    positions = torch.arange(len(ids), device=device)
    hidden = model(tokens, positions, causal_attention(bundle.config.attn_scale))  # (T, C)
    entries: list = [None]
    for start in range(0, len(ids) - 1, LOGIT_ROWS):
        end = min(start + LOGIT_ROWS, len(ids) - 1)
        logprobs = model.compute_logits(hidden[start:end]).float().log_softmax(-1)  # (rows, V)
        chosen = logprobs.gather(-1, tokens[start + 1:end + 1, None])[:, 0].tolist()
        if top_n:
            top = logprobs.topk(top_n, dim=-1)
            top_ids, top_lps = top.indices.tolist(), top.values.tolist()
        for row, lp in enumerate(chosen):
            entries.append((lp, list(zip(top_ids[row], top_lps[row])) if top_n else []))
    return entries
