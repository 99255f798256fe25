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
