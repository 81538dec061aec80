import json

from retrieval.loaders import load_corpus
from tiny_pdf import text_pdf


def test_every_format_loads_and_bad_files_are_skipped_with_reasons(tmp_path):
    root = tmp_path / "c"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("intro line\n\n# The Title\n\nBody text here.")
    (root / "notitle.md").write_text("no heading at all")
    (root / "b.txt").write_text("plain text")
    (root / "sub" / "c.html").write_text("<html><head><title>Page</title><script>var x=1;</script></head>"
                                          "<body><p>Hello html</p><p>Second</p></body></html>")
    (root / "d.pdf").write_bytes(text_pdf("Hello from a PDF"))
    (root / "e.jsonl").write_text(json.dumps({"id": "r1", "title": "T1", "text": "one", "tenant": "x"}) + "\n"
                                  + "{bad json\n" + json.dumps({"id": "r2", "text": ""}) + "\n")
    (root / "f.json").write_text(json.dumps([{"id": "j1", "text": "json one"}]))
    (root / "empty.txt").write_text("   \n")
    (root / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 garbage that is not a pdf")
    (root / "image.png").write_bytes(b"\x89PNG")
    docs, skipped = load_corpus(root)
    by_id = {d.doc_id: d for d in docs}
    assert set(by_id) == {"a.md", "notitle.md", "b.txt", "sub/c.html", "d.pdf", "r1", "j1"}
    assert by_id["a.md"].title == "The Title"
    assert by_id["notitle.md"].title == "notitle"
    assert by_id["sub/c.html"].title == "Page" and "Hello html" in by_id["sub/c.html"].text
    assert "var x" not in by_id["sub/c.html"].text
    assert "Hello from a PDF" in by_id["d.pdf"].text
    assert by_id["r1"].title == "T1" and by_id["r1"].metadata == {"tenant": "x"}
    reasons = {p.rsplit("/", 1)[-1]: r for p, r in skipped}
    assert "empty" in reasons["empty.txt"]
    assert "binary" in reasons["bin.txt"]
    assert "PDF" in reasons["broken.pdf"] or "pdf" in reasons["broken.pdf"].lower()
    assert "unsupported" in reasons["image.png"]
    assert any(p.endswith("e.jsonl:2") and "bad JSON" in r for p, r in skipped)
    assert any(p.endswith("e.jsonl:3") and "no text" in r for p, r in skipped)


def test_shared_style_jsonl_keeps_record_ids_and_custom_fields(tmp_path):
    f = tmp_path / "corpus.jsonl"
    f.write_text("\n".join(json.dumps({"id": f"x:{i}", "title": f"t{i}", "text": f"text {i}"}) for i in range(3)))
    docs, skipped = load_corpus(f)
    assert [d.doc_id for d in docs] == ["x:0", "x:1", "x:2"] and skipped == []
    g = tmp_path / "other.jsonl"
    g.write_text(json.dumps({"pid": "p9", "name": "N", "body": "content"}))
    docs, _ = load_corpus(g, id_field="pid", title_field="name", text_field="body")
    assert (docs[0].doc_id, docs[0].title, docs[0].text) == ("p9", "N", "content")


def test_missing_corpus_is_a_clear_error(tmp_path):
    import pytest

    from retrieval.errors import RetrievalError

    with pytest.raises(RetrievalError, match="does not exist"):
        load_corpus(tmp_path / "nope")
