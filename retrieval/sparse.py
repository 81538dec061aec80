"""BM25 over immutable segments: one sparse (term x chunk) matrix per segment, queries scored in batches.

The ranking is SQLite FTS5's `bm25(chunks_fts, 0.5, 1.0)`, the engine this one replaced, term for term:
- tokens are FTS5's own `porter unicode61` tokens: every distinct word goes once through an in-memory FTS5
  table with that tokenizer (`Analyzer`), so stemming, case folding and diacritics are SQLite's;
- a chunk's term frequency is 0.5 x (count in the title) + 1.0 x (count in the text), its length is the
  token count of both, k1 = 1.2, b = 0.75, idf = ln((N - df + 0.5) / (df + 0.5)) clamped to 1e-6;
- two query words with the same stem count twice (FTS5 scores each OR-ed phrase).

Each segment stores, per (term, chunk), the term-frequency part of BM25, computed with the mean chunk length
of the whole index when the segment was written; the idf is applied at query time from the document
frequencies summed over all segments, so scores from different segments compare (as Lucene's collection
statistics do). Two differences from FTS5, both Lucene's too: a deleted chunk counts in N and df until its
segment is merged, and a small segment keeps the mean length it was written with until then.

A batch of queries is one sparse product per segment (scipy), so a micro-batch of 16 queries costs little
more than one; filters, tenants and tombstones are a boolean mask over the segment's chunks applied before
the top-k is taken.
"""

from __future__ import annotations

import io
import math
import os
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

K1, B = 1.2, 0.75
TITLE_WEIGHT, TEXT_WEIGHT = 0.5, 1.0
# A query uses at most this many distinct words (the first ones): an unbounded query (a pasted book) would
# otherwise touch every posting list of the index.
MAX_QUERY_TERMS = 64
_WORD = re.compile(r"\w+", re.UNICODE)
_MEMO_LIMIT = 200_000  # word -> stems kept for queries (a build resolves its own words without the memo)


class Analyzer:
    """Words to FTS5 `porter unicode61` stems, through SQLite itself (one in-memory FTS5 table)."""

    def __init__(self) -> None:
        self._con = sqlite3.connect(":memory:", check_same_thread=False)
        self._con.execute("CREATE VIRTUAL TABLE w USING fts5(t, tokenize='porter unicode61')")
        self._con.execute("CREATE VIRTUAL TABLE v USING fts5vocab(w, 'instance')")
        self._lock = threading.Lock()
        self._memo: dict[str, tuple[str, ...]] = {}

    def stems(self, words: Iterable[str], memo: dict[str, tuple[str, ...]] | None = None) -> dict[str, tuple[str, ...]]:
        """word -> its stems (usually one; none for a word FTS5 drops, several when unicode61 splits it)."""
        memo = self._memo if memo is None else memo
        todo = [w for w in dict.fromkeys(words) if w not in memo]
        with self._lock:
            for i in range(0, len(todo), 50_000):
                part = todo[i:i + 50_000]
                self._con.executemany("INSERT INTO w(rowid, t) VALUES (?, ?)", list(enumerate(part, 1)))
                got: dict[int, list[str]] = {}
                for doc, term in self._con.execute("SELECT doc, term FROM v ORDER BY doc, offset"):
                    got.setdefault(doc, []).append(term)
                self._con.execute("DELETE FROM w")
                for j, w in enumerate(part, 1):
                    memo[w] = tuple(got.get(j, ()))
            if memo is self._memo and len(memo) > _MEMO_LIMIT:
                memo.clear()
        return memo

    def query_terms(self, query: str) -> Counter:
        """stem -> how many distinct query words give it, over the first MAX_QUERY_TERMS distinct words."""
        seen: dict[str, None] = {}
        for m in _WORD.finditer(query):
            seen[m.group().lower()] = None
            if len(seen) >= MAX_QUERY_TERMS:
                break
        memo = self.stems(seen)
        out: Counter = Counter()
        for w in seen:
            for s in dict.fromkeys(memo.get(w, ())):
                out[s] += 1
        return out


_ANALYZER: Analyzer | None = None
_ANALYZER_LOCK = threading.Lock()


def analyzer() -> Analyzer:
    global _ANALYZER
    with _ANALYZER_LOCK:
        if _ANALYZER is None:
            _ANALYZER = Analyzer()
        return _ANALYZER


