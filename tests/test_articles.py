"""The articles cannot drift from the code: every repo path they name exists, every command they give parses.

Each article in `articles/` is read as a reader would copy from it. From its fenced code blocks, its inline
code spans and its links we take:

- **paths**: link targets (relative to the article) and code tokens that start with one of the repository's
  top-level folders (`ruvoninference/`, `tests/`, `docs/`, ...). Each must exist in this checkout.
- **commands**: every `cli.py ...`, `ruvon ...`, `python -m ...`, `python scripts/....py ...`,
  `torchrun ... cli.py ...`, `pytest ...` and `bash ....sh`, with `uv run`, `python`, `PYTHONPATH=.`-style
  prefixes, `$ ` prompts, `\\` continuations and
  `# comments` handled. Typer commands (`cli.py`, `python -m ruvon_cli.report`) are parsed in-process by the
  real Typer app's click command, exactly as `--help` describes it: an unknown subcommand or option, a missing
  value, or a value of the wrong type (an integer option given `512MiB`) fails. Other Python entry points must
  exist and name each `--option` somewhere in their source; pytest and bash targets must exist.

A command that belongs to another commit is written after `git checkout <commit> &&` in the same code span
(it is skipped), and a file that no longer exists is named as `git show <commit>:path` (also skipped).
Nothing here imports torch or runs a model: the whole file takes a few seconds.
"""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer

ROOT = Path(__file__).resolve().parents[1]
ARTICLES = sorted((ROOT / "articles").glob("*.md"))
TOP_LEVEL = ("ruvoninference", "ruvon_cli", "tests", "scripts", "docs", "articles")
PATH_TOKEN = re.compile(r"(?<![\w:/.-])(?:\.\./)*((?:" + "|".join(TOP_LEVEL) + r")/[\w./-]*)")
PLACEHOLDER = re.compile(r"[<>{}*…]|\.\.\.")
SEPARATORS = {"&&", "||", ";", "|", "&"}


@dataclass(frozen=True)
class Snippet:
    """Text a reader could copy: one fenced line (continuations joined), one code span, or one link target."""

    article: str
    line: int
    text: str
    kind: str  # "code" or "link"

    def where(self) -> str:
        return f"{self.article}:{self.line}"


def snippets(markdown: str, name: str = "<text>") -> list[Snippet]:
    """Every fenced line, inline code span and link target of a markdown text, with its line number."""
    out: list[Snippet] = []
    lines = markdown.split("\n")
    prose = list(lines)
    i = 0
    while i < len(lines):
        if lines[i].lstrip().startswith("```"):
            prose[i] = ""
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                start, text = i, lines[i]
                while text.rstrip().endswith("\\") and i + 1 < len(lines):
                    prose[i] = ""
                    i += 1
                    text = text.rstrip()[:-1] + " " + lines[i].strip()
                prose[i] = ""
                out.append(Snippet(name, start + 1, text, "code"))
                i += 1
            if i < len(lines):
                prose[i] = ""
        i += 1
    text = "\n".join(prose)
    for m in re.finditer(r"`([^`]+)`", text):
        out.append(Snippet(name, text.count("\n", 0, m.start()) + 1, m.group(1).replace("\n", " "), "code"))
    for m in re.finditer(r"\]\(([^)\s]+)\)", text):
        out.append(Snippet(name, text.count("\n", 0, m.start()) + 1, m.group(1), "link"))
    return out


def repo_paths(snippet: Snippet, article_dir: Path = ROOT / "articles") -> list[Path]:
    """The repository paths a snippet names (absolute), placeholders and other commits' files left out."""
    if snippet.kind == "link":
        target = snippet.text.split("#")[0]
        if not target or re.match(r"^[a-z]+:", target):
            return []
        return [(article_dir / target).resolve()]
    if re.search(r"\bgit (checkout|show|switch)\b", snippet.text):
        return []
    out = []
    for m in PATH_TOKEN.finditer(snippet.text):
        token = m.group(1).rstrip(".,:;")
        end = m.end(1)
        if PLACEHOLDER.search(token) or (snippet.text[end:end + 1] or " ") in "<{*…":
            continue
        out.append(ROOT / token)
    return out


