"""Hostile input is refused with a 4xx in OpenAI's shape before any work: body size, query size, document
count and size, metadata size, depth and numbers, id characters, strict types, lone surrogates; JSON
errors give line and column; unknown paths share one metrics label; URL credentials never leak."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from gateway_helpers import DOCS, free_port
from retrieval.types import Document
from serving.testing.memory_retriever import InMemoryRetriever

JSON = {"content-type": "application/json"}


class CountingRetriever(InMemoryRetriever):
    """The in-memory retriever, counting the work it is asked to do."""

    def __init__(self, docs=()):
        super().__init__(docs)
        self.searches = self.adds = 0

    async def asearch(self, *args, **kwargs):
        self.searches += 1
        return await super().asearch(*args, **kwargs)

    async def aadd(self, docs):
        self.adds += 1
        return await super().aadd(docs)


def chat(q: str, **extra) -> dict:
    return {"model": "raft", "messages": [{"role": "user", "content": q}], **extra}


def assert_error(r: httpx.Response, status: int, code=None, param=None, says=()) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err
    for text in says:
        assert text in err["message"], err["message"]
    return err


def test_body_over_the_limit_is_413_before_it_is_read(make_gateway):
    r_ = CountingRetriever(DOCS)
    srv, _ = make_gateway(retriever=r_, limits={"max_body_bytes": 4096})
    big = chat("x" * 5000)
    r = httpx.post(srv.url + "/v1/chat/completions", json=big)
    assert_error(r, 413, "request_too_large", says=("4096", "serve.limits.max_body_bytes"))

    def chunked():  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b" " * 1000
    r = httpx.post(srv.url + "/v1/chat/completions", content=chunked(), headers=JSON)
    assert_error(r, 413, "request_too_large")
    assert r_.searches == 0
    assert httpx.post(srv.url + "/v1/chat/completions", json=chat("capital of Veloria")).status_code == 200
    m = httpx.get(srv.url + "/metrics").text
    assert 'raft_requests_total{endpoint="chat",status="413"} 2.0' in m


def test_retrieval_query_over_the_limit_is_400_before_any_search(make_gateway):
    r_ = CountingRetriever(DOCS)
    srv, _ = make_gateway(retriever=r_, limits={"max_query_chars": 100})
    r = httpx.post(srv.url + "/v1/chat/completions", json=chat("word " * 40))
    assert_error(r, 400, "query_too_long", "messages", ("200 characters", "serve.limits.max_query_chars"))
    r = httpx.post(srv.url + "/v1/completions", json={"model": "raft", "prompt": "word " * 40})
    assert_error(r, 400, "query_too_long", "prompt")
    assert r_.searches == 0
    # the limit is on what is searched: a long message with retrieval off is the engine's business
    r = httpx.post(srv.url + "/v1/chat/completions", json=chat("word " * 40, retrieval={"enabled": False}))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("docs, code, param, says", [
    ([{"id": f"d{i}", "text": "t"} for i in range(4)], "too_many_documents", "documents",
     ("4 documents", "max_documents_per_request")),
    ([{"id": "d", "text": "x" * 301}], "document_too_large", "documents[0].text",
     ("301", "max_document_chars")),
    ([{"id": "d", "text": " \n\t "}], "empty_document", "documents[0].text", ("whitespace",)),
    ([{"id": "a/b", "text": "t"}], "invalid_id", "documents[0].id", ("'a/b'", "serve.limits.id_pattern")),
    ([{"id": "x" * 41, "text": "t"}], "invalid_id", "documents[0].id", ("41 characters", "max_id_chars")),
    ([{"id": "d", "text": "t", "metadata": {"a": {"b": {"c": 1}}}}], "invalid_metadata",
     "documents[0].metadata", ("deeper than 2",)),
    ([{"id": "d", "text": "t", "metadata": {"k": "v" * 200}}], "invalid_metadata", "documents[0].metadata",
     ("bytes", "max_metadata_bytes")),
])
def test_documents_over_a_limit_are_400_before_any_ingest(make_gateway, docs, code, param, says):
    r_ = CountingRetriever(DOCS)
    srv, _ = make_gateway(retriever=r_, limits={"max_documents_per_request": 3, "max_document_chars": 300,
                                                "max_metadata_bytes": 100, "max_metadata_depth": 2,
                                                "max_id_chars": 40})
    r = httpx.post(srv.url + "/v1/documents", json={"documents": docs})
    assert_error(r, 400, code, param, says)
    assert r_.adds == 0


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_metadata_numbers_are_400(make_gateway, raw):
    r_ = CountingRetriever(DOCS)
    srv, _ = make_gateway(retriever=r_)
    body = '{"documents": [{"id": "d", "text": "t", "metadata": {"score": [1, %s]}}]}' % raw
    r = httpx.post(srv.url + "/v1/documents", content=body, headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_metadata", "documents[0].metadata",
                 ("documents[0].metadata.score[1]", "finite"))
    assert r_.adds == 0


def test_lone_surrogates_are_400_not_internal_messages(make_gateway):
    srv, _ = make_gateway()
    headers = {"content-type": "application/json"}
    body = '{"model": "raft", "messages": [{"role": "user", "content": "capital \\ud800 of Veloria"}]}'
    r = httpx.post(srv.url + "/v1/chat/completions", content=body, headers=headers)
    assert_error(r, 400, "invalid_text", "messages", ("lone surrogate at character 8",))
    body = '{"documents": [{"id": "d", "text": "bad \\udc00 text"}]}'
    r = httpx.post(srv.url + "/v1/documents", content=body, headers=headers)
    assert_error(r, 400, None, "documents.0.text", ("unicode",))  # the schema's strict str refuses it
    body = '{"documents": [{"id": "d", "text": "t", "metadata": {"k": ["\\ud800"]}}]}'
    r = httpx.post(srv.url + "/v1/documents", content=body, headers=headers)
    assert_error(r, 400, "invalid_metadata", "documents[0].metadata", ("documents[0].metadata.k[0]",))
    body = ('{"model": "raft", "messages": [{"role": "user", "content": "x"}], '
            '"retrieval": {"filter": {"k": "\\ud800"}}}')
    r = httpx.post(srv.url + "/v1/chat/completions", content=body, headers=headers)
    assert_error(r, 400, None, "retrieval.filter", ("surrogate",))


@pytest.mark.parametrize("field, value", [("top_k", "5"), ("top_k", 5.0), ("enabled", 0), ("enabled", "yes")])
def test_retrieval_options_are_strictly_typed(make_gateway, field, value):
    srv, _ = make_gateway()
    r = httpx.post(srv.url + "/v1/chat/completions", json=chat("capital", retrieval={field: value}))
    err = assert_error(r, 400, None, f"retrieval.{field}")
    assert f"(got {value!r})" in err["message"]


@pytest.mark.parametrize("field, value", [("stream", "yes"), ("stream", 1), ("max_tokens", "16"), ("n", "2"),
                                          ("temperature", "0.5")])
def test_sampling_fields_are_strictly_typed(make_gateway, field, value):
    srv, _ = make_gateway()
    r = httpx.post(srv.url + "/v1/chat/completions", json=chat("capital", **{field: value}))
    assert_error(r, 400, None, field)


def test_ints_still_fill_float_fields(make_gateway):
    srv, _ = make_gateway()
    r = httpx.post(srv.url + "/v1/chat/completions", json=chat("capital", temperature=1))
    assert r.status_code == 200, r.text


def test_out_of_range_filter_integer_is_400(make_gateway):
    srv, _ = make_gateway()
    body = chat("capital", retrieval={"filter": {"n": 2 ** 70}})
    r = httpx.post(srv.url + "/v1/chat/completions", json=body)
    assert_error(r, 400, None, "retrieval.filter", ("64-bit",))


def test_invalid_json_says_line_and_column(make_gateway):
    srv, _ = make_gateway()
    body = b'{"model": "raft",\n  "messages": [}'
    r = httpx.post(srv.url + "/v1/chat/completions", content=body, headers=JSON)
    err = assert_error(r, 400, "invalid_json", None, ("line 2, column 16",))
    assert err["param"] is None


def test_ids_round_trip_through_the_url(make_gateway):
    """Every id ingest accepts can be deleted; an id with a slash (indexed offline) is found too."""
    offline = Document("guides/setup.md", "Setup takes ten minutes.", "Setup", "", {"tenant": "acme"})
    srv, _ = make_gateway(retriever=InMemoryRetriever([*DOCS, offline]), auth={"keys": {"ka": "acme"}})
    h = {"Authorization": "Bearer ka"}
    doc_id = "Report_2024.v1:final@team=a+b~c-d"
    r = httpx.post(srv.url + "/v1/documents", headers=h,
                   json={"documents": [{"id": doc_id, "text": "Fine."}]})
    assert r.status_code == 200 and r.json()["documents"] == [{"id": doc_id, "object": "document"}]
    r = httpx.delete(srv.url + "/v1/documents/" + doc_id, headers=h)
    assert r.status_code == 200 and r.json()["deleted"] is True and r.json()["id"] == doc_id
    r = httpx.delete(srv.url + "/v1/documents/guides%2Fsetup.md", headers=h)
    assert r.status_code == 200 and r.json()["deleted"] is True, r.text
    r = httpx.delete(srv.url + "/v1/documents/a%2Fb", headers=h)
    assert_error(r, 404, "not_found", says=("'a/b'",))


def test_unknown_paths_share_one_metrics_label(make_gateway):
    srv, _ = make_gateway()
    before = len(httpx.get(srv.url + "/metrics").text)
    with httpx.Client(base_url=srv.url) as c:
        for i in range(300):
            assert c.get(f"/probe/{i}/x{i * 7919}").status_code == 404
    m = httpx.get(srv.url + "/metrics").text
    assert 'raft_requests_total{endpoint="other",status="404"} 300.0' in m
    assert len(m) - before < 500 and "probe" not in m


def test_engine_url_credentials_never_leak(make_gateway, fake_engine, caplog):
    secret_url = fake_engine.url.replace("http://", "http://admin:s3cr3t@")
    srv, _ = make_gateway(engine_url=secret_url)
    with caplog.at_level(logging.DEBUG):
        h = httpx.get(srv.url + "/health")
        assert h.status_code == 200 and "s3cr3t" not in h.text and "***@" in h.json()["engine"]["url"]
        assert httpx.post(srv.url + "/v1/chat/completions", json=chat("capital")).status_code == 200
    down_url = f"http://admin:s3cr3t@127.0.0.1:{free_port()}"
    srv, _ = make_gateway(engine_url=down_url)
    with caplog.at_level(logging.DEBUG):
        r = httpx.post(srv.url + "/v1/chat/completions", json=chat("capital"))
        assert r.status_code == 503 and "s3cr3t" not in r.text and "***@" in r.text
        h = httpx.get(srv.url + "/health")
        assert h.status_code == 503 and "s3cr3t" not in h.text
        r = httpx.post(srv.url + "/v1/chat/completions", json=chat("capital", stream=True))
        assert "s3cr3t" not in r.text
    assert caplog.records and "s3cr3t" not in "\n".join(
        rec.getMessage() + (rec.exc_text or "") for rec in caplog.records)


def test_openapi_documents_413(make_gateway):
    srv, _ = make_gateway()
    spec = httpx.get(srv.url + "/openapi.json").json()
    assert "413" in spec["paths"]["/v1/documents"]["post"]["responses"]
    assert json.dumps(spec)  # still serialisable
