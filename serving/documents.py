"""POST /v1/documents and DELETE /v1/documents/{id}: live ingest and delete, visible to the next request.

Documents ingested by a tenant are stamped with `metadata.tenant` server side (whatever the body says),
and a tenant may delete only documents whose chunks are all its own."""

from __future__ import annotations

import logging
from typing import Any

from retrieval.types import Document
from serving.auth import Principal
from serving.errors import GatewayError, RetrievalUnavailable, bad_request, not_found
from serving.gateway import Gateway
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
        docs = []
        for d in req.documents:
            meta = dict(d.metadata)
            if who.tenant is not None:
                meta["tenant"] = who.tenant
            # a document id already owned by another tenant must not be overwritten through re-ingest
            owners = await r.adoc_tenants(d.id)
            if who.tenant is not None and owners is not None and owners != {who.tenant}:
                raise GatewayError(409, f"Document id {d.id!r} is already in use; choose another id.",
                                   "invalid_request_error", "documents.id", "conflict")
            docs.append(Document(doc_id=d.id, text=d.text, title=d.title, source=d.source, metadata=meta))
        try:
            chunk_ids = await r.aadd(docs)
        except GatewayError:
            raise
        except (ValueError, TypeError) as e:
            raise bad_request(f"The documents were rejected: {e}", "documents") from None
        except Exception as e:
            log.exception("ingest failed")
            raise RetrievalUnavailable(f"Ingest failed ({type(e).__name__}: {e}).") from None
        return {"object": "list", "documents": [{"id": d.doc_id, "object": "document"} for d in docs],
                "chunks": len(chunk_ids)}

    async def delete(self, doc_id: str, who: Principal) -> dict[str, Any]:
        tenants = await self._retriever().adoc_tenants(doc_id)
        if tenants is None or (who.tenant is not None and tenants != {who.tenant}):
            # another tenant's document answers exactly like a missing one
            raise not_found(f"No document with id {doc_id!r}.")
        try:
            n = await self._retriever().adelete([doc_id])
        except Exception as e:
            log.exception("delete failed")
            raise RetrievalUnavailable(f"Delete failed ({type(e).__name__}: {e}).") from None
        return {"id": doc_id, "object": "document", "deleted": n > 0, "chunks": n}