def tokenize_corpus(titles: Sequence[str], texts: Sequence[str]) -> tuple[list[list[str]], list[list[str]]]:
    """Stems of each title and text (words resolved in bulk, one SQLite pass per 50k distinct words)."""
    tw = [_WORD.findall(t or "") for t in titles]
    xw = [_WORD.findall(t or "") for t in texts]
    memo: dict[str, tuple[str, ...]] = {}
    analyzer().stems((w for ws in (*tw, *xw) for w in ws), memo)
    return ([[s for w in ws for s in memo[w]] for ws in tw], [[s for w in ws for s in memo[w]] for ws in xw])


class SparseSegment:
    """One segment's BM25 data: chunks are the positions 0..n-1 of `rows` (ascending store rows)."""

    def __init__(self, rows: np.ndarray, terms: list[str], indptr: np.ndarray, indices: np.ndarray,
                 data: np.ndarray, df: np.ndarray, tokens: float):
        from scipy.sparse import csr_matrix

        self.rows = np.asarray(rows, dtype="int64")
        self.vocab = {t: i for i, t in enumerate(terms)}
        self.df = np.asarray(df, dtype="int64")
        self.tokens = float(tokens)  # total token count (for the index-wide mean length)
        self.n = len(self.rows)
        self.matrix = csr_matrix((data, indices, indptr), shape=(len(terms), self.n))
        self._terms = terms

    # ---- building -----------------------------------------------------------------------------
    @classmethod
    def build(cls, rows: Sequence[int], titles: Sequence[str], texts: Sequence[str],
              base: tuple[int, float] = (0, 0.0)) -> "SparseSegment":
        """`base=(chunks, tokens)` of the index's other segments: the mean chunk length scored with is the
        whole index's. `rows` must be ascending."""
        rows = np.asarray(rows, dtype="int64")
        if len(rows) > 1 and np.any(np.diff(rows) <= 0):
            raise ValueError("SparseSegment.build: rows must be strictly ascending")
        ttoks, xtoks = tokenize_corpus(titles, texts)
        vocab: dict[str, int] = {}
        term_ids: list[int] = []
        doc_ids: list[int] = []
        freqs: list[float] = []
        lengths = np.zeros(len(rows), dtype="float64")
        for j, (tt, xt) in enumerate(zip(ttoks, xtoks)):
            lengths[j] = len(tt) + len(xt)
            f: dict[str, float] = dict(Counter(xt))
            for s in tt:
                f[s] = f.get(s, 0.0) + TITLE_WEIGHT / TEXT_WEIGHT
            for s, v in f.items():
                term_ids.append(vocab.setdefault(s, len(vocab)))
                doc_ids.append(j)
                freqs.append(v * TEXT_WEIGHT)
        total = float(lengths.sum())
        avgdl = (base[1] + total) / max(1, base[0] + len(rows))
        t = np.asarray(term_ids, dtype="int64")
        d = np.asarray(doc_ids, dtype="int32")
        fr = np.asarray(freqs, dtype="float64")
        tf = fr * (K1 + 1.0) / (fr + K1 * (1.0 - B + B * lengths[d] / max(avgdl, 1e-9)))
        order = np.lexsort((d, t))
        indptr = np.zeros(len(vocab) + 1, dtype="int64")
        np.cumsum(np.bincount(t, minlength=len(vocab)), out=indptr[1:])
        terms = [""] * len(vocab)
        for s, i in vocab.items():
            terms[i] = s
        df = np.diff(indptr)
        return cls(rows, terms, indptr, d[order], tf[order].astype("float32"), df, total)

    # ---- persistence --------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        m = self.matrix
        buf = io.BytesIO()
        np.savez(buf, rows=self.rows, indptr=m.indptr.astype("int64"), indices=m.indices.astype("int32"),
                 data=m.data.astype("float32"), df=self.df, tokens=np.asarray([self.tokens]),
                 terms=np.frombuffer("\n".join(self._terms).encode("utf-8"), dtype="uint8"))
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "SparseSegment":
        with np.load(path) as z:
            raw = z["terms"].tobytes().decode("utf-8")
            terms = raw.split("\n") if raw else []
            return cls(z["rows"], terms, z["indptr"], z["indices"], z["data"], z["df"], float(z["tokens"][0]))

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """Positions of those of `rows` this segment holds."""
        rows = np.asarray(rows, dtype="int64")
        pos = np.searchsorted(self.rows, rows)
        ok = pos < self.n
        ok[ok] = self.rows[pos[ok]] == rows[ok]
        return pos[ok]


