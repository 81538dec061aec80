"""`raft index` on bad or surprising input: a damaged index is a one-line error naming the file and how
to rebuild."""


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
    man = read_manifest(index_copy)
    name = man["store"] if part == "store" else man["faiss"]["files"][0]
    _overwrite_middle(index_copy / name)
    args = ["index", verb[0], str(index_copy)] + verb[2:]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert str(index_copy / name) in err and "checksum" in err and "rebuild it: raft index build" in err


def test_damage_found_without_checksums_is_named_too(index_copy):
    """verify=False (Ray shards, reloads): the store and FAISS files are still opened inside a clean error."""
    from retrieval.errors import RetrievalError

    man = read_manifest(index_copy)
    store = index_copy / man["store"]
    store.write_bytes(b"\x00" * store.stat().st_size)  # same size, not a database any more
    with pytest.raises(RetrievalError, match=r"is not a readable SQLite store.*rebuild it"):
        RetrievalIndex.open(index_copy, verify=False)
