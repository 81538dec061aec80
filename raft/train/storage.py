"""Where a run persists: a local directory, a shared filesystem, or an object store URI (s3://, gs://, ...).

Ray Train writes checkpoints to `train.ray.storage_path` itself, through pyarrow's filesystems. This module
covers the rest for URIs: joining run paths without breaking a URI's query string
(`s3://bucket/runs?endpoint_override=...`), checking before any worker starts that the store is reachable
and writable, and mirroring the rank-0 metrics (JSONL + TensorBoard) to `RUN/logs` in the store, since a
worker can only append to local files.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from raft.errors import RaftError


def is_uri(path: str) -> bool:
    return "://" in path


def join(base: str, *parts: str) -> str:
    """`base/part/...`, keeping a URI's `?query` at the end where pyarrow reads its options."""
    path, sep, query = base.partition("?")
    return "/".join([path.rstrip("/"), *parts]) + sep + query


def redact(uri: str) -> str:
    """The URI with any `user:secret@` credentials masked, for messages and logs."""
    return re.sub(r"^([a-z0-9+.-]+://)[^/@]*@", r"\1***@", uri)


def _fs(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


def check_writable(uri: str) -> None:
    """Create the directory and write + delete a probe object; a RaftError says what failed and what to do."""
    try:
        fs, path = _fs(uri)
        fs.create_dir(path, recursive=True)
        probe = f"{path.rstrip('/')}/.write-test-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except Exception as e:  # pyarrow raises OSError / ArrowInvalid with the store's own message
        why = f"{type(e).__name__}: {str(e)[:300]}"
        raise RaftError(f"storage path {redact(uri)!r} is not writable ({why}); check the bucket exists and "
                        "the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the cloud's default "
                        "credentials) allow writing, or set train.ray.storage_path to a local or shared "
                        "directory") from None


def download_if_exists(uri_dir: str, name: str, local: Path) -> bool:
    """Copy `uri_dir/name` to `local` if the store has it (a resumed run appends to its metrics)."""
    import pyarrow.fs as pafs

    fs, path = _fs(uri_dir)
    src = f"{path.rstrip('/')}/{name}"
    if fs.get_file_info(src).type != pafs.FileType.File:
        return False
    with fs.open_input_stream(src) as f:
        local.write_bytes(f.read())
    return True


def upload_dir(local: Path, uri_dir: str) -> None:
    """Copy every file under `local` to `uri_dir` (same relative paths), overwriting what is there."""
    import pyarrow.fs as pafs

    fs, path = _fs(uri_dir)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