def commands(snippet: Snippet) -> list[list[str]]:
    """The shell commands of a code snippet, split at `&&`, `|`, `;` and `&`, comments and `$ ` removed.

    Commands after a `git checkout` run at another commit and are left out."""
    if snippet.kind != "code":
        return []
    text = snippet.text.strip().removeprefix("$ ")
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote: prose in backticks, not a command
        return []
    out, current = [], []
    for tok in tokens + [";"]:
        if tok in SEPARATORS or tok.endswith(";"):
            if tok.endswith(";") and tok != ";":
                current.append(tok[:-1])
            if current and current[0] == "git" and current[1:2] in (["checkout"], ["switch"]):
                return out
            if current:
                out.append(current)
            current = []
        else:
            current.append(tok)
    return out


@dataclass(frozen=True)
class Entry:
    """What a command runs: `kind` is typer, python, pytest or bash; `args` what follows the entry point."""

    kind: str
    target: str
    args: list[str]


def entry_point(argv: list[str]) -> Entry | None:
    """Strip `VAR=value`, `uv run`, `python[3]` and `-m`; None for commands that are not this project's."""
    argv = list(argv)
    while argv and re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0]):
        argv.pop(0)
    if argv[:2] == ["uv", "run"]:
        argv = argv[2:]
        while argv and argv[0].startswith("--"):  # uv run --with x ...
            argv.pop(0)
    if not argv:
        return None
    if argv[0] == "torchrun" or argv[:3] in (["python", "-m", "torch.distributed.run"],
                                             ["python3", "-m", "torch.distributed.run"]):
        # torchrun's own options come first; what it launches is the first script or `-m module`
        start = next((i for i, a in enumerate(argv) if a.endswith(".py") or a == "-m"), None)
        if start is None or start == 0:
            return None
        argv = ["python", *argv[start:]]
    via_python = argv[0] in ("python", "python3")
    if via_python:
        argv = argv[1:]
        if argv[:1] == ["-m"] and len(argv) > 1:
            module, rest = argv[1], argv[2:]
            if module == "pytest":
                return Entry("pytest", "pytest", rest)
            if module == "ruvon_cli.report":
                return Entry("typer", "python -m ruvon_cli.report", rest)
            return Entry("python", module, rest)
        if not argv or argv[0].startswith("-"):
            return None
    if argv[0] in ("cli.py", "./cli.py", "ruvon"):
        return Entry("typer", "cli.py", argv[1:])
    if argv[0].endswith(".py") and via_python:  # a bare `model_runner.py` in prose is a name, not a command
        return Entry("python", argv[0], argv[1:])
    if argv[0] == "pytest":
        return Entry("pytest", "pytest", argv[1:])
    if argv[0] in ("bash", "sh") and len(argv) > 1:
        return Entry("bash", argv[1], argv[2:])
    return None


@functools.cache
def typer_command(target: str):
    """The click command Typer builds for `cli.py` or `python -m ruvon_cli.report` (built once: it is slow)."""
    if target == "cli.py":
        from ruvon_cli.app import app
    else:
        from ruvon_cli.report import app
    return typer.main.get_command(app)


def parse_typer(cmd, prog: str, args: list[str]) -> str | None:
    """Parse `args` the way the real command line would, without running anything: None if accepted, else
    click's own message (unknown option, missing value, bad type, no such command)."""
    try:
        ctx = cmd.make_context(prog, list(args))
        while hasattr(cmd, "resolve_command"):  # a group: parse its own options, then the subcommand's
            rest = [*ctx._protected_args, *ctx.args]
            if not rest:
                break
            name, sub, rest = cmd.resolve_command(ctx, rest)
            if sub is None:
                return f"no command {name!r}"
            ctx = sub.make_context(name, rest, parent=ctx)
            cmd = sub
    except typer.Exit:  # --help
        return None
    except Exception as exc:  # Typer vendors click, so its exception classes are named, not imported
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group named without a subcommand shows its help
            return None
        if hasattr(exc, "format_message"):
            return exc.format_message()
        raise
    leftover = [*getattr(ctx, "_protected_args", []), *ctx.args]
    if leftover and not hasattr(cmd, "resolve_command"):
        return f"unexpected extra arguments {leftover}"
    return None


