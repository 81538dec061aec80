"""Test doubles: an in-memory index with the RetrievalIndex methods the builder uses, and a local fake
OpenAI-compatible server (http.server on 127.0.0.1) whose behaviour a test scripts per request."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler

import numpy as np

from raft.prompt import cot_answer
from raft.data.teachers import sentences
from retrieval.types import Chunk, Hit
from quiet_http import QuietHTTPServer

DIM = 64


def _vec(text: str) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    for w in re.findall(r"\w+", text.lower()):
        v[int(hashlib.md5(w.encode()).hexdigest(), 16) % DIM] += 1.0
    n = np.linalg.norm(v)
    return v / n if n else v


class FakeIndex:
    """Same methods as retrieval.index.RetrievalIndex used by raft.data (embed/search_vectors/get/...)."""

    def __init__(self, chunks: list[Chunk]):
        self.chunks = {c.chunk_id: c for c in chunks}
        self._ids = [c.chunk_id for c in chunks]
        self._m = np.stack([_vec(c.text) for c in chunks]) if chunks else np.zeros((0, DIM), np.float32)
        self.search_calls = 0

    def embed(self, texts):
        return np.stack([_vec(t) for t in texts]).astype(np.float32)

    def search_vectors(self, vectors, k, filter=None):
        self.search_calls += 1
        scores = vectors @ self._m.T
        out = []
        for row in scores:
            top = np.argsort(-row, kind="stable")[:k]
            out.append([Hit(self.chunks[self._ids[i]], float(row[i])) for i in top])
        return out

    def get(self, ids):
        return [self.chunks[i] for i in ids if i in self.chunks]

    def chunk_ids(self):
        return list(self._ids)

    def chunks_for_doc(self, doc_id):
        return [c for c in self.chunks.values() if c.doc_id == doc_id]

    def __len__(self):
        return len(self._ids)


def make_chunks(n_docs: int = 12, per_doc: int = 2) -> list[Chunk]:
    """Distinct synthetic chunks; doc d chunk j states a unique fact `code of dD-J is CODEdDjJ`."""
    words = ["river", "mountain", "harbour", "forest", "market", "bridge", "castle", "valley", "island", "tower",
             "garden", "temple", "mill", "lake", "road", "farm"]
    out = []
    for d in range(n_docs):
        for j in range(per_doc):
            w1, w2 = words[(d * 3 + j) % len(words)], words[(d * 5 + j * 7 + 1) % len(words)]
            text = (f"The {w1} of Place{d} lies near the {w2}. The secret code of place{d} part{j} is "
                    f"Zq{d}x{j}. Visitors to Place{d} often walk along the {w1} in spring {1900 + d * 10 + j}.")
            out.append(Chunk(chunk_id=f"c{d:03d}_{j}", doc_id=f"doc{d:03d}", text=text, title=f"Place {d}",
                             source=f"doc{d:03d}.md"))
    return out


_CODE = re.compile(r"\bZq\d+x\d+\b")


def good_answer(user: str) -> str:
    """A keepable answer: it quotes the oracle sentence that holds the chunk's secret code (make_chunks) and
    answers with that code, so the quote holds the answer; elsewhere the first sentence and its last word."""
    ctx = user.split("Context:", 1)[1] if "Context:" in user else user
    sents = sentences(ctx)
    quote = next((s for s in sents if _CODE.search(s)), sents[0])
    m = _CODE.search(quote)
    return cot_answer("The context says:", [quote], m.group(0) if m else quote.rstrip(".").split()[-1])


class FakeOpenAI:
    """`behave(body, n) -> (status, payload|str, delay_s)`; default: valid questions/answers.
    `get(path) -> (status, payload)` answers GET requests; default: GET /models lists the model "fake"."""

    def __init__(self, behave=None, delay: float = 0.0, get=None):
        self.behave = behave
        self.get = get
        self.delay = delay
        self.count = 0
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status, payload, headers=None):
                data = payload if isinstance(payload, bytes) else (
                    payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if outer.get is not None:
                    self._send(*outer.get(self.path))
                    return
                self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                with outer.lock:
                    outer.count += 1
                    n = outer.count
                status, payload, delay = (outer.behave or default_behave)(body, n)
                time.sleep(delay if delay is not None else outer.delay)
                headers = {"Retry-After": "0"} if status == 429 else None
                try:
                    self._send(status, payload, headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = QuietHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def chat_response(text: str, finish: str = "stop") -> dict:
    return {"id": "x", "object": "chat.completion", "model": "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}


def default_behave(body, n):
    msgs = body["messages"]
    if "question generator" in msgs[0]["content"]:
        text = msgs[-1]["content"]
        sents = sentences(text)
        return 200, chat_response("\n".join(f"{i + 1}. What is said about: {s[:40]}?"
                                            for i, s in enumerate(sents))), None
    return 200, chat_response(good_answer(msgs[-1]["content"])), None
