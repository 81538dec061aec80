"""Corpus loaders: a file or a directory of .txt/.md/.html/.pdf/.json/.jsonl -> Documents.

A file that cannot be used (unreadable, empty, binary, corrupt, unknown type) is skipped and reported
with its reason; one bad file never stops a run over thousands.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

from retrieval.errors import RetrievalError
from retrieval.types import Document

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".json", ".jsonl"}
_HEADING = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)


def load_corpus(path: str | Path, id_field: str = "id", title_field: str = "title",
                text_field: str = "text") -> tuple[list[Document], list[tuple[str, str]]]:
    """Load every supported file under `path` (a file or a directory, recursively).

    Returns (documents, skipped) where skipped lists (path, reason). doc_id of a file is its path
    relative to the corpus root (the file name when `path` is a file); JSON records keep their own id.
    """
    root = Path(path)
    if not root.exists():
        raise RetrievalError(f"corpus {str(root)!r} does not exist; pass a file or a directory of "
                             f".txt/.md/.html/.pdf/.json/.jsonl files")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                 and not any(part.startswith(".") for part in p.relative_to(root).parts))
    base = root.parent if root.is_file() else root
    docs: list[Document] = []
    skipped: list[tuple[str, str]] = []
    for f in files:
        rel = f.relative_to(base).as_posix()
        suffix = f.suffix.lower()
        if suffix not in TEXT_SUFFIXES:
            skipped.append((str(f), f"unsupported file type {suffix or '(none)'!r}"))
            continue
        try:
            got = list(_load_file(f, rel, suffix, id_field, title_field, text_field, skipped))
        except Exception as e:  # corrupt file: report and go on
            skipped.append((str(f), f"unreadable: {type(e).__name__}: {e}"[:300]))
            continue
        if not got and not any(s[0].startswith(str(f)) for s in skipped):
            skipped.append((str(f), "empty: no text"))
        docs.extend(got)
    return docs, skipped


def _read_text(f: Path) -> str:
    raw = f.read_bytes()
    if b"\x00" in raw[:8192]:
        raise _Skip("binary content (NUL bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            return raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else raw.decode("latin-1")
        except UnicodeDecodeError as e:
            raise _Skip(f"not text: {e}") from None


class _Skip(Exception):
    """A file is not usable; the message is the reason."""


def _load_file(f: Path, rel: str, suffix: str, id_field: str, title_field: str, text_field: str,
               skipped: list[tuple[str, str]]) -> Iterable[Document]:
    try:
        if suffix in (".json", ".jsonl"):
            yield from _load_json(f, rel, suffix, id_field, title_field, text_field, skipped)
            return
        if suffix == ".pdf":
            text, meta = _pdf_text(f)
            title = meta or f.stem
        else:
            text = _read_text(f)
            if suffix in (".html", ".htm"):
                title, text = _html_text(text)
                title = title or f.stem
            elif suffix in (".md", ".markdown"):
                m = _HEADING.search(text)
                title = m.group(1).strip() if m else f.stem
            else:
                title = f.stem
    except _Skip as e:
        skipped.append((str(f), str(e)))
        return
    if not text.strip():
        skipped.append((str(f), "empty: no text"))
        return
    yield Document(doc_id=rel, text=text, title=title, source=str(f), metadata={})


def _html_text(html: str) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript"]):
        tag.decompose()
    title = soup.title.get_text(strip=True) if soup.title else ""
    if not title and soup.find("h1"):
        title = soup.find("h1").get_text(strip=True)
    body = soup.body or soup
    # block elements become paragraph breaks so chunking can prefer them
    text = body.get_text("\n", strip=True)
    return title, re.sub(r"\n{2,}", "\n\n", text)


def _pdf_text(f: Path) -> tuple[str, str]:
    import logging

    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # the skip reason says it; no warning spam

    try:
        reader = PdfReader(str(f))
        pages = [(p.extract_text() or "") for p in reader.pages]
        title = (reader.metadata.title if reader.metadata else None) or ""
    except Exception as e:
        raise _Skip(f"corrupt PDF: {type(e).__name__}: {e}"[:300]) from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text.strip():
        raise _Skip("PDF has no extractable text (scanned image?)")
    return text, str(title).strip()


def _load_json(f: Path, rel: str, suffix: str, id_field: str, title_field: str, text_field: str,
               skipped: list[tuple[str, str]]) -> Iterable[Document]:
    text = _read_text(f)
    if suffix == ".jsonl":
        records: list[tuple[str, Any]] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((f"{rel}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                skipped.append((f"{f}:{n}", f"bad JSON line: {e.msg}"))
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise _Skip(f"bad JSON at line {e.lineno}: {e.msg}") from None
        items = data if isinstance(data, list) else [data]
        records = [(f"{rel}:{i}" if isinstance(data, list) else rel, r) for i, r in enumerate(items)]
    for where, r in records:
        if not isinstance(r, dict):
            skipped.append((f"{f}:{where.rsplit(':', 1)[-1]}", f"record is {type(r).__name__}, not an object"))
            continue
        body = r.get(text_field)
        if not isinstance(body, str) or not body.strip():
            skipped.append((f"{f}:{where.rsplit(':', 1)[-1]}", f"no text in field {text_field!r}"))
            continue
        doc_id = str(r[id_field]) if r.get(id_field) not in (None, "") else where
        meta = {k: v for k, v in r.items() if k not in (id_field, title_field, text_field)}
        meta = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, list)) or v is None}
        yield Document(doc_id=doc_id, text=body, title=str(r.get(title_field) or ""), source=str(f),
                       metadata=meta)