def module_file(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.exists():
            return candidate
    return None


def check_command(argv: list[str]) -> str | None:
    """None if the command would start as written, else one sentence saying what is wrong."""
    entry = entry_point(argv)
    if entry is None:
        return None
    if entry.kind == "typer":
        problem = parse_typer(typer_command(entry.target), entry.target, entry.args)
        return None if problem is None else f"{entry.target} refuses it: {problem}"
    if entry.kind == "pytest":  # its targets are paths under tests/, checked with every other path
        return None
    if entry.kind == "bash":
        return None if (ROOT / entry.target).exists() else f"script {entry.target} does not exist"
    source_file = module_file(entry.target) if entry.kind == "python" and not entry.target.endswith(".py") \
        else ROOT / entry.target
    if source_file is None:
        return None if "." not in entry.target and not entry.target.startswith("ruvon") else \
            f"module {entry.target} does not exist in this repository"
    if not source_file.exists():
        return f"{entry.target} does not exist"
    source = source_file.read_text()
    for arg in entry.args:
        flag = arg.split("=")[0]
        if re.match(r"^--[\w-]+$", flag) and f'"{flag}"' not in source and f"'{flag}'" not in source:
            return f"{entry.target} has no option {flag} (it is not named anywhere in its source)"
    return None


def problems(markdown: str, name: str, article_dir: Path = ROOT / "articles") -> list[str]:
    """Every missing path and refused command of one article, one line each, with its line number."""
    out, seen = [], set()
    for snip in snippets(markdown, name):
        for path in repo_paths(snip, article_dir):
            if not path.exists() and (snip.line, path) not in seen:
                seen.add((snip.line, path))
                shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
                out.append(f"{snip.where()}: path {shown} does not exist (named in `{snip.text}`)")
        for argv in commands(snip):
            problem = check_command(argv)
            if problem:
                out.append(f"{snip.where()}: `{shlex.join(argv)}`: {problem}")
    return out


@pytest.mark.parametrize("article", ARTICLES, ids=lambda p: p.name)
def test_article_paths_and_commands(article):
    found = problems(article.read_text(), f"articles/{article.name}", article.parent)
    assert not found, ("the article names paths or commands that do not match the code; fix the article "
                       "(or the code):\n  " + "\n  ".join(found))


def test_the_articles_are_actually_checked():
    """The extractor finds the commands and paths the articles are full of (a broken extractor finds none)."""
    n_commands = n_paths = 0
    for article in ARTICLES:
        for snip in snippets(article.read_text()):
            n_paths += len(repo_paths(snip, article.parent))
            n_commands += sum(entry_point(c) is not None for c in commands(snip))
    assert n_commands >= 30 and n_paths >= 50, (n_commands, n_paths)


BAD_ARTICLE = """\
Run [`the engine`](../ruvoninference/engine/engine.py) and `ruvoninference/no_such_module.py`:

```bash
uv run cli.py generate --text hi --no-such-flag   # an option that does not exist
uv run cli.py benchmark throughput --num-seqs lots \\
    --max-batch-size 8
PYTHONPATH=. python3 scripts/kernel_explore.py --no-such-mode
uv run cli.py no-such-command
uv run pytest tests/no_such_test.py
uv run python -m ruvon_cli.report memory flash.json          # --out is required
CUDA_VISIBLE_DEVICES=0,1 uv run torchrun --nproc-per-node 2 cli.py generate --text hi --no-such-tp-flag
git checkout 9783674 && python3 scripts/kernel_explore.py --anything-then
```

Good ones: `uv run cli.py generate --text "a b" --max-tokens 8 --attn sdpa`,
`torchrun --nproc-per-node 2 cli.py generate --text hi` and
`python -m ruvon_cli.report kernel docs/benchmarks/h200-kernel/kernel.json --out k.png` and
[part 9](part-09-flashattention.md) and `git show 9783674:scripts/gone.py`.
"""


def test_the_checker_fails_on_bad_commands_and_paths():
    found = problems(BAD_ARTICLE, "bad.md")
    text = "\n".join(found)
    assert "bad.md:1: path ruvoninference/no_such_module.py does not exist" in text
    assert "--no-such-flag" in text and "No such option" in text
    assert "--num-seqs lots --max-batch-size 8`" in text  # a continuation line, joined
    assert "Invalid value for '--num-seqs'" in text
    assert "kernel_explore.py has no option --no-such-mode" in text
    assert "No such command 'no-such-command'" in text
    assert "bad.md:9: path tests/no_such_test.py does not exist" in text
    assert "Missing option '--out'" in text
    assert "bad.md:11:" in text and "--no-such-tp-flag" in text  # launched by torchrun, still checked
    assert len(found) == 8, text  # and nothing else: the good commands, the link and the other commit pass
