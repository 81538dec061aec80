"""Every ```python block of the README runs as a user would run it: in README order, each in a fresh
interpreter, all in one scratch directory laid out like a clone (raft/quickstart/ with its corpus and
questions), offline (HF_HUB_OFFLINE=1), with no OPENAI_API_KEY or RAY_ADDRESS.

A block whose first line is `# needs: WHAT` (a running server, a GPU, minutes of compute) is not run; the
test skips it with that reason. Every block, skipped or not, must compile and import from `raft`,
`retrieval` and `serving` only names those packages export in `__all__`: the README shows the public API.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("raft", "retrieval", "serving")
NEEDS = re.compile(r"#\s*needs:\s*(.+)")


def readme_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (REPO / "README.md").read_text(), re.S | re.M)


def needs(block: str) -> str | None:
    """What a block needs that this test cannot give it (its `# needs:` first line), or None."""
    first = block.lstrip().splitlines()[0] if block.strip() else ""
    m = NEEDS.fullmatch(first.strip())
    return m.group(1).strip() if m else None


BLOCKS = readme_blocks()
IDS = [f"block{i + 1}" + ("-needs" if needs(b) else "") for i, b in enumerate(BLOCKS)]


def test_the_readme_has_runnable_python_blocks():
    assert BLOCKS, "README.md has no ```python block"
    runnable = [b for b in BLOCKS if not needs(b)]
    assert runnable, "every README python block is marked `# needs:`; at least one must run"
    assert len(runnable) >= len(BLOCKS) - len(runnable), "keep the blocks that need a server or GPU a minority"


def private_imports(block: str) -> list[str]:
    """Imports of project names that are not public: deep modules, or names missing from `__all__`."""
    import importlib

    bad = []
    for node in ast.walk(ast.parse(block)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            top = node.module.split(".")[0]
            if top not in PACKAGES:
                continue
            if node.module != top:
                bad.append(f"from {node.module} import ...")
                continue
            public = set(getattr(importlib.import_module(top), "__all__", ()))
            bad += [f"from {top} import {a.name}" for a in node.names if a.name not in public]
        elif isinstance(node, ast.Import):
            bad += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in PACKAGES and "." in a.name]
    return bad


@pytest.mark.parametrize("block", BLOCKS, ids=IDS)
def test_block_compiles_and_uses_only_the_public_api(block):
    compile(block, "README.md python block", "exec")
    assert not private_imports(block), f"README imports non-public names: {private_imports(block)}"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme_python")
    qs = root / "raft" / "quickstart"
    shutil.copytree(REPO / "raft" / "quickstart" / "corpus", qs / "corpus")
    for name in ("questions.jsonl", "train_questions.jsonl"):
        shutil.copy(REPO / "raft" / "quickstart" / name, qs / name)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=IDS)
def test_block_runs(block, scratch, tmp_path):
    if needs(block):
        pytest.skip(f"needs {needs(block)}")
    # a script outside the scratch directory: `python -c` would put the working directory first on sys.path,
    # where the scratch's raft/quickstart/ folder would shadow the installed `raft` package
    script = tmp_path / "readme_block.py"
    script.write_text(block)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "RAY_ADDRESS")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    r = subprocess.run([sys.executable, str(script)], cwd=scratch, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, f"README python block failed (exit {r.returncode}):\n{block}\n---\n" + \
        (r.stdout + r.stderr)[-4000:]
