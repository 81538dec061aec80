"""An index directory's generations on disk: the manifest, durable renames, and sweeping dead files.

Every change writes a new *generation* of files (store.gN.sqlite, dense.gN.*) and then replaces
manifest.json, which names the generation and the files' sizes and checksums; see retrieval/index.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from retrieval.errors import RetrievalError

if TYPE_CHECKING:
    from retrieval.dense import DenseIndex

FORMAT = "raft-retrieval-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CACHE_FILE = "embeddings.sqlite"
LOCK_FILE = "writer.lock"


def crash_point(name: str) -> None:
    """Marks a point of a save where the files on disk are half-way between two generations: `after_store`,
    `after_dense` and `before_manifest`. It does nothing; the crash-safety tests replace it
    (tests/retrieval/crash_hook.py) to kill or pause the process exactly there."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_dir(d: Path) -> None:
    try:
        fd = os.open(str(d), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def read_manifest(index_dir: str | Path) -> dict:
    """The manifest, or a RetrievalError saying why the directory is not a usable index."""
    d = Path(index_dir)
    if not d.exists():
        raise RetrievalError(f"index directory {str(d)!r} does not exist; build one with "
                             f"`raft index build CORPUS --out {d}`")
    if not d.is_dir():
        raise RetrievalError(f"{str(d)!r} is a file, not an index directory")
    m = d / MANIFEST
    if not m.exists():
        raise RetrievalError(f"{str(d)!r} has no {MANIFEST}: it is not an index or its first build did not "
                             f"finish (half-written); rebuild it with `raft index build CORPUS --out {d}`")
    try:
        man = json.loads(m.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RetrievalError(f"{str(m)!r} is unreadable ({e}); rebuild the index") from None
    if man.get("format") != FORMAT:
        raise RetrievalError(f"{str(m)!r} is not a {FORMAT} manifest")
    if man.get("format_version") != FORMAT_VERSION:
        raise RetrievalError(f"index {str(d)!r} has format version {man.get('format_version')}, this code reads "
                             f"{FORMAT_VERSION}; rebuild it")
    return man


@contextmanager
def writer_lock(d: Path) -> Iterator[None]:
    """Exclusive lock on the index directory for one write, across processes and across index objects in
    one process (each holds its own open file). Without it two writers (two processes, or two Ray Serve
    replicas each with its own writer) pick the same next generation, and one's sweep deletes the
    other's half-written files. The OS drops the lock when the holder dies, so a crash never leaves it stuck."""
    import fcntl

    fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def fsync_rename(tmp: Path, dst: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def write_manifest(d: Path, man: dict, n_chunks: int, n_docs: int, dense: DenseIndex) -> None:
    files = [man["store"], *man["faiss"]["files"]]
    man["files"] = {f: {"bytes": (d / f).stat().st_size, "sha256": sha256_file(d / f)} for f in files}
    man["counts"] = {"chunks": n_chunks, "documents": n_docs, "vectors": dense.ntotal,
                     "tombstones": len(dense.tombstones)}
    crash_point("before_manifest")
    tmp = d / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(man, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, d / MANIFEST)
    fsync_dir(d)


def max_gen_on_disk(d: Path) -> int:
    gens = [int(m.group(1)) for p in d.iterdir() if (m := re.match(r"(?:store|dense)\.g(\d+)\.", p.name))]
    return max(gens, default=0)


def sweep(d: Path, man: dict) -> None:
    """Remove files of other generations (older ones, and any a crash left half-written)."""
    keep = set(man["files"]) | {MANIFEST, CACHE_FILE}
    for p in d.iterdir():
        if p.name in keep or not re.match(r"(?:store|dense)\.g\d+\.", p.name):
            continue
        try:
            p.unlink()
        except OSError:
            pass
