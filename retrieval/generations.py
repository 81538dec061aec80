"""An index directory on disk: the manifest, durable renames, the writer lock, and sweeping dead files.

An index is a list of immutable *segments* (store.sN.sqlite, dense.sN.pJ.faiss, sparse.sN.npz) and the
tombstones of deleted rows (tomb.gG.npy). Every change writes its new files, then replaces manifest.json,
which names generation G, the segments, the tombstone file and every file's size and checksum: a crash
before that replace leaves the previous manifest, whose files are all still there. See retrieval/index.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from retrieval.errors import RetrievalError

FORMAT = "raft-retrieval-index"
FORMAT_VERSION = 2  # 1: one store and one FAISS index per generation (rebuild such an index)
MANIFEST = "manifest.json"
CACHE_FILE = "embeddings.sqlite"
LOCK_FILE = "writer.lock"


def crash_point(name: str) -> None:
    """Marks a point of a save where the files on disk are half-way between two generations: `after_store`,
    `after_dense`, `after_sparse` (a segment written), `after_merge` (a merged segment written) and
    `before_manifest`. It does nothing; the crash-safety tests replace it
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


_DATA_FILE = re.compile(r"(?:store|dense|sparse|tomb)\.")
_SEGMENT_ID = re.compile(r"(?:store|dense|sparse)\.s(\d+)\.")


def manifest_files(man: dict) -> list[str]:
    """Every data file a manifest names: each segment's files and the tombstone file."""
    out = []
    for seg in man["segments"]:
        out += [seg["store"], *seg["dense"], seg["sparse"]]
    if man.get("tombstones"):
        out.append(man["tombstones"])
    return out


def write_manifest(d: Path, man: dict) -> None:
    """Checksum the files new to this manifest (the others keep the entries they had: segments are never
    rewritten), then replace manifest.json atomically."""
    old = man.get("files") or {}
    man["files"] = {f: old[f] if f in old else {"bytes": (d / f).stat().st_size, "sha256": sha256_file(d / f)}
                    for f in manifest_files(man)}
    crash_point("before_manifest")
    tmp = d / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(man, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, d / MANIFEST)
    fsync_dir(d)


def max_segment_on_disk(d: Path) -> int:
    """The highest segment number any file in `d` carries (a crashed write's files count: never reused
    while they may still be on disk)."""
    ids = [int(m.group(1)) for p in d.iterdir() if (m := _SEGMENT_ID.match(p.name))]
    return max(ids, default=0)


def sweep(d: Path, man: dict) -> None:
    """Remove data files the manifest does not name (merged-away segments, old tombstones, and any a
    crash or a failed write left half-written)."""
    keep = set(man.get("files") or manifest_files(man))
    for p in d.iterdir():
        if p.name in keep or not _DATA_FILE.match(p.name):
            continue
        try:
            p.unlink()
        except OSError:
            pass
