"""Paths and output locations, checked before the expensive work: relative paths are made absolute against
the caller's directory before anything reaches a Ray worker, an output that cannot be written is an
error before training / indexing / merging starts, and a write that fails on a full disk leaves neither
partial files nor a damaged earlier index."""

import errno
import json
import os
from pathlib import Path

import pytest

from raft.cli import main
from raft.commands.common import check_writable
from raft.errors import RaftError

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def _blocked(tmp_path) -> Path:
    """A path under a regular file: not creatable, for any user (root included, who ignores modes)."""
    f = tmp_path / "a_file"
    f.write_text("not a directory")
    return f / "out"


# ---- raft train ----------------------------------------------------------------------------------
def test_train_makes_paths_absolute_before_ray(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr("raft.train.trainer.run_training", lambda cfg: seen.update(cfg=cfg))
    (tmp_path / "ds").mkdir()
    (tmp_path / "ev.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "data.path=ds", "data.eval_path=ev.jsonl", "ray.storage_path=runs",
                 "output_dir=out/adapter"]) == 0
    cfg = seen["cfg"]
    assert cfg.data.path == str(tmp_path / "ds") and cfg.data.eval_path == str(tmp_path / "ev.jsonl")
    assert cfg.ray.storage_path == str(tmp_path / "runs") and cfg.output_dir == str(tmp_path / "out" / "adapter")
    # a hub dataset name and an object store stay as they are
    assert main(["train", "data.path=org/some-dataset", "ray.storage_path=s3://bucket/runs"]) == 0
    assert seen["cfg"].data.path == "org/some-dataset"


def test_train_output_dir_is_checked_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("raft.train.trainer.run_training", lambda cfg: pytest.fail("trained anyway"))
    assert main(["train", f"output_dir={_blocked(tmp_path)}"]) == 2
    err = capsys.readouterr().err
    assert "train.output_dir" in err and "is a file, not a directory" in err


# ---- the check itself ----------------------------------------------------------------------------
def test_check_writable_probes_and_leaves_nothing(tmp_path):
    target = tmp_path / "new" / "deeper"
    check_writable(str(target), "--out")
    assert not target.exists() and os.listdir(tmp_path) == []  # the probe file is gone, nothing created
    with pytest.raises(RaftError, match="is a file, not a directory"):
        check_writable(str(_blocked(tmp_path)), "--out")


def test_check_writable_knows_free_space(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 5 * 2**20, 5 * 2**20))
    with pytest.raises(RaftError, match=r"only 5 MB free on its disk, about 1 GB needed"):
        check_writable(str(tmp_path / "o"), "--out", need_bytes=2**30)
    check_writable(str(tmp_path / "o"), "--out", need_bytes=2**20)


def test_check_writable_read_only_location(tmp_path, monkeypatch):
    import tempfile

    def refuse(*a, **k):  # what a read-only directory or filesystem answers (root ignores modes, so simulated)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(RaftError, match=r"--out '.*' is not writable \(Permission denied in "):
        check_writable(str(tmp_path / "out"), "--out")


def test_check_writable_full_disk(tmp_path, monkeypatch):
    import tempfile

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", full)
    with pytest.raises(RaftError, match=r"--out '.*': the disk holding '.*' is full; free some space"):
        check_writable(str(tmp_path / "out"), "--out")


# ---- raft index ----------------------------------------------------------------------------------
@pytest.fixture
def small_corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for name, text in (("a.md", "# Harbour\n\nThe harbour opens at dawn."), ("b.md", "# Mill\n\nThe mill grinds wheat.")):
        (d / name).write_text(text)
    return d


def test_index_build_unwritable_out_fails_before_loading(tmp_path, small_corpus, monkeypatch, capsys):
    monkeypatch.setattr("retrieval.index.RetrievalIndex.build", lambda *a, **k: pytest.fail("built anyway"))
    assert main(["index", "build", str(small_corpus), "--out", str(_blocked(tmp_path))]) == 2
    assert "--out" in capsys.readouterr().err


def _fail_dense_save(monkeypatch):
    """The dense index's save writes part of its file, then the disk is full."""
    from retrieval.dense import DenseIndex

    def save(self, out, gen):
        (Path(out) / f"dense.g{gen}.s0.faiss").write_bytes(b"partial")
        raise ENOSPC

    monkeypatch.setattr(DenseIndex, "save", save)


