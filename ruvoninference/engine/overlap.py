"""Overlapped steps: the host prepares step N+1 while the GPU runs step N.

A plain step ends by reading its drawn tokens back (`.tolist()`): the host waits for the GPU, then the GPU
waits while the host appends tokens, detokenizes, checks stop rules, schedules and builds the next step's
tensors. With a few hundred sequences that host work is a sizeable part of each step, and the GPU is idle
for all of it.

The way out (vLLM's async scheduling, SGLang's overlap scheduler) is to not wait. Step N's tokens stay on the
device; each producing sequence gets a *pending token* (a -1 in its token list) at once, so the next step's positions, slots and
blocks (which depend only on how many tokens there are) can be built straight away. Step N+1's input ids for
those sequences are copied on the device from step N's drawn tokens (`patch_inputs`), step N+1 is launched,
and only then does the host read step N's tokens (`HostCopy`, started as soon as step N was sampled) and do
its bookkeeping, while the GPU runs step N+1.

    plain:      [host: schedule, build N][GPU: N][host: read N, append, stop rules][host: schedule N+1] ...
    overlapped: [host: schedule, build N+1, launch][host: read N, append, stop rules]   (GPU: N, then N+1)

What it costs: a sequence that stops at step N (EOS, a stop string) has already been scheduled into step
N+1; that token is computed and dropped (a length limit is known in advance and never overshoots). Outputs
arrive one step later than they were computed. Sampling that reads the generated tokens' values (frequency,
presence and repetition penalties) waits for them, so a step holding such a request runs plain.

Prompt log-probabilities travel the same way: a step that computes some (`PromptScores`, copied to the host
as soon as they are computed) carries them in its `InFlight`, even when it draws no token, and they land
before that step's tokens, so a request's first output already holds its whole prompt's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ruvoninference.engine.sampler import SamplerOutput
from ruvoninference.engine.sequence import Sequence


@dataclass
class HostCopy:
    """A step's draws on their way to the host: started without waiting, read with `finish`."""

    values: torch.Tensor  # host tensor (pinned on CUDA) being filled by a non-blocking copy
    event: torch.cuda.Event | None  # recorded after the copy; None on a CPU
    num_rows: int
    logprob_rows: list[int]
    num_top: int

    @staticmethod
    def start(sampled: SamplerOutput) -> HostCopy:
        """One device->host transfer of tokens and, for the rows that asked, logprobs (ids exact in float64)."""
        num_top = 0 if sampled.top_ids is None else sampled.top_ids.shape[1]
        if sampled.logprobs is None:
            flat = sampled.tokens
        else:
            parts = [sampled.logprobs.double()[:, None]]
            if sampled.top_ids is not None:
                parts += [sampled.top_ids.double(), sampled.top_logprobs.double()]
            flat = torch.cat([sampled.tokens.double(), torch.cat(parts, dim=1).flatten()])
        event = None
        if flat.is_cuda:
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            flat = host
        return HostCopy(flat, event, sampled.tokens.shape[0], sampled.logprob_rows, num_top)

    def finish(self) -> tuple[list[int], dict[int, float], dict[int, list[int]], dict[int, list[float]]]:
        """Wait for the copy; the tokens and, keyed by row, the chosen logprob and the top alternatives."""
        if self.event is not None:
            self.event.synchronize()
        flat = self.values.tolist()
        tokens = [int(t) for t in flat[:self.num_rows]]
        rows, n = flat[self.num_rows:], self.num_top
        width = 1 + 2 * n
        logprobs, top_ids, top_lps = {}, {}, {}
        for i, row in enumerate(self.logprob_rows):
            r = rows[i * width:(i + 1) * width]
            logprobs[row], top_ids[row], top_lps[row] = r[0], [int(t) for t in r[1:1 + n]], r[1 + n:]
        return tokens, logprobs, top_ids, top_lps


@dataclass
class PromptScores:
    """One step's prompt log-probabilities on their way to the host, row by row in `chunks`' order."""

    chunks: list  # the batch's `PromptChunk`s (scheduler.py)
    copy: HostCopy


@dataclass
class InFlight:
    """A launched step whose tokens (and prompt log-probabilities) the host has not read yet."""

    seqs: list[Sequence]  # the sequences that drew a token, in row order (maybe none)
    indices: list[int]  # where each one's pending token sits in its token_ids
    tokens: torch.Tensor | None  # [N] on the device: the next step's input ids are copied from here
    copy: HostCopy | None  # None when the step drew no token
    needs_values: bool  # some sequence's sampling reads its generated tokens (penalties): land before the next
    prompt: PromptScores | None = None

    @staticmethod
    def launch(seqs: list[Sequence], sampled: SamplerOutput | None, prompt: PromptScores | None = None) -> InFlight:
        if sampled is None:  # a step that only scored prompts
            return InFlight([], [], None, None, False, prompt)
        copy = HostCopy.start(sampled)
        indices = [seq.append_pending() for seq in seqs]
        return InFlight(seqs, indices, sampled.tokens, copy, any(s.sampling.has_penalties for s in seqs), prompt)


def patch_inputs(input_ids: torch.Tensor, decodes: list[Sequence], decode_offset: int, flight: InFlight) -> None:
    """Copy, on the device, the in-flight tokens into the input rows of the decodes whose last token they are."""
    row_of = {id(seq): row for row, seq in enumerate(flight.seqs)}
    dst, src = [], []
    for j, seq in enumerate(decodes):
        if seq.num_pending:
            dst.append(decode_offset + j)
            src.append(row_of[id(seq)])
    if dst:
        device = input_ids.device
        dst_t = torch.tensor(dst, dtype=torch.long).to(device, non_blocking=True)
        src_t = torch.tensor(src, dtype=torch.long).to(device, non_blocking=True)
        input_ids.index_copy_(0, dst_t, flight.tokens.index_select(0, src_t))
