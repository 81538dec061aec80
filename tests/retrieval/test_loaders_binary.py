"""Binary content is skipped with a reason whatever the file is named, NUL bytes or not; text in UTF-8,
UTF-16 (with a BOM) and Latin-1/cp1252 is read."""

import os

from retrieval.loaders import binary_reason, load_corpus


def test_binary_files_without_nul_bytes_are_skipped(tmp_path):
    rnd = bytes(b for b in os.urandom(20000) if b)  # random bytes with every NUL removed
    (tmp_path / "random.md").write_bytes(rnd)
    (tmp_path / "high.md").write_bytes(bytes(range(128, 256)) * 50)  # only bytes above 0x7F
    (tmp_path / "picture.html").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(b for b in os.urandom(4000) if b))
    (tmp_path / "archive.txt").write_bytes(b"PK\x03\x04" + b"x" * 200)
    # printable-looking high bytes only (no C1 controls, valid cp1252): still not text
    (tmp_path / "letters.md").write_bytes(bytes(range(0xC0, 0x100)) * 60)
    docs, skipped = load_corpus(tmp_path)
    assert docs == []
    reasons = {os.path.basename(p): r for p, r in skipped}
    assert set(reasons) == {"random.md", "high.md", "picture.html", "archive.txt", "letters.md"}
    assert all(r.startswith("binary content") for r in reasons.values()), reasons
    assert reasons["picture.html"] == "binary content (PNG image)"


def test_text_in_common_encodings_is_read(tmp_path):
    (tmp_path / "utf8.md").write_text("# Café\n\nNaïve façade, Ünïcödé — “quotes”, emoji 🙂.\n" * 5, encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("Crème brûlée à la française, déjà vu.\n".encode("latin-1") * 10)
    (tmp_path / "cp1252.txt").write_bytes("Price: 5 € – “smart quotes” and … dots\n".encode("cp1252") * 10)
    (tmp_path / "utf16.txt").write_bytes("A UTF-16 file with a byte order mark.\n".encode("utf-16"))
    (tmp_path / "tabs.txt").write_text("col1\tcol2\r\nline\fwith form feed\n")
    docs, skipped = load_corpus(tmp_path)
    assert skipped == []
    by_id = {d.doc_id: d.text for d in docs}
    assert "brûlée" in by_id["latin1.txt"] and "€" in by_id["cp1252.txt"] and "byte order mark" in by_id["utf16.txt"]


def test_binary_reason_thresholds():
    assert binary_reason("plain text\n" * 100) is None
    assert binary_reason("text with one \x07 bell" + "x" * 200) is None  # a stray control character is fine
    assert binary_reason("\x01\x02\x03abc" * 10)
    assert binary_reason("é" * 10 + "abc" * 100, legacy=True) is None
    assert binary_reason("éàü" * 100, legacy=True)
