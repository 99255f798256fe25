"""Our generation loop against Hugging Face `generate`, token for token, and its stop rules."""

import pytest
import torch

from ruvoninference.errors import RuvonError
from ruvoninference.generation import generate
from ruvoninference.sampling import SamplingParams

PROMPTS = ["Once upon a time", "The capital of France is a city where"]


def hf_greedy(loaded, prompts, n):
    tok = loaded.tokenizer
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = loaded.model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    eos = loaded.model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [])
    rows = []
    for row in out[:, enc.input_ids.shape[1]:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


@pytest.mark.parametrize("fixture", ["gpt2_sdpa", "smollm2_sdpa"])
def test_greedy_matches_hf_generate_single_and_batched(fixture, request):
    loaded = request.getfixturevalue(fixture)
    single = generate(loaded, PROMPTS[0], max_new_tokens=16)
    assert single.sequences[0].token_ids == hf_greedy(loaded, PROMPTS[:1], 16)[0]
    batch = generate(loaded, PROMPTS, max_new_tokens=12)
    assert [s.token_ids for s in batch.sequences] == hf_greedy(loaded, PROMPTS, 12)


def test_streaming_callback_rebuilds_the_text(smollm2_sdpa):
    pieces = []
    result = generate(smollm2_sdpa, PROMPTS[0], max_new_tokens=12, on_token=lambda i, t, s: pieces.append((i, t, s)))
    seq = result.sequences[0]
    assert "".join(p for _, _, p in pieces) == seq.text
    assert seq.text == smollm2_sdpa.tokenizer.decode(seq.token_ids, skip_special_tokens=True)
    assert [t for _, t, _ in pieces] == seq.token_ids
    assert len(seq.logprobs) == len(seq.token_ids) and all(lp <= 0 for lp in seq.logprobs)


@pytest.mark.parametrize("fixture", ["gpt2_sdpa", "smollm2_sdpa"])
def test_incremental_detokenization_handles_multibyte_characters(fixture, request):
    """Characters split across byte-level tokens are held back until complete, then emitted once."""
    from ruvoninference.generation import Sequence, StopRule

    tokenizer = request.getfixturevalue(fixture).tokenizer
    text = " héllo 🙂 wörld, naïve 日本語 ok"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    seq = Sequence([1], SamplingParams(), StopRule(len(ids)), slot=0)
    pieces = [seq.append(t, 0.0, tokenizer) for t in ids]
    assert "".join(pieces) == seq.text == tokenizer.decode(ids) and seq.finish_reason == "length"
    assert not any("\ufffd" in p for p in pieces)


def test_stop_string_truncates_and_stops(smollm2_sdpa):
    full = generate(smollm2_sdpa, PROMPTS[0], max_new_tokens=12).sequences[0].text
    word = full.split()[2]
    stopped = generate(smollm2_sdpa, PROMPTS[0], max_new_tokens=12, stop_strings=[word]).sequences[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == full[: full.index(word)]


def test_length_and_eos_finish_reasons(gpt2_sdpa):
    result = generate(gpt2_sdpa, PROMPTS[0], max_new_tokens=5)
    assert result.sequences[0].finish_reason == "length" and len(result.sequences[0].token_ids) == 5
    stats = result.stats
    assert stats.generated_tokens == 5 and stats.prompt_tokens == 4
    assert 0 < stats.time_to_first_token_s <= stats.total_time_s and stats.peak_memory_bytes > 0


def test_eos_stops_unless_ignored(smollm2_sdpa):
    # An instruct model answering a chat prompt ends its turn with <|im_end|>, its EOS.
    prompt = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    seq = generate(smollm2_sdpa, prompt, max_new_tokens=60).sequences[0]
    assert seq.finish_reason == "eos" and seq.token_ids[-1] == smollm2_sdpa.tokenizer.eos_token_id
    forced = generate(smollm2_sdpa, prompt, max_new_tokens=len(seq.token_ids) + 3, ignore_eos=True)
    assert len(forced.sequences[0].token_ids) == len(seq.token_ids) + 3


def test_seeded_sampling_is_repeatable_and_batch_independent(gpt2_sdpa):
    p = SamplingParams(temperature=1.0, top_k=50, top_p=0.95, seed=7)
    alone = generate(gpt2_sdpa, PROMPTS[0], max_new_tokens=8, sampling=p).sequences[0].token_ids
    again = generate(gpt2_sdpa, PROMPTS[0], max_new_tokens=8, sampling=p).sequences[0].token_ids
    mixed = generate(gpt2_sdpa, PROMPTS, max_new_tokens=8, sampling=[p, SamplingParams()]).sequences[0].token_ids
    assert alone == again == mixed


def test_prompt_longer_than_context_is_a_user_error(gpt2_sdpa):
    with pytest.raises(RuvonError, match="context is 1024 tokens"):
        generate(gpt2_sdpa, "hello " * 1100, max_new_tokens=5)
    with pytest.raises(RuvonError, match="at least 1"):
        generate(gpt2_sdpa, "hello", max_new_tokens=0)
    with pytest.raises(RuvonError, match="empty"):
        generate(gpt2_sdpa, "", max_new_tokens=3)
