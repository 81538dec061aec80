"""POST /v1/documents and DELETE /v1/documents/{id}: live ingest and delete, visible to the next request.

Documents ingested by a tenant are stamped with `metadata.tenant` server side (whatever the body says)
and stored under the tenant's own id namespace (serving/auth.py), so the same id in two tenants is two
documents and an ingest never overwrites another tenant's document. A tenant deletes its own documents:
those it ingested, and those indexed offline whose chunks are all tagged with its tenant.
"""

from __future__ import annotations

import logging
from typing import Any

from retrieval.errors import RetrievalError
from retrieval.types import Document
from serving.auth import Principal
from serving.errors import GatewayError, RetrievalUnavailable, bad_request, not_found
from serving.gateway import Gateway
from serving.limits import check_documents
from serving.protocol import DocumentsRequest

log = logging.getLogger("raft.serve")


class DocumentService:
    def __init__(self, gw: Gateway):
        self.gw = gw

    def _retriever(self):
        if self.gw.retriever is None:
            raise bad_request("This gateway has no retrieval index (serve.retrieval.backend is 'none').")
        return self.gw.retriever

    async def add(self, req: DocumentsRequest, who: Principal) -> dict[str, Any]:
        r = self._retriever()
        check_documents(req.documents, self.gw.cfg.limits)  # everything checked before any work
        docs = []
        for d in req.documents:
            meta = dict(d.metadata)
            if who.tenant is not None:
                meta["tenant"] = who.tenant
            docs.append(Document(doc_id=who.doc_key(d.id), text=d.text, title=d.title, source=d.source,
                                 metadata=meta))
        try:
            chunk_ids = await r.aadd(docs)
        except GatewayError:
            raise
        except (ValueError, TypeError, RetrievalError) as e:
            raise bad_request(f"The documents were rejected: {e}", "documents") from None
        except Exception as e:
            log.exception("ingest failed")
            raise RetrievalUnavailable(f"Ingest failed ({type(e).__name__}: {e}).") from None
        return {"object": "list", "documents": [{"id": d.id, "object": "document"} for d in req.documents],
                "chunks": len(chunk_ids)}

    async def delete(self, doc_id: str, who: Principal) -> dict[str, Any]:
        r = self._retriever()
        missing = not_found(f"No document with id {doc_id!r}.")
        if len(doc_id) > self.gw.cfg.limits.max_id_chars:
            raise missing
        key = who.doc_key(doc_id)
        tenants = await r.adoc_tenants(key)
        if tenants is None and key != doc_id and await r.adoc_tenants(doc_id) == {who.tenant}:
            key, tenants = doc_id, {who.tenant}  # indexed offline, all of it this tenant's
        if tenants is None or (who.tenant is not None and tenants != {who.tenant}):
            raise missing  # another tenant's document answers exactly like a missing one
        try:
            n = await r.adelete([key])
        except Exception as e:
            log.exception("delete failed")
            raise RetrievalUnavailable(f"Delete failed ({type(e).__name__}: {e}).") from None
        return {"id": doc_id, "object": "document", "deleted": n > 0, "chunks": n}
