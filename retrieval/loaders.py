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
                text_field: str = "text", corpus_root: str | Path | None = None,
                ) -> tuple[list[Document], list[tuple[str, str]]]:
    """Load every supported file under `path` (a file or a directory, recursively).

    Returns (documents, skipped) where skipped lists (path, reason).

    Document ids, one rule for `raft index build` and `raft index add`: a file's id is its path relative to
    the corpus root, which is `path` itself for a directory and the directory holding it for a file.
    `corpus_root` (an index's recorded root, for add) takes that place for files under it, so a file added
    again gets the id it was built with and replaces it. JSON/JSONL records keep their own id (else
    FILE_ID:N, FILE_ID:LINE).
    """
    root = Path(path)
    if not root.exists():
        raise RetrievalError(f"corpus {str(root)!r} does not exist; pass a file or a directory of "
                             f".txt/.md/.html/.pdf/.json/.jsonl files")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()
                                                 and not any(part.startswith(".") for part in p.relative_to(root).parts))
    base = root.parent if root.is_file() else root
    resolve = False
    if corpus_root is not None:
        known = Path(corpus_root).expanduser().resolve()
        if root.resolve().is_relative_to(known):
            base, resolve = known, True
    docs: list[Document] = []
    skipped: list[tuple[str, str]] = []
    for f in files:
        # under a known root: the argument resolved, then the file's place inside it (symlinked files stay put)
        rel = ((root.resolve() / f.relative_to(root)) if resolve else f).relative_to(base).as_posix()
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


# File signatures of common binary formats, named in the skip reason (a PNG renamed .html is still a PNG).
# Only signatures no text file starts with (each has a byte that is a control character or invalid UTF-8).
_MAGIC = {b"\x89PNG": "PNG image", b"\xff\xd8\xff": "JPEG image", b"PK\x03\x04": "ZIP archive",
          b"\x1f\x8b": "gzip archive", b"\x7fELF": "executable"}
# Share of characters that no text file holds (control characters other than whitespace, C1 controls,
# U+FFFD) above which decoded content is binary; real text has none or nearly none.
MAX_CONTROL_SHARE = 0.01
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufffd]")
_HIGH = re.compile("[^\x00-\x7f]")
# Without a valid UTF-8 or UTF-16 decoding, text is read as Latin-1/cp1252 only when mostly ASCII: Western
# text in those encodings has a few accented letters, random bytes have half their bytes above 0x7F.
MAX_HIGH_SHARE_LEGACY = 0.3


def _read_text(f: Path) -> str:
    raw = f.read_bytes()
    for magic, what in _MAGIC.items():
        if raw.startswith(magic):
            raise _Skip(f"binary content ({what})")
    if b"\x00" in raw[:8192] and raw[:2] not in (b"\xff\xfe", b"\xfe\xff"):
        raise _Skip("binary content (NUL bytes)")
    legacy = False
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = raw.decode("utf-16") if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else None
        except UnicodeDecodeError as e:
            raise _Skip(f"not text: {e}") from None
        if text is None:
            legacy = True
            try:
                text = raw.decode("cp1252")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")
    why = binary_reason(text, legacy)
    if why:
        raise _Skip(f"binary content ({why})")
    return text


def binary_reason(text: str, legacy: bool = False) -> str | None:
    """Why decoded `text` is not text (None when it is). `legacy`: it was decoded as Latin-1/cp1252 because
    it is not valid UTF-8, which any byte string is, so it must also be mostly ASCII."""
    sample = text[:65536]
    if not sample:
        return None
    control = len(_CONTROL.findall(sample))
    if control > MAX_CONTROL_SHARE * len(sample):
        return f"{control / len(sample):.0%} control characters"
    if legacy:
        high = len(_HIGH.findall(sample))
        if high > MAX_HIGH_SHARE_LEGACY * len(sample):
            return f"not UTF-8, and {high / len(sample):.0%} of its bytes are above 0x7F"
    return None


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