def _idf(n: int, df: int) -> float:
    idf = math.log((n - df + 0.5) / (df + 0.5)) if n > 0 else 0.0
    return idf if idf > 0 else 1e-6


def search(segments: Sequence[SparseSegment], masks: Sequence[np.ndarray | None], queries: Sequence[str],
           k: int, check=None) -> list[list[tuple[int, float]]]:
    """Top-k (row, score) per query, best first, ties by row. `masks[i]`: the chunks of segment i that may
    be returned (filter, tenant, tombstones, shard), None for all. `check()` runs between segments (a
    deadline).

    Terms in more than half of the chunks are left out of the scored query (their idf is clamped to
    ~0, so they cannot change the ranking, but their posting lists are the longest); when the other terms
    match fewer than k chunks, chunks matching only those frequent terms fill up to k with score 0 in row
    order. A query of nothing but frequent terms is scored with all of them."""
    from scipy.sparse import csr_matrix

    n_all = sum(s.n for s in segments)
    plans = []
    for q in queries:
        terms = analyzer().query_terms(q)
        df = {t: sum(int(s.df[s.vocab[t]]) for s in segments if t in s.vocab) for t in terms}
        useful = {t: m for t, m in terms.items() if 0 < df[t] and 2 * df[t] <= n_all}
        frequent = [t for t in terms if t not in useful and df[t] > 0]
        if not useful:
            useful, frequent = {t: m for t, m in terms.items() if df[t] > 0}, []
        plans.append(({t: m * _idf(n_all, df[t]) for t, m in useful.items()}, frequent))
    cands: list[list[tuple[int, float]]] = [[] for _ in queries]
    for seg, mask in zip(segments, masks):
        if check is not None:
            check()
        if seg.n == 0:
            continue
        ri, ci, vals = [], [], []
        for qi, (weights, _) in enumerate(plans):
            for t, w in weights.items():
                j = seg.vocab.get(t)
                if j is not None:
                    ri.append(qi)
                    ci.append(j)
                    vals.append(w)
        if not vals:
            continue
        qm = csr_matrix((np.asarray(vals, "float32"), (ri, ci)), shape=(len(queries), len(seg.vocab)))
        scores = (qm @ seg.matrix).tocsr()
        for qi in range(len(queries)):
            a, b = scores.indptr[qi], scores.indptr[qi + 1]
            pos, sc = scores.indices[a:b], scores.data[a:b]
            if mask is not None:
                keep = mask[pos]
                pos, sc = pos[keep], sc[keep]
            if len(pos) > k:
                top = np.argpartition(-sc, k - 1)[:k]
                pos, sc = pos[top], sc[top]
            cands[qi].extend(zip(seg.rows[pos].tolist(), sc.astype("float64").tolist()))
    out = []
    for qi, lst in enumerate(cands):
        lst.sort(key=lambda x: (-x[1], x[0]))
        lst = lst[:k]
        frequent = plans[qi][1]
        if len(lst) < k and frequent:
            lst += _fillers(segments, masks, frequent, {r for r, _ in lst}, k - len(lst))
        out.append(lst)
    return out


def _fillers(segments, masks, terms: list[str], seen: set[int], need: int) -> list[tuple[int, float]]:
    """Chunks holding any of `terms`, not in `seen`, allowed by the masks: the first `need` by row, score 0."""
    got: list[int] = []
    for seg, mask in zip(segments, masks):
        ids = [seg.vocab[t] for t in terms if t in seg.vocab]
        if not ids:
            continue
        m = seg.matrix
        pos = np.unique(np.concatenate([m.indices[m.indptr[j]:m.indptr[j + 1]] for j in ids]))
        if mask is not None:
            pos = pos[mask[pos]]
        got.extend(r for r in seg.rows[pos].tolist() if r not in seen)
    return [(r, 0.0) for r in sorted(got)[:need]]
