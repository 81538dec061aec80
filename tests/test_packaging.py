"""The wheel: it carries every module and the quickstart's data, and installed (not editable, used from
another directory) it gives a working `raft` whose quickstart finds its corpus, questions and config.

The wheel is built offline from a copy of the sources (pip wheel --no-build-isolation with the
environment's setuptools: a build in the tree would reuse a stale build/ directory). The install goes
into a new virtual environment with --no-deps; that environment sees this one's dependencies through a
.pth file, which adds the directory but not this environment's editable-install hook, so `raft` there
can only come from the wheel. That keeps the install to seconds instead of a full dependency download."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("raft", "retrieval", "serving")
QUICKSTART_DATA = ("quickstart_cpu.yaml", "questions.jsonl", "train_questions.jsonl")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (whl,) = dist.glob("raft_stack-*.whl")
    return whl


def _sources() -> set[str]:
    """Every file the packages consist of in the repository (sources and package data)."""
    return {p.relative_to(REPO).as_posix() for pkg in PACKAGES for p in (REPO / pkg).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def test_the_wheel_holds_every_module_and_the_quickstart_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    corpus = {f"raft/quickstart/corpus/{p.name}" for p in (REPO / "raft/quickstart/corpus").glob("*.md")}
    assert len(corpus) >= 8 and corpus <= names, corpus - names
    assert {f"raft/quickstart/{f}" for f in QUICKSTART_DATA} <= names
    missing = _sources() - names
    assert not missing, f"package files left out of the wheel: {sorted(missing)}"
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "configs/"))]
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "raft = raft.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_the_installed_wheel_runs_raft_from_another_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                        "-q", str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "elsewhere"
    work.mkdir()

    def run(*argv: str) -> str:
        out = subprocess.run(list(argv), cwd=work, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out.stdout

    where = json.loads(run(str(py), "-c", "import json, raft, raft.quickstart as q, raft.commands.quickstart as c; "
                                          "print(json.dumps([raft.__file__, str(c.DEFAULT_CONFIG), str(q.CORPUS), "
                                          "str(q.QUESTIONS), str(q.TRAIN_QUESTIONS)]))"))
    assert all(Path(p).resolve().is_relative_to(site.resolve()) for p in where), where
    assert all(Path(p).exists() for p in where[1:]), where
    assert len(list(Path(where[2]).glob("*.md"))) >= 8
    assert "quickstart" in run(str(venv / "bin" / "raft"), "--help")
    assert "quickstart_cpu.yaml" in run(str(venv / "bin" / "raft"), "quickstart", "--help")
