"""`benchmark speculative`: the same prompts with and without speculative decoding, side by side."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ruvon_cli import render
from ruvon_cli.common import (
    BlockSize,
    Device,
    Dtype,
    EnforceEager,
    JsonPath,
    KvCacheMemory,
    MarkdownPath,
    Model,
    command_line,
    engine_config,
    friendly,
    kv_cache_budget,
)
from ruvon_cli.render import console

DEFAULT_KV_CACHE_BYTES = 2 << 30  # per engine on a GPU: 64 requests of 200 prompt + 128 new tokens need < 1 GiB

Speculative = Annotated[Optional[str], typer.Option(
    "--speculative", help="ngram (prompt lookup) or draft (a second model, --draft-model); off by default.")]
NumSpeculativeTokens = Annotated[int, typer.Option(
    "--num-speculative-tokens", help="Tokens guessed per step and checked in one pass of the model.")]
DraftModel = Annotated[Optional[str], typer.Option(
    "--draft-model", help="The draft model for --speculative draft (it must share the model's tokenizer).")]
NgramMax = Annotated[int, typer.Option(
    "--ngram-max", help="Longest run of last tokens the n-gram proposer looks up (it tries shorter ones down to 1).")]


@friendly
def speculative(
    model: Model = "smollm2-135m",
    attn: Annotated[str, typer.Option(help="eager, sdpa, flash_attention_2 or triton.")] = "sdpa",
    device: Device = None,
    dtype: Dtype = None,
    num_speculative_tokens: NumSpeculativeTokens = 4,
    ngram_max: NgramMax = 4,
    draft_model: Annotated[Optional[str], typer.Option(
        "--draft-model", help="Also measure a draft model (it must share the model's tokenizer).")] = None,
    workload: Annotated[Optional[list[str]], typer.Option(
        help="copying (answers that repeat the prompt) and/or free (open-ended); default both.")] = None,
    batch_size: Annotated[Optional[list[int]], typer.Option(
        "--batch-size", help="Requests at once; repeat it (default 1 and 64).")] = None,
    max_tokens: Annotated[int, typer.Option(help="New tokens per request (EOS ignored).")] = 128,
    repeats: Annotated[int, typer.Option(help="Timed repeats per cell, after one warm-up.")] = 3,
    max_speculative_batch: Annotated[Optional[int], typer.Option(
        help="Speculate only while at most this many sequences run (default: the engine's, per device).")] = None,
    block_size: BlockSize = None,
    kv_cache_memory: KvCacheMemory = None,
    enforce_eager: EnforceEager = False,
    json_path: JsonPath = None,
    markdown_path: MarkdownPath = None,
) -> None:
    """Greedy decoding with and without speculation on copying and free text: tokens/s, acceptance, same tokens."""
    from ruvoninference.bench.speculative import WORKLOADS, benchmark_speculative, to_markdown
    from ruvoninference.config import resolve_device
    from ruvoninference.engine import Engine
    from ruvoninference.engine.speculative import check_speculative
    from ruvoninference.environment import describe
    from ruvoninference.errors import RuvonError

    workloads = workload or list(WORKLOADS)
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad:
        raise RuvonError(f"Unknown workload '{bad[0]}'; use copying or free.")
    batches = batch_size or [1, 64]
    if min(batches) < 1 or repeats < 1 or max_tokens < 1:
        raise RuvonError("--batch-size, --repeats and --max-tokens must be at least 1.")
    check_speculative("ngram", num_speculative_tokens, ngram_max)
    settings = {"off": {}, f"ngram k={num_speculative_tokens}": {
        "speculative": "ngram", "num_speculative_tokens": num_speculative_tokens, "ngram_max": ngram_max}}
    budget = kv_cache_budget(kv_cache_memory, device)
    if budget is None and resolve_device(device).type == "cuda":
        budget = DEFAULT_KV_CACHE_BYTES  # two or three engines share the GPU: none may take its default 90%
    with render.progress_bar() as progress:
        progress(f"Loading {model} ({attn})", 0, 1)
        base = Engine(model, attn, device, dtype, max_batch_size=max(batches), block_size=block_size,
                      kv_cache_memory=budget, enforce_eager=enforce_eager, progress=progress)
        if draft_model is not None:
            settings[f"draft k={num_speculative_tokens}"] = {
                "speculative": "draft", "num_speculative_tokens": num_speculative_tokens,
                "draft_model": base.bundle if draft_model == model else draft_model}

        def make_engine(kwargs):
            if not kwargs:
                return base
            if max_speculative_batch is not None:
                kwargs = {**kwargs, "speculative_max_batch": max_speculative_batch}
            return Engine(base.bundle, attn, block_size=block_size, max_batch_size=max(batches),
                          kv_cache_memory=budget, enforce_eager=enforce_eager, progress=progress, **kwargs)

        report = benchmark_speculative(make_engine, settings, workloads, batches, max_tokens, repeats, progress)
    for s in report["settings"].values():  # the JSON names the draft, not the object
        if "draft_model" in s:
            s["draft_model"] = model if draft_model == model else draft_model
    report.update(command=command_line(), device=describe(base.device), model=model, attn=attn,
                  dtype=str(base.dtype).removeprefix("torch."), engine=engine_config(base),
                  max_speculative_batch=max_speculative_batch)
    console.print(to_markdown(report))
    render.write_json(json_path, report)
    render.write_text(markdown_path, f"`{report['command']}`\n\n" + to_markdown(report))


def speculative_options(method: str | None, num_tokens: int, draft_model: str | None, ngram_max: int) -> dict:
    """The Engine keyword arguments of the speculative flags, checked before any model loads."""
    from ruvoninference.engine.speculative import check_speculative

    check_speculative(method, num_tokens, ngram_max, draft_model)
    if method is None:
        return {}
    return {"speculative": method, "num_speculative_tokens": num_tokens, "draft_model": draft_model,
            "ngram_max": ngram_max}


def speculation_line(stats) -> str:
    if stats.num_draft_tokens == 0:
        return "[dim]speculation: nothing proposed[/dim]"
    return (f"[dim]speculation: {stats.num_accepted_tokens}/{stats.num_draft_tokens} guesses accepted "
            f"({stats.acceptance_rate:.0%}), {stats.mean_tokens_per_step:.2f} tokens per verify step[/dim]")
