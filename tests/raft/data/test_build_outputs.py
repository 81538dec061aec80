"""`raft build` checks its output location before any work, and a write that fails (a full disk) leaves
no partial files behind, but keeps the teacher cache that a rerun reuses."""

import errno

import pytest

from raft.cli import main

from build_fakes import FakeIndex, make_chunks


def test_unwritable_out_fails_before_indexing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("raft.data.builder.open_or_build_index",
                        lambda *a, **k: pytest.fail("indexed although --out cannot be written"))
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should go")
    assert main(["build", str(tmp_path), "--out", str(blocker / "ds")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a file, not a directory" in err


def test_a_full_disk_leaves_no_partial_files_and_keeps_the_teacher_cache(tmp_path, monkeypatch, capsys):
    index = FakeIndex(make_chunks(6, 1))
    monkeypatch.setattr("raft.data.builder.open_or_build_index", lambda *a, **k: index)
    import raft.data.export as export

    real = export._write_text

    def full_disk(path, text):
        if path.name == "build_summary.json":
            path.with_name(path.name + ".tmp").write_text(text[:10])
            raise OSError(errno.ENOSPC, "No space left on device", str(path) + ".tmp")
        real(path, text)

    monkeypatch.setattr(export, "_write_text", full_disk)
    out = tmp_path / "ds"
    assert main(["build", str(tmp_path), "--out", str(out), "mix.num_distractors=2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "the disk is full" in err and "teacher cache" in err
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert (out / ".cache" / "teacher.sqlite").exists()


def test_an_unreachable_teacher_fails_before_indexing(tmp_path, monkeypatch, capsys):
    import socket

    monkeypatch.setattr("raft.data.builder.open_or_build_index",
                        lambda *a, **k: pytest.fail("indexed before the teacher was checked"))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["build", str(tmp_path), "--out", str(tmp_path / "ds"), "teacher.kind=openai",
                 f"teacher.base_url=http://127.0.0.1:{port}/v1", "teacher.model=m", "teacher.connect_check_s=2"]) == 2
    assert "is unreachable" in capsys.readouterr().err


def test_a_base_url_without_v1_fails_before_indexing(tmp_path, monkeypatch, capsys):
    from build_fakes import FakeOpenAI

    monkeypatch.setattr("raft.data.builder.open_or_build_index",
                        lambda *a, **k: pytest.fail("indexed before the teacher's 404 was reported"))
    with FakeOpenAI(get=lambda path: (404, '{"detail": "Not Found"}')) as srv:
        root = srv.url.removesuffix("/v1")
        assert main(["build", str(tmp_path), "--out", str(tmp_path / "ds"), "teacher.kind=openai",
                     f"teacher.base_url={root}", "teacher.model=m", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"error: teacher endpoint {root} answered 404" in err and "ends in /v1" in err and "Traceback" not in err
