"""A small deterministic OpenAI-compatible server for tests (stdlib only, runs in a thread on 127.0.0.1).

Facts look like "The key of NAME is VALUE." and questions like "What is the key of NAME?". Models:
- `reader`: finds the fact about NAME among the shown documents, quotes it, answers VALUE (else "unknown");
- `first-doc`: answers with the value of the first fact shown, whoever it is about (a confused base model);
- `judge`: replies "Score: 4 - looks right." (or "Score: 1" when the candidate is "unknown").
Each reply reports `usage` with whitespace-separated words as tokens (the prompt's: every message's content;
the completion's: the reply's), or none when `usage` is set to False.
Requests with `"retrieval": {"enabled": true, "top_k": k}` act like our gateway: the server "retrieves"
from its corpus (the gold fact at rank 2 when k >= 2), answers from what it retrieved and returns citations.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler
from quiet_http import QuietHTTPServer

FACT_RE = re.compile(r"The key of (\w+) is (\w+)\.")
QUESTION_RE = re.compile(r"What is the key of (\w+)\?")


def fact(name: str, value: str) -> str:
    return f"The key of {name} is {value}."


def read_answer(model: str, user_text: str) -> str:
    m = QUESTION_RE.search(user_text)
    facts = FACT_RE.findall(user_text)
    if model == "first-doc":
        return f"<ANSWER>: {facts[0][1]}" if facts else "<ANSWER>: unknown"
    for name, value in facts:
        if m and name == m.group(1):
            return f"The document says ##begin_quote##{fact(name, value)}##end_quote##\n<ANSWER>: {value}"
    return "<ANSWER>: unknown"


class FakeOpenAI:
    """`corpus`: {doc_id: (name, value)} used for gateway-style retrieval."""

    def __init__(self, corpus: dict[str, tuple[str, str]], delay: float = 0.0):
        self.corpus = corpus
        self.requests: list[dict] = []
        self.delay = delay  # seconds each chat completion takes
        self.chat_status = 200  # a test sets an error status to make every chat completion fail
        self.usage = True  # False: replies carry no `usage`, as some endpoints send
        self.spans: list[tuple[float, float]] = []  # (start, end) of each chat completion
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output quiet
                pass

            def _send(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    return self._send(200, {"object": "list", "data": [
                        {"id": m, "object": "model", "created": 0, "owned_by": "test"}
                        for m in ("reader", "first-doc", "judge")]})
                self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                server.requests.append(body)
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                if server.chat_status != 200:
                    return self._send(server.chat_status, {"error": {"message": "chat failed"}})
                start = time.monotonic()
                time.sleep(server.delay)
                self._send(200, server.complete(body))
                server.spans.append((start, time.monotonic()))

        self.httpd = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def retrieve(self, question: str, k: int) -> list[str]:
        """Deterministic 'retrieval': other docs in id order, with the gold doc placed at rank 2."""
        m = QUESTION_RE.search(question)
        gold = [d for d, (n, _) in self.corpus.items() if m and n == m.group(1)]
        others = [d for d in sorted(self.corpus) if d not in gold]
        ranked = others[:1] + gold + others[1:]
        return ranked[:k]

    def complete(self, body: dict) -> dict:
        model = body.get("model", "")
        user = [m for m in body.get("messages", []) if m.get("role") == "user"][-1]["content"]
        citations = None
        if model == "judge":
            text = "Score: 1 - wrong." if "Candidate answer: unknown" in user else "Score: 4 - looks right."
        elif (body.get("retrieval") or {}).get("enabled"):
            ids = self.retrieve(user, int(body["retrieval"].get("top_k", 5)))
            shown = "".join(f"<DOCUMENT>\n{fact(*self.corpus[d])}\n</DOCUMENT>\n" for d in ids) + user
            text = read_answer(model, shown)
            quotes = re.findall(r"##begin_quote##(.*?)##end_quote##", text)
            citations = [{"chunk_id": f"c-{d}", "doc_id": d, "title": self.corpus[d][0], "source": f"{d}.md",
                          "score": 1.0 / (i + 1),
                          "quotes": [q for q in quotes if q == fact(*self.corpus[d])]}
                         for i, d in enumerate(ids)]
        else:
            text = read_answer(model, user)
        out = {"id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
               "choices": [{"index": 0, "finish_reason": "stop",
                            "message": {"role": "assistant", "content": text}}]}
        if self.usage:
            prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
            out["usage"] = {"prompt_tokens": prompt, "completion_tokens": len(text.split()),
                            "total_tokens": prompt + len(text.split())}
        if citations is not None:
            out["citations"] = citations
        return out

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
