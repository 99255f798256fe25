"""What every command shares: option types, the user-error wrapper, the command line as typed."""

from __future__ import annotations

import functools
import os
import shlex
import sys
from typing import Annotated, Optional

import typer

from ruvon_cli.render import err_console

# Quiet the libraries' own logging and tqdm bars: we draw our own progress, and warnings about
# generation flags we set on purpose would bury the output.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

Model = Annotated[str, typer.Option("--model", "-m", help="smollm2-135m (embedded), gpt2-random, qwen3-0.6b-random, a Hub id or a folder.")]
Device = Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda when present).")]
Dtype = Annotated[Optional[str], typer.Option(help="float32, float16 or bfloat16 (default: fp32 on CPU, fp16 on CUDA).")]
JsonPath = Annotated[Optional[str], typer.Option("--json", help="Also write the full result as JSON here.")]
MarkdownPath = Annotated[Optional[str], typer.Option("--markdown", help="Also write a markdown table here.")]
Scheduler = Annotated[str, typer.Option(help="continuous, static or sequential batching.")]
MaxBatchSize = Annotated[int, typer.Option(help="Most sequences in one step.")]
BlockSize = Annotated[Optional[int], typer.Option(help="Tokens per KV-cache block (default: 256 for flash_attention_2, else 16).")]
KvCacheMemory = Annotated[Optional[str], typer.Option(help="KV-cache budget, e.g. 512MiB or 2GiB (default: 90% of free GPU memory; 1 GiB on a CPU).")]
EnforceEager = Annotated[bool, typer.Option("--enforce-eager", help="No CUDA graphs: run every decode step eagerly.")]


def _quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def friendly(fn):
    """User errors become one sentence on stderr and exit code 2; anything else is a real bug and shows."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ruvoninference.errors import RuvonError

        try:
            _quiet_libraries()
            return fn(*args, **kwargs)
        except RuvonError as exc:
            err_console.print(f"[bold red]Error:[/bold red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("Interrupted.")
            raise typer.Exit(130) from None
        except Exception as exc:
            import torch

            if isinstance(exc, torch.OutOfMemoryError):
                err_console.print("[bold red]Error:[/bold red] the GPU ran out of memory; try a shorter prompt, "
                                  "fewer tokens or a smaller dtype.", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            raise

    return wrapper


def command_line() -> str:
    """The command as the user typed it, recorded in every JSON result."""
    return shlex.join(["cli.py", *sys.argv[1:]])


def pick_implementations(attn: list[str] | None, device: str | None):
    """The implementations to run: the ones asked for (each must be available), else every available one.

    Returns (chosen, skipped) where skipped maps the names left out to why.
    """
    from ruvoninference.attention import get_available_implementations, parse_implementation, unavailable_reasons
    from ruvoninference.errors import RuvonError

    available = get_available_implementations(device)
    reasons = {str(k): v for k, v in unavailable_reasons(device).items()}
    if attn:
        chosen = [parse_implementation(a) for a in attn]
        for impl in chosen:
            if impl not in available:
                raise RuvonError(f"Attention implementation '{impl}' is unavailable: {reasons[str(impl)]}.")
        return chosen, {}
    return available, reasons


_UNITS = {"": 1, "b": 1, "kib": 2**10, "kb": 10**3, "mib": 2**20, "mb": 10**6, "gib": 2**30, "gb": 10**9}


def parse_size(value: str) -> int:
    """'512MiB', '2GiB', '1.5GB' or a byte count -> bytes."""
    import re

    from ruvoninference.errors import RuvonError

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise RuvonError(f"'{value}' is not a memory size; write it like 512MiB, 2GiB or 1.5GB.")
    return int(float(match.group(1)) * _UNITS[unit])


def build_engine(model, attn, device, dtype, scheduler="continuous", max_batch_size=32, block_size=None,
                 kv_cache_memory=None, enforce_eager=False, **kwargs):
    """An Engine, with a progress bar while the model loads and CUDA graphs are captured."""
    from ruvoninference.engine import Engine
    from ruvon_cli import render

    budget = parse_size(kv_cache_memory) if kv_cache_memory is not None else None
    with render.progress_bar() as progress:
        progress(f"Loading {model} ({attn})", 0, 1)
        return Engine(model, attn, device, dtype, max_batch_size=max_batch_size, block_size=block_size,
                      scheduler=scheduler, kv_cache_memory=budget, enforce_eager=enforce_eager, progress=progress,
                      **kwargs)


def engine_config(engine) -> dict:
    """The engine settings a result depends on, for its JSON."""
    return {"scheduler": engine.scheduler.policy, "max_batch_size": engine.max_batch_size,
            "block_size": engine.block_size, "num_kv_blocks": engine.block_manager.num_blocks,
            "max_num_batched_tokens": engine.max_num_batched_tokens, "cuda_graphs": engine.use_cuda_graphs,
            "prefix_caching": engine.block_manager.enable_prefix_caching, "max_model_len": engine.context_length}