def test_index_build_on_a_full_disk_removes_the_partial_index(tmp_path, small_corpus, embedder_path,
                                                                monkeypatch, capsys):
    _fail_dense_save(monkeypatch)
    out = tmp_path / "idx"
    assert main(["index", "build", str(small_corpus), "--out", str(out), f"embedder={embedder_path}"]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and f"removed the partial {out}" in err and "Traceback" not in err
    assert not out.exists()


def _generation_files(index_dir: Path) -> list[str]:
    return sorted(p.name for p in index_dir.iterdir() if p.name.startswith(("store.", "dense.", "manifest")))


def test_index_rebuild_on_a_full_disk_keeps_the_old_index(tmp_path, small_corpus, embedder_path, monkeypatch,
                                                          capsys):
    from retrieval.index import RetrievalIndex

    out = tmp_path / "idx"
    assert main(["index", "build", str(small_corpus), "--out", str(out), f"embedder={embedder_path}"]) == 0
    before = _generation_files(out)
    (small_corpus / "c.md").write_text("# Bridge\n\nThe bridge is new.")
    _fail_dense_save(monkeypatch)
    assert main(["index", "build", str(small_corpus), "--out", str(out), f"embedder={embedder_path}"]) == 2
    assert "the disk is full" in capsys.readouterr().err
    assert _generation_files(out) == before  # no store/dense file of the failed generation
    idx = RetrievalIndex.open(out)
    assert sorted(idx.doc_ids()) == ["a.md", "b.md"]
    # the same for a live add
    assert main(["index", "add", str(out), str(small_corpus / "c.md")]) == 2
    assert "raft index add" in capsys.readouterr().err
    assert _generation_files(out) == before
    assert sorted(RetrievalIndex.open(out).doc_ids()) == ["a.md", "b.md"]


def test_index_build_makes_paths_absolute(tmp_path, small_corpus, embedder_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["index", "build", "corpus", "--out", "idx", f"embedder={embedder_path}", "--json"]) == 0
    man = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert man["corpus"] == {"path": str(small_corpus), "root": str(small_corpus)}


# ---- raft export ---------------------------------------------------------------------------------
def test_export_checks_out_before_loading_the_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("raft.train.export.merge_adapter", lambda *a, **k: pytest.fail("merged anyway"))
    assert main(["export", str(tmp_path), "--merge", "--out", str(_blocked(tmp_path))]) == 2
    assert "--out" in capsys.readouterr().err


def test_export_never_replaces_the_adapter_or_a_foreign_directory(tmp_path, monkeypatch):
    """--out is replaced by the merged model: an --out that is (or holds) the adapter, or holds other files,
    is refused before any model loads; an earlier merge there is replaced."""
    import json

    from raft.errors import RaftError
    from raft.train.export import merge_adapter

    monkeypatch.setattr("raft.model_source.resolve_model", lambda *a, **k: pytest.fail("loaded anyway"))
    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/nowhere/base"}))
    for out in (adapter, adapter.parent):
        with pytest.raises(RaftError, match="is the adapter directory or holds it"):
            merge_adapter(str(adapter), str(out))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("x")
    with pytest.raises(RaftError, match="exists and is not a model merged by `raft export`"):
        merge_adapter(str(adapter), str(mine))
    assert (mine / "keep.txt").is_file() and (adapter / "adapter_config.json").is_file()
    earlier = tmp_path / "merged"  # an earlier merge passes the check; the missing base is said as a path
    earlier.mkdir()
    (earlier / "raft_meta.json").write_text(json.dumps({"merged_from": str(adapter)}))
    with pytest.raises(RaftError, match="base model path '/nowhere/base' does not exist"):
        merge_adapter(str(adapter), str(earlier))


def test_export_on_a_full_disk_removes_its_partial_directory(tmp_path, monkeypatch, capsys):
    out = tmp_path / "merged"

    def merge(adapter, out_dir, **kw):
        tmp = Path(out_dir).with_name("merged.tmp-abc123")
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise ENOSPC

    monkeypatch.setattr("raft.train.export.merge_adapter", merge)
    assert main(["export", str(tmp_path), "--merge", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "merged.tmp-abc123" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_train_failing_to_write_at_the_end_says_where_the_checkpoints_are(tmp_path, monkeypatch, capsys):
    def full_disk_at_export(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "adapter.tmp"))

    monkeypatch.setattr("raft.train.trainer.run_training", full_disk_at_export)
    assert main(["train", f"ray.storage_path={tmp_path / 'runs'}", "ray.run_name=r1"]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and str(tmp_path / "runs" / "r1") in err and "resume" in err
    assert "Traceback" not in err
