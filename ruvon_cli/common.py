"""What every command shares: option types, the user-error wrapper, the command line as typed."""

from __future__ import annotations

import functools
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from ruvon_cli.render import err_console

# Quiet the libraries' own logging and tqdm bars: we draw our own progress, and warnings about
# generation flags we set on purpose would bury the output.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' GGUF reader draws a bar of its own
# OpenMP threads that wait for work sleep instead of spinning (set before torch is imported; yours wins). With
# spinning threads a step waits for its slowest thread, and on a CPU that anything else uses decode collapsed:
# 0.27 tokens/s against 5.45 with PASSIVE on the busy 2-core machine (docs/benchmarks/cpu-threads/).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

Model = Annotated[str, typer.Option("--model", "-m", help="smollm2-135m (embedded), gpt2-random, qwen3-0.6b-random, a Hub id or a folder.")]
Device = Annotated[Optional[str], typer.Option(help="cpu or cuda (default: cuda when present).")]
Dtype = Annotated[Optional[str], typer.Option(help="float32, float16 or bfloat16 (default: fp32 on CPU, fp16 on CUDA).")]


def fail(message: str) -> NoReturn:
    """A user error: one sentence on stderr, exit code 2."""
    err_console.print(f"[bold red]Error:[/bold red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


# Option callbacks run while the command line is parsed, before any command imports torch or transformers,
# so a mistake in a flag is reported in a blink.

def check_output_path(path: str | None, option: str = "--json") -> str | None:
    """A file we can write, checked before the run it would hold: not a folder, in an existing folder."""
    if path is None:
        return None
    target = Path(path).expanduser()
    if target.is_dir():
        fail(f"{option} {path} is a folder; give a file name inside it, such as {target / 'result.json'}.")
    if not target.parent.is_dir():
        fail(f"{option} {path}: the folder {target.parent} does not exist; create it first or write elsewhere.")
    existed = target.exists()
    try:
        with open(target, "a"):
            pass
    except OSError as exc:
        fail(f"{option} {path} cannot be written ({exc.strerror}); give a path you can write to.")
    if not existed:
        target.unlink()
    return path


def _text(values: list[str] | str | None):
    """Text from the command line must be UTF-8: other bytes arrive as lone surrogates the tokenizer rejects."""
    for text in [values] if isinstance(values, str) else values or []:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            byte = ord(text[exc.start]) - 0xDC00 if 0xDC80 <= ord(text[exc.start]) <= 0xDCFF else None
            where = f"byte 0x{byte:02x}" if byte is not None else f"character {text[exc.start]!r}"
            fail(f"The prompt is not valid UTF-8 ({where} at position {exc.start}); pass the text in UTF-8.")
    return values


def _block_size(value: int | None) -> int | None:
    if value is not None and (value < 16 or value & (value - 1)):
        fail(f"--block-size must be a power of two of at least 16, not {value}.")
    return value


def _size(value: str | None) -> str | None:
    from ruvoninference.errors import RuvonError  # errors.py imports nothing

    if value is not None:
        try:
            parse_size(value)
        except RuvonError as exc:
            fail(str(exc))
    return value


def _output(param: typer.CallbackParam, value: str | None) -> str | None:
    return check_output_path(value, f"--{param.name.split('_')[0]}")


JsonPath = Annotated[Optional[str], typer.Option("--json", help="Also write the full result as JSON here.",
                                                 callback=_output)]
MarkdownPath = Annotated[Optional[str], typer.Option("--markdown", help="Also write a markdown table here.",
                                                     callback=_output)]
Prompt = Annotated[str, typer.Option("--text", "-t", help="The prompt.", callback=_text)]
Prompts = Annotated[Optional[list[str]], typer.Option(
    "--text", "-t", help="The prompt to continue; repeat it for a batch (a single prompt streams).", callback=_text)]
Scheduler = Annotated[str, typer.Option(help="continuous, static or sequential batching.")]
MaxBatchSize = Annotated[int, typer.Option(help="Most sequences in one step.")]
BlockSize = Annotated[Optional[int], typer.Option(
    help="Tokens per KV-cache block, a power of two >= 16 (default: 256 for flash_attention_2, else 16).",
    callback=_block_size)]
KvCacheMemory = Annotated[Optional[str], typer.Option(
    help="KV-cache budget, e.g. 512MiB, 2GiB or 1.5GB (default: 90% of free GPU memory; 1 GiB on a CPU).",
    callback=_size)]
EnforceEager = Annotated[bool, typer.Option("--enforce-eager", help="No CUDA graphs: run every decode step eagerly.")]
TensorParallelSize = Annotated[int, typer.Option(
    "--tensor-parallel-size", "-tp", help="Cut the model over this many GPUs, one process each (1 = no cut).")]


def interrupted() -> NoReturn:
    """Ctrl-C: one line and exit 130; a second Ctrl-C while Python shuts down ends it at once, silently."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # not while the line is printed
    err_console.print("Interrupted.")
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    raise typer.Exit(130)


def friendly(fn):
    """User errors become one sentence on stderr and exit code 2; anything else is a real bug and shows.

    The libraries stay quiet through the environment set above (transformers reads it when imported), so
    nothing heavy is imported before the command needs it.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ruvoninference.errors import RuvonError

        try:
            return fn(*args, **kwargs)
        except RuvonError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            interrupted()
        except Exception as exc:
            torch = sys.modules.get("torch")
            if torch is not None and isinstance(exc, torch.OutOfMemoryError):
                fail("the GPU ran out of memory; try a shorter prompt, fewer tokens or a smaller dtype.")
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


_UNITS = {"b": 1, "kib": 2**10, "kb": 10**3, "mib": 2**20, "mb": 10**6, "gib": 2**30, "gb": 10**9,
          "tib": 2**40, "tb": 10**12}


def parse_size(value: str) -> int:
    """'512MiB', '2GiB', '1.5GB', '1TiB' or '4096B' -> bytes (one syntax for every command, serve too).

    A bare number is refused: `serve` once took MiB where `generate` took bytes, so its unit is never guessed.
    """
    import re

    from ruvoninference.errors import RuvonError

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", value)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise RuvonError(f"'{value}' is not a memory size; write it like 512MiB, 2GiB or 1.5GB (units B, KiB, MiB, "
                         "GiB, TiB, KB, MB, GB, TB).")
    return int(float(match.group(1)) * _UNITS[unit])


def kv_cache_budget(value: str | None, device: str | None) -> int | None:
    """--kv-cache-memory in bytes, refused when the device does not have that much memory free."""
    from ruvoninference.config import resolve_device
    from ruvoninference.environment import free_memory
    from ruvoninference.errors import RuvonError

    if value is None:
        return None
    budget = parse_size(value)
    dev = resolve_device(device)
    free, total = free_memory(dev)
    if budget > free:
        where = "this machine's" if dev.type == "cpu" else "the GPU's"
        raise RuvonError(
            f"--kv-cache-memory {value} is more than {where} free memory ({free / 2**30:,.1f} GiB free of "
            f"{total / 2**30:,.1f} GiB); ask for less, e.g. {'1GiB' if dev.type == 'cpu' else '4GiB'}."
        )
    return budget


def build_engine(model, attn, device, dtype, scheduler="continuous", max_batch_size=32, block_size=None,
                 kv_cache_memory=None, enforce_eager=False, **kwargs):
    """An Engine, with a progress bar while the model loads and CUDA graphs are captured."""
    from ruvoninference.engine import Engine
    from ruvon_cli import render

    budget = kv_cache_budget(kv_cache_memory, device)
    with render.progress_bar() as progress:
        progress(f"Loading {model} ({attn})", 0, 1)
        return Engine(model, attn, device, dtype, max_batch_size=max_batch_size, block_size=block_size,
                      scheduler=scheduler, kv_cache_memory=budget, enforce_eager=enforce_eager, progress=progress,
                      **kwargs)


def check_parallel(model: str, tensor_parallel_size: int, device: str | None, baseline: str | None = None) -> None:
    """A tensor-parallel size this machine, the model and the command can run, refused before anything loads."""
    from ruvoninference.errors import RuvonError

    if tensor_parallel_size == 1:
        return
    if baseline == "hf":
        raise RuvonError(
            f"The Hugging Face baseline runs the whole model in one process and cannot be cut over "
            f"{tensor_parallel_size}; drop --baseline hf to measure ours at --tensor-parallel-size "
            f"{tensor_parallel_size}, or run the baseline at --tensor-parallel-size 1."
        )
    from ruvoninference.parallel.engine import check_tensor_parallel

    check_tensor_parallel(model, tensor_parallel_size, device)


def engine_config(engine) -> dict:
    """The engine settings a result depends on, for its JSON."""
    from ruvoninference.parallel.engine import parallel_size

    return {"tensor_parallel_size": parallel_size(engine), "scheduler": engine.scheduler.policy,
            "max_batch_size": engine.max_batch_size,
            "block_size": engine.block_size, "num_kv_blocks": engine.block_manager.num_blocks,
            "max_num_batched_tokens": engine.max_num_batched_tokens, "cuda_graphs": engine.use_cuda_graphs,
            "prefix_caching": engine.block_manager.enable_prefix_caching, "max_model_len": engine.context_length}


def check_listen(host: str, port: int) -> None:
    """The address resolves and the port is free, checked before a server prints that it is serving."""
    import errno
    import socket

    from ruvoninference.errors import RuvonError

    if not 0 <= port <= 65535:
        raise RuvonError(f"Port {port} is not a TCP port; use a number from 0 (any free port) to 65535.")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        raise RuvonError(f"Host '{host}' does not resolve to an address; use 127.0.0.1, 0.0.0.0 or a name "
                         "this machine knows.") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise RuvonError(f"Port {port} on {host} is already in use; stop what listens there or pick "
                                 "another with --port.") from None
            raise RuvonError(f"Cannot listen on {host}:{port} ({exc.strerror}); use another --host or "
                             "--port.") from None


def check_model(model: str) -> None:
    """The model's config can be read (converting the embedded model once, with a progress bar)."""
    from ruvoninference.weights import load_config
    from ruvon_cli import render

    with render.progress_bar() as progress:
        progress(f"Checking {model}", 0, 1)
        load_config(model, progress)


def load_saved(path: str | Path, parse, command: str, option: str = "--render"):
    """A report saved by `command --json`, parsed by `parse(dict)`: returns (parsed, the raw dict).

    A missing file, a folder, invalid JSON or a JSON of another shape is one sentence, not a traceback.
    """
    import json

    from ruvoninference.errors import RuvonError

    hint = f"give a file that `{command} --json` wrote"
    name = f"{option} {path}".lstrip()
    target = Path(path).expanduser()
    if target.is_dir():
        raise RuvonError(f"{name} is a folder; {hint}.")
    try:
        data = json.loads(target.read_text())
    except FileNotFoundError:
        raise RuvonError(f"{name} does not exist; {hint}.") from None
    except json.JSONDecodeError as exc:
        raise RuvonError(f"{name} is not JSON ({exc.msg} at line {exc.lineno}); {hint}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuvonError(f"{name} cannot be read ({getattr(exc, 'strerror', None) or exc}); {hint}.") from None
    try:
        return parse(data), data
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        raise RuvonError(f"{name} is not a `{command} --json` report; {hint}.") from None
