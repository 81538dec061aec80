import pytest

from retrieval.chunking import chunk_document
from retrieval.types import Document, chunk_id_for


@pytest.fixture(scope="module")
def tok(embedder_path):
    from retrieval.embedders import load_tokenizer

    return load_tokenizer(embedder_path)


def _ntok(tok, text):
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_chunks_respect_size_prefer_sentences_and_overlap(tok):
    sentences = [f"Sentence number {i} talks about the island of Marenta and its glass." for i in range(40)]
    paras = ["  ".join(sentences[i:i + 5]) for i in range(0, 40, 5)]
    doc = Document("d1", "\n\n".join(paras), title="T", metadata={"tenant": "a"})
    chunks = chunk_document(doc, tok, chunk_size=60, chunk_overlap=15)
    assert len(chunks) > 5
    for c in chunks:
        assert _ntok(tok, c.text) <= 60
        assert c.text.endswith(".")  # cut at a sentence (or paragraph) boundary, never mid-sentence
        assert c.title == "T" and c.metadata["tenant"] == "a" and c.doc_id == "d1"
    # consecutive chunks overlap: the next one starts inside the previous one
    for a, b in zip(chunks, chunks[1:]):
        assert a.metadata["span"][1] > b.metadata["span"][0] > a.metadata["span"][0]
    # ids are the stable hash of doc id and span, and re-chunking gives the same ids
    again = chunk_document(doc, tok, chunk_size=60, chunk_overlap=15)
    assert [c.chunk_id for c in again] == [c.chunk_id for c in chunks]
    assert chunks[0].chunk_id == chunk_id_for("d1", *chunks[0].metadata["span"])
    assert len({c.chunk_id for c in chunks}) == len(chunks)


def test_paragraph_boundary_preferred_over_sentence(tok):
    p1 = "Alpha beta gamma delta. " * 6
    p2 = "Epsilon zeta eta theta. " * 6
    doc = Document("d2", p1.strip() + "\n\n" + p2.strip())
    n1 = _ntok(tok, p1)
    chunks = chunk_document(doc, tok, chunk_size=n1 + 20, chunk_overlap=0)
    assert chunks[0].text == p1.strip()


def test_no_overlap_and_short_and_empty_docs(tok):
    doc = Document("d3", " ".join(f"word{i}" for i in range(300)))
    chunks = chunk_document(doc, tok, chunk_size=50, chunk_overlap=0)
    spans = [c.metadata["span"] for c in chunks]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    assert chunk_document(Document("e", "   "), tok, 50, 0) == []
    assert len(chunk_document(Document("s", "short text"), tok, 50, 10)) == 1
