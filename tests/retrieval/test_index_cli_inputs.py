"""`raft index` on bad or surprising input: a damaged index is a one-line error naming the file and how
to rebuild; build and add name documents by one rule, so re-adding an edited file replaces it; deleting
an unknown id is an error; search output fits the terminal."""

import json

import pytest

from raft.cli import main
from retrieval.generations import read_manifest
from retrieval.index import RetrievalIndex


def _overwrite_middle(path, n=64):
    """Damage a file in place, keeping its size (what a disk error or a stray write does)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes((b ^ 0xFF) for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("part", ["store", "faiss"])
@pytest.mark.parametrize("verb", [["stats"], ["search", "{idx}", "largest island"]])
def test_corruption_at_the_same_size_is_a_one_line_error(index_copy, capsys, part, verb):
    seg = read_manifest(index_copy)["segments"][0]
    name = seg["store"] if part == "store" else seg["dense"][0]
    _overwrite_middle(index_copy / name)
    args = ["index", verb[0], str(index_copy)] + verb[2:]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert str(index_copy / name) in err and "checksum" in err and "rebuild it: raft index build" in err


def test_damage_found_without_checksums_is_named_too(index_copy):
    """verify=False (Ray shards, reloads): the store and FAISS files are still opened inside a clean error."""
    from retrieval.errors import RetrievalError

    store = index_copy / read_manifest(index_copy)["segments"][0]["store"]
    store.write_bytes(b"\x00" * store.stat().st_size)  # same size, not a database any more
    with pytest.raises(RetrievalError, match=r"is not a readable SQLite store.*rebuild it"):
        RetrievalIndex.open(index_copy, verify=False)


@pytest.fixture
def nested(tmp_path):
    root = tmp_path / "nested"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("# Alpha\n\nThe alpha harbour opens at dawn.\n")
    (root / "sub" / "x.md").write_text("# Ex\n\nThe x lighthouse is painted red.\n")
    return root


def _ids(idx_dir):
    idx = RetrievalIndex.open(idx_dir)
    try:
        return sorted(idx.doc_ids()), len(idx)
    finally:
        idx.close()


def test_re_adding_an_edited_file_replaces_it(tmp_path, nested, embedder_path, capsys, monkeypatch):
    idx = tmp_path / "idx"
    assert main(["index", "build", str(nested), "--out", str(idx), f"embedder={embedder_path}"]) == 0
    assert _ids(idx)[0] == ["a.md", "sub/x.md"]
    (nested / "sub" / "x.md").write_text("# Ex\n\nThe x lighthouse is painted blue since the storm.\n")
    monkeypatch.chdir(tmp_path)  # a relative path, as a user types it
    assert main(["index", "add", "idx", "nested/sub/x.md"]) == 0
    assert "0 new, 1 replaced" in capsys.readouterr().err
    ids, _ = _ids(idx)
    assert ids == ["a.md", "sub/x.md"]
    assert main(["index", "search", "idx", "lighthouse painted", "-k", "5", "--json"]) == 0
    texts = [r["text"] for r in json.loads(capsys.readouterr().out)["results"] if r["doc_id"] == "sub/x.md"]
    assert texts and all("blue" in t for t in texts)
    # a directory under the root: the same ids again
    assert main(["index", "add", "idx", "nested/sub"]) == 0
    assert _ids(idx)[0] == ["a.md", "sub/x.md"]
    # a file from elsewhere is named by its name, as a build of it would name it
    (tmp_path / "new.md").write_text("# New\n\nA new pier was built.\n")
    assert main(["index", "add", "idx", "new.md"]) == 0
    assert _ids(idx)[0] == ["a.md", "new.md", "sub/x.md"]
    assert RetrievalIndex.open(idx).corpus_root == str(nested.resolve())


def test_delete_of_unknown_ids_is_an_error_that_deletes_nothing(index_copy, capsys):
    before = _ids(index_copy)
    assert main(["index", "delete", str(index_copy), "veloria_history.md", "history.md", "nope.md"]) == 2
    err = capsys.readouterr().err
    assert "2 of 3 document id(s) are not in" in err and "'history.md'" in err and "'nope.md'" in err
    assert "nothing was deleted" in err
    assert _ids(index_copy) == before
    assert main(["index", "delete", str(index_copy), "veloria_history.md"]) == 0
    assert "veloria_history.md" not in _ids(index_copy)[0]


def test_delete_suggests_the_id_under_the_root(index_copy, capsys):
    assert main(["index", "delete", str(index_copy), "sub/veloria_history.md"]) == 2
    assert "did you mean 'veloria_history.md'" in capsys.readouterr().err


def test_search_output_fits_the_terminal(built_index, capsys, monkeypatch):
    for columns in (60, 120):
        monkeypatch.setenv("COLUMNS", str(columns))
        assert main(["index", "search", str(built_index), "what does Veloria export?", "-k", "3"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) == 1 + 2 * 3
        assert max(len(line) for line in lines[1:]) <= columns
        assert all(line.startswith("     ") for line in lines[2::2])  # the snippet lines


def test_add_of_nothing_usable_is_an_error(index_copy, tmp_path, capsys):
    (tmp_path / "img.md").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(1, 200)))
    before = _ids(index_copy)
    assert main(["index", "add", str(index_copy), str(tmp_path / "img.md")]) == 2
    err = capsys.readouterr().err
    assert "img.md: binary content (PNG image)" in err and "nothing to add" in err
    assert _ids(index_copy) == before
